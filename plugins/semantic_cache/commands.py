"""`llmgate cache clear`: the semantic cache's command, through a running gateway's admin API.

Light to import (the standard library and the admin client): the semantic_cache plugin answers
POST /admin/cache/clear, audited as cache_clear.
"""

from __future__ import annotations

import argparse

from gateway.cli.client import AdminClient
from gateway.cli.common import add_admin_parser, add_command_group, add_reason_arg, add_route_arg
from gateway.hookspecs import hookimpl


def clear(client: AdminClient, args: argparse.Namespace) -> int:
    removed = client.post("/admin/cache/clear", {"route": args.route, "reason": args.reason})["removed"]
    print(f"route {args.route}: {removed} cached answer{'s' if removed != 1 else ''} removed")
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate cache clear ROUTE`."""
    cache_commands = add_command_group(
        commands, "cache", "the semantic cache", "The semantic cache: invalidate a route's cached answers."
    )
    p = add_admin_parser(
        cache_commands,
        "clear",
        "remove every cached answer of ROUTE (exact and semantic tiers), audited as cache_clear",
        clear,
    )
    add_route_arg(p)
    add_reason_arg(p)
