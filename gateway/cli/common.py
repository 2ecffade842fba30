"""What the commands share: `--config`, `--reason`, `--url`, `--json`, a route, times, admin commands.

Its own module, light (the standard library and the admin client), so that the built-in commands
(admin.py), the plugins' command modules and third-party ones import it without the `llmgate`
entry point itself; `gateway.cli` re-exports add_config_arg, add_reason_arg and REASON_HELP.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from typing import Callable

from .client import DEFAULT_URL, AdminClient

AdminHandler = Callable[[AdminClient, argparse.Namespace], int]

# gateway.config's default, not imported from it: reading it would load pydantic and PyYAML into every
# command, `llmgate --help` included (tests check the two agree).
DEFAULT_CONFIG_PATH = "config/gateway.yaml"
REASON_HELP = "why, recorded in the audit trail"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The `--config/-c` option every command that reads a config file takes."""
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help=f"config file (default: $LLMGATE_CONFIG, else ./{DEFAULT_CONFIG_PATH} when it exists, "
        "else the starter config inside the package)",
    )


def add_reason_arg(parser: argparse.ArgumentParser, required: bool = False, help: str = REASON_HELP) -> None:
    """The `--reason` option of every command that changes state: one spelling, one help, into the audit."""
    parser.add_argument("--reason", required=required, default=None, metavar="TEXT", help=help)


def add_url_arg(parser: argparse.ArgumentParser) -> None:
    """The `--url` option of every command that talks to a running gateway's admin API."""
    parser.add_argument("--url", default=None, help=f"the gateway (default: $LLMGATE_URL, else {DEFAULT_URL})")


def add_json_arg(parser: argparse.ArgumentParser, what: str = "the admin API's answer") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_route_arg(parser: argparse.ArgumentParser, nargs: str | None = None, help: str = "the route's name") -> None:
    """The ROUTE argument of the commands that act on one route."""
    parser.add_argument("route", nargs=nargs, help=help)


def admin_command(fn: AdminHandler) -> Callable[[argparse.Namespace], int]:
    """`fn(client, args)` as a command's handler (`set_defaults(handler=...)`), `client` talking to `--url`."""

    @functools.wraps(fn)
    def handler(args: argparse.Namespace) -> int:
        return fn(AdminClient(args.url), args)

    return handler


def add_admin_parser(
    commands: argparse._SubParsersAction, name: str, help: str, handler: AdminHandler | None = None
) -> argparse.ArgumentParser:
    """A command that talks to a running gateway's admin API: its help is its description, it takes `--url`."""
    parser = commands.add_parser(name, help=help, description=help)
    add_url_arg(parser)
    if handler is not None:
        parser.set_defaults(handler=admin_command(handler))
    return parser


def add_command_group(
    commands: argparse._SubParsersAction, name: str, help: str, description: str, handler: AdminHandler | None = None
) -> argparse._SubParsersAction:
    """A command whose subcommands do the work (`llmgate cache clear`); the one chosen is in `<name>_command`.

    `handler`, when given, serves every subcommand (one that sets its own overrides it)."""
    group = commands.add_parser(name, help=help, description=description)
    if handler is not None:
        group.set_defaults(handler=admin_command(handler))
    return group.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def print_events(events: list[dict]) -> None:
    """Audit events (GET /admin/events, or the one a change returns), one line each."""
    for e in events:
        change = f"{json.dumps(e.get('before'))} -> {json.dumps(e.get('after'))}" if e.get("after") is not None else ""
        extra = f" rule={e['rule']}" if e.get("rule") else ""
        print(
            f"{_when(e.get('ts'))}  {e.get('kind', '?'):<10} {e.get('route') or '-':<16} {change}{extra}"
            f"  by {e.get('actor', '?')}" + (f"  because: {e['reason']}" if e.get("reason") else "")
        )


def duration(text: str) -> float:
    """Seconds from '3600', '90s', '30m', '24h' or '7d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = 0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 3600, 30m, 24h or 7d)")
    return seconds


def moment(text: str) -> float:
    """Epoch seconds from an ISO date or time (UTC unless it says otherwise) or a span back from now (30d, 24h)."""
    from datetime import datetime, timezone  # start-up: only when a time is parsed

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return time.time() - duration(text)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
