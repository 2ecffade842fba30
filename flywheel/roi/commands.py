"""`llmgate roi`: the roi tool's command, light to import (estimate.py and the config load when it runs)."""

from __future__ import annotations

from gateway.cli.common import add_config_arg, moment
from gateway.hookspecs import hookimpl


def cmd_roi(args) -> int:
    from .estimate import cmd_roi  # start-up: the estimate loads the config's pydantic and PyYAML

    return cmd_roi(args)


@hookimpl
def register_commands(commands):
    """`llmgate roi`: the fine-tuning break-even from logged token counts and configured prices."""
    roi = commands.add_parser(
        "roi",
        help="fine-tuning break-even from the traffic log's token counts and the config's prices",
        description="Price a route's logged tokens at the current backend's and a fine-tuned candidate's rates; "
        "print the monthly saving, the break-even in days and the annual ROI.",
    )
    add_config_arg(roi)
    roi.add_argument("--route", required=True, help="the route whose logged tokens are priced")
    roi.add_argument(
        "--candidate", required=True, help="the fine-tuned backend (or model id) with a price in the config"
    )
    roi.add_argument("--current", help="the backend serving now (default: the route's baseline)")
    roi.add_argument("--since", type=moment, help="traffic from: 30d, 24h or an ISO time (default: all logged)")
    roi.add_argument("--until", type=moment, help="traffic up to (excluded), in the same forms")
    roi.add_argument("--training-cost", type=float, help="one-off USD to train the candidate")
    roi.add_argument("--dataset", help="a built dataset directory, to estimate training tokens from train.jsonl")
    roi.add_argument("--training-price", type=float, help="USD per million training tokens (with --dataset)")
    roi.add_argument("--epochs", type=int, default=1, help="training epochs (with --dataset; default 1)")
    roi.add_argument(
        "--fixed-monthly",
        type=float,
        default=0.0,
        help="the candidate's fixed USD per month (provisioned throughput, hosting)",
    )
    roi.add_argument(
        "--prompt-reduction",
        type=float,
        default=0.0,
        help="percent fewer prompt tokens the candidate needs (default 0)",
    )
    roi.add_argument("--json", action="store_true", help="print the figures as JSON")
    roi.set_defaults(handler=cmd_roi)
