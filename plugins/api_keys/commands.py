"""`llmgate keys new|hash`: the api_keys plugin's commands, light to import (the plugin loads when one runs)."""

from __future__ import annotations

from gateway.hookspecs import hookimpl


def _cmd_new(args) -> int:
    from .plugin import _cmd_new  # start-up: the plugin's pydantic and aiohttp only when a command runs

    return _cmd_new(args)


def _cmd_hash(args) -> int:
    from .plugin import _cmd_hash  # start-up, as above

    return _cmd_hash(args)


@hookimpl
def register_commands(commands):
    """`llmgate keys new --team T` and `llmgate keys hash [KEY|-]`."""
    keys = commands.add_parser(
        "keys",
        help="make client API keys and the hashes the config holds",
        description="Client API keys for the api_keys plugin: the config holds only hashes.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="print a new random key (once) and its hash line for the config")
    new.add_argument("--team", required=True, help="the team the key is for (plugins.api_keys.teams.<team>)")
    new.set_defaults(handler=_cmd_new)
    hashed = actions.add_parser("hash", help="print the config hash of an existing key")
    hashed.add_argument(
        "key",
        nargs="?",
        default="-",
        help="the key; '-' or nothing reads it from stdin (keeps it out of the shell history)",
    )
    hashed.set_defaults(handler=_cmd_hash)
