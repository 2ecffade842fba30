"""Promotion by evidence: an always-valid sequential test of a candidate against its baseline.

A rollout may consult `decide` at any moment, as often as it likes, and act on the answer without
inflating its error rates: the intervals here are confidence sequences, which cover the true
difference at every moment at once, not at one planned sample size. Peeking every minute at a
fixed-n interval (Wilson, `evaluators.stats`) would promote or roll back on noise far more often
than its nominal 5%.

Method. The normal-mixture boundary of Robbins, as used by the mixture SPRT of Johari, Koomen,
Pekelis and Walsh ("Always valid inference", Operations Research 2022) and by the asymptotic
confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas ("Time-uniform central
limit theory and asymptotic confidence sequences", Annals of Statistics 2024). For an estimate
D of the difference d = cand - ratio * base with information I = 1 / Var(D), mixing the
likelihood ratio of d over N(0, tau^2) gives a nonnegative martingale; Ville's inequality bounds
the chance that it ever exceeds 1 / alpha, which inverts to

    |D - d| <= sqrt(2 (1 + tau^2 I) / (tau^2 I^2) * log(sqrt(1 + tau^2 I) / alpha))

at every I at once (`half_width`). At the level a one-sided 0.05 claim uses (below), its
half-width is about 2.8 / sqrt(I) at its tightest, where a fixed-n one-sided test needs
1.645 / sqrt(I): the price of looking whenever one likes, about 2.9 times the samples.

- Two arms and a changing share. Each arm's running sums are independent (asymptotically
  Brownian) in their own sample counts. A rollout changes the candidate's share from step to
  step, so the arms are passed as strata, one (base, cand) pair per step at a constant share:
  D is the inverse-variance weighted mean of the strata's differences and I the sum of their
  informations, which keeps D * I a Brownian motion in I across share changes. Stratifying also
  keeps a diurnal drift that both arms share (traffic mix by hour) out of the difference when the
  5% step ran at night and the 50% step by day. One pair is one stratum.
- Variances are plugged in (hence "asymptotic"): for a proportion, (s + 1/2) / (n + 1) per arm,
  floored at the two arms' pooled rate, so an arm that has seen no error yet does not look
  certain, and an early burst on the candidate is judged against the null's variance; for a
  mean, Welford's M2 / (n - 1) per arm over all its strata, floored at the two arms' pooled
  variance. Validity is asymptotic in the counts (the CLT regime), hence `min_samples`.
- One-sided claims. Non-inferiority and harm are one-sided. The symmetric mixture M is the
  average of the two half-normal mixtures, and on an upper crossing of the two-sided boundary
  at level a, the upper one exceeds 2 / a - 1; so each end of the two-sided interval at level
  2 alpha / (1 + alpha) is a one-sided always-valid bound at level alpha (`one_sided_level`).
  A boundary of its own for each side (the half-normal mixture at level alpha) would be valid
  too, but reaches a margin with only about 1.2% less information at tau = 2 x margin
  (tests/test_sequential.py works it out), so the one symmetric boundary serves both.
- Assumptions: observations independent within an arm and identically distributed within a
  stratum (arrival times and the schedule may depend on past data, never on the outcome being
  counted); a candidate's effect constant over time; finite variance (latency: use the share of
  calls slower than a threshold fixed in advance, a bounded Bernoulli, rather than the heavy
  tailed mean).

Decisions (`decide`):
- ROLLBACK when any harm is shown, each at harm_alpha / k (Bonferroni over the k = 1 + number of
  guardrails harm checks, so a healthy candidate is rolled back by noise at most harm_alpha of
  the time, however long it runs): the primary worse than the baseline by more than `margin`
  (upper bound below -margin), or a guardrail worse than `harm` (lower bound of
  cand - ratio * base above `harm`, by default 0: simply worse; with ratio = 1.2 a cost 20% over
  the baseline's).
- ADVANCE when the primary is shown non-inferior at level alpha (lower bound above -margin) and
  every guardrail is shown within its tolerance (upper bound of cand - ratio * base at most
  `tolerance`), each at alpha: an intersection-union test, so the joint claim holds at alpha
  without splitting it. A guardrail not yet shown within its tolerance vetoes the advance.
- `exposure`: the share of all traffic the candidate gets if it advances (0.25 for 5% -> 25%).
  Margins and tolerances of an advance are divided by it: the claim becomes "at that share the
  route as a whole loses at most the margin", so a staged rollout moves up on the evidence its
  next step's blast radius needs, and only the last step (exposure 1) needs the full claim.
  The primary's claims at every exposure read one confidence sequence, so they hold together
  (a budget guardrail's contrast, ratio != 1, changes with the exposure: one sequence a step).
- CONTINUE otherwise, and while any arm has fewer than `min_samples` observations.

Parameters: alpha (0.05: wrongly promoting a candidate worse by more than the margin), harm_alpha
(0.01: wrongly rolling back a healthy candidate, by noise), margin (in the primary's units, e.g.
0.02 for 2 points of success rate), tau (the mixing scale, in the metric's units; default twice
the margin, or a guardrail's tolerance), min_samples (100). At the advance's level the boundary
is tightest near I = 6.8 / tau^2, where its half-width is about 1.07 tau; it widens slowly past
that (4% wider at 4x that information, 11% at 16x) and faster before it (8% at a quarter, 48% at
a sixteenth). So tau is set above the smallest effect of interest rather than at it: with
tau = margin = 0.02, rolling back a candidate good 25% of the time against 75% takes 162 calls an
arm, with tau = 0.04 86, for about 9% more samples on the final, margin-sized question.

Pure: no I/O, no gateway imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence, Union

ADVANCE, ROLLBACK, CONTINUE = "advance", "rollback", "continue"
CLEAR, HARM, OPEN = "clear", "harm", "open"


# --- the streams ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """A proportion stream: `successes` out of `n` (judge wins, good answers, errors)."""

    n: int = 0
    successes: float = 0.0

    def add(self, successes: float, n: int = 1) -> Arm:
        """This arm with `successes` out of `n` more observations."""
        return Arm(self.n + n, self.successes + successes)

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None


@dataclass(frozen=True)
class MeanArm:
    """A continuous stream in Welford's form: count, running mean and M2 (sum of squared deviations)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> MeanArm:
        """Welford's update: exact in one pass, without the cancellation of sum-of-squares."""
        count = self.count + 1
        delta = x - self.mean
        mean = self.mean + delta / count
        return MeanArm(count, mean, self.m2 + delta * (x - mean))

    def merge(self, other: MeanArm) -> MeanArm:
        """Two streams as one (Chan et al.): how replicas' or minutes' figures combine."""
        if not other.count:
            return self
        if not self.count:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        return MeanArm(count, mean, self.m2 + other.m2 + delta * delta * self.count * other.count / count)

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanArm:
        arm = cls()
        for x in values:
            arm = arm.add(x)
        return arm

    @property
    def variance(self) -> float | None:
        return self.m2 / (self.count - 1) if self.count > 1 else None


