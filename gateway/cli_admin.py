"""Operator commands: they talk to a running daemon's admin API (--url, LLMGATE_ADMIN_TOKEN)."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

from .admin_client import DEFAULT_URL, AdminClient

Handler = Callable[[AdminClient, argparse.Namespace], int]
HANDLERS: dict[str, Handler] = {}


def command(name: str):
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn
    return register


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _print_events(events: list[dict]) -> None:
    for e in events:
        change = f"{json.dumps(e.get('before'))} -> {json.dumps(e.get('after'))}" if e.get("after") is not None else ""
        extra = f" rule={e['rule']}" if e.get("rule") else ""
        print(f"{_when(e.get('ts'))}  {e.get('kind', '?'):<10} {e.get('route') or '-':<16} {change}{extra}"
              f"  by {e.get('actor', '?')}" + (f"  because: {e['reason']}" if e.get("reason") else ""))


@command("status")
def status(client: AdminClient, args: argparse.Namespace) -> int:
    body = client.get("/admin/status")
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    rollout = (body.get("rollout") or {}).get("routes", {})
    windows = (body.get("auto_rollback") or {}).get("routes", {})
    for name, route in body["routes"].items():
        state = rollout.get(name, {})
        flags = " [KILLED: all traffic on baseline]" if state.get("killed") else ""
        print(f"{name}: baseline {route['baseline']}{flags}")
        percents = state.get("percents", route.get("candidates", {}))
        for candidate in sorted(set(route.get("candidates", {})) | set(percents)):
            note = ""
            if candidate in state.get("rolled_back", {}):
                note = f"  rolled back: {state['rolled_back'][candidate].get('reason')}"
            print(f"  candidate {candidate:<20} {percents.get(candidate, 0):>6.2f}%{note}")
        if state.get("schedule"):
            s = state["schedule"]
            print(f"  schedule {s.get('candidate')}: step {s.get('step', 0) + 1}/{len(s.get('steps', []))} "
                  f"{s.get('steps')} {s.get('status')}")
        for variant, figures in (windows.get(name) or {}).items():
            print(f"  window {variant:<23} " + "  ".join(f"{k}={v}" for k, v in figures.items()))
        if route.get("shadow"):
            print(f"  shadow {', '.join(route['shadow'])}")
    events = client.get("/admin/events", limit=5)["events"]
    if events:
        print("last events:")
        _print_events(events)
    return 0


@command("rollout")
def rollout(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(f"/admin/routes/{args.route}/rollout",
                        {"candidate": args.candidate, "percent": args.percent, "reason": args.reason})
    _print_events([event])
    return 0


@command("rollback")
def rollback(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(f"/admin/routes/{args.route}/rollback", {"candidate": args.candidate, "reason": args.reason})
    _print_events([event])
    return 0


@command("promote")
def promote(client: AdminClient, args: argparse.Namespace) -> int:
    event = client.post(f"/admin/routes/{args.route}/promote", {"candidate": args.candidate, "reason": args.reason})
    _print_events([event])
    return 0


@command("events")
def events(client: AdminClient, args: argparse.Namespace) -> int:
    found = client.get("/admin/events", route=args.route, limit=args.limit)["events"]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        _print_events(found)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    def admin(name: str, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=help)
        parser.add_argument("--url", default=None, help=f"the gateway (default: $LLMGATE_URL, else {DEFAULT_URL})")
        return parser

    p = admin("status", "routes, variants, percents, schedule steps, window figures and the last events")
    p.add_argument("--json", action="store_true")
    p = admin("rollout", "set a candidate's percent of a route's users (sticky: raising only adds users)")
    p.add_argument("route")
    p.add_argument("candidate")
    p.add_argument("percent", type=float)
    p.add_argument("--reason", default=None)
    p = admin("rollback", "send all of a route's traffic back to the baseline (or one candidate's with --candidate)")
    p.add_argument("route")
    p.add_argument("--reason", required=True)
    p.add_argument("--candidate", default=None)
    p = admin("promote", "give a candidate all of a route's traffic")
    p.add_argument("route")
    p.add_argument("candidate")
    p.add_argument("--reason", default=None)
    p = admin("events", "the audit trail: rollouts, rollbacks, promotions, with who, before, after and why")
    p.add_argument("route", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
