"""`llmgate eval run`: the offline evaluation's command, light to import.

Argument parsing only; the handler imports evaluators.offline (the config, backends, judges and
the gateway's plugins) when it runs, so `llmgate --help` does not.
"""

from __future__ import annotations

import argparse

from evaluators.gate import MIN_JUDGED, MIN_LOWER_BOUND, MIN_WIN_RATE
from gateway.cli.common import add_config_arg
from gateway.hookspecs import hookimpl


def _tolerance(text: str) -> tuple[str, float | None]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected METRIC=VALUE or METRIC=off, got {text!r}")
    if value == "off":
        return name, None
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the tolerance for {name} must be a number or 'off', got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"the tolerance for {name} must not be negative")
    return name, number


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {text}")
    return value


def main(args: argparse.Namespace) -> int:
    from evaluators.offline import main  # start-up: the config, backends, judges and plugins load here

    return main(args)


@hookimpl
def register_commands(commands):
    """`llmgate eval run`: the offline evaluation of a candidate (evaluators.offline)."""
    evaluate = commands.add_parser(
        "eval",
        help="offline evaluation of a candidate against a route's baseline",
        description="Offline evaluation; needs no running gateway.",
    )
    evaluate.set_defaults(handler=main)
    runs = evaluate.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    run = runs.add_parser(
        "run",
        help="run a dataset through baseline and candidate, judge them, gate the candidate",
        description="Run each case of DATASET through the route's baseline and CANDIDATE, judge each pair with "
        "the JUDGE backend, compute deterministic metrics, write the report, and gate the candidate. "
        "Exit 0 when the gate passes, 1 when it fails, 2 for usage or config errors. A rerun with the "
        "same arguments resumes from <out>.cases.jsonl.",
    )
    add_config_arg(run)
    run.add_argument("--route", required=True, help="the route whose baseline is compared")
    run.add_argument("--candidate", required=True, help="the backend to evaluate")
    run.add_argument("--judge", required=True, help="the backend that judges each pair of answers")
    run.add_argument(
        "--dataset",
        required=True,
        help="JSONL test cases: messages or prompt, optional expected_keywords, reference, expected, "
        "expected_regex, json_schema",
    )
    run.add_argument("--out", default="eval-report.json", help="the report file (default: %(default)s)")
    run.add_argument("--concurrency", type=int, default=4, help="cases in flight at once (default: %(default)s)")
    run.add_argument(
        "--min-win-rate",
        type=_share,
        default=MIN_WIN_RATE,
        help="the win rate (ties split) the candidate needs (default: %(default)s)",
    )
    run.add_argument(
        "--min-lower-bound",
        type=_share,
        default=MIN_LOWER_BOUND,
        help="the 95%% interval's lower bound must be above this (default: %(default)s)",
    )
    run.add_argument(
        "--min-judged",
        type=_share,
        default=MIN_JUDGED,
        help="the share of cases that must get a verdict (default: %(default)s)",
    )
    run.add_argument(
        "--tolerance",
        type=_tolerance,
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="largest relative regression allowed for a metric (0.05: 5%% worse), or 'off'; repeatable",
    )