Strata = Union[Arm, MeanArm, Sequence[Arm], Sequence[MeanArm]]


class Interval(NamedTuple):
    """An always-valid interval on cand - ratio * base; (-inf, inf) before both arms have data."""

    low: float
    high: float

    @property
    def estimate(self) -> float:
        """The boundary is symmetric, so the estimate is the midpoint."""
        return (self.low + self.high) / 2 if math.isfinite(self.low) else math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


# --- the boundary --------------------------------------------------------------------------------


def half_width(information: float, alpha: float, tau: float) -> float:
    """The normal-mixture boundary's half-width on the estimate, at `information` = 1 / its variance.

    Robbins' mixture over N(0, tau^2): valid at every information at once, at level alpha."""
    if information <= 0:
        return math.inf
    x = tau * tau * information
    return math.sqrt(2 * (1 + x) / (x * information) * math.log(math.sqrt(1 + x) / alpha))


def one_sided_level(alpha: float) -> float:
    """The two-sided level whose interval ends are one-sided bounds at `alpha`: 2 alpha / (1 + alpha).

    Halving nothing would waste half of alpha on the side a claim never looks at; plain doubling
    would be slightly optimistic, because the two half-normal mixtures share the same stream."""
    return 2 * alpha / (1 + alpha)


def _pairs(base: Strata, cand: Strata) -> list[tuple]:
    bases = [base] if isinstance(base, (Arm, MeanArm)) else list(base)
    cands = [cand] if isinstance(cand, (Arm, MeanArm)) else list(cand)
    if len(bases) != len(cands):
        raise ValueError(f"{len(bases)} baseline strata but {len(cands)} candidate strata")
    kinds = {type(a) for a in bases + cands}
    if len(kinds) > 1:
        raise ValueError("the arms mix proportions (Arm) and means (MeanArm)")
    return list(zip(bases, cands))


