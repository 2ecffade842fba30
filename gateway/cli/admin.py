"""Operator commands: they talk to a running daemon's admin API (--url, LLMGATE_ADMIN_TOKEN)."""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

from .client import AdminClient
from .common import REASON_HELP, add_json_arg, add_reason_arg, add_url_arg, duration

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
            print(f"  schedule {s.get('candidate')}: step {s.get('step', 0) + 1}/{len(s.get('steps', []))} "
                  f"({steps}), hold {s.get('hold_seconds', 0):g}s, {s.get('status')}{why}")
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


@command("schedule")
def schedule(client: AdminClient, args: argparse.Namespace) -> int:
    if args.schedule_command == "start":
        event = client.post(f"/admin/routes/{args.route}/schedule",
                            {"candidate": args.candidate, "steps": args.steps, "hold_seconds": args.hold,
                             "reason": args.reason})
    else:
        event = client.post(f"/admin/routes/{args.route}/schedule/{args.schedule_command}", {"reason": args.reason})
    _print_events([event])
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


@command("events")
def events(client: AdminClient, args: argparse.Namespace) -> int:
    found = client.get("/admin/events", route=args.route, limit=args.limit)["events"]
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        _print_events(found)
    return 0


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_shadow(name: str, s: dict) -> None:
    p, sh, diff = s["primary"], s["shadow"], s["difference"]
    print(f"shadow {name}: {s['count']} comparisons, about {_figure(s['requests_per_day'], '.1f')} requests/day")
    if not s["count"]:
        return
    rows = [("error rate", p["error_rate"], sh["error_rate"], None, ".1%"),
            *((f"latency {q} (ms)", p["latency_ms"][q], sh["latency_ms"][q], None, ".0f")
              for q in ("p50", "p95", "p99")),
            *((f"{kind} tokens (mean)", p[f"{kind}_tokens_mean"], sh[f"{kind}_tokens_mean"],
               diff[f"{kind}_tokens_mean"], ".2f") for kind in ("prompt", "completion")),
            ("cost per request (USD)", p["cost_per_request_usd"], sh["cost_per_request_usd"],
             diff["cost_per_request_usd"], ".6f")]
    print(f"  {'':<26}{'primary':>12}{'shadow':>12}{'shadow-primary':>16}")
    for label, a, b, d, spec in rows:
        gap = "" if d is None else format(d, "+" + spec)
        print(f"  {label:<26}{_figure(a, spec):>12}{_figure(b, spec):>12}{gap:>16}".rstrip())
    print(f"  projected monthly saving: {_figure(s['projected_monthly_saving_usd'], ',.2f')} USD")
    if s.get("judge"):
        print(f"  judge score: {s['judge']['mean']:.3f} mean of {s['judge']['count']}")
    if s["recent"]:
        print("  latest answers:")
    for pair in s["recent"]:
        print(f"  {pair['request_id']}:\n    primary: {pair['primary_answer'] or '-'}\n"
              f"    shadow:  {pair['shadow_answer'] or '-'}")


@command("shadow")
def shadow_report(client: AdminClient, args: argparse.Namespace) -> int:
    report = client.get("/admin/shadow/report", route=args.route, since=args.since)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print(f"route {report['route']}: shadow comparisons over the last {_span(args.since)} "
          f"(sample rate {report['sample_rate']:g})")
    if not report["shadows"]:
        print("  no shadow backends and no comparisons")
    for name, summary in report["shadows"].items():
        _print_shadow(name, summary)
    return 0


@command("cache")
def cache(client: AdminClient, args: argparse.Namespace) -> int:
    removed = client.post("/admin/cache/clear", {"route": args.route, "reason": args.reason})["removed"]
    print(f"route {args.route}: {removed} cached answer{'s' if removed != 1 else ''} removed")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    def admin(name: str, help: str, under: argparse._SubParsersAction = commands) -> argparse.ArgumentParser:
        parser = under.add_parser(name, help=help, description=help)
        add_url_arg(parser)
        return parser

    def route_arg(parser: argparse.ArgumentParser, nargs: str | None = None, help: str = "the route's name") -> None:
        parser.add_argument("route", nargs=nargs, help=help)

    p = admin("status", "routes, variants, percents, schedule steps, window figures and the last events")
    add_json_arg(p)
    cache_commands = commands.add_parser("cache", help="the semantic cache",
                                         description="The semantic cache: invalidate a route's cached answers.",
                                         ).add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    p = admin("clear", "remove every cached answer of ROUTE (exact and semantic tiers), audited as cache_clear",
              under=cache_commands)
    route_arg(p)
    add_reason_arg(p)
    p = admin("rollout", "set a candidate's percent of a route's users (sticky: raising only adds users)")
    route_arg(p)
    p.add_argument("candidate", help="the candidate backend (one of the route's candidates)")
    p.add_argument("percent", type=float, help="its share of the route's users, 0 to 100")
    add_reason_arg(p)
    p = admin("rollback", "send all of a route's traffic back to the baseline (or one candidate's with --candidate)")
    route_arg(p)
    add_reason_arg(p, required=True, help=f"{REASON_HELP} (required: on-call reads it in `llmgate status` "
                                          "beside the rolled-back candidate, and in `llmgate events`)")
    p.add_argument("--candidate", default=None, help="roll back only this candidate (default: all of them)")
    p = admin("promote", "give a candidate all of a route's traffic")
    route_arg(p)
    p.add_argument("candidate", help="the candidate that gets every user")
    add_reason_arg(p)
    p = admin("events", "the audit trail: rollouts, rollbacks, promotions, with who, before, after and why")
    route_arg(p, nargs="?", help="only this route's events (default: every route's)")
    p.add_argument("--limit", type=int, default=20, help="how many of the latest events (default 20)")
    add_json_arg(p, "the events")
    schedule_commands = commands.add_parser(
        "schedule", help="staged rollouts: steps that advance only when their analysis passes",
        description="Staged rollouts: each step holds, then auto_rollback's analysis advances it (healthy), "
                    "pauses it (too little data) or aborts it to the baseline (failing).",
    ).add_subparsers(dest="schedule_command", metavar="COMMAND", required=True)
    p = admin("start", "give CANDIDATE the first step's percent now, and the next ones as each step passes",
              under=schedule_commands)
    route_arg(p)
    p.add_argument("candidate", help="the candidate the schedule rolls out")
    p.add_argument("--steps", type=percent_steps, default=percent_steps("5,25,50,100"),
                   help="rising percents (default 5,25,50,100)")
    p.add_argument("--hold", type=float, default=300.0, help="seconds each step holds before its analysis (300)")
    add_reason_arg(p)
    for action, help in (("pause", "stop advancing; the candidate keeps its percent"),
                         ("resume", "hold and analyse the current step again, then go on"),
                         ("abort", "send the candidate's users back to the baseline and keep them there")):
        p = admin(action, help, under=schedule_commands)
        route_arg(p, help="the route whose schedule this acts on")
        add_reason_arg(p)
    shadow_commands = commands.add_parser("shadow", help="shadow traffic: how a route's shadow backends compare",
                                          description="Shadow traffic: how a route's shadow backends compare.",
                                          ).add_subparsers(dest="shadow_command", metavar="COMMAND", required=True)
    p = admin("report", "count, error rates, latency percentiles, token and cost differences and the projected "
              "monthly saving of each shadow backend of ROUTE", under=shadow_commands)
    route_arg(p)
    p.add_argument("--since", type=duration, default=duration("24h"),
                   help="the window: seconds, or 30m, 24h, 7d (default 24h)")
    add_json_arg(p, "the report")
