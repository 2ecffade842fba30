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
- adaptive_paired: the same, but the primary is a pairwise judge's score, as the gateway's
  `judge_win_rate` is: a share of the candidate's answered calls (--judge-share, default 100%;
  --judge-share-alt 20% is reported too) is also answered by the baseline (a shadow call, itself
  an error 1.5% of the time: then no verdict) and the judge scores the candidate's answer 1 (win),
  0.5 (tie) or 0 (loss). decide tests the score against a known 0.5, with the baseline passed as
  Arm(10**12, 0.5 x 10**12) per step (plugins/auto_rollback/evidence.py's first form): decide then
  treats the score as a proportion, variance p (1 - p) = 0.25 whatever the ties.
- adaptive_paired_var: the same verdicts passed as MeanArm (count, mean, M2 of the 0 / 0.5 / 1
  scores) against MeanArm(10**12, 0.5, 0): the scores' own variance, (1 - ties) / 4, as
  plugins/auto_rollback/evidence.py now passes a pairwise score.

The judge's verdicts, mapped from the scenarios' good-answer rates. Each answer is good or not,
as in the other policies (the candidate's graded answers are the very ones judged); on one
request the baseline's answer is good with its rate p_b (0.70 with the hour's drift) and the
candidate's with p_c = p_b + the scenario's effect. The judge prefers the good answer when
exactly one is good and calls a tie when both have the same grade; no judge error is modelled (a
judge that errs shrinks the difference it sees, which would only slow the paired policies). So a
pair's score is 0.5 + (g_c - g_b) / 2, its mean 0.5 + (p_c - p_b) / 2 exactly: a candidate 5
points worse has a win rate of 0.475 (wins 18.5%, losses 23.5%), 2 points better 0.51, and the
practical margin of the other policies, 2 points of good-answer rate, is a win rate at least
0.49 (PAIRED_MARGIN 0.01; each step's margin / exposure as before). The two answers to one request
share its difficulty: a covariance c between the grades, one value for every scenario, set so
an equal candidate ties --judge-ties of the time (default 60%: c = 0.01; independent answers
tie 58%), with 20% wins and 20% losses: the score's variance 0.10. c enters the 2 x 2 table
(both good p_b p_c + c, candidate only p_c (1 - p_b) - c, baseline only p_b (1 - p_c) - c) and
leaves both arms' rates as they are; the candidate's grade is drawn first (it is its graded
answer), the baseline's given it. Nothing here is tuned to a result: the tie rate is the one
assumption, and a higher one (answers more alike) is what would make pairing pay.

--sensitivity-scale (default 10; 0 skips it) repeats the run at that multiple of the traffic,
with --sensitivity-rollouts each, to show where the evidence, rather than the hold, sets the pace.
The default run takes a few minutes on 2 cores.
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

# The pairwise judge (the adaptive_paired policies; see the module's docstring for the mapping).
JUDGE_SHARE = 1.0  # share of the candidate's answered calls that are judged against the baseline's answer
JUDGE_SHARE_ALT = 0.2  # also reported
JUDGE_TIES = 0.60  # tie rate for a candidate equal to the baseline (independent answers would give 0.58)
PAIRED_MARGIN = MARGIN / 2  # win rate at least 0.5 - 0.01: the same 2 points on the good-answer rate
PAIRWISE_N = 10**12  # the known baseline of a pairwise score (plugins/auto_rollback/evidence.py's PAIRWISE_N)


def judge_covariance(ties: float) -> float:
    """Cov(baseline good, candidate good) on one request that gives `ties` for an equal candidate at 70%.

    Ties are the pairs of the same grade: p^2 + (1 - p)^2 + 2 cov."""
    independent = BASE_GOOD**2 + (1 - BASE_GOOD) ** 2
    cov = (ties - independent) / 2
    limit = BASE_GOOD * (1 - BASE_GOOD) - 0.05  # keep every cell of the 2 x 2 table positive in every scenario
    if not -limit < cov < limit:
        raise ValueError(f"a tie rate of {ties} is out of reach at a {BASE_GOOD:.0%} good-answer rate")
    return cov


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
POLICIES = ("fixed", "fixed_sig", "adaptive", "adaptive_paired", "adaptive_paired_var")
ADAPTIVE = ("adaptive", "adaptive_paired", "adaptive_paired_var")
PAIRED = ("adaptive_paired", "adaptive_paired_var")
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


FIELDS = ("req", "err", "ok", "good", "slow", "slow_limit", "cost", "cost2", "pairs", "score", "score2")
# pairs: judged (candidate, baseline) answer pairs; score: wins + ties / 2; score2: wins + ties / 4 (squares)


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


def simulate_minute(rng, t, idx, phase, share, arms, scale, state: State, judge: tuple | None = None) -> None:
    """One minute of traffic for the rollouts `idx`, added to their current step's counts.

    judge: (share judged, covariance of the two grades on one request) for the paired policies,
    whose judge draws come after every other draw, so the other policies' streams are unchanged."""
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
        if arm == "c":
            cand_ok, cand_good = ok, good
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
    if judge is not None:
        judge_share, cov = judge
        pb = good_rate
        pc = np.clip(good_rate + arms[1]["good"], 0, 1)
        # The judged calls, by the candidate's grade, whose baseline shadow answer was not an error.
        judged_good = rng.binomial(rng.binomial(cand_good, judge_share), 1 - arms[0]["errors"])
        judged_bad = rng.binomial(rng.binomial(cand_ok - cand_good, judge_share), 1 - arms[0]["errors"])
        # The baseline's grade on the same request, given the candidate's: the 2 x 2 table's cells.
        with np.errstate(divide="ignore", invalid="ignore"):
            base_good_if_good = np.clip(np.where(pc > 0, (pb * pc + cov) / pc, 0), 0, 1)
            base_good_if_bad = np.clip(np.where(pc < 1, (pb * (1 - pc) - cov) / (1 - pc), 0), 0, 1)
        wins = rng.binomial(judged_good, 1 - base_good_if_good)  # candidate good, baseline not
        losses = rng.binomial(judged_bad, base_good_if_bad)  # baseline good, candidate not
        ties = judged_good + judged_bad - wins - losses
        state.c["pairs"][idx, steps] += judged_good + judged_bad
        state.c["score"][idx, steps] += wins + 0.5 * ties
        state.c["score2"][idx, steps] += wins + 0.25 * ties


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


def _primary_cs(b: dict, c: dict, policy: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The primary's interval: good-answer rates (adaptive), or the judge's score against a known 0.5.

    adaptive_paired passes the score as decide's proportion Arm against Arm(10**12, 0.5 x 10**12), as
    plugins/auto_rollback/evidence.py first did: its variance is Bernoulli's, p (1 - p), about 0.25,
    whatever the ties. adaptive_paired_var passes MeanArm(count, mean, M2) of the 0 / 0.5 / 1 scores
    against MeanArm(10**12, 0.5, 0): the scores' own variance, (1 - ties) / 4, about 0.10."""
    if policy == "adaptive":
        return proportion_cs(b["ok"], b["good"], c["ok"], c["good"], alpha, 2 * MARGIN)
    n = c["pairs"]
    known = np.full_like(n, float(PAIRWISE_N))
    if policy == "adaptive_paired":
        return proportion_cs(known, known / 2, n, c["score"], alpha, 2 * PAIRED_MARGIN)
    return mean_cs(known, known / 2, known / 4, n, c["score"], c["score2"], alpha, 2 * PAIRED_MARGIN)


def adaptive_actions(state: State, idx: np.ndarray, policy: str = "adaptive") -> tuple[np.ndarray, np.ndarray]:
    """decide's action for each rollout in idx (0 continue, 1 advance, 2 rollback), and the harm's name."""
    b = {f: v[idx] for f, v in state.b.items()}
    c = {f: v[idx] for f, v in state.c.items()}
    exposure = np.array([*(s / 100 for s in STEPS[1:]), 1.0])[state.step[idx]]
    level, harm = one_sided_level(ALPHA), one_sided_level(HARM_ALPHA / 4)
    margin = MARGIN if policy == "adaptive" else PAIRED_MARGIN
    if policy == "adaptive":
        enough = np.minimum(b["ok"].sum(1), c["ok"].sum(1)) >= MIN_SAMPLES
    else:
        enough = c["pairs"].sum(1) >= MIN_SAMPLES  # the known baseline counts 10**12
    enough &= np.minimum(b["req"].sum(1), c["req"].sum(1)) >= MIN_SAMPLES

    low, _ = _primary_cs(b, c, policy, level)
    _, high_harm = _primary_cs(b, c, policy, harm)
    harmed = high_harm < -margin
    reason = np.where(harmed, "primary", "")
    clear = low > -margin / exposure
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


def decide_directly(state: State, r: int, policy: str = "adaptive") -> str:
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
    if policy == "adaptive":
        primary, margin = (arms(b, "ok", "good"), arms(c, "ok", "good")), MARGIN
    elif policy == "adaptive_paired":  # a pairwise score as a proportion Arm (evidence.py's first form)
        primary = ([Arm(PAIRWISE_N, PAIRWISE_N / 2)] * k, arms(c, "pairs", "score"))
        margin = PAIRED_MARGIN
    else:
        scores = []
        for i in range(k):
            n = int(c["pairs"][i])
            mean = c["score"][i] / n if n else 0.0
            scores.append(MeanArm(n, mean, max(c["score2"][i] - c["score"][i] * mean, 0.0) if n else 0.0))
        primary, margin = ([MeanArm(PAIRWISE_N, 0.5, 0.0)] * k, scores), PAIRED_MARGIN
    return decide(
        *primary,
        guardrails,
        margin=margin,
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


def run(
    scenario: Scenario,
    policy: str,
    rollouts: int,
    cap: int,
    scale: float,
    seed: int,
    checks: list,
    judge_share: float = JUDGE_SHARE,
    judge_ties: float = JUDGE_TIES,
) -> dict:
    rng = np.random.default_rng(seed)
    judge = (judge_share, judge_covariance(judge_ties)) if policy in PAIRED else None
    state = State(rollouts)
    phase = rng.uniform(0, 1440, rollouts)
    arms = (arm_rates(None), arm_rates(scenario))
    shares = np.array(STEPS) / 100
    for t in range(cap):
        idx = np.flatnonzero(state.status == RUNNING)
        if not idx.size:
            break
        simulate_minute(rng, t, idx, phase, shares[state.step[idx]], arms, scale, state, judge)
        now = t + 1
        if policy in ADAPTIVE:
            actions, reason = adaptive_actions(state, idx, policy)
            state.reason[idx[actions == 2]] = reason[actions == 2]
            if t % 7 == 0:  # the reference check, through decide itself: one rollout of each action
                for action in (0, 1, 2):
                    for j in np.flatnonzero(actions == action)[:1]:
                        expected = {0: CONTINUE, 1: ADVANCE, 2: ROLLBACK}[action]
                        checks.append((expected, decide_directly(state, int(idx[j]), policy) == expected))
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
        "judged_pairs_median": float(np.median(state.c["pairs"].sum(1))),
        "quantiles_minutes": {f"p{q}": _quantile(state.decided_at, q / 100) for q in (10, 25, 50, 75, 90)},
        "times": [None if math.isinf(x) else int(x) for x in state.decided_at],  # for the plot, not the JSON
    }


def run_all(
    rollouts: int,
    cap: int,
    scale: float,
    seed: int,
    policies: tuple[str, ...] = POLICIES,
    judge_share: float = JUDGE_SHARE,
    judge_ties: float = JUDGE_TIES,
) -> tuple[dict, dict]:
    results: dict = {}
    checks: list[bool] = []
    for i, scenario in enumerate(SCENARIOS):
        results[scenario.name] = {"description": scenario.description, "worse": scenario.worse}
        for policy in policies:
            j = POLICIES.index(policy)  # a policy's seed does not depend on which others run
            started = time.perf_counter()
            figures = run(
                scenario, policy, rollouts, cap, scale, seed * 1000 + i * 10 + j, checks, judge_share, judge_ties
            )
            results[scenario.name][policy] = figures
            print(
                f"  x{scale:g} {scenario.name:>14} {policy:>19}: promoted {figures['promoted']:.1%}, "
                f"rolled back {figures['rolled_back']:.1%}, undecided {figures['undecided']:.1%}, "
                f"median {_minutes(figures['median_minutes'], cap)} min ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    compared = {a: sum(1 for e, _ in checks if e == a) for a in (CONTINUE, ADVANCE, ROLLBACK)}
    return results, {"compared": compared, "mismatches": sum(1 for _, same in checks if not same)}


def outcome(results: dict, policy: str = "adaptive", fixed_results: dict | None = None) -> dict:
    """The required outcome, per scenario: an adaptive policy's error rates and its median time against fixed's."""
    verdict: dict = {"wrong_promotion_at_most_5pct": {}, "wrong_rollback_at_most_1pct": {}, "faster_median": {}}
    for name, figures in results.items():
        adaptive, fixed = figures[policy], (fixed_results or results)[name]["fixed"]
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


def table(results: dict, cap: int, policies: tuple[str, ...] = POLICIES) -> list[str]:
    lines = [
        "| scenario | candidate | policy | wrong promotion | wrong rollback | promoted | rolled back | "
        "undecided (paused) | median min | p90 min | candidate calls (median) | judged pairs (median) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, figures in results.items():
        for policy in policies:
            f = figures[policy]
            pairs = f"{f['judged_pairs_median']:.0f}" if policy in PAIRED else "–"
            lines.append(
                f"| {name} | {figures['description']} | {policy} | {_share(f['wrong_promotion'])} | "
                f"{_share(f['wrong_rollback'])} | {f['promoted']:.1%} | {f['rolled_back']:.1%} | "
                f"{f['undecided']:.1%} ({f['paused']:.1%}) | {_minutes(f['median_minutes'], cap)} | "
                f"{_minutes(f['p90_minutes'], cap)} | {f['candidate_requests_median']:.0f} | {pairs} |"
            )
    return lines


def _verdict_lines(verdict: dict, policy: str = "adaptive") -> list[str]:
    names = {
        "wrong_promotion_at_most_5pct": f"{policy} wrongly promotes a worse candidate at most 5% of the time",
        "wrong_rollback_at_most_1pct": f"{policy} rolls back a healthy candidate at most 1% of the time",
        "faster_median": f"{policy} decides faster than the fixed schedule at the median",
    }
    lines = []
    for key, label in names.items():
        per = verdict[key]
        missed = [k for k, ok in per.items() if not ok]
        lines.append(
            f"- {label}: **{'met' if not missed else 'not met'}**"
            + (f" (not in: {', '.join(missed)})" if missed else "")
        )
    lines.append(f"- {policy} overall: **{'met' if verdict['met'] else 'not met'}**")
    return lines


def _all_verdicts(outcomes: dict) -> list[str]:
    lines: list[str] = []
    for policy, verdict in outcomes.items():
        lines += _verdict_lines(verdict, policy)
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


def paired_evidence(variance: float, judge_share: float = JUDGE_SHARE) -> tuple[float, float]:
    """(judged pairs, minutes) the final paired claim needs for an equal candidate, at 50% from the start.

    The score's information where the advance's boundary (tau = 2 x its margin) is down to the
    win-rate margin, times the per-pair variance decide uses: 0.25 (a proportion Arm) or (1 - ties) / 4."""
    level, low, high = one_sided_level(ALPHA), 1.0, 1e9
    while high / low > 1.0001:
        mid = math.sqrt(low * high)
        wide = half_width(np.array([mid]), level, 2 * PAIRED_MARGIN)[0] > PAIRED_MARGIN
        low, high = (mid, high) if wide else (low, mid)
    pairs = variance * high
    return pairs, pairs / (judge_share * 0.5 * 110 * (1 - BASE_ERRORS) ** 2)


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


def why_paired(results: dict, judge_share: float, judge_ties: float, cap: int) -> str:
    """The paragraph on the pairwise judge: why pairing does not buy speed here."""
    arm_pairs, arm_minutes = paired_evidence(0.25, judge_share)
    var = (1 - judge_ties) / 4
    var_pairs, var_minutes = paired_evidence(var, judge_share)
    per_arm, _ = evidence_minutes()
    healthy = results["healthy"]
    return (
        f"Why pairing does not help here. The judge's score is 0.5 + (candidate good - baseline good) / 2 per "
        f"pair, so a difference d in good-answer rate is a win rate of 0.5 + d / 2 and the same practical margin "
        f"is win rate at least {0.5 - PAIRED_MARGIN:g} ({PAIRED_MARGIN * 100:g} point, half of {MARGIN * 100:g}). "
        f"With {judge_ties:.0%} ties for an equal candidate the score's variance is {var:.3f}, which is "
        f"{4 * var:.2f} in good-answer units (x4, as the margin halves) against 2 x 0.21 = 0.42 for an unpaired "
        f"difference at 50/50, and against about 0.22 per candidate call at the 5% step, where the baseline arm "
        "is 19 times larger: pairing removes the between-request variance only as far as the two answers to one "
        f"request are correlated, and a tie rate of {judge_ties:.0%} (58% with independent answers) says they "
        f"barely are. The final claim needs about {var_pairs:,.0f} judged pairs with the scores' own variance "
        f"(adaptive_paired_var, {var_minutes:.0f} minutes at 50% from the first minute with {judge_share:.0%} "
        f"judged), against {per_arm:,.0f} answers an arm unpaired; passed as a proportion Arm, as "
        f"plugins/auto_rollback/evidence.py passes it today, decide bounds the variance by 0.25 and needs "
        f"{arm_pairs:,.0f} pairs ({arm_minutes:.0f} minutes): healthy median "
        f"{_minutes(healthy['adaptive_paired']['median_minutes'], cap)} min against "
        f"{_minutes(healthy['adaptive']['median_minutes'], cap)} for adaptive. Judging a share s of the calls "
        "divides the pairs by s."
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
        f"adaptive_paired and adaptive_paired_var: the same schedule and guardrails, the primary the pairwise "
        f"judge's score (1 win, 0.5 tie, 0 loss) on {meta['judge_share']:.0%} of the candidate's answered calls, "
        f"against the baseline's answer to the same request, {meta['judge_ties']:.0%} ties for an equal candidate; "
        f"tested against a known 0.5 with margin {PAIRED_MARGIN * 100:g} point on the win rate (the same "
        f"{MARGIN * 100:g} points on the good-answer rate). adaptive_paired passes the score as a proportion "
        "Arm (variance bounded by 0.25), as plugins/auto_rollback/evidence.py first did; adaptive_paired_var as a "
        "MeanArm, with the scores' own variance, as evidence.py now does.",
        "",
        *table(report["results"], cap),
        "",
        "Required outcome (each adaptive policy against fixed):",
        "",
        *_all_verdicts(report["outcomes"]),
        "",
        why(report["results"]),
        "",
        why_paired(report["results"], meta["judge_share"], meta["judge_ties"], cap),
        "",
        f"Reference check: sampled per-minute decisions ({_counts(report['reference']['compared'])}, every run) "
        f"recomputed with evaluators.sequential.decide; {report['reference']['mismatches']} disagree with the "
        "vectorised copy.",
    ]
    if report.get("judge_alt"):
        j = report["judge_alt"]
        intro = (
            f"The paired policies with {j['judge_share']:.0%} of the candidate's answered calls judged (same seeds "
            "as above); fixed's medians from the main table."
        )
        title = f"Judge share {j['judge_share']:.0%} ({j['rollouts']} rollouts per scenario)"
        lines += _section(title, j, cap, [intro, ""], PAIRED)
    if report.get("sensitivity"):
        s = report["sensitivity"]
        lines += _section(f"Sensitivity: traffic x{s['scale']:g} ({s['rollouts']} rollouts per scenario)", s, cap)
    return "\n".join(lines) + "\n"


def _section(title: str, run: dict, cap: int, intro: list[str] = (), policies: tuple[str, ...] = POLICIES) -> list[str]:
    """A further run's table and verdicts under its own heading (a judge share, a traffic scale)."""
    return ["", f"## {title}", "", *intro, *table(run["results"], cap, policies), "", *_all_verdicts(run["outcomes"])]


def plot(report: dict, path: Path) -> None:
    """Per scenario, the share of rollouts decided by each minute; then wrong decisions and outcomes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, cap = report["results"], report["meta"]["cap_minutes"]
    names = list(results)
    colours = {
        "fixed": "tab:blue",
        "fixed_sig": "tab:orange",
        "adaptive": "tab:green",
        "adaptive_paired": "tab:purple",
        "adaptive_paired_var": "tab:brown",
    }
    alt = report.get("judge_alt")
    fig = plt.figure(figsize=(20, 9.5))
    grid = fig.add_gridspec(2, 4)
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[i // 3, i % 3])
        for policy in POLICIES:
            times = np.sort([cap + 1 if t is None else t for t in results[name][policy]["times"]])
            ax.step(times, np.arange(1, times.size + 1) / times.size, where="post", color=colours[policy], label=policy)
        for policy in PAIRED if alt else ():
            times = np.sort([cap + 1 if t is None else t for t in alt["results"][name][policy]["times"]])
            label = f"{policy} ({alt['judge_share']:.0%} judged)"
            share = np.arange(1, times.size + 1) / times.size
            ax.step(times, share, where="post", color=colours[policy], ls=":", label=label)
        ax.set_xlim(0, cap)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{name}: {results[name]['description']}", fontsize=10)
        ax.set_xlabel("minutes since the rollout began", fontsize=8)
        ax.set_ylabel("share decided", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="upper left")

    ax = fig.add_subplot(grid[0, 3])
    x = np.arange(len(names))
    for j, policy in enumerate(POLICIES):
        f = [results[n][policy] for n in names]
        rates = [r["wrong_promotion"] if results[n]["worse"] else r["wrong_rollback"] for n, r in zip(names, f)]
        width = 0.85 / len(POLICIES)
        ax.bar(x + (j - (len(POLICIES) - 1) / 2) * width, rates, width, color=colours[policy], label=policy)
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
        "--judge-share", type=float, default=JUDGE_SHARE, help="share of candidate calls judged (default 1.0)"
    )
    parser.add_argument(
        "--judge-share-alt", type=float, default=JUDGE_SHARE_ALT, help="also report this share (default 0.2; 0: skip)"
    )
    parser.add_argument(
        "--judge-ties", type=float, default=JUDGE_TIES, help="tie rate for an equal candidate (default 0.60)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results" / "rollout_sim.json",
        help="the JSON to write; the Markdown and PNG go beside it",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if not 0 < args.judge_share <= 1 or not 0 <= args.judge_share_alt <= 1:
        parser.error("judge shares are in (0, 1]")
    judge_covariance(args.judge_ties)  # refuses a tie rate out of reach
    results, reference = run_all(
        args.rollouts, args.cap_minutes, 1.0, args.seed, judge_share=args.judge_share, judge_ties=args.judge_ties
    )
    report: dict = {
        "meta": {
            "rollouts": args.rollouts,
            "seed": args.seed,
            "cap_minutes": args.cap_minutes,
            "judge_share": args.judge_share,
            "judge_ties": args.judge_ties,
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
            "paired_margin": PAIRED_MARGIN,
            "judge_covariance": round(judge_covariance(args.judge_ties), 6),
        },
        "results": results,
        "outcome": outcome(results),
        "outcomes": {p: outcome(results, p) for p in ADAPTIVE},
        "reference": reference,
    }

    def add(checked: dict) -> None:
        reference["compared"] = {a: n + checked["compared"][a] for a, n in reference["compared"].items()}
        reference["mismatches"] += checked["mismatches"]

    if args.judge_share_alt:
        alt, checked = run_all(
            args.rollouts, args.cap_minutes, 1.0, args.seed, PAIRED, args.judge_share_alt, args.judge_ties
        )
        report["judge_alt"] = {
            "judge_share": args.judge_share_alt,
            "rollouts": args.rollouts,
            "results": alt,
            "outcomes": {p: outcome(alt, p, results) for p in PAIRED},
        }
        add(checked)
    if args.sensitivity_scale:
        more, checked = run_all(
            args.sensitivity_rollouts,
            args.cap_minutes,
            args.sensitivity_scale,
            args.seed + 1,
            judge_share=args.judge_share,
            judge_ties=args.judge_ties,
        )
        report["sensitivity"] = {
            "scale": args.sensitivity_scale,
            "rollouts": args.sensitivity_rollouts,
            "results": more,
            "outcome": outcome(more),
            "outcomes": {p: outcome(more, p) for p in ADAPTIVE},
        }
        add(checked)
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
