"""An adaptive schedule's step decision: the sequential test of evaluators/sequential.py on window figures.

A fixed schedule holds each step for `hold_seconds` and then judges it on that step's point
estimates; an adaptive one asks, at every evaluation, whether the evidence so far (every step of
the schedule, one stratum each, so a share change or the hour's traffic mix does not bias the
difference) shows the candidate not worse than the baseline by more than `margin` on the primary
metric, with every guardrail within its tolerance: then it advances at once; if it shows harm,
the candidate is rolled back; otherwise it waits. The test is always valid, so asking every few
seconds does not raise its error rates (bench/rollout_sim.py measures them).

The primary is a proportion, higher is better: `success` (answers that were not errors), or a
score in [0, 1] that variants report (`feedback`, an evaluator's score). A score only the
candidate reports is pairwise (the judge's `judge_win_rate` against the baseline): its mean is
tested against 0.5, a tie, with the scores' own variance, and `margin` is then on the win rate
(0.01 there is a 2-point loss of good answers: a worse answer turns a tie into a loss, half a point).
Guardrails, lower is better: errors (unless the primary is success), the
share of calls slower than a latency limit fixed when the schedule starts (the baseline's p95
then, or the latency rule's `max_ms`), and the cost per request against `cost_ratio` times the
baseline's.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluators.sequential import Arm, Decision, Guardrail, MeanArm, decide

from .windows import Figures, count_above

PAIRWISE_N = 10**12  # a pairwise score's baseline: 0.5 known exactly (its variance vanishes at this count)


class Evidence(BaseModel):
    """What an adaptive schedule's steps are decided by."""

    model_config = ConfigDict(extra="forbid")
    primary: str = Field("success", description="'success' (no error) or a score in [0, 1], higher is better")
    margin: float = Field(0.02, ge=0, le=1, description="the primary's loss the candidate may show and advance")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="error rate of an advance (a worse candidate promoted)")
    harm_alpha: float = Field(0.01, gt=0, lt=0.5, description="error rate of a rollback (a healthy one pulled)")
    min_samples: int = Field(100, ge=1, description="per arm and metric, before any decision")
    error_tolerance: float = Field(0.01, ge=0, le=1, description="errors the candidate may add (a share)")
    slow_tolerance: float = Field(0.03, ge=0, le=1, description="calls slower than the latency limit it may add")
    cost_ratio: float | None = Field(1.2, gt=0, description="cost per request budget, times the baseline's")


def _proportion(figures: list[Figures], successes, n) -> list[Arm]:
    return [Arm(int(n(f)), float(successes(f))) for f in figures]


def _costs(figures: list[Figures]) -> list[MeanArm]:
    arms = []
    for f in figures:
        if f.cost_n:
            mean = f.cost_sum / f.cost_n
            arms.append(MeanArm(f.cost_n, mean, max(0.0, f.cost_squares - f.cost_n * mean * mean)))
        else:
            arms.append(MeanArm())
    return arms


def _score_arms(figures: list[Figures], name: str) -> list[Arm]:
    arms = []
    for f in figures:
        total, _, n = f.scores.get(name, (0.0, 0.0, 0.0))
        arms.append(Arm(int(n), float(total)))
    return arms


def _score_mean(figures: Figures, name: str) -> MeanArm:
    total, squares, n = figures.scores.get(name, (0.0, 0.0, 0.0))
    if not n:
        return MeanArm()
    mean = total / n
    return MeanArm(int(n), mean, max(0.0, squares - n * mean * mean))


def judge_step(
    evidence: Evidence,
    base: list[Figures],
    cand: list[Figures],
    latency_limit_ms: float | None,
    exposure: float,
) -> Decision:
    """Advance, roll back or continue, on one (baseline, candidate) pair of figures per step so far."""
    if evidence.primary == "success":
        primary_base = _proportion(base, lambda f: f.requests - f.errors, lambda f: f.requests)
        primary_cand = _proportion(cand, lambda f: f.requests - f.errors, lambda f: f.requests)
    else:
        primary_cand = _score_arms(cand, evidence.primary)
        primary_base = _score_arms(base, evidence.primary)
        if not any(a.n for a in primary_base):
            # pairwise: the candidate's win rate against the baseline, tested against a tie with the scores'
            # own variance (ties make it far below a coin's 0.25: bench/rollout_sim.py, adaptive_paired_var)
            primary_cand = [_score_mean(f, evidence.primary) for f in cand]
            primary_base = [MeanArm(PAIRWISE_N, 0.5, 0.0) for _ in cand]
    guardrails = []
    if evidence.primary != "success":
        errors = (lambda f: f.errors, lambda f: f.requests)
        guardrails.append(
            Guardrail("errors", _proportion(base, *errors), _proportion(cand, *errors), evidence.error_tolerance)
        )
    if latency_limit_ms is not None:
        slow = (lambda f: count_above(f.latency, latency_limit_ms), lambda f: f.latency_n)
        guardrails.append(
            Guardrail(
                f"slower than {latency_limit_ms:.0f} ms",
                _proportion(base, *slow),
                _proportion(cand, *slow),
                evidence.slow_tolerance,
            )
        )
    if evidence.cost_ratio is not None and any(f.cost_n for f in base) and any(f.cost_n for f in cand):
        base_cost = _costs(base)
        scale = max((a.mean for a in base_cost if a.count), default=0.0)
        if scale > 0:
            guardrails.append(
                Guardrail("cost per request", base_cost, _costs(cand), ratio=evidence.cost_ratio, tau=scale * 0.2)
            )
    return decide(
        primary_base,
        primary_cand,
        guardrails,
        margin=evidence.margin,
        alpha=evidence.alpha,
        harm_alpha=evidence.harm_alpha,
        min_samples=evidence.min_samples,
        exposure=exposure,
    )


def summary(decision: Decision) -> dict[str, Any]:
    """What the schedule records and `llmgate status` shows: each metric's interval and samples."""

    def check(c) -> dict[str, Any]:
        # an open end (no data yet) is null: JSON has no infinity
        ends = [end if math.isfinite(end) else None for end in (c.interval.low, c.interval.high)]
        return {"status": c.status, "interval": ends, "detail": c.detail}

    return {
        "action": decision.action,
        "reason": decision.reason,
        "primary": check(decision.primary),
        "guardrails": {c.name: check(c) for c in decision.guardrails},
        "samples": {name: list(counts) for name, counts in decision.samples.items()},
    }
