"""`llmgate rollout|rollback|promote`: the rollout plugin's commands, through a running gateway's admin API.

Light to import (the standard library and the admin client): the rollout plugin answers
POST /admin/routes/{route}/rollout, /rollback and /promote, each returning its audit event.
"""

from __future__ import annotations

import argparse

from gateway.cli.client import AdminClient
from gateway.cli.common import REASON_HELP, add_admin_parser, add_reason_arg, add_route_arg, print_events
from gateway.hookspecs import hookimpl


def rollout(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(
        f"/admin/routes/{args.route}/rollout",
        {"candidate": args.candidate, "percent": args.percent, "reason": args.reason},
    )
    print_events([event])
    return 0


def rollback(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(f"/admin/routes/{args.route}/rollback", {"candidate": args.candidate, "reason": args.reason})
    print_events([event])
    return 0


def promote(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(f"/admin/routes/{args.route}/promote", {"candidate": args.candidate, "reason": args.reason})
    print_events([event])
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate rollout ROUTE CANDIDATE PERCENT`, `llmgate rollback ROUTE` and `llmgate promote ROUTE CANDIDATE`."""
    p = add_admin_parser(
        commands, "rollout", "set a candidate's percent of a route's users (sticky: raising only adds users)", rollout
    )
    add_route_arg(p)
    p.add_argument("candidate", help="the candidate backend (one of the route's candidates)")
    p.add_argument("percent", type=float, help="its share of the route's users, 0 to 100")
    add_reason_arg(p)
    p = add_admin_parser(
        commands,
        "rollback",
        "send all of a route's traffic back to the baseline (or one candidate's with --candidate)",
        rollback,
    )
    add_route_arg(p)
    add_reason_arg(
        p,
        required=True,
        help=f"{REASON_HELP} (required: on-call reads it in `llmgate status` "
        "beside the rolled-back candidate, and in `llmgate events`)",
    )
    p.add_argument("--candidate", default=None, help="roll back only this candidate (default: all of them)")
    p = add_admin_parser(commands, "promote", "give a candidate all of a route's traffic", promote)
    add_route_arg(p)
    p.add_argument("candidate", help="the candidate that gets every user")
    add_reason_arg(p)
