"""The core's operator commands, `llmgate status` and `llmgate events`: they talk to a running daemon's
admin API (--url, LLMGATE_ADMIN_TOKEN). The plugins' operator commands (rollout, schedule, shadow,
cache, ...) are in their command modules (gateway.known_plugins.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import json

from .client import AdminClient
from .common import add_admin_parser, add_json_arg, add_route_arg, print_events


def status(client: AdminClient, args: argparse.Namespace) -> int:
    body = client.get("/admin/status")
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    rollout = (body.get("rollout") or {}).get("routes", {})
    windows = (body.get("auto_rollback") or {}).get("routes", {})
    schedules = (body.get("auto_rollback") or {}).get("schedules", {})
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
        if schedules.get(name):
            s = schedules[name]
            steps = " -> ".join(f"{p:g}" for p in s.get("steps", []))
            why = f": {s['reason']}" if s.get("reason") and s.get("status") != "running" else ""
            adaptive = s.get("mode") == "adaptive"
            print(
                f"  schedule {s.get('candidate')}: step {s.get('step', 0) + 1}/{len(s.get('steps', []))} "
                f"({steps}), {'adaptive, at most' if adaptive else 'hold'} {s.get('hold_seconds', 0):g}s, "
                f"{s.get('status')}{why}"
            )
            decision = ((body.get("auto_rollback") or {}).get("decisions") or {}).get(name)
            if adaptive and decision:
                print(f"    evidence: {decision['action']}: {decision['reason']}")
        for variant, figures in (windows.get(name) or {}).items():
            print(f"  window {variant:<23} " + "  ".join(_figures(figures)))
        if route.get("shadow"):
            print(f"  shadow {', '.join(route['shadow'])}")
    events = client.get("/admin/events", limit=5)["events"]
    if events:
        print("last events:")
        print_events(events)
    return 0


def _figures(figures: dict) -> list[str]:
    """name=value, a figure's 95% interval (its `_interval` twin) beside it: `error_rate=0.01 [0.002-0.04]`."""
    out = []
    for key, value in figures.items():
        if key.endswith("_interval"):
            continue
        band = figures.get(f"{key}_interval")
        out.append(f"{key}={value}" + (f" [{band[0]:g}-{band[1]:g}]" if band else ""))
    return out


def events(client: AdminClient, args: argparse.Namespace) -> int:
    found = client.get("/admin/events", route=args.route, limit=args.limit)["events"]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print_events(found)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = add_admin_parser(
        commands, "status", "routes, variants, percents, schedule steps, window figures and the last events", status
    )
    add_json_arg(p)
    p = add_admin_parser(
        commands, "events", "the audit trail: rollouts, rollbacks, promotions, with who, before, after and why", events
    )
    add_route_arg(p, nargs="?", help="only this route's events (default: every route's)")
    p.add_argument("--limit", type=int, default=20, help="how many of the latest events (default 20)")
    add_json_arg(p, "the events")
