"""Staged rollouts simulated: today's fixed 30-minute holds against promotion by evidence.

    .venv/bin/python bench/rollout_sim.py                       # 1,000 rollouts per scenario, seed 1
    .venv/bin/python bench/rollout_sim.py --rollouts 200 --seed 7 --sensitivity-scale 0

Writes bench/results/rollout_sim.json, .md and .png (time to decision per policy, and how often
each policy promoted a worse candidate or rolled back a healthy one).

What it shows. Each rollout walks 5 -> 25 -> 50 percent and is decided when it moves to 100%
(promoted: at 100% no baseline traffic is left to compare with) or is rolled back; one still
running at --cap-minutes, or paused, is undecided. Traffic is diurnal, 20-200 requests a minute
(each rollout starts at a random hour) with minute-to-minute bursts; the candidate takes each
request with the step's percent. Per request: an error (1.5% on the baseline), else a judged
answer, good with probability 0.70 (drifting by +-1 point with the hour, for both arms); a
latency, lognormal with median 1.5 s and sigma 0.8 (p95 about 5.6 s); a cost, lognormal with
mean $0.002 and 60% spread. The scenarios set the candidate's true effects.

Policies:
- fixed: today's schedule (plugins/auto_rollback): each step held 30 minutes, then its window's
  checks: inconclusive (paused, waiting for an operator) under 50 candidate calls; rolled back
  when the good-answer rate is below the baseline's minus the margin (point estimates), or a rule
  of the plugin's defaults fails: errors above 2x the baseline's and 1% and significant
  (p < 0.01), p95 above 1.5x the baseline's carried by significantly more than 5% of calls, cost
  above 1.2x; else advanced. (The plugin's separate sliding-window rules are not simulated.)
- fixed_sig: the same, but the good-answer check fails only when the shortfall beyond the margin
  is significant (p < 0.01), like the plugin's other rules: fewer wrong rollbacks, more wrong
  promotions. Supplementary; the required outcome compares adaptive with fixed.
- adaptive: the same steps, checked every minute with evaluators.sequential.decide: rolled back as
  soon as harm is shown, advanced as soon as non-inferiority at the next step's exposure is shown
  (margin 2 points on the good-answer rate; guardrails: error rate within +1 point, share of
  calls slower than the baseline's p95 within +3 points, cost within +20%), after at least 100
  candidate calls at the step. The per-minute decisions are computed here with numpy for speed,
  mirroring decide's arithmetic, and a sample of them is checked against decide itself.

--sensitivity-scale (default 10; 0 skips it) repeats the run at that multiple of the traffic,
with --sensitivity-rollouts each, to show where the evidence, rather than the hold, sets the pace.
The default run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluators.sequential import (  # noqa: E402  (the checkout, not an installed copy)
    ADVANCE,
    CONTINUE,
    ROLLBACK,
    Arm,
    Guardrail,
    MeanArm,
    decide,
    one_sided_level,
)

STEPS = (5.0, 25.0, 50.0)  # then 100: promoted
HOLD_MINUTES = 30
MARGIN = 0.02  # the good-answer rate may be at most 2 points worse
ALPHA, HARM_ALPHA = 0.05, 0.01
MIN_SAMPLES = 100  # per arm and metric, before decide acts
MIN_STEP_SAMPLES = 100  # candidate calls at a step before the adaptive policy leaves it
FIXED_MIN_SAMPLES = 50  # the plugin's default min_samples
ERROR_TOLERANCE = 0.01
SLOW_TOLERANCE = 0.03
COST_BUDGET = 0.2

BASE_GOOD, BASE_ERRORS = 0.70, 0.015
LATENCY_MEDIAN_S, LATENCY_SIGMA = 1.5, 0.8
COST_MEAN, COST_CV = 0.002, 0.6
Z95 = 1.6448536269514722  # the baseline's p95 is its median x exp(sigma x Z95)
Z99 = 2.3263478740408408  # one-sided p < 0.01
SLOW_S = LATENCY_MEDIAN_S * math.exp(LATENCY_SIGMA * Z95)  # the adaptive's threshold: the baseline's p95
P95_LIMIT_S = 1.5 * SLOW_S  # the plugin's p95 rule: 1.5x the baseline's
COST_TAU = 2 * COST_BUDGET * COST_MEAN  # the cost guardrail's mixing scale: twice the budget, in dollars


@dataclass(frozen=True)
class Scenario:
    name: str
    good: float = 0.0  # the candidate's good-answer rate minus the baseline's
    errors: float = 1.0  # multiple of the baseline's error rate
    latency: float = 1.0  # multiple of the baseline's latency
    cost: float = 1.0  # multiple of the baseline's cost
    worse: bool = False  # promoting it is wrong; else rolling it back is

    @property
    def description(self) -> str:
        parts = [
            f"good {self.good * 100:+g} pts" if self.good else "",
            f"errors x{self.errors:g}" if self.errors != 1 else "",
            f"latency x{self.latency:g}" if self.latency != 1 else "",
            f"cost x{self.cost:g}" if self.cost != 1 else "",
        ]
        return ", ".join(p for p in parts if p) or "same as the baseline"


SCENARIOS = (
    Scenario("healthy"),
    Scenario("better", good=0.02),
    Scenario("worse_primary", good=-0.05, worse=True),
    Scenario("errors_2x", errors=2.0, worse=True),
    Scenario("latency_+40%", latency=1.4, worse=True),
    Scenario("cost_+35%", cost=1.35, worse=True),
)
POLICIES = ("fixed", "fixed_sig", "adaptive")
RUNNING, PROMOTED, ROLLED_BACK, PAUSED = 0, 1, 2, 3


def _sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def arm_rates(scenario: Scenario | None) -> dict[str, float]:
    """An arm's per-request probabilities: the baseline's (None), or a scenario's candidate's."""
    s = scenario or Scenario("baseline")
    shift = math.log(s.latency) / LATENCY_SIGMA
    return {
        "good": s.good,
        "errors": BASE_ERRORS * s.errors,
        "slow": _sf(Z95 - shift),
        "slow_limit": _sf(math.log(P95_LIMIT_S / LATENCY_MEDIAN_S) / LATENCY_SIGMA - shift),
        "cost": COST_MEAN * s.cost,
    }


FIELDS = ("req", "err", "ok", "good", "slow", "slow_limit", "cost", "cost2")


class State:
    """Per rollout, per step and per arm: the counts and sums every policy reads."""

    def __init__(self, rollouts: int):
        shape = (rollouts, len(STEPS))
        self.b = {f: np.zeros(shape) for f in FIELDS}
        self.c = {f: np.zeros(shape) for f in FIELDS}
        self.step = np.zeros(rollouts, dtype=int)
        self.status = np.full(rollouts, RUNNING)
        self.decided_at = np.full(rollouts, np.inf)
        self.reason = np.full(rollouts, "", dtype=object)  # what rolled an adaptive rollout back


def simulate_minute(rng, t, idx, phase, share, arms, scale, state: State) -> None:
    """One minute of traffic for the rollouts `idx`, added to their current step's counts."""
    angle = 2 * math.pi * ((t + phase[idx]) / 1440.0)
    rate = scale * (110.0 - 90.0 * np.cos(angle)) * rng.lognormal(-0.03125, 0.25, idx.size)
    total = rng.poisson(rate)
    cand = rng.binomial(total, share)
    good_rate = BASE_GOOD + 0.01 * np.sin(angle)
    steps = state.step[idx]
    for arm, n, rates in (("b", total - cand, arms[0]), ("c", cand, arms[1])):
        counts = getattr(state, arm)
        err = rng.binomial(n, rates["errors"])
        ok = n - err
        good = rng.binomial(ok, np.clip(good_rate + rates["good"], 0, 1))
        slow = rng.binomial(n, rates["slow"])
        slow_limit = rng.binomial(slow, rates["slow_limit"] / rates["slow"])
        sigma = math.sqrt(math.log(1 + COST_CV**2))
        costs = rng.lognormal(math.log(rates["cost"]) - sigma * sigma / 2, sigma, int(n.sum()))
        owner = np.repeat(np.arange(idx.size), n)
        cost = np.bincount(owner, weights=costs, minlength=idx.size)
        cost2 = np.bincount(owner, weights=costs * costs, minlength=idx.size)
        for name, value in (
            ("req", n),
            ("err", err),
            ("ok", ok),
            ("good", good),
            ("slow", slow),
            ("slow_limit", slow_limit),
            ("cost", cost),
            ("cost2", cost2),
        ):
            counts[name][idx, steps] += value