def _proportion_variance(arms: list[Arm], pooled: float) -> float:
    n = sum(a.n for a in arms)
    p = (sum(a.successes for a in arms) + 0.5) / (n + 1)
    return max(p * (1 - p), pooled * (1 - pooled))


def _stratified(pairs: list[tuple], var_base: float, var_cand: float, ratio: float) -> tuple[float, float]:
    """(estimate, information): the inverse-variance weighted mean of the strata's differences."""
    weighted = information = 0.0
    for b, c in pairs:
        nb, nc = (b.n, c.n) if isinstance(b, Arm) else (b.count, c.count)
        if nb <= 0 or nc <= 0:
            continue  # a step where one arm took no traffic says nothing about the difference
        mb, mc = (b.successes / nb, c.successes / nc) if isinstance(b, Arm) else (b.mean, c.mean)
        w = 1 / (var_cand / nc + ratio * ratio * var_base / nb)
        weighted += w * (mc - ratio * mb)
        information += w
    return (weighted / information if information else math.nan), information


def _estimate(base: Strata, cand: Strata, ratio: float) -> tuple[float, float]:
    pairs = _pairs(base, cand)
    bases, cands = [b for b, _ in pairs], [c for _, c in pairs]
    if not pairs:
        return math.nan, 0.0
    if isinstance(bases[0], Arm):
        total = sum(a.n for a in bases + cands)
        pooled = (sum(a.successes for a in bases + cands) + 0.5) / (total + 1)
        var_b, var_c = _proportion_variance(bases, pooled), _proportion_variance(cands, pooled)
    else:
        b, c = _merged(bases), _merged(cands)
        if b.count < 2 or c.count < 2:
            return math.nan, 0.0
        pooled = (b.m2 + c.m2) / (b.count + c.count - 2)
        var_b, var_c = max(b.m2 / (b.count - 1), pooled), max(c.m2 / (c.count - 1), pooled)
        if var_b <= 0 and var_c <= 0:
            return math.nan, 0.0  # constant streams: no scale to put an interval on
    return _stratified(pairs, var_b, var_c, ratio)


def _merged(arms: list[MeanArm]) -> MeanArm:
    total = MeanArm()
    for a in arms:
        total = total.merge(a)
    return total


