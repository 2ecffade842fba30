"""`llmgate models` and `llmgate replay`: the flywheel's commands, light to import.

`models` reads a running gateway's registry (GET /admin/models): each model's lifecycle, lineage
and evaluation. `replay` loads the config and the traffic log itself (no daemon needed); its
handler imports gate.py when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.cli.client import AdminClient, AdminError
from gateway.cli.common import add_admin_parser, add_config_arg, add_json_arg, duration
from gateway.hookspecs import hookimpl


def _figure(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _models(client: AdminClient, args: argparse.Namespace) -> int:
    try:
        models = client.get("/admin/models")["models"]
    except AdminError as exc:
        print(f"llmgate models: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print("no models registered at run time")
    for name, record in sorted(models.items(), key=lambda item: item[1].get("registered_at") or 0):
        details = record.get("details") or {}
        lineage = details.get("lineage") or {}
        routes = record.get("candidate") or record.get("shadow") or []
        where = (
            f"candidate of {', '.join(record['candidate'])}"
            if record.get("candidate")
            else (f"shadow of {', '.join(record['shadow'])}" if record.get("shadow") else "no traffic")
        )
        print(
            f"{name}  {details.get('lifecycle', 'registered'):<11} {where}  model {record['backend'].get('model')}"
            f"  {'serving' if record.get('serving') else 'not serving'}"
        )
        dataset = lineage.get("dataset") or {}
        if lineage:
            counts = dataset.get("counts") or {}
            print(
                f"    lineage: run {lineage.get('run')} ({lineage.get('trigger')}), job {details.get('job')}, "
                f"dataset {dataset.get('dir')} ({dataset.get('format')}: train {counts.get('train')}, "
                f"test {counts.get('test')}), routes {', '.join(routes) or '-'}"
            )
        gate = (details.get("evaluation") or {}).get("gate")
        if gate:
            ci = gate.get("ci95") or {}
            print(
                f"    offline gate: {gate['verdict']} against {gate.get('against')}: win rate "
                f"{_figure(gate.get('win_rate'), '.3f')} [{_figure(ci.get('low'), '.3f')}, "
                f"{_figure(ci.get('high'), '.3f')}] over {gate.get('judged')} judged of {gate.get('cases')}"
            )
        shadow = (details.get("evaluation") or {}).get("shadow")
        if shadow and shadow.get("judge"):
            print(f"    shadow: judge {shadow['judge']['mean']:.3f} over {shadow['judge']['count']} comparisons")
        for step in (details.get("lifecycle_history") or [])[-6:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(step["ts"]))
            print(f"    {when}  {step['lifecycle']}: {step.get('note') or ''}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .replay import main  # start-up: the config, the backends and the evaluators only when it runs

    return main(args)


@hookimpl
def register_commands(commands):
    """`llmgate models` and `llmgate replay`."""
    models = add_admin_parser(
        commands, "models", "models registered at run time: lifecycle, lineage, evaluation", _models
    )
    add_json_arg(models)
    replay = commands.add_parser(
        "replay",
        help="send a route's recent real questions to a candidate off the request path and compare",
        description="Sample a route's logged questions (PII scrubbed, exchanges with tool side effects "
        "skipped unless --include-tools), ask them again of --candidate and of the route's baseline "
        "(or --against), rate-limited, and report the pairwise judge's win rate with its 95% interval, "
        "latency, cost and errors. Exit 0 when the gate passes, 1 when it fails, 2 when it cannot run.",
    )
    add_config_arg(replay)
    replay.add_argument("--route", required=True, help="the route whose logged traffic is replayed")
    replay.add_argument("--candidate", required=True, help="the backend that answers the questions again")
    replay.add_argument("--against", default=None, help="the backend it is compared with (default: the baseline)")
    replay.add_argument("--judge", required=True, help="the backend that judges the pairs (both orders)")
    replay.add_argument("--since", type=duration, default=7 * 86400, help="how far back: 7d (default), 24h, 3600")
    replay.add_argument("--sample", type=int, default=100, help="questions replayed at most (100)")
    replay.add_argument("--seed", type=int, default=0, help="seed of the sample (0)")
    replay.add_argument("--include-tools", action="store_true", help="replay exchanges that offered or used tools")
    replay.add_argument("--rate", type=float, default=2.0, help="questions started per second at most (2)")
    replay.add_argument("--concurrency", type=int, default=4, help="questions in flight at most (4)")
    replay.add_argument("--margin", type=float, default=0.5, help="the win rate's 95%% interval must lie above (0.5)")
    replay.add_argument("--out", default=None, help="the report's JSON file (default: var/replay/ROUTE-CANDIDATE.json)")
    add_json_arg(replay, "the report")
    replay.set_defaults(handler=_replay)
