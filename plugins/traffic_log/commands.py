"""`llmgate traffic show|tail`: the traffic log's commands, through a running gateway's admin API.

Light to import (the standard library and the admin client): the traffic_log plugin answers
GET /admin/traffic/{request_id} and GET /admin/traffic, reading its SQLite file off the event loop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any, Callable

from gateway.cli.client import AdminClient, AdminError
from gateway.cli.common import add_json_arg, add_reason_arg, add_url_arg
from gateway.hookspecs import hookimpl

PAGE = 100  # exchanges asked for per poll; a full page is followed by another poll at once


def _get(client: AdminClient, path: str, **query) -> Any:
    """GET an endpoint of the traffic_log plugin; a gateway without it says so in the operator's terms."""
    try:
        return client.get(path, **query)
    except AdminError as err:
        if "404 no such endpoint" in str(err):
            raise AdminError(f"{err} (is the traffic_log plugin enabled on that gateway?)") from None
        raise


def _when(ts: float | None, millis: bool = False) -> str:
    if not ts:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f"{text}.{int(ts % 1 * 1000):03d}" if millis else text


def _number(value: float | int | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{unit}"


def _tokens(prompt: int | None, completion: int | None) -> str:
    if prompt is None and completion is None:
        return "-"
    return f"{_number(prompt, 'd')} prompt + {_number(completion, 'd')} completion"


def _cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def _cache(annotations: dict[str, Any]) -> str:
    note = annotations.get("cache")
    if not isinstance(note, dict):
        return "-"
    details = ", ".join(f"{k} {v}" for k, v in note.items() if k != "result" and v is not None)
    return f"{note.get('result', '?')}" + (f" ({details})" if details else "")


def _body(value: Any, stored: bool) -> str:
    if value is None:
        return "  (not stored: plugins.traffic_log.bodies is off)" if not stored else "  (none)"
    return "\n".join("  " + line for line in json.dumps(value, indent=2, ensure_ascii=False).splitlines())


def print_exchange(found: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """One exchange as an operator reads it: what answered, how it went, what it cost, what was said."""
    e = found["exchange"]
    annotations = e.get("annotations") or {}
    out(
        f"exchange {e['request_id']} at {_when(e['ts'], millis=True)}"
        + ("  (streamed)" if e["stream"] else "")
        + (f"  [the latest of {found['matches']} with this id]" if found.get("matches", 1) > 1 else "")
    )
    variant = e.get("variant") or "-"
    if e.get("served_by") and e["served_by"] != e.get("variant"):
        variant += f" (answered by {e['served_by']})"
    status = str(e["status"]) + (f" {e['error_type']}: {e['error_message']}" if e.get("error_type") else "")
    rows = [
        ("route", e["route"]),
        ("variant", variant),
        ("dialect", e.get("dialect") or annotations.get("dialect") or "chat"),
        ("status", status),
        (
            "latency",
            _number(e.get("latency_ms"), ".0f", " ms")
            + (f" (first token {e['ttft_ms']:.0f} ms)" if e.get("ttft_ms") is not None else ""),
        ),
        ("tokens", _tokens(e.get("prompt_tokens"), e.get("completion_tokens"))),
        ("cost", _cost(e.get("cost_usd"))),
        ("cache", _cache(annotations)),
    ]
    if e.get("tenant"):
        rows.append(("tenant", e["tenant"]))
    for label, value in rows:
        out(f"  {label:<10} {value}")
    attempts = e.get("attempts") or []
    out(
        f"  {'attempts':<10} "
        + (
            "; ".join(
                f"{a.get('backend')} {a.get('status')} in {_number(a.get('latency_ms'), '.0f', ' ms')}"
                + (f" ({a['error']})" if a.get("error") else "")
                for a in attempts
            )
            or "-"
        )
    )
    for s in found.get("shadow_comparisons") or []:
        judged = (
            f", judge score {s['judge_score']:.2f} (1: the shadow did better)"
            if s.get("judge_score") is not None
            else ""
        )
        error = f" {s['shadow_error']}" if s.get("shadow_error") else ""
        out(
            f"  {'shadow':<10} {s['shadow_backend']}: {s['shadow_status']}{error} in "
            f"{_number(s.get('shadow_latency_ms'), '.0f', ' ms')}, "
            f"{_tokens(s.get('shadow_prompt_tokens'), s.get('shadow_completion_tokens'))} tokens, "
            f"{_cost(s.get('shadow_cost_usd'))}{judged}"
        )
        if s.get("shadow_answer"):
            out(f"  {'':<10}   answered: {s['shadow_answer']}")
    if found.get("feedback"):
        f = found["feedback"]
        comment = f": {f['comment']}" if f.get("comment") else ""
        out(f"  {'feedback':<10} {f['rating']} (score {f['score']:g}){comment}")
    others = {k: v for k, v in annotations.items() if k not in ("cache", "dialect")}
    if others:
        out(f"  {'notes':<10} {json.dumps(others, ensure_ascii=False, sort_keys=True)}")
    stored = found.get("bodies_stored", True)
    out("request:")
    out(_body(e.get("request"), stored))
    out("response:")
    out(_body(e.get("response"), stored))


def exchange_line(e: dict[str, Any]) -> str:
    """One exchange in a line of `llmgate traffic tail`."""
    tokens = (
        "-"
        if e.get("prompt_tokens") is None and e.get("completion_tokens") is None
        else f"{_number(e.get('prompt_tokens'), 'd')}+{_number(e.get('completion_tokens'), 'd')} tok"
    )
    cache = f"  cache {e['cache']}" if e.get("cache") else ""
    return (
        f"{_when(e['ts'], millis=True)}  {e['request_id']}  {e['route']:<16} {e.get('variant') or '-':<16} "
        f"{e['status']:>3}  {_number(e.get('latency_ms'), '.0f', ' ms'):>8}  {tokens:>12}  "
        f"{_cost(e.get('cost_usd'))}{cache}"
    )


def cmd_show(args: argparse.Namespace) -> int:
    path = "/admin/traffic/" + urllib.parse.quote(args.request_id, safe="")
    if args.team:
        path += "?" + urllib.parse.urlencode({"team": args.team})
    found = _get(AdminClient(args.url), path)
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print_exchange(found)
    return 0


def follow(
    client: AdminClient,
    *,
    route: str | None,
    lines: int,
    count: int | None,
    interval: float,
    emit: Callable[[dict[str, Any]], None],
    rounds: int | None = None,
) -> int:
    """Poll GET /admin/traffic and emit each exchange once, oldest first; the number emitted.

    Starts with the latest `lines` exchanges; stops after `count` exchanges or `rounds` polls (the
    command itself runs until Ctrl-C)."""
    body = _get(client, "/admin/traffic", route=route, limit=lines)
    emitted = polls = 0
    while True:
        for exchange in body["exchanges"]:
            emit(exchange)
            emitted += 1
            if count is not None and emitted >= count:
                return emitted
        polls += 1
        if rounds is not None and polls >= rounds:
            return emitted
        if len(body["exchanges"]) < PAGE:
            time.sleep(interval)
        body = _get(client, "/admin/traffic", route=route, after=body["cursor"], limit=PAGE)


def cmd_tail(args: argparse.Namespace) -> int:
    def emit(exchange: dict[str, Any]) -> None:
        print(json.dumps(exchange, sort_keys=True) if args.json else exchange_line(exchange), flush=True)

    try:
        follow(
            AdminClient(args.url),
            route=args.route,
            lines=args.lines,
            count=args.count,
            interval=args.interval,
            emit=emit,
        )
    except BrokenPipeError:  # `llmgate traffic tail | head`
        sys.stderr.close()
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def _at_least(least: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"not a count: {text!r} ({least} or more)")
        return value

    count.__name__ = "count"
    return count


def cmd_erase(args: argparse.Namespace) -> int:
    """POST /admin/erase: every stored row of one end user, with the counts per store."""
    asked = {"user": args.user, "reason": args.reason, **({"team": args.team} if args.team else {})}
    done = AdminClient(args.url).post("/admin/erase", asked)
    removed = ", ".join(f"{store} {n}" for store, n in sorted(done["removed"].items())) or "no store answered"
    print(f"erased user {done['user_hash']} (hash): {done['exchanges']} exchanges found; removed {removed}")
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate traffic show REQUEST_ID`, `llmgate traffic tail` and `llmgate traffic erase --user ID`."""
    traffic = commands.add_parser(
        "traffic",
        help="the traffic log: one exchange by its request id, or live traffic",
        description="The traffic log of a running gateway (plugins.traffic_log), through its admin API.",
    )
    actions = traffic.add_subparsers(dest="traffic_command", metavar="COMMAND", required=True)
    show = actions.add_parser(
        "show",
        help="one exchange: route, variant, status, latency, tokens, cost, cache, shadow comparisons, "
        "feedback, attempts and the bodies as stored",
        description="One exchange from the traffic log, found by the x-request-id its answer carried.",
    )
    show.add_argument("request_id", metavar="REQUEST_ID", help="the exchange's id (its answer's x-request-id)")
    show.add_argument("--team", help="only this team's exchange: another team's is not found")
    add_url_arg(show)
    add_json_arg(show, "the stored record, and what other plugins stored for it,")
    show.set_defaults(handler=cmd_show)
    tail = actions.add_parser(
        "tail",
        help="print each exchange as it is logged, one line each, until Ctrl-C",
        description="Follow the traffic log: time, request id, route, variant, status, "
        "latency, tokens and cost of each exchange, as it is logged.",
    )
    tail.add_argument("--route", default=None, help="only this route's exchanges")
    tail.add_argument(
        "--lines",
        "-n",
        type=_at_least(0),
        default=10,
        help="how many of the latest exchanges to print first (default 10; 0: only new ones)",
    )
    tail.add_argument("--count", type=_at_least(1), default=None, help="stop after printing this many exchanges")
    tail.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls (default 1)")
    add_url_arg(tail)
    add_json_arg(tail, "each exchange as a line of JSON")
    tail.set_defaults(handler=cmd_tail)
    erase = actions.add_parser(
        "erase",
        help="delete every stored row of one end user (a data-protection request), in every store",
        description="Delete one end user's exchanges from the traffic log, the shadow comparisons, the "
        "feedback, the S3 copies and the semantic cache, and print the counts. The user is the id requests "
        "send as `user` (or x-llmgate-user); the audit event keeps only its hash.",
    )
    erase.add_argument("--user", required=True, help="the end user's id, as requests send it")
    erase.add_argument("--team", help="only this team's user of that id (another team's is someone else)")
    add_reason_arg(erase)
    add_url_arg(erase)
    erase.set_defaults(handler=cmd_erase)