def difference_cs(base: Strata, cand: Strata, alpha: float = 0.05, *, tau: float, ratio: float = 1.0) -> Interval:
    """An always-valid (1 - alpha) interval on cand - ratio * base, for proportions or means, by strata."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, not {tau}")
    estimate, information = _estimate(base, cand, ratio)
    if not information:
        return Interval(-math.inf, math.inf)
    w = half_width(information, alpha, tau)
    return Interval(estimate - w, estimate + w)


def proportion_difference_cs(
    base: Arm | Sequence[Arm], cand: Arm | Sequence[Arm], alpha: float = 0.05, *, tau: float = 0.04
) -> Interval:
    """An always-valid (1 - alpha) interval on the candidate's rate minus the baseline's.

    Pass one Arm per arm, or one per rollout step (the same number of each)."""
    return difference_cs(base, cand, alpha, tau=tau)


def mean_difference_cs(
    base: MeanArm | Sequence[MeanArm],
    cand: MeanArm | Sequence[MeanArm],
    alpha: float = 0.05,
    *,
    tau: float,
    ratio: float = 1.0,
) -> Interval:
    """An always-valid (1 - alpha) interval on the candidate's mean minus `ratio` x the baseline's.

    ratio = 1.2 turns "at most 20% dearer" into "this interval's values are at most 0": a linear
    contrast, with no delta method. tau is in the metric's units (seconds, dollars)."""
    return difference_cs(base, cand, alpha, tau=tau, ratio=ratio)


# --- decisions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guardrail:
    """A metric where lower is better, that can veto an advance or force a rollback on its own.

    Compared as cand - ratio * base: an advance needs it shown at most `tolerance`, a rollback
    follows once it is shown above `harm`. Error rate: ratio 1, tolerance 0.01 (one point), harm 0.
    Cost with a +20% budget: ratio 1.2, tolerance 0, harm 0. tau: the mixing scale in the metric's
    units (default for a proportion: twice the tolerance, or 0.02; a mean needs it stated)."""

    name: str
    base: Strata
    cand: Strata
    tolerance: float = 0.0
    ratio: float = 1.0
    harm: float = 0.0
    tau: float | None = None


@dataclass(frozen=True)
class Check:
    """One metric's verdict: the interval an advance reads, the one a rollback reads, and the status."""

    name: str
    interval: Interval  # each end a one-sided bound at alpha, on the contrast an advance is judged by
    harm_interval: Interval  # each end a one-sided bound at harm_alpha / k
    status: str  # CLEAR, HARM or OPEN
    detail: str


@dataclass(frozen=True)
class Decision:
    action: str  # ADVANCE, ROLLBACK or CONTINUE
    reason: str
    primary: Check
    guardrails: tuple[Check, ...] = ()
    samples: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (baseline n, candidate n)

    @property
    def primary_interval(self) -> Interval:
        return self.primary.interval

    @property
    def guardrail_intervals(self) -> dict[str, Interval]:
        return {g.name: g.interval for g in self.guardrails}


def _count(arms: Strata) -> int:
    arms = [arms] if isinstance(arms, (Arm, MeanArm)) else list(arms)
    return sum(a.n if isinstance(a, Arm) else a.count for a in arms)


def _guardrail_tau(g: Guardrail) -> float:
    if g.tau is not None:
        return g.tau
    arms = [g.base] if isinstance(g.base, (Arm, MeanArm)) else list(g.base)
    if arms and isinstance(arms[0], MeanArm):
        raise ValueError(f"guardrail {g.name!r} compares means: state its tau, in the metric's units")
    return 2 * g.tolerance if g.tolerance > 0 else 0.02


def _primary_check(base, cand, margin, exposure, level, harm_level, tau) -> Check:
    interval = difference_cs(base, cand, level, tau=tau)
    harm_interval = difference_cs(base, cand, harm_level, tau=tau)
    allowed = margin / exposure
    if harm_interval.high < -margin:
        status, detail = HARM, f"worse by more than {margin:g}: upper bound {harm_interval.high:+.4f}"
    elif interval.low > -allowed:
        status, detail = CLEAR, f"not worse by {allowed:g}: lower bound {interval.low:+.4f}"
    else:
        status, detail = OPEN, f"lower bound {interval.low:+.4f}, needs above {-allowed:+g}"
    return Check("primary", interval, harm_interval, status, detail)