# --- the adaptive policy: evaluators.sequential.decide, vectorised --------------------------------


def half_width(information: np.ndarray, alpha: float, tau: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        x = tau * tau * information
        w = np.sqrt(2 * (1 + x) / (x * information) * np.log(np.sqrt(1 + x) / alpha))
    return np.where(information > 0, w, np.inf)


def _stratified(nb, mb, nc, mc, var_b, var_c, ratio):
    ratio = np.broadcast_to(np.asarray(ratio, dtype=float), nb.shape[:1])[:, None]  # one per rollout
    valid = (nb > 0) & (nc > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(valid, 1 / (var_c[:, None] / nc + ratio * ratio * var_b[:, None] / nb), 0.0)
        diff = np.where(valid, mc - ratio * mb, 0.0)
        information = w.sum(1)
        estimate = np.where(information > 0, (w * diff).sum(1) / information, np.nan)
    return estimate, information


def proportion_cs(nb, sb, nc, sc, alpha, tau, ratio=1.0):
    """decide's interval on a proportion's cand - ratio x base, for many rollouts' strata at once."""
    tb, tc = nb.sum(1), nc.sum(1)
    pooled = (sb.sum(1) + sc.sum(1) + 0.5) / (tb + tc + 1)
    pb, pc = (sb.sum(1) + 0.5) / (tb + 1), (sc.sum(1) + 0.5) / (tc + 1)
    var_b = np.maximum(pb * (1 - pb), pooled * (1 - pooled))
    var_c = np.maximum(pc * (1 - pc), pooled * (1 - pooled))
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate, information = _stratified(nb, sb / nb, nc, sc / nc, var_b, var_c, ratio)
    w = half_width(information, alpha, tau)
    return estimate - w, estimate + w


def mean_cs(nb, s1b, s2b, nc, s1c, s2c, alpha, tau, ratio=1.0):
    """decide's interval on a mean's cand - ratio x base, from counts, sums and sums of squares."""
    tb, tc = nb.sum(1), nc.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        m2b = np.maximum(s2b.sum(1) - s1b.sum(1) ** 2 / tb, 0)
        m2c = np.maximum(s2c.sum(1) - s1c.sum(1) ** 2 / tc, 0)
        pooled = (m2b + m2c) / (tb + tc - 2)
        var_b = np.maximum(m2b / (tb - 1), pooled)
        var_c = np.maximum(m2c / (tc - 1), pooled)
        estimate, information = _stratified(nb, s1b / nb, nc, s1c / nc, var_b, var_c, ratio)
    information = np.where((tb >= 2) & (tc >= 2), information, 0.0)
    w = half_width(information, alpha, tau)
    return estimate - w, estimate + w


def adaptive_actions(state: State, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """decide's action for each rollout in idx (0 continue, 1 advance, 2 rollback), and the harm's name."""
    b = {f: v[idx] for f, v in state.b.items()}
    c = {f: v[idx] for f, v in state.c.items()}
    exposure = np.array([*(s / 100 for s in STEPS[1:]), 1.0])[state.step[idx]]
    level, harm = one_sided_level(ALPHA), one_sided_level(HARM_ALPHA / 4)
    enough = np.minimum(b["ok"].sum(1), c["ok"].sum(1)) >= MIN_SAMPLES
    enough &= np.minimum(b["req"].sum(1), c["req"].sum(1)) >= MIN_SAMPLES

    low, _ = proportion_cs(b["ok"], b["good"], c["ok"], c["good"], level, 2 * MARGIN)
    _, high_harm = proportion_cs(b["ok"], b["good"], c["ok"], c["good"], harm, 2 * MARGIN)
    harmed = high_harm < -MARGIN
    reason = np.where(harmed, "primary", "")
    clear = low > -MARGIN / exposure
    for count, tolerance in (("err", ERROR_TOLERANCE), ("slow", SLOW_TOLERANCE)):
        _, high = proportion_cs(b["req"], b[count], c["req"], c[count], level, 2 * tolerance)
        low_harm, _ = proportion_cs(b["req"], b[count], c["req"], c[count], harm, 2 * tolerance)
        reason = np.where(~harmed & (low_harm > 0), {"err": "error_rate", "slow": "slow_share"}[count], reason)
        harmed |= low_harm > 0
        clear &= high <= tolerance / exposure
    cost = (b["req"], b["cost"], b["cost2"], c["req"], c["cost"], c["cost2"])
    low_harm, _ = mean_cs(*cost, harm, COST_TAU, ratio=1 + COST_BUDGET)
    reason = np.where(~harmed & (low_harm > 0), "cost", reason)
    harmed |= low_harm > 0
    clear &= mean_cs(*cost, level, COST_TAU, ratio=1 + COST_BUDGET / exposure)[1] <= 0
    return np.where(~enough, 0, np.where(harmed, 2, np.where(clear, 1, 0))), reason


def decide_directly(state: State, r: int) -> str:
    """The same state through evaluators.sequential.decide itself: the reference the numpy mirrors."""
    b, c = ({f: v[r] for f, v in arm.items()} for arm in (state.b, state.c))
    k = len(STEPS)

    def arms(d, n, s):
        return [Arm(int(d[n][i]), float(d[s][i])) for i in range(k)]

    def means(d):
        out = []
        for i in range(k):
            n = int(d["req"][i])
            mean = d["cost"][i] / n if n else 0.0
            out.append(MeanArm(n, mean, max(d["cost2"][i] - d["cost"][i] * mean, 0.0) if n else 0.0))
        return out

    guardrails = [
        Guardrail("error_rate", arms(b, "req", "err"), arms(c, "req", "err"), tolerance=ERROR_TOLERANCE),
        Guardrail("slow_share", arms(b, "req", "slow"), arms(c, "req", "slow"), tolerance=SLOW_TOLERANCE),
        Guardrail("cost", means(b), means(c), ratio=1 + COST_BUDGET, tau=COST_TAU),
    ]
    exposure = ([s / 100 for s in STEPS[1:]] + [1.0])[state.step[r]]
    return decide(
        arms(b, "ok", "good"),
        arms(c, "ok", "good"),
        guardrails,
        margin=MARGIN,
        alpha=ALPHA,
        harm_alpha=HARM_ALPHA,
        min_samples=MIN_SAMPLES,
        exposure=exposure,
    ).action


# --- the fixed schedule: the plugin's checks at the end of each hold --------------------------------


def fixed_actions(state: State, idx: np.ndarray, significant: bool) -> np.ndarray:
    """At a hold's end, on that step's window: 0 paused (inconclusive), 1 advance, 2 rollback.

    significant: the good-answer check fails only when the shortfall beyond the margin is
    significant (one-sided p < 0.01), as the plugin's other rules do, instead of on the point estimates."""
    k = state.step[idx]
    b = {f: v[idx, k] for f, v in state.b.items()}
    c = {f: v[idx, k] for f, v in state.c.items()}
    with np.errstate(divide="ignore", invalid="ignore"):
        conclusive = (c["req"] >= FIXED_MIN_SAMPLES) & (c["ok"] >= FIXED_MIN_SAMPLES)
        pc, pb = c["good"] / c["ok"], b["good"] / b["ok"]
        primary = pc < pb - MARGIN
        if significant:
            se_good = np.sqrt(pc * (1 - pc) / c["ok"] + pb * (1 - pb) / b["ok"])
            primary &= (se_good > 0) & ((pc - pb + MARGIN) / se_good < -Z99)
        rc, rb = c["err"] / c["req"], b["err"] / b["req"]
        pooled = (c["err"] + b["err"]) / (c["req"] + b["req"])
        se = np.sqrt(pooled * (1 - pooled) * (1 / c["req"] + 1 / b["req"]))
        errors = (rc > 0.01) & (rc > 2 * rb) & (se > 0) & ((rc - rb) / se > Z99)
        share = c["slow_limit"] / c["req"]
        p95 = (share > 0.05) & ((share - 0.05) / np.sqrt(0.05 * 0.95 / c["req"]) > Z99)
        cost = c["cost"] / c["req"] > 1.2 * b["cost"] / b["req"]
    failed = conclusive & (primary | errors | p95 | cost)
    return np.where(failed, 2, np.where(conclusive, 1, 0))


# --- running -------------------------------------------------------------------------------------------


def run(scenario: Scenario, policy: str, rollouts: int, cap: int, scale: float, seed: int, checks: list) -> dict:
    rng = np.random.default_rng(seed)
    state = State(rollouts)
    phase = rng.uniform(0, 1440, rollouts)
    arms = (arm_rates(None), arm_rates(scenario))
    shares = np.array(STEPS) / 100
    for t in range(cap):
        idx = np.flatnonzero(state.status == RUNNING)
        if not idx.size:
            break
        simulate_minute(rng, t, idx, phase, shares[state.step[idx]], arms, scale, state)
        now = t + 1
        if policy == "adaptive":
            actions, reason = adaptive_actions(state, idx)
            state.reason[idx[actions == 2]] = reason[actions == 2]
            if t % 7 == 0:  # the reference check, through decide itself: one rollout of each action
                for action in (0, 1, 2):
                    for j in np.flatnonzero(actions == action)[:1]:
                        expected = {0: CONTINUE, 1: ADVANCE, 2: ROLLBACK}[action]
                        checks.append((expected, decide_directly(state, int(idx[j])) == expected))
            steps_seen = state.c["req"][idx, state.step[idx]]
            advance = (actions == 1) & (steps_seen >= MIN_STEP_SAMPLES)
        else:
            if now % HOLD_MINUTES:
                continue
            actions = fixed_actions(state, idx, significant=policy == "fixed_sig")
            advance = actions == 1
            paused = idx[actions == 0]
            state.status[paused] = PAUSED
        back = idx[actions == 2]
        state.status[back], state.decided_at[back] = ROLLED_BACK, now
        up = idx[advance]
        last = up[state.step[up] == len(STEPS) - 1]
        state.status[last], state.decided_at[last] = PROMOTED, now
        moving = up[state.step[up] < len(STEPS) - 1]
        state.step[moving] += 1
    return summarise(scenario, state, cap)


def _quantile(times: np.ndarray, q: float) -> float | None:
    """A quantile over every rollout, the undecided counted as later than the cap (None: past it)."""
    value = float(np.quantile(times, q, method="inverted_cdf"))
    return None if math.isinf(value) else value


def summarise(scenario: Scenario, state: State, cap: int) -> dict:
    n = state.status.size
    promoted = float(np.mean(state.status == PROMOTED))
    rolled_back = float(np.mean(state.status == ROLLED_BACK))
    decided = state.decided_at[np.isfinite(state.decided_at)]
    return {
        "rollouts": n,
        "promoted": promoted,
        "rolled_back": rolled_back,
        "paused": float(np.mean(state.status == PAUSED)),
        "undecided": float(np.mean((state.status == RUNNING) | (state.status == PAUSED))),
        "wrong_promotion": promoted if scenario.worse else None,
        "wrong_rollback": None if scenario.worse else rolled_back,
        "median_minutes": _quantile(state.decided_at, 0.5),
        "p90_minutes": _quantile(state.decided_at, 0.9),
        "median_minutes_decided": float(np.median(decided)) if decided.size else None,
        "rollback_reasons": {
            k: int(v) for k, v in zip(*np.unique(state.reason[state.reason != ""], return_counts=True))
        },
        "candidate_requests_median": float(np.median(state.c["req"].sum(1))),
        "quantiles_minutes": {f"p{q}": _quantile(state.decided_at, q / 100) for q in (10, 25, 50, 75, 90)},
        "times": [None if math.isinf(x) else int(x) for x in state.decided_at],  # for the plot, not the JSON
    }


def run_all(rollouts: int, cap: int, scale: float, seed: int) -> tuple[dict, dict]:
    results: dict = {}
    checks: list[bool] = []
    for i, scenario in enumerate(SCENARIOS):
        results[scenario.name] = {"description": scenario.description, "worse": scenario.worse}
        for j, policy in enumerate(POLICIES):
            started = time.perf_counter()
            figures = run(scenario, policy, rollouts, cap, scale, seed * 1000 + i * 10 + j, checks)
            results[scenario.name][policy] = figures
            print(
                f"  x{scale:g} {scenario.name:>14} {policy:>8}: promoted {figures['promoted']:.1%}, "
                f"rolled back {figures['rolled_back']:.1%}, undecided {figures['undecided']:.1%}, "
                f"median {_minutes(figures['median_minutes'], cap)} min ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    compared = {a: sum(1 for e, _ in checks if e == a) for a in (CONTINUE, ADVANCE, ROLLBACK)}
    return results, {"compared": compared, "mismatches": sum(1 for _, same in checks if not same)}


def outcome(results: dict) -> dict:
    """The required outcome, per scenario: the adaptive policy's error rates and its median time."""
    verdict: dict = {"wrong_promotion_at_most_5pct": {}, "wrong_rollback_at_most_1pct": {}, "faster_median": {}}
    for name, figures in results.items():
        adaptive, fixed = figures["adaptive"], figures["fixed"]
        if figures["worse"]:
            verdict["wrong_promotion_at_most_5pct"][name] = adaptive["wrong_promotion"] <= 0.05
        else:
            verdict["wrong_rollback_at_most_1pct"][name] = adaptive["wrong_rollback"] <= 0.01
        a, f = adaptive["median_minutes"], fixed["median_minutes"]
        verdict["faster_median"][name] = a is not None and (f is None or a < f)
    verdict["met"] = all(all(v.values()) for v in verdict.values())
    return verdict


# --- reporting -------------------------------------------------------------------------------------------


def _minutes(value: float | None, cap: int) -> str:
    return f"> {cap}" if value is None else f"{value:g}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def table(results: dict, cap: int) -> list[str]:
    lines = [
        "| scenario | candidate | policy | wrong promotion | wrong rollback | promoted | rolled back | "
        "undecided (paused) | median min | p90 min | candidate calls (median) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, figures in results.items():
        for policy in POLICIES:
            f = figures[policy]
            lines.append(
                f"| {name} | {figures['description']} | {policy} | {_share(f['wrong_promotion'])} | "
                f"{_share(f['wrong_rollback'])} | {f['promoted']:.1%} | {f['rolled_back']:.1%} | "
                f"{f['undecided']:.1%} ({f['paused']:.1%}) | {_minutes(f['median_minutes'], cap)} | "
                f"{_minutes(f['p90_minutes'], cap)} | {f['candidate_requests_median']:.0f} |"
            )
    return lines


def _verdict_lines(verdict: dict) -> list[str]:
    names = {
        "wrong_promotion_at_most_5pct": "adaptive wrongly promotes a worse candidate at most 5% of the time",
        "wrong_rollback_at_most_1pct": "adaptive rolls back a healthy candidate at most 1% of the time",
        "faster_median": "adaptive decides faster than the fixed schedule at the median",
    }
    lines = []
    for key, label in names.items():
        per = verdict[key]
        missed = [k for k, ok in per.items() if not ok]
        lines.append(
            f"- {label}: **{'met' if not missed else 'not met'}**"
            + (f" (not in: {', '.join(missed)})" if missed else "")
        )
    return lines


def _counts(compared: dict) -> str:
    return ", ".join(f"{n} {action}" for action, n in compared.items())


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k != "times"}
    return value


def evidence_minutes(scale: float = 1.0) -> tuple[float, float]:
    """(judged answers an arm, minutes) an equal candidate needs for the final claim, at 50/50 from the start.

    The information where the advance's boundary (tau = 2 x margin) is down to the margin, at the
    mean traffic (110 a minute x scale): a floor under any valid policy's time to promote."""
    level, low, high = one_sided_level(ALPHA), 1.0, 1e9
    while high / low > 1.0001:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if half_width(np.array([mid]), level, 2 * MARGIN)[0] > MARGIN else (low, mid)
    variance = BASE_GOOD * (1 - BASE_GOOD)
    per_arm = 2 * variance * high  # Var(D) = 2 variance / n at 50/50
    return per_arm, 2 * per_arm / (1 - BASE_ERRORS) / (110 * scale)


def why(results: dict) -> str:
    """The paragraph under the table: where the time goes, from this run's figures."""
    per_arm, minutes = evidence_minutes()
    healthy, worse, slow = results["healthy"], results["worse_primary"], results["latency_+40%"]
    return (
        f"Why the medians are what they are. The final claim, not worse by {MARGIN * 100:g} points at level "
        f"{ALPHA} however often one looks, needs about {per_arm:,.0f} judged answers an arm for an equal candidate: "
        f"at the mean 110 requests a minute, {minutes:.0f} minutes even at 50/50 from the first minute, and the 5% "
        "and 25% steps come first. The fixed schedule decides within 90 minutes because its checks read point "
        "estimates over each 30-minute window, whatever they hold: it rolled back "
        f"{healthy['fixed']['wrong_rollback']:.0%} of the healthy candidates, and the variant with significance "
        f"(fixed_sig) promoted {worse['fixed_sig']['wrong_promotion']:.0%} of the 5-points-worse ones and "
        f"{slow['fixed_sig']['wrong_promotion']:.0%} of the 40%-slower ones instead (a p95 rule at 1.5x does not "
        "see +40%). Rollouts that start at night pause at the 5% step with under 50 candidate calls "
        f"({healthy['fixed']['paused']:.0%} of them). Being faster than fixed and valid at once needs more "
        "traffic (the sensitivity table) or a wider margin."
    )


def markdown(report: dict) -> str:
    meta, cap = report["meta"], report["meta"]["cap_minutes"]
    lines = [
        "# Staged rollouts: fixed holds against promotion by evidence",
        "",
        f"{meta['rollouts']} rollouts per scenario and policy, seed {meta['seed']}, traffic 20-200 requests a "
        f"minute (diurnal), time cap {cap} min; {meta['finished']}, {meta['seconds']:.0f} s on {meta['cpus']} CPUs. "
        "`bench/rollout_sim.py` says how it is simulated.",
        "",
        f"A rollout is decided when it moves to 100% (promoted) or is rolled back. Margin {MARGIN * 100:g} points on "
        f"the good-answer rate (baseline {BASE_GOOD:.0%}); adaptive: alpha {ALPHA}, harm alpha {HARM_ALPHA}, "
        "guardrails error rate +1 point, share slower than the baseline's p95 +3 points, cost +20%. Median and p90 "
        "count every rollout, an undecided one as later than the cap.",
        "",
        *table(report["results"], cap),
        "",
        "Required outcome:",
        "",
        *_verdict_lines(report["outcome"]),
        f"- overall: **{'met' if report['outcome']['met'] else 'not met'}**",
        "",
        why(report["results"]),
        "",
        f"Reference check: sampled per-minute decisions ({_counts(report['reference']['compared'])}, both runs) "
        f"recomputed with evaluators.sequential.decide; {report['reference']['mismatches']} disagree with the "
        "vectorised copy.",
    ]
    if report.get("sensitivity"):
        s = report["sensitivity"]
        lines += [
            "",
            f"## Sensitivity: traffic x{s['scale']:g} ({s['rollouts']} rollouts per scenario)",
            "",
            *table(s["results"], cap),
            "",
            *_verdict_lines(s["outcome"]),
        ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Per scenario, the share of rollouts decided by each minute; then wrong decisions and outcomes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, cap = report["results"], report["meta"]["cap_minutes"]
    names = list(results)
    colours = {"fixed": "tab:blue", "fixed_sig": "tab:orange", "adaptive": "tab:green"}
    fig = plt.figure(figsize=(18, 8.5))
    grid = fig.add_gridspec(2, 4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // 3, i % 3])
        for policy in POLICIES:
            times = np.sort([cap + 1 if t is None else t for t in results[name][policy]["times"]])
            ax.step(times, np.arange(1, times.size + 1) / times.size, where="post", color=colours[policy], label=policy)
        ax.set_xlim(0, cap)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: {results[name]['description']}", fontsize=10)
        ax.set_xlabel("minutes since the rollout began", fontsize=8)
        ax.set_ylabel("share decided", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, loc="lower right")

    ax = fig.add_subplot(grid[0, 3])
    x = np.arange(len(names))
    for j, policy in enumerate(POLICIES):
        f = [results[n][policy] for n in names]
        rates = [r["wrong_promotion"] if results[n]["worse"] else r["wrong_rollback"] for n, r in zip(names, f)]
        ax.bar(x + (j - 1) * 0.27, rates, 0.27, color=colours[policy], label=policy)
    ax.axhline(0.05, color="grey", ls=":", lw=1, label="5% (promotion)")
    ax.axhline(0.01, color="grey", ls="-.", lw=1, label="1% (rollback)")
    ax.set_xticks(x, [f"{n} ({'prom.' if results[n]['worse'] else 'rollb.'})" for n in names], fontsize=7, rotation=30)
    ax.set_ylabel("share of rollouts", fontsize=8)
    ax.set_title("Wrong promotions and wrong rollbacks", fontsize=10)
    ax.legend(fontsize=7)

    ax = fig.add_subplot(grid[1, 3])
    bottoms = np.zeros(len(names) * len(POLICIES))
    for key, colour in (("promoted", "tab:green"), ("rolled_back", "tab:red"), ("undecided", "tab:grey")):
        values = np.array([results[n][p][key] for n in names for p in POLICIES])
        ax.bar(np.arange(values.size), values, bottom=bottoms, color=colour, label=key.replace("_", " "))
        bottoms += values
    labels = [f"{n} {p}" for n in names for p in POLICIES]
    ax.set_xticks(np.arange(len(labels)), labels, fontsize=6, rotation=90)
    ax.set_title("Outcomes", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"Staged rollouts, {report['meta']['rollouts']} per scenario and policy: time to decision (undecided at "
        f"{cap} min stay below 1)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts per scenario and policy (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--cap-minutes", type=int, default=720, help="undecided after this long (default 720)")
    parser.add_argument(
        "--sensitivity-scale", type=float, default=10.0, help="also run at this multiple of the traffic (0: skip)"
    )
    parser.add_argument(
        "--sensitivity-rollouts", type=int, default=1000, help="rollouts per scenario there (default 1000)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results" / "rollout_sim.json",
        help="the JSON to write; the Markdown and PNG go beside it",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results, reference = run_all(args.rollouts, args.cap_minutes, 1.0, args.seed)
    report: dict = {
        "meta": {
            "rollouts": args.rollouts,
            "seed": args.seed,
            "cap_minutes": args.cap_minutes,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "parameters": {
            "steps": list(STEPS),
            "hold_minutes": HOLD_MINUTES,
            "margin": MARGIN,
            "alpha": ALPHA,
            "harm_alpha": HARM_ALPHA,
            "min_samples": MIN_SAMPLES,
            "min_step_samples": MIN_STEP_SAMPLES,
            "error_tolerance": ERROR_TOLERANCE,
            "slow_share_tolerance": SLOW_TOLERANCE,
            "slow_threshold_s": round(SLOW_S, 3),
            "cost_budget": COST_BUDGET,
        },
        "results": results,
        "outcome": outcome(results),
        "reference": reference,
    }
    if args.sensitivity_scale:
        more, checked = run_all(args.sensitivity_rollouts, args.cap_minutes, args.sensitivity_scale, args.seed + 1)
        report["sensitivity"] = {
            "scale": args.sensitivity_scale,
            "rollouts": args.sensitivity_rollouts,
            "results": more,
            "outcome": outcome(more),
        }
        reference["compared"] = {a: n + checked["compared"][a] for a, n in reference["compared"].items()}
        reference["mismatches"] += checked["mismatches"]
    report["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    report["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(_without_times(report), indent=1) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    plot(report, args.output.with_suffix(".png"))
    print(
        f"wrote {args.output} (.md, .png) in {report['meta']['seconds']:.0f} s; required outcome "
        f"{'met' if report['outcome']['met'] else 'not met'}; reference mismatches {reference['mismatches']}",
        file=sys.stderr,
    )
    return 1 if reference["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
