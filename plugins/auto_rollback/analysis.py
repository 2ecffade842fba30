"""What a candidate's figures mean: the rollback rules, their settings, and the verdict of an analysis.

Pure functions of two variants' window figures, after Argo Rollouts' analysis runs: each rule
gives a Check (failed, passed, or None when there is too little data, which never fails), and an
analysis is Failed if any check failed, Inconclusive if any lacked data, else Successful. An
error-rate rise must also be significant (a one-sided two-proportion test) and a p95 rise must be
carried by significantly more than 5% of the candidate's calls, so a few stray errors or a noisy
tail do not pull a healthy candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .windows import Figures, count_above, mean_below_p, rate_above_p, two_proportion_p

SUCCESSFUL, FAILED, INCONCLUSIVE = "Successful", "Failed", "Inconclusive"


# --- settings ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorRateRule(_Strict):
    ratio: float = Field(2.0, gt=0, description="fails above this multiple of the baseline's error rate")
    absolute: float = Field(0.01, ge=0, le=1, description="and above this error rate")
    alpha: float = Field(0.01, gt=0, lt=1, description="and only when the rise is significant at this level")


class LatencyRule(_Strict):
    ratio: float | None = Field(1.5, gt=0, description="fails when p95 is above this multiple of the baseline's")
    max_ms: float | None = Field(None, gt=0, description="or above this many milliseconds")
    alpha: float = Field(
        0.01, gt=0, lt=1, description="and the share of calls above the limit is significantly over 5%"
    )


class ComplaintRule(_Strict):
    ratio: float = Field(2.0, gt=0, description="fails above this multiple of the baseline's complaint rate")
    alpha: float = Field(0.01, gt=0, lt=1, description="and only when the rise is significant at this level")
    min_samples: int = Field(20, ge=1, description="ratings the candidate needs (feedback is sparse)")


class CostRule(_Strict):
    ratio: float | None = Field(1.2, gt=0, description="fails above this multiple of the baseline's cost per request")
    max_usd: float | None = Field(None, gt=0, description="or above this budget per request")


class ScoreRule(_Strict):
    floor: float = Field(description="fails when the candidate's mean score is significantly below this")
    alpha: float = Field(0.01, gt=0, lt=1)
    min_samples: int | None = Field(None, ge=1, description="reports needed (default: the policy's min_samples)")


class Rules(_Strict):
    """Each rule may be switched off with null; scores are higher-is-better, by the name they are reported under."""

    error_rate: ErrorRateRule | None = ErrorRateRule()
    p95_latency: LatencyRule | None = LatencyRule()
    p95_ttft: LatencyRule | None = Field(
        LatencyRule(), description="time to first token of streamed answers, as p95_latency"
    )
    complaints: ComplaintRule | None = Field(
        ComplaintRule(),
        description="negative feedback (the feedback plugin's `complaint` score) against the baseline's",
    )
    cost_per_request: CostRule | None = CostRule()
    scores: dict[str, ScoreRule] = {"judge_win_rate": ScoreRule(floor=0.4)}


class Policy(_Strict):
    """What a route's candidates are judged by."""

    window_seconds: float = Field(300, gt=0, description="the sliding window the rules look at")
    min_samples: int = Field(50, ge=1, description="per variant, before a rule may fail")
    failure_limit: int = Field(2, ge=1, description="failing evaluations in a row before a rule fires")
    rules: Rules = Rules()


class Settings(Policy):
    interval_seconds: float = Field(5, gt=0, description="how often the leader evaluates")
    flush_seconds: float = Field(0.25, gt=0, description="how often a replica sends its counts to Redis")
    routes: dict[str, dict[str, Any]] = Field({}, description="route -> overrides of the policy's fields")

    @model_validator(mode="after")
    def _check_overrides(self) -> "Settings":
        for route in self.routes:
            try:
                self.policy(route)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"routes.{route}: {problems}") from None
        return self

    def policy(self, route: str) -> Policy:
        base = self.model_dump(include=set(Policy.model_fields))
        return Policy.model_validate(_merge(base, self.routes.get(route, {})))


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- analysis: pure functions of two variants' figures --------------------------------------------


@dataclass
class Check:
    rule: str
    failed: bool | None  # None: too little data to judge, which never fails
    detail: str


@dataclass
class Analysis:
    outcome: str
    checks: list[Check]
    candidate: Figures
    baseline: Figures

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def figures(self, **extra: Any) -> dict[str, Any]:
        """What an event records: both variants' figures and each rule's verdict."""
        return {
            "candidate": self.candidate.summary(),
            "baseline": self.baseline.summary(),
            "checks": {c.rule: {"failed": c.failed, "detail": c.detail} for c in self.checks},
            **extra,
        }

    def reason(self) -> str:
        relevant = self.failed if self.outcome == FAILED else [c for c in self.checks if c.failed is None][:1]
        return "; ".join(f"{c.rule}: {c.detail}" for c in relevant) or self.outcome


def _error_rate(rule: ErrorRateRule, cand: Figures, base: Figures, min_samples: int) -> Check:
    if cand.requests < min_samples:
        return Check("error_rate", None, f"{cand.requests} candidate calls, fewer than {min_samples}")
    rate = cand.error_rate
    if base.requests >= min_samples:
        p = two_proportion_p(cand.errors, cand.requests, base.errors, base.requests)
        failed = rate > rule.absolute and rate > rule.ratio * base.error_rate and p < rule.alpha
        return Check(
            "error_rate",
            failed,
            f"{rate:.2%} vs baseline {base.error_rate:.2%} (limit: above "
            f"{rule.ratio:g}x and {rule.absolute:.2%}, p={p:.2g})",
        )
    p = rate_above_p(cand.errors, cand.requests, rule.absolute)  # no baseline to compare: the absolute limit
    return Check(
        "error_rate",
        rate > rule.absolute and p < rule.alpha,
        f"{rate:.2%} vs limit {rule.absolute:.2%} (baseline has {base.requests} calls; p={p:.2g})",
    )