def _guardrail_check(g: Guardrail, exposure: float, level: float, harm_level: float) -> Check:
    tau = _guardrail_tau(g)
    # The advance's claim at the next step's share: the excess over the baseline scales with 1 / exposure.
    ratio = 1 + (g.ratio - 1) / exposure
    tolerance = g.tolerance / exposure
    interval = difference_cs(g.base, g.cand, level, tau=tau, ratio=ratio)
    harm_interval = difference_cs(g.base, g.cand, harm_level, tau=tau, ratio=g.ratio)
    contrast = "cand - base" if g.ratio == 1 else f"cand - {g.ratio:g} x base"
    if harm_interval.low > g.harm:
        status, detail = HARM, f"{contrast} above {g.harm:g}: lower bound {harm_interval.low:+.4g}"
    elif interval.high <= tolerance:
        status, detail = CLEAR, f"within tolerance: upper bound {interval.high:+.4g} <= {tolerance:g}"
    else:
        status, detail = OPEN, f"upper bound {interval.high:+.4g} above tolerance {tolerance:g}: vetoes an advance"
    return Check(g.name, interval, harm_interval, status, detail)


def decide(
    primary_base: Arm | Sequence[Arm],
    primary_cand: Arm | Sequence[Arm],
    guardrails: Sequence[Guardrail] = (),
    *,
    margin: float = 0.02,
    alpha: float = 0.05,
    harm_alpha: float = 0.01,
    min_samples: int = 100,
    exposure: float = 1.0,
    tau: float | None = None,
) -> Decision:
    """Advance, roll back or continue, valid however often it is asked (see the module's docstring).

    The primary is a proportion, higher is better (success or win rate); `margin` the loss it may
    show and still be non-inferior. `exposure` the candidate's share if it advances (1: promote).

    A pairwise judge's score (1 win, 0.5 tie, 0 loss) is tested against a known 0.5 by passing a
    baseline that carries no variance, one per stratum. As Arm(10**12, 0.5 x 10**12) against the
    candidate's Arm(n, sum of scores), its variance is taken as p (1 - p), about 0.25, whatever the
    ties; as MeanArm(10**12, 0.5, 0) against MeanArm(n, mean, M2) of the scores it is theirs,
    (1 - ties) / 4 (0.10 at 60% ties), 2.5 times the information. Where the judge prefers the good
    answer of a good / bad pair and ties the rest, a difference d in good-answer rate is a win rate
    of 0.5 + d / 2, so the same practical margin is half as large on it (bench/rollout_sim.py)."""
    if not 0 < exposure <= 1:
        raise ValueError(f"exposure must be in (0, 1], not {exposure}")
    if margin < 0:
        raise ValueError(f"margin must be 0 or more, not {margin}")
    if not 0 < harm_alpha < 1:
        raise ValueError(f"harm_alpha must be in (0, 1), not {harm_alpha}")
    level = one_sided_level(alpha)
    harm_level = one_sided_level(harm_alpha / (1 + len(guardrails)))
    primary = _primary_check(primary_base, primary_cand, margin, exposure, level, harm_level, tau or 2 * margin or 0.02)
    checks = tuple(_guardrail_check(g, exposure, level, harm_level) for g in guardrails)
    samples = {"primary": (_count(primary_base), _count(primary_cand))}
    samples.update({g.name: (_count(g.base), _count(g.cand)) for g in guardrails})
    short = [f"{name} {min(counts)}" for name, counts in samples.items() if min(counts) < min_samples]
    if short:
        reason = f"fewer than min_samples {min_samples} in an arm: " + ", ".join(short)
        return Decision(CONTINUE, reason, primary, checks, samples)
    harmed = [c for c in (primary, *checks) if c.status == HARM]
    if harmed:
        return Decision(ROLLBACK, "; ".join(f"{c.name}: {c.detail}" for c in harmed), primary, checks, samples)
    pending = [c for c in (primary, *checks) if c.status != CLEAR]
    if not pending:
        reason = f"non-inferior at exposure {exposure:g}: " + "; ".join(
            f"{c.name}: {c.detail}" for c in (primary, *checks)
        )
        return Decision(ADVANCE, reason, primary, checks, samples)
    return Decision(CONTINUE, "; ".join(f"{c.name}: {c.detail}" for c in pending), primary, checks, samples)
