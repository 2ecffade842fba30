"""`llmgate schedule start|pause|resume|abort`: the auto_rollback plugin's staged rollouts, through a
running gateway's admin API.

Light to import (the standard library and the admin client): the auto_rollback plugin answers
POST /admin/routes/{route}/schedule and /schedule/{pause,resume,abort}, each returning its audit event.
"""

from __future__ import annotations

import argparse

from gateway.cli.client import AdminClient
from gateway.cli.common import add_admin_parser, add_command_group, add_reason_arg, add_route_arg, print_events
from gateway.hookspecs import hookimpl


def schedule(client: AdminClient, args: argparse.Namespace) -> int:
    if args.schedule_command == "start":
        body = {"candidate": args.candidate, "steps": args.steps, "reason": args.reason}
        if args.hold is not None:
            body["hold_seconds"] = args.hold
        if args.adaptive:
            body["mode"] = "adaptive"
            body["evidence"] = {"primary": args.primary, "margin": args.margin}
        event = client.post(f"/admin/routes/{args.route}/schedule", body)
    else:
        event = client.post(f"/admin/routes/{args.route}/schedule/{args.schedule_command}", {"reason": args.reason})
    print_events([event])
    return 0


def percent_steps(text: str) -> list[float]:
    """Rising percents from '5,25,50,100'."""
    try:
        steps = [float(part) for part in text.split(",")]
    except ValueError:
        steps = []
    if not steps or not all(0 < p <= 100 for p in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise argparse.ArgumentTypeError(f"not rising percents: {text!r} (e.g. 5,25,50,100)")
    return steps


@hookimpl
def register_commands(commands):
    """`llmgate schedule start ROUTE CANDIDATE` and `llmgate schedule pause|resume|abort ROUTE`."""
    schedule_commands = add_command_group(
        commands,
        "schedule",
        "staged rollouts: steps that advance only when their analysis passes",
        "Staged rollouts: each step holds, then auto_rollback's analysis advances it (healthy), "
        "pauses it (too little data) or aborts it to the baseline (failing).",
        schedule,
    )
    p = add_admin_parser(
        schedule_commands, "start", "give CANDIDATE the first step's percent now, and the next ones as each step passes"
    )
    add_route_arg(p)
    p.add_argument("candidate", help="the candidate the schedule rolls out")
    p.add_argument(
        "--steps",
        type=percent_steps,
        default=percent_steps("5,25,50,100"),
        help="rising percents (default 5,25,50,100)",
    )
    p.add_argument(
        "--hold",
        type=float,
        default=None,
        help="seconds each step holds before its analysis (300); adaptive: the longest a step waits (21600)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="advance each step as soon as a sequential test shows the candidate not worse by more than "
        "--margin (and its guardrails within theirs); roll back as soon as it shows harm",
    )
    p.add_argument(
        "--primary",
        default="success",
        help="adaptive: the primary metric, 'success' (no error) or a score such as feedback (success)",
    )
    p.add_argument("--margin", type=float, default=0.02, help="adaptive: the loss on the primary allowed (0.02)")
    add_reason_arg(p)
    for action, help in (
        ("pause", "stop advancing; the candidate keeps its percent"),
        ("resume", "hold and analyse the current step again, then go on"),
        ("abort", "send the candidate's users back to the baseline and keep them there"),
    ):
        p = add_admin_parser(schedule_commands, action, help)
        add_route_arg(p, help="the route whose schedule this acts on")
        add_reason_arg(p)
