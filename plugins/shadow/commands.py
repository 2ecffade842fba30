"""`llmgate shadow report`: how a route's shadow backends compare, through a running gateway's admin API.

Light to import (the standard library and the admin client): the shadow plugin answers
GET /admin/shadow/report from its SQLite file of comparisons.
"""

from __future__ import annotations

import argparse
import json

from gateway.cli.client import AdminClient
from gateway.cli.common import add_admin_parser, add_command_group, add_json_arg, add_route_arg, duration
from gateway.hookspecs import hookimpl


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
    if (m := s.get("mirrored")) and m["requests"]:
        print(
            f"  mirrored {m['mirrored']} of {m['requests']} requests since start ({_figure(m['share'], '.1%')}; "
            f"sample rate {m['sample_rate']:.0%}), {m['dropped']} dropped (queue full)"
        )
    if not s["count"]:
        return
    rows = [
        ("error rate", p["error_rate"], sh["error_rate"], None, ".1%"),
        *((f"latency {q} (ms)", p["latency_ms"][q], sh["latency_ms"][q], None, ".0f") for q in ("p50", "p95", "p99")),
        *(
            (
                f"{kind} tokens (mean)",
                p[f"{kind}_tokens_mean"],
                sh[f"{kind}_tokens_mean"],
                diff[f"{kind}_tokens_mean"],
                ".2f",
            )
            for kind in ("prompt", "completion")
        ),
        (
            "cost per request (USD)",
            p["cost_per_request_usd"],
            sh["cost_per_request_usd"],
            diff["cost_per_request_usd"],
            ".6f",
        ),
    ]
    print(f"  {'':<26}{'primary':>12}{'shadow':>12}{'shadow-primary':>16}")
    for label, a, b, d, spec in rows:
        gap = "" if d is None else format(d, "+" + spec)
        print(f"  {label:<26}{_figure(a, spec):>12}{_figure(b, spec):>12}{gap:>16}".rstrip())
    pe, se = p.get("errors"), sh.get("errors")
    if pe and se:
        print(
            f"  error rate 95% intervals: primary {pe['interval'][0]:.1%} to {pe['interval'][1]:.1%}, "
            f"shadow {se['interval'][0]:.1%} to {se['interval'][1]:.1%} ({pe['n']} requests)"
        )
    for key, label, spec in (
        ("latency_ms", "latency (ms)", "+.0f"),
        ("prompt_tokens", "prompt tokens", "+.2f"),
        ("completion_tokens", "completion tokens", "+.2f"),
        ("cost_usd", "cost (USD)", "+.6f"),
    ):
        d = (s.get("paired_difference") or {}).get(key)
        if d and d["interval"]:
            low, high = d["interval"]
            print(
                f"  {label}, shadow - primary on the same requests: {d['mean']:{spec}} "
                f"(95% {low:{spec}} to {high:{spec}}, {d['n']} pairs)"
            )
    print(f"  projected monthly saving: {_figure(s['projected_monthly_saving_usd'], ',.2f')} USD")
    if judge := s.get("judge"):
        band = f" (95% {judge['interval'][0]:.3f} to {judge['interval'][1]:.3f})" if judge.get("interval") else ""
        print(f"  judge score: {judge['mean']:.3f} mean of {judge['count']}{band}")
    if s["recent"]:
        print("  latest answers:")
    for pair in s["recent"]:
        print(
            f"  {pair['request_id']}:\n    primary: {pair['primary_answer'] or '-'}\n"
            f"    shadow:  {pair['shadow_answer'] or '-'}"
        )


def report(client: AdminClient, args: argparse.Namespace) -> int:
    found = client.get("/admin/shadow/report", route=args.route, since=args.since)
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    print(
        f"route {found['route']}: shadow comparisons over the last {_span(args.since)} "
        f"(sample rate {found['sample_rate']:g})"
    )
    if not found["shadows"]:
        print("  no shadow backends and no comparisons")
    for name, summary in found["shadows"].items():
        _print_shadow(name, summary)
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate shadow report ROUTE [--since 24h]`."""
    shadow_commands = add_command_group(
        commands,
        "shadow",
        "shadow traffic: how a route's shadow backends compare",
        "Shadow traffic: how a route's shadow backends compare.",
    )
    p = add_admin_parser(
        shadow_commands,
        "report",
        "count, error rates, latency percentiles, token and cost "
        "differences and the projected monthly saving of each shadow "
        "backend of ROUTE",
        report,
    )
    add_route_arg(p)
    p.add_argument(
        "--since", type=duration, default=duration("24h"), help="the window: seconds, or 30m, 24h, 7d (default 24h)"
    )
    add_json_arg(p, "the report")
