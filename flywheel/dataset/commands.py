"""`llmgate dataset build|validate`: the dataset tool's commands, light to import.

Argument parsing only; a handler imports builder.py (the config, PII scrubbing, near-duplicate
search) when it runs, so `llmgate --help` does not.
"""

from __future__ import annotations

import argparse

from gateway.cli.common import add_config_arg, moment
from gateway.hookspecs import hookimpl

from .formats import FORMAT_NAMES, SPLITS

FEEDBACK_CHOICES = ("helpful", "not_helpful", "rated")


def _shares(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split("/")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 100) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"not a split: {text!r} (train/validation/test percents adding to 100, like 80/10/10)"
        )
    return parts[0] / 100, parts[1] / 100, parts[2] / 100


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"not a score: {text!r} (from 0 to 1)")
    return value


def cmd_build(args: argparse.Namespace) -> int:
    from .builder import cmd_build  # start-up: the builder loads the config's pydantic and PyYAML

    return cmd_build(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from .builder import cmd_validate  # start-up, as above

    return cmd_validate(args)


@hookimpl
def register_commands(commands):
    """`llmgate dataset build` and `llmgate dataset validate`."""
    dataset = commands.add_parser(
        "dataset",
        help="build and check fine-tuning datasets from logged traffic",
        description="Fine-tuning datasets from the traffic log.",
    )
    actions = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    build_parser = actions.add_parser(
        "build",
        help="select, clean, split and write a dataset",
        description="Select a route's logged exchanges, clean them (PII, duplicates, lengths), and write "
        "train/validation/test JSONL and manifest.json to --out.",
    )
    add_config_arg(build_parser)
    build_parser.add_argument("--route", required=True, help="the route whose logged exchanges are read")
    build_parser.add_argument(
        "--format", choices=FORMAT_NAMES, required=True, help="the fine-tuning provider's JSONL format"
    )
    build_parser.add_argument("--out", required=True, help="directory to write the files to")
    build_parser.add_argument("--since", type=moment, help="from: 30d, 24h, 3600 (seconds back) or an ISO time (UTC)")
    build_parser.add_argument("--until", type=moment, help="up to (excluded), in the same forms")
    build_parser.add_argument("--variant", action="append", help="only answers from this backend (repeatable)")
    build_parser.add_argument("--status", type=int, action="append", help="keep these statuses (default 200)")
    build_parser.add_argument(
        "--min-judge-score", type=_score, help="keep answers the judge scored at least this (0-1)"
    )
    build_parser.add_argument(
        "--feedback",
        choices=FEEDBACK_CHOICES,
        help="keep answers users rated helpful (or 4-5 of 5), not_helpful, or rated at all",
    )
    build_parser.add_argument("--min-chars", type=int, default=1, help="shortest message kept (default 1)")
    build_parser.add_argument("--max-chars", type=int, default=32_000, help="longest message kept (default 32000)")
    build_parser.add_argument(
        "--near-duplicate-threshold",
        type=_score,
        default=0.85,
        help="Jaccard similarity of character 5-grams from which texts are duplicates (0.85)",
    )
    build_parser.add_argument(
        "--split", type=_shares, default=(0.8, 0.1, 0.1), help="train/validation/test percents (80/10/10)"
    )
    build_parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    build_parser.add_argument(
        "--max-tokens", type=int, help="the target model's tokens per example (default: openai 65536, bedrock 32000)"
    )
    build_parser.add_argument("--json", action="store_true", help="print the manifest")
    build_parser.set_defaults(handler=cmd_build)

    check = actions.add_parser(
        "validate",
        help="check a JSONL file against a format; name every bad line",
        description="Check FILE line by line against the format's documented rules.",
    )
    check.add_argument("file", help="the JSONL file to check")
    check.add_argument("--format", choices=FORMAT_NAMES, required=True, help="the format FILE should follow")
    check.add_argument(
        "--split",
        choices=SPLITS,
        help="which file this is, for record-count limits (default: from its name, e.g. train.jsonl)",
    )
    check.add_argument("--max-tokens", type=int, help="the target model's tokens per example")
    check.set_defaults(handler=cmd_validate)
