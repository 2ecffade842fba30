"""`llmgate keys new|hash` (offline: a key and the hash the config holds) and `llmgate keys
create|list|rotate|revoke` (keys made at run time, through a running gateway's admin API): the
api_keys plugin's commands, light to import (the plugin loads only when an offline one runs)."""

from __future__ import annotations

import argparse
import json
import time

from gateway.cli.client import AdminClient
from gateway.cli.common import add_admin_parser, add_reason_arg
from gateway.hookspecs import hookimpl

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _cmd_new(args) -> int:
    from .plugin import _cmd_new  # start-up: the plugin's pydantic and aiohttp only when a command runs

    return _cmd_new(args)


def _cmd_hash(args) -> int:
    from .plugin import _cmd_hash  # start-up, as above

    return _cmd_hash(args)


def seconds(text: str) -> float:
    """'90', '30m', '12h', '30d' as seconds."""
    unit = UNITS.get(text[-1:].lower())
    try:
        value = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        value = -1
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 3600, 30m, 12h, 30d)")
    return value


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _show(record: dict) -> None:
    state = (
        "revoked"
        if record.get("revoked_at")
        else ("expired" if record.get("expires_at") and record["expires_at"] <= time.time() else "live")
    )
    routes = ",".join(record.get("routes") or []) or "team's"
    print(
        f"{record['id']}  team {record['team']:<12} {record['name']!r:<20} {record['shown']}...  {state:<7} "
        f"expires {_when(record.get('expires_at'))}  routes {routes}"
    )


def _create(client: AdminClient, args: argparse.Namespace) -> int:
    body = {"team": args.team, "name": args.name, "reason": args.reason}
    if args.expires is not None:
        body["expires_in_seconds"] = args.expires
    if args.routes:
        body["routes"] = args.routes.split(",")
    for field in ("requests_per_minute", "tokens_per_day", "daily_usd", "monthly_usd"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    made = client.post("/admin/keys", body)
    print("key (shown once: give it to the team now):")
    print(f"  {made['key']}")
    _show(made)
    return 0


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    found = client.get("/admin/keys", **({"team": args.team} if args.team else {}))["keys"]
    if args.json:
        print(json.dumps(found, indent=2))
    for record in [] if args.json else found:
        _show(record)
    return 0


def _rotate(client: AdminClient, args: argparse.Namespace) -> int:
    made = client.post(f"/admin/keys/{args.id}/rotate", {"overlap_seconds": args.overlap, "reason": args.reason})
    print("new key (shown once):")
    print(f"  {made['key']}")
    _show(made)
    print(f"the old key {args.id} works until {_when(made['previous']['expires_at'])}")
    return 0


def _revoke(client: AdminClient, args: argparse.Namespace) -> int:
    _show(client.post(f"/admin/keys/{args.id}/revoke", {"reason": args.reason}))
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate keys new|hash` (offline) and `llmgate keys create|list|rotate|revoke` (a running gateway)."""
    keys = commands.add_parser(
        "keys",
        help="client API keys: made at run time, or hashes for the config",
        description="Client API keys for the api_keys plugin: made at run time through the admin API "
        "(create, list, rotate, revoke), or offline as the hashes the config holds (new, hash).",
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

    create = add_admin_parser(actions, "create", "make a key at run time (every replica takes it at once)", _create)
    create.add_argument("--team", required=True, help="the team the key belongs to")
    create.add_argument("--name", required=True, help="what the key is for ('ci', 'alice laptop')")
    create.add_argument("--expires", type=seconds, help="it stops working after this long (3600, 12h, 30d)")
    create.add_argument("--routes", help="routes it may call, comma-separated (within its team's)")
    create.add_argument("--requests-per-minute", dest="requests_per_minute", type=int, help="the key's own limit")
    create.add_argument("--tokens-per-day", dest="tokens_per_day", type=int, help="the key's own limit")
    create.add_argument("--daily-usd", dest="daily_usd", type=float, help="the key's own daily budget (budgets)")
    create.add_argument("--monthly-usd", dest="monthly_usd", type=float, help="the key's own monthly budget")
    add_reason_arg(create)
    listed = add_admin_parser(actions, "list", "the keys made at run time, newest first (never the keys)", _list)
    listed.add_argument("--team", help="only this team's")
    listed.add_argument("--json", action="store_true", help="the admin API's answer as JSON")
    rotate = add_admin_parser(actions, "rotate", "a new key for the same team; the old one works a while", _rotate)
    rotate.add_argument("id", help="the key's id (key_...)")
    rotate.add_argument("--overlap", type=seconds, default=3600.0, help="how long the old key keeps working (1h)")
    add_reason_arg(rotate)
    revoke = add_admin_parser(actions, "revoke", "stop a key now, on every replica", _revoke)
    revoke.add_argument("id", help="the key's id (key_...)")
    add_reason_arg(revoke)
