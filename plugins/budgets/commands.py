"""`llmgate budgets status|reset`: the budgets plugin's spend and its reset (closing the cost breaker), through a
running gateway's admin API. Light to import: the standard library and the admin client."""

from __future__ import annotations

import argparse
import json
import time

from gateway.cli.client import AdminClient
from gateway.cli.common import add_admin_parser, add_command_group, add_reason_arg, print_events
from gateway.hookspecs import hookimpl


def budgets(client: AdminClient, args: argparse.Namespace) -> int:
    if args.budgets_command == "status":
        rows = client.get("/admin/budgets")["budgets"]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for r in rows:
            share = r["spent_usd"] / r["limit_usd"]
            resets = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["resets_at"]))
            print(
                f"{r['scope']:<24} {r['period']:<14} ${r['spent_usd']:.4f} of ${r['limit_usd']:g} ({share:.0%}), "
                f"forecast ${r['forecast_usd']:g}, resets {resets}"
            )
        return 0
    done = client.post("/admin/budgets/reset", {"scope": args.scope, "period": args.period, "reason": args.reason})
    print(f"{done['scope']} {done['period']}: count started again (was ${done['was_usd']:.4f})")
    print_events(client.get("/admin/events", limit=1, kind="budget_reset")["events"])
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate budgets status` and `llmgate budgets reset SCOPE`."""
    group = add_command_group(
        commands,
        "budgets",
        "spend against the USD budgets, and closing the cost breaker",
        "USD budgets per team and key, and the gateway's daily cost cap (the cost breaker).",
        budgets,
    )
    status = add_admin_parser(group, "status", "each budget's spend this period, limit, forecast and reset time")
    status.add_argument("--json", action="store_true", help="the admin API's answer as JSON")
    reset = add_admin_parser(group, "reset", "start a budget's count for this period again (closes the cost breaker)")
    reset.add_argument("scope", help="'gateway' (the cost breaker) or 'team:NAME'")
    reset.add_argument("--period", choices=("day", "month"), default="day", help="which period's count (day)")
    add_reason_arg(reset)