def _p95_latency(rule: LatencyRule, cand: Figures, base: Figures, min_samples: int, ttft: bool = False) -> Check:
    name, what = ("p95_ttft", "streamed candidate calls") if ttft else ("p95_latency", "timed candidate calls")
    n, base_n = (cand.ttft_n, base.ttft_n) if ttft else (cand.latency_n, base.latency_n)
    if n < min_samples:
        return Check(name, None, f"{n} {what}, fewer than {min_samples}")
    (cand_p95, cand_hist), base_p95 = (
        ((cand.p95_ttft_ms, cand.ttft), base.p95_ttft_ms) if ttft else ((cand.p95_ms, cand.latency), base.p95_ms)
    )
    limits = []
    if rule.ratio is not None and base_n >= min_samples:
        limits.append((rule.ratio * base_p95, f"{rule.ratio:g}x baseline {base_p95:.0f} ms"))
    if rule.max_ms is not None:
        limits.append((rule.max_ms, f"{rule.max_ms:g} ms"))
    if not limits:
        return Check(name, None, f"baseline has {base_n} {what.split()[0]} calls, fewer than {min_samples}")
    verdicts = []
    for limit, label in limits:
        # Under the limit, at most 5% of calls would exceed it: test that the candidate's share is higher.
        p = rate_above_p(count_above(cand_hist, limit), n, 0.05)
        verdicts.append((cand_p95 > limit and p < rule.alpha, f"p95 {cand_p95:.0f} ms vs limit {label} (p={p:.2g})"))
    failing = [d for bad, d in verdicts if bad]
    return Check(name, bool(failing), "; ".join(failing or [d for _, d in verdicts]))


def _complaints(rule: ComplaintRule, cand: Figures, base: Figures) -> Check:
    """The playbook's "complaints at twice the baseline's": the share of ratings that are complaints."""
    total, _, n = cand.scores.get("complaint", (0.0, 0.0, 0.0))
    base_total, _, base_n = base.scores.get("complaint", (0.0, 0.0, 0.0))
    if n < rule.min_samples or base_n < rule.min_samples:
        return Check(
            "complaints", None, f"{int(n)} candidate and {int(base_n)} baseline ratings, fewer than {rule.min_samples}"
        )
    rate, base_rate = total / n, base_total / base_n
    p = two_proportion_p(total, n, base_total, base_n)
    return Check(
        "complaints",
        rate > rule.ratio * base_rate and p < rule.alpha,
        f"{rate:.1%} of {int(n)} ratings vs baseline {base_rate:.1%} of {int(base_n)} (limit: above {rule.ratio:g}x, "
        f"p={p:.2g})",
    )


def _cost(rule: CostRule, cand: Figures, base: Figures, min_samples: int) -> Check:
    if cand.cost_n < min_samples:
        return Check("cost_per_request", None, f"{cand.cost_n} priced candidate calls, fewer than {min_samples}")
    cost, limits = cand.cost_per_request, []
    if rule.ratio is not None and base.cost_n >= min_samples:
        limits.append((rule.ratio * base.cost_per_request, f"{rule.ratio:g}x baseline ${base.cost_per_request:.6f}"))
    if rule.max_usd is not None:
        limits.append((rule.max_usd, f"budget ${rule.max_usd:g}"))
    if not limits:
        return Check("cost_per_request", None, f"baseline has {base.cost_n} priced calls, fewer than {min_samples}")
    over = [label for limit, label in limits if cost > limit]
    return Check(
        "cost_per_request",
        bool(over),
        f"${cost:.6f} per request vs " + (", ".join(over) if over else ", ".join(label for _, label in limits)),
    )


def _score(name: str, rule: ScoreRule, cand: Figures, min_samples: int) -> Check:
    needed = rule.min_samples or min_samples
    found = cand.score(name)
    if found is None or found[2] < needed:
        return Check(f"score:{name}", None, f"{found[2] if found else 0} reports, fewer than {needed}")
    mean, sd, n = found
    p = mean_below_p(mean, sd, n, rule.floor)
    return Check(
        f"score:{name}",
        mean < rule.floor and p < rule.alpha,
        f"mean {mean:.3f} over {n} reports vs floor {rule.floor:g} (p={p:.2g})",
    )


def analyse(cand: Figures, base: Figures, policy: Policy) -> Analysis:
    """Failed when any rule fails; else Inconclusive while the candidate has too few calls; else Successful."""
    rules, n = policy.rules, policy.min_samples
    checks = []
    if rules.error_rate is not None:
        checks.append(_error_rate(rules.error_rate, cand, base, n))
    if rules.p95_latency is not None:
        checks.append(_p95_latency(rules.p95_latency, cand, base, n))
    if rules.p95_ttft is not None:
        checks.append(_p95_latency(rules.p95_ttft, cand, base, n, ttft=True))
    if rules.complaints is not None:
        checks.append(_complaints(rules.complaints, cand, base))
    if rules.cost_per_request is not None:
        checks.append(_cost(rules.cost_per_request, cand, base, n))
    checks += [_score(name, rule, cand, n) for name, rule in sorted(rules.scores.items())]
    if any(c.failed for c in checks):
        outcome = FAILED
    elif cand.requests < n:
        outcome = INCONCLUSIVE
        checks.insert(0, Check("samples", None, f"{cand.requests} candidate calls, fewer than min_samples {n}"))
    else:
        outcome = SUCCESSFUL
    return Analysis(outcome, checks, cand, base)
