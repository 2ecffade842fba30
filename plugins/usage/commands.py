"""`llmgate usage`: spend and tokens per team, key, route, variant or day, as a table, from a running
gateway's GET /v1/usage with the admin token. Light to import: the standard library and the admin
client; the gateway checks the dates and the grouping (one set of rules, one set of messages)."""

from __future__ import annotations

import argparse
import json

from gateway.cli.client import AdminClient, AdminError
from gateway.cli.common import add_admin_parser, add_json_arg
from gateway.hookspecs import hookimpl

# (field, heading, format) of each figure, after the grouping's columns
FIGURES = (
    ("requests", "requests", "d"),
    ("prompt_tokens", "prompt", "d"),
    ("completion_tokens", "completion", "d"),
    ("cache_read_tokens", "cache read", "d"),
    ("cache_write_tokens", "cache write", "d"),
    ("cost_usd", "USD", ".6f"),
)


def _cell(row: dict, name: str) -> str:
    value = row.get(name)
    if name == "key" and row.get("key_name"):
        return f"{value} ({row['key_name']})"
    return "-" if value is None else str(value)


def table(answer: dict) -> str:
    """The report as aligned columns: one line per group, then the total."""
    groups = answer["group_by"]
    total = {**dict.fromkeys(groups, ""), **dict.fromkeys(groups[:1], "total"), **answer["total"]}
    rows = [*answer["rows"], total] if groups else [total]
    lines = [[*groups, *(heading for _, heading, _ in FIGURES)]]
    lines += [[_cell(row, g) for g in groups] + [format(row[f], spec) for f, _, spec in FIGURES] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "  ".join("-" * w for w in widths)
    out = []
    for line in lines:
        cells = [c.ljust(w) if i < len(groups) else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join([out[0], rule, *out[1:-1], *([rule] if groups else []), out[-1]])


def usage(client: AdminClient, args: argparse.Namespace) -> int:
    query = {"date": args.date, "from": args.first, "to": args.last, "group_by": args.group_by, "team": args.team}
    try:
        answer = client.get("/v1/usage", **query)
    except AdminError as err:
        if " 404 " in str(err) or " 401 " in str(err):
            raise AdminError(f"{err} (is the usage plugin enabled on that gateway?)") from None
        raise
    if not isinstance(answer, dict) or "rows" not in answer:
        raise AdminError("the gateway's GET /v1/usage has no report by day: enable the usage plugin on it")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    span = answer["from"] if answer["from"] == answer["to"] else f"{answer['from']} to {answer['to']}"
    print(f"usage {span} (UTC days)" + (f", team {answer['team']}" if answer.get("team") else ", every team"))
    if not answer["rows"]:
        print("nothing was used")
        return 0
    print(table(answer))
    return 0


@hookimpl
def register_commands(commands):
    """`llmgate usage [--date D | --from D --to D] [--group-by ...] [--team T]`."""
    parser = add_admin_parser(
        commands,
        "usage",
        "spend (USD) and tokens per team, key, route, variant or day, for a day or a range of days (UTC)",
        usage,
    )
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="one day (default: today)")
    parser.add_argument("--from", dest="first", metavar="YYYY-MM-DD", help="a range's first day")
    parser.add_argument("--to", dest="last", metavar="YYYY-MM-DD", help="a range's last day (default: today)")
    parser.add_argument(
        "--group-by",
        metavar="LIST",
        help="comma-separated: team, key, route, variant, day (default: team,key,route,variant; '' for the total)",
    )
    parser.add_argument("--team", help="one team only")
    add_json_arg(parser)
