"""roi: whether fine-tuning pays, from the tokens a route really used (`llmgate roi`).

The traffic log (read through flywheel.traffic_source) holds every answered exchange's prompt and
completion tokens. Pricing those same tokens at the current backend's rates and at the
fine-tuned candidate's (the config's `prices:`), scaled to a 30-day month from the observed
window, gives the monthly saving; with the one-off cost of training (given, or estimated from a
built dataset's training tokens) and the candidate's fixed monthly cost (provisioned
throughput), it gives the break-even in days and the first year's return:

    monthly saving = (current - candidate cost per day) x 30 - candidate fixed cost per month
    break-even days = one-off cost / (monthly saving / 30)      (never when the saving is not positive)
    annual ROI = (12 x monthly saving - one-off cost) / one-off cost

A fine-tuned model often needs a shorter prompt (the instructions are learnt); `--prompt-reduction`
applies that share to the candidate's prompt tokens, and nothing is assumed when it is left out.

A command-line module only: no hooks run while the gateway serves; commands.py parses the arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from flywheel import traffic_source
from flywheel.dataset.formats import make_format
from gateway.config import Config, Price, load_config

DAY = 86400.0
MIN_WINDOW = 3600.0  # a shorter observed window says too little about a month


class RoiError(Exception):
    """The inputs cannot give an answer (no price for a backend, no traffic in the window)."""


def price_of(config: Config, name: str) -> Price:
    """The price of a backend (by its name, then its model id) or of a model id named directly."""
    backend = config.settings.backends.get(name) or {}
    price = config.price_for(name, backend.get("model"))
    if price is None:
        raise RoiError(
            f"no price for '{name}': add prices.{name}: {{input: ..., output: ...}} "
            "(USD per million tokens) to the config"
        )
    return price


def usage_of(records: Iterable[dict[str, Any]], statuses: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """Requests, prompt and completion tokens, and logged cost of the answered exchanges."""
    usage = {
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "logged_cost_usd": 0.0,
        "without_usage": 0,
        "first_ts": None,
        "last_ts": None,
    }
    for record in records:
        if record.get("status") not in statuses:
            continue
        if record.get("prompt_tokens") is None and record.get("completion_tokens") is None:
            usage["without_usage"] += 1  # cache hits, errors: nothing was paid for
            continue
        usage["requests"] += 1
        usage["prompt_tokens"] += record.get("prompt_tokens") or 0
        usage["completion_tokens"] += record.get("completion_tokens") or 0
        usage["logged_cost_usd"] += record.get("cost_usd") or 0.0
        ts = record.get("ts")
        if ts is not None:
            usage["first_ts"] = ts if usage["first_ts"] is None else min(usage["first_ts"], ts)
            usage["last_ts"] = ts if usage["last_ts"] is None else max(usage["last_ts"], ts)
    return usage


def training_tokens(dataset_dir: Path) -> int:
    """Tokens in a built dataset's train.jsonl, estimated as its format does (characters per token)."""
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    fmt = make_format(manifest["format"])
    with open(dataset_dir / "train.jsonl", encoding="utf-8") as f:
        return sum(fmt.estimate_tokens(json.loads(line)) for line in f if line.strip())


def _cost(price: Price, prompt_tokens: float, completion_tokens: float) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6


