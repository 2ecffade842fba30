"""`llmgate replay`: last week's real questions asked again of a candidate, off the request path.

The offline gate's second half on its own: to try a new base model (or a prompt) on the route's
real traffic before any rollout. The backends come from the config through `llmgate eval`'s
door (evaluators/offline.py: plugins, credentials, the evaluators), the questions from the
traffic log through gate.py (sampled, PII scrubbed, tool side effects skipped unless asked).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

from evaluators.offline import Gate, UsageError, build_report, prepare, render_table, results_path
from flywheel.traffic_source import SourceError
from gateway.config import ConfigError, RouteSettings

from .gate import SKIPS, Pace, PacedEvaluation, replay_cases


def main(args: argparse.Namespace) -> int:
    """Exit 0 when the gate passes, 1 when it fails, 2 when the command cannot run as asked."""
    try:
        evaluation = prepare(
            argparse.Namespace(
                config=args.config,
                route=args.route,
                candidate=args.candidate,
                judge=args.judge,
                tolerance=[],
                concurrency=args.concurrency,
            )
        )
        if args.against is not None:
            if args.against not in evaluation.backends:
                raise UsageError(f"--against: unknown backend '{args.against}'")
            evaluation.route = RouteSettings(baseline=args.against, retries=evaluation.route.retries)
        cases, skipped = replay_cases(
            evaluation.config,
            args.route,
            time.time() - args.since,
            sample=args.sample,
            seed=args.seed,
            include_tools=args.include_tools,
        )
    except (ConfigError, UsageError, SourceError) as exc:
        print(f"llmgate replay: {exc}", file=sys.stderr)
        return 2
    for reason, count in skipped.items():
        print(f"skipped {count}: {SKIPS[reason]}", file=sys.stderr)
    if not cases:
        print(f"llmgate replay: no question of route '{args.route}' to replay in that window", file=sys.stderr)
        return 2
    paced = PacedEvaluation(
        **{f.name: getattr(evaluation, f.name) for f in dataclasses.fields(evaluation) if f.name != "pace"},
        pace=Pace(args.rate),
    )
    gate = Gate(
        min_win_rate=args.margin,
        min_lower_bound=args.margin,
        tolerances={e.name: getattr(e, "tolerance", None) for e in evaluation.evaluators},
    )
    out = Path(args.out or f"var/replay/{args.route}-{args.candidate}.json")
    records = asyncio.run(paced.run(cases, results_path(str(out)), args.concurrency))
    report = build_report(paced, records, gate, f"replay of {len(cases)} questions")
    report["replay"] = {"since_s": args.since, "sampled": len(cases), "skipped": skipped, "rate": args.rate}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
        print(f"report: {out}  cases: {results_path(str(out))}")
    return 0 if report["gate"]["passed"] else 1
