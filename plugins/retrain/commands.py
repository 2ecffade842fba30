"""`llmgate retrain launch|wait|status|cancel`: the retrain plugin's commands, light to import.

Argument parsing only; the handler imports plugin.py (pydantic, the providers' SDKs, the
state store) when a command runs.
"""

from __future__ import annotations

import argparse

from gateway.cli.client import DEFAULT_URL
from gateway.cli.common import add_config_arg, add_reason_arg
from gateway.hookspecs import hookimpl


def _hyperparameter(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r} (e.g. epochCount=3)")
    return name.strip(), value.strip()


def main(args: argparse.Namespace) -> int:
    from .plugin import main  # start-up: pydantic, the providers and the state store only when one runs

    return main(args)


@hookimpl
def register_commands(commands):
    """`llmgate retrain launch|wait|status|cancel`."""
    retrain = commands.add_parser(
        "retrain",
        help="fine-tune a new model from a dataset and register it as a shadow of a route",
        description="Retraining jobs on Bedrock or OpenAI. Jobs are kept in the gateway's state store "
        "(the config's `state:`), so any machine with the same config sees them.",
    )
    retrain.set_defaults(handler=main)
    sub = retrain.add_subparsers(dest="retrain_command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help, description=help)
        add_config_arg(parser)
        return parser

    def polling(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url",
            default=None,
            help=f"the gateway that registers the model (default: $LLMGATE_URL, else {DEFAULT_URL})",
        )
        parser.add_argument("--poll-interval", type=float, default=30.0, help="seconds between polls (30)")
        parser.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")

    def job_arg(parser: argparse.ArgumentParser, nargs: str | None = None, help: str = "the job's id") -> None:
        parser.add_argument("job", nargs=nargs, help=help)

    p = command(
        "launch",
        "upload DATASET, create the fine-tuning job, and (with --wait) poll it until its model "
        "is registered as a backend and shadow of ROUTE",
    )
    p.add_argument("--dataset", required=True, help="a dataset directory: train.jsonl, validation.jsonl, manifest.json")
    p.add_argument("--provider", required=True, choices=["bedrock", "openai"], help="where the job runs")
    p.add_argument("--route", required=True, help="the route whose shadow the new model becomes")
    p.add_argument("--base-model", default=None, help="the model to fine-tune (default: the provider's base_model)")
    p.add_argument(
        "--hyperparameter",
        "-p",
        type=_hyperparameter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="in the provider's names: epochCount=3, batchSize=8, "
        "learningRateMultiplier=1.0 (Bedrock); n_epochs=3 (OpenAI)",
    )
    p.add_argument("--name", default=None, help="the new backend's name (default: ROUTE-JOBID)")
    p.add_argument("--role-arn", default=None, help="Bedrock: the service role for the job")
    p.add_argument("--bucket", default=None, help="Bedrock: the S3 bucket for the dataset and the output")
    p.add_argument(
        "--deployment",
        choices=["provisioned", "custom_deployment", "none"],
        default=None,
        help="Bedrock: how the trained model is served",
    )
    p.add_argument("--model-units", type=int, default=None, help="Bedrock: provisioned throughput model units")
    p.add_argument("--wait", action="store_true", help="poll until the model is registered (or the job ends)")
    add_reason_arg(p)
    polling(p)
    p = command("wait", "poll a job until it finishes; registers its model when it is in service")
    job_arg(p)
    polling(p)
    p = command("status", "the retraining jobs: state, provider state, model, errors")
    job_arg(p, nargs="?", help="only this job (default: every job)")
    p.add_argument("--json", action="store_true", help="print the jobs as JSON")
    p = command("cancel", "stop a job at the provider (or delete its deployment while it is being deployed)")
    job_arg(p)
    add_reason_arg(p)
