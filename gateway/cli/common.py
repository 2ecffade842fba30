"""The options and argument types the commands share: `--config`, `--reason`, `--url`, `--json`, times.

Its own module, light (the standard library and the admin client), so that the built-in commands
(admin.py), the plugins' command modules and third-party ones import it without the `llmgate`
entry point itself; `gateway.cli` re-exports add_config_arg, add_reason_arg and REASON_HELP.
"""
from __future__ import annotations

import argparse
import time

from .client import DEFAULT_URL

# gateway.config's default, not imported from it: reading it would load pydantic and PyYAML into every
# command, `llmgate --help` included (tests check the two agree).
DEFAULT_CONFIG_PATH = "config/gateway.yaml"
REASON_HELP = "why, recorded in the audit trail"


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """The `--config/-c` option every command that reads a config file takes."""
    parser.add_argument("--config", "-c", default=None,
                        help=f"config file (default: $LLMGATE_CONFIG, else ./{DEFAULT_CONFIG_PATH} when it exists, "
                             "else the starter config inside the package)")


def add_reason_arg(parser: argparse.ArgumentParser, required: bool = False, help: str = REASON_HELP) -> None:
    """The `--reason` option of every command that changes state: one spelling, one help, into the audit."""
    parser.add_argument("--reason", required=required, default=None, metavar="TEXT", help=help)


def add_url_arg(parser: argparse.ArgumentParser) -> None:
    """The `--url` option of every command that talks to a running gateway's admin API."""
    parser.add_argument("--url", default=None, help=f"the gateway (default: $LLMGATE_URL, else {DEFAULT_URL})")


def add_json_arg(parser: argparse.ArgumentParser, what: str = "the admin API's answer") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def duration(text: str) -> float:
    """Seconds from '3600', '90s', '30m', '24h' or '7d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = 0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use 3600, 30m, 24h or 7d)")
    return seconds


def moment(text: str) -> float:
    """Epoch seconds from an ISO date or time (UTC unless it says otherwise) or a span back from now (30d, 24h)."""
    from datetime import datetime, timezone  # start-up: only when a time is parsed
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return time.time() - duration(text)
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