def compute(
    usage: dict[str, Any],
    *,
    window_days: float,
    current: Price,
    candidate: Price,
    one_off_usd: float,
    fixed_monthly_usd: float = 0.0,
    prompt_reduction: float = 0.0,
) -> dict[str, Any]:
    """The break-even figures for `usage` observed over `window_days` (see the module's formulas)."""
    if usage["requests"] == 0:
        raise RoiError("no answered exchange with token counts in the window: nothing to project from")
    per_day = 1 / window_days
    current_daily = _cost(current, usage["prompt_tokens"], usage["completion_tokens"]) * per_day
    candidate_daily = (
        _cost(candidate, usage["prompt_tokens"] * (1 - prompt_reduction), usage["completion_tokens"]) * per_day
    )
    monthly_saving = (current_daily - candidate_daily) * 30 - fixed_monthly_usd
    if monthly_saving > 0:
        break_even_days = one_off_usd / (monthly_saving / 30)
    else:
        break_even_days = None
    return {
        "requests": usage["requests"],
        "window_days": window_days,
        "requests_per_day": usage["requests"] * per_day,
        "prompt_tokens_per_day": usage["prompt_tokens"] * per_day,
        "completion_tokens_per_day": usage["completion_tokens"] * per_day,
        "current_monthly_usd": current_daily * 30,
        "candidate_monthly_usd": candidate_daily * 30 + fixed_monthly_usd,
        "candidate_fixed_monthly_usd": fixed_monthly_usd,
        "monthly_saving_usd": monthly_saving,
        "one_off_usd": one_off_usd,
        "break_even_days": break_even_days,
        "annual_roi": (12 * monthly_saving - one_off_usd) / one_off_usd if one_off_usd > 0 else None,
        "logged_cost_usd": usage["logged_cost_usd"],
    }


def _window(usage: dict[str, Any], since: float | None, until: float | None, now: float) -> float:
    """Days the traffic was observed over: the asked window, else from the first to the last record."""
    start = since if since is not None else usage["first_ts"]
    end = until if until is not None else (now if since is not None else usage["last_ts"])
    if start is None or end is None:
        return MIN_WINDOW / DAY
    return max(end - start, MIN_WINDOW) / DAY


def cmd_roi(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        route = config.settings.routes.get(args.route)
        current_name = args.current or (route.baseline if route else None)
        if current_name is None:
            raise RoiError(f"route '{args.route}' is not in {config.source}: name the current backend with --current")
        current, candidate = price_of(config, current_name), price_of(config, args.candidate)
        one_off = args.training_cost
        trained_tokens = None
        if one_off is None:
            if args.dataset is None or args.training_price is None:
                raise RoiError(
                    "give the training cost: --training-cost USD, or --dataset DIR with "
                    "--training-price USD per million tokens (and --epochs)"
                )
            trained_tokens = training_tokens(Path(args.dataset)) * args.epochs
            one_off = trained_tokens * args.training_price / 1e6
        since, until = args.since, args.until
        usage = usage_of(traffic_source.iter_records(config, route=args.route, since=since, until=until))
        result = compute(
            usage,
            window_days=_window(usage, since, until, time.time()),
            current=current,
            candidate=candidate,
            one_off_usd=one_off,
            fixed_monthly_usd=args.fixed_monthly,
            prompt_reduction=args.prompt_reduction / 100,
        )
    except (RoiError, traffic_source.SourceError, OSError, ValueError) as exc:
        print(f"llmgate: {exc}", file=sys.stderr)
        return 1
    result = {
        "route": args.route,
        "current": current_name,
        "candidate": args.candidate,
        "training_tokens": trained_tokens,
        "prompt_reduction": args.prompt_reduction / 100,
        **result,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    days, roi = result["break_even_days"], result["annual_roi"]
    print(
        f"route {args.route}: {result['requests']} answered requests over {result['window_days']:.1f} days "
        f"({result['requests_per_day']:.0f}/day, {result['prompt_tokens_per_day']:.0f} prompt and "
        f"{result['completion_tokens_per_day']:.0f} completion tokens/day)"
    )
    print(
        f"  {current_name}: ${result['current_monthly_usd']:,.2f}/month;  {args.candidate}: "
        f"${result['candidate_monthly_usd']:,.2f}/month (fixed ${args.fixed_monthly:,.2f})"
    )
    print(f"  monthly saving ${result['monthly_saving_usd']:,.2f}; one-off ${one_off:,.2f}")
    print(
        f"  break-even: {'never (no saving)' if days is None else f'{math.ceil(days)} days'}; "
        f"annual ROI: {'n/a' if roi is None else f'{roi:.0%}'}"
    )
    return 0
