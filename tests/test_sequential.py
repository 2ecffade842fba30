"""The always-valid sequential test (evaluators.sequential): coverage under peeking, and its decisions.

Seeded streams of modest size, so the file runs in a few seconds; every random test is reproducible.
"""

import math
import random

import pytest

from evaluators.sequential import (
    ADVANCE,
    CONTINUE,
    ROLLBACK,
    Arm,
    Guardrail,
    MeanArm,
    decide,
    half_width,
    mean_difference_cs,
    one_sided_level,
    proportion_difference_cs,
)
from evaluators.stats import Z95, wilson_interval

STREAMS = 400


# --- the boundary --------------------------------------------------------------------------------


def test_all_or_none_of_n_reaches_the_bound_exactly():
    # n wins of n: the upper bound is 1, not a float a hair below (which read as "certainly worse than perfect")
    assert [n for n in range(1, 400) if wilson_interval(n, n)[1] != 1.0 or wilson_interval(0, n)[0] != 0.0] == []
    assert 0 < wilson_interval(13, 13)[0] < 1


def test_the_boundary_is_where_the_mixture_likelihood_ratio_reaches_one_over_alpha():
    """The half-width inverts Johari et al.'s mSPRT: at it, the N(0, tau^2) mixture ratio is exactly 1/alpha."""
    for information, alpha, tau in ((50.0, 0.05, 0.1), (2e4, 0.0952, 0.02), (3e5, 0.005, 0.01)):
        w = half_width(information, alpha, tau)
        v = 1 / information  # the estimate's variance
        ratio = math.sqrt(v / (v + tau * tau)) * math.exp(tau * tau * w * w / (2 * v * (v + tau * tau)))
        assert ratio == pytest.approx(1 / alpha, rel=1e-9)
    assert half_width(0.0, 0.05, 0.02) == math.inf


def test_the_price_of_peeking_is_a_wider_interval_that_still_shrinks():
    widths = [half_width(i, 0.05, 0.02) for i in (1e3, 1e4, 1e5, 1e6)]
    assert widths == sorted(widths, reverse=True)
    for information, w in zip((1e3, 1e4, 1e5, 1e6), widths):
        assert w > Z95 / math.sqrt(information)  # wider than a fixed-n interval at every sample size


def test_one_sided_level():
    assert one_sided_level(0.05) == pytest.approx(0.1 / 1.05)
    assert one_sided_level(0.01) < 0.02


# --- coverage under continuous monitoring ---------------------------------------------------------


def _proportion_stream(seed: int, n: int = 400) -> tuple[bool, bool]:
    """(always-valid interval ever missed, naive fixed-n interval ever missed), checked after every observation.

    The candidate's share changes halfway (10% -> 50%), so the arms are passed as two strata."""
    rng = random.Random(seed)
    pb, pc = 0.7, 0.65
    bases, cands = [Arm(), Arm()], [Arm(), Arm()]
    missed = naive_missed = False
    for i in range(n):
        k = 0 if i < n // 2 else 1
        if rng.random() < (0.1, 0.5)[k]:
            cands[k] = cands[k].add(rng.random() < pc)
        else:
            bases[k] = bases[k].add(rng.random() < pb)
        if not (sum(a.n for a in bases) and sum(a.n for a in cands)):
            continue
        low, high = proportion_difference_cs(bases, cands, 0.05, tau=0.05)
        missed = missed or not low <= pc - pb <= high
        b = Arm(bases[0].n + bases[1].n, bases[0].successes + bases[1].successes)
        c = Arm(cands[0].n + cands[1].n, cands[0].successes + cands[1].successes)
        if b.n >= 10 and c.n >= 10:
            rb, rc = b.rate, c.rate
            se = math.sqrt(max(rb * (1 - rb), 1e-9) / b.n + max(rc * (1 - rc), 1e-9) / c.n)
            naive_missed = naive_missed or abs(rc - rb - (pc - pb)) > Z95 * se
    return missed, naive_missed


def test_the_proportion_interval_covers_the_true_difference_however_often_it_is_checked():
    results = [_proportion_stream(seed) for seed in range(STREAMS)]
    misses = sum(missed for missed, _ in results)
    assert misses / STREAMS <= 0.05, f"missed the true difference in {misses} of {STREAMS} streams"
    # Why it is needed: a fixed-n 95% interval, checked as often, misses far more than 5% of the time.
    naive = sum(n for _, n in results)
    assert naive / STREAMS > 0.15


def _mean_stream(seed: int, n: int = 300) -> bool:
    """Heavy-tailed (lognormal) latencies, equal arms, checked after every observation from 10 per arm."""
    rng = random.Random(seed)
    base, cand = MeanArm(), MeanArm()
    for _ in range(n):
        x = rng.lognormvariate(math.log(1.5), 0.8)
        if rng.random() < 0.3:
            cand = cand.add(x)
        else:
            base = base.add(x)
        if base.count >= 10 and cand.count >= 10:
            low, high = mean_difference_cs(base, cand, 0.05, tau=0.5)
            if not low <= 0 <= high:
                return True
    return False


def test_the_mean_interval_covers_the_true_difference_however_often_it_is_checked():
    misses = sum(_mean_stream(seed) for seed in range(STREAMS))
    assert misses / STREAMS <= 0.05, f"missed the true difference in {misses} of {STREAMS} streams"


def test_strata_keep_a_drift_both_arms_share_out_of_the_difference():
    """5% of the night's traffic and 50% of the day's: pooled, the candidate looks 17 points better."""
    night_b, night_c = Arm(9500, 4750), Arm(500, 250)  # both 50% at night
    day_b, day_c = Arm(5000, 4500), Arm(5000, 4500)  # both 90% by day
    pooled = proportion_difference_cs(night_b.add(4500, 5000), Arm(5500, 4750))
    stratified = proportion_difference_cs([night_b, day_b], [night_c, day_c])
    assert pooled.low > 0.1
    assert stratified.estimate == pytest.approx(0.0, abs=1e-12)
    assert stratified.low < 0 < stratified.high


def test_no_data_gives_an_unbounded_interval_and_mismatched_strata_are_refused():
    assert proportion_difference_cs(Arm(), Arm(10, 5)) == (-math.inf, math.inf)
    assert mean_difference_cs(MeanArm.of([1.0]), MeanArm.of([1.0, 2.0]), tau=1) == (-math.inf, math.inf)
    with pytest.raises(ValueError):
        proportion_difference_cs([Arm(10, 5)], [Arm(10, 5), Arm(10, 5)])
    with pytest.raises(ValueError):
        proportion_difference_cs(Arm(10, 5), Arm(10, 5), alpha=0)


def test_welford_arms_match_the_direct_figures_and_merge_exactly():
    rng = random.Random(3)
    values = [rng.lognormvariate(0, 1) for _ in range(500)]
    arm = MeanArm.of(values)
    mean = sum(values) / len(values)
    assert arm.mean == pytest.approx(mean)
    assert arm.variance == pytest.approx(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    merged = MeanArm.of(values[:123]).merge(MeanArm.of(values[123:]))
    assert (merged.count, merged.mean, merged.m2) == pytest.approx((arm.count, arm.mean, arm.m2))
    assert MeanArm().merge(arm) == arm


# --- decisions -----------------------------------------------------------------------------------


def _stream_decisions(seed: int, pb: float, pc: float, n: int, every: int = 250) -> list[str]:
    rng = random.Random(seed)
    base, cand, actions = Arm(), Arm(), []
    for i in range(1, n + 1):
        if rng.random() < 0.5:
            cand = cand.add(rng.random() < pc)
        else:
            base = base.add(rng.random() < pb)
        if i % every == 0:
            actions.append(decide(base, cand, margin=0.05).action)
    return actions


def test_identical_arms_continue_then_advance_and_are_never_rolled_back():
    for seed in range(5):
        actions = _stream_decisions(seed, 0.7, 0.7, 12_000)
        assert actions[0] == CONTINUE
        assert ADVANCE in actions
        assert ROLLBACK not in actions
        assert actions[-1] == ADVANCE


def test_identical_arms_advance_only_with_enough_evidence():
    assert decide(Arm(1000, 700), Arm(1000, 700)).action == CONTINUE  # +-4 points: not yet within 2
    decision = decide(Arm(30_000, 21_000), Arm(30_000, 21_000))
    assert decision.action == ADVANCE
    assert -0.02 < decision.primary_interval.low < 0 < decision.primary_interval.high < 0.02


def test_a_clearly_worse_candidate_is_rolled_back_and_never_advanced():
    for seed in range(5):
        actions = _stream_decisions(seed, 0.7, 0.55, 6_000)
        assert ROLLBACK in actions
        assert ADVANCE not in actions
    decision = decide(Arm(5000, 3500), Arm(5000, 3000))
    assert decision.action == ROLLBACK
    assert decision.primary.status == "harm" and "primary" in decision.reason


def test_a_guardrail_breach_vetoes_an_advance():
    equal = (Arm(30_000, 21_000), Arm(30_000, 21_000))
    assert decide(*equal).action == ADVANCE
    errors = Guardrail("error_rate", Arm(30_000, 450), Arm(3_000, 75), tolerance=0.01)  # 1.5% vs 2.5%
    decision = decide(*equal, [errors])
    assert decision.action == CONTINUE
    assert decision.guardrails[0].status == "open" and "vetoes" in decision.reason
    assert decision.guardrail_intervals["error_rate"].high > 0.01
    # Shown worse with high confidence: not a veto but a rollback.
    decision = decide(*equal, [Guardrail("error_rate", Arm(30_000, 450), Arm(30_000, 900), tolerance=0.01)])
    assert decision.action == ROLLBACK and "error_rate" in decision.reason
    # Within tolerance: no veto.
    assert (
        decide(*equal, [Guardrail("error_rate", Arm(30_000, 450), Arm(30_000, 460), tolerance=0.01)]).action == ADVANCE
    )


def _costs(seed: int, n: int, mean: float) -> MeanArm:
    rng = random.Random(seed)
    sigma = math.sqrt(math.log(1.36))
    return MeanArm.of([rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma) for _ in range(n)])


def test_a_cost_budget_is_a_ratio_contrast():
    equal = (Arm(30_000, 21_000), Arm(30_000, 21_000))
    base = _costs(1, 4000, 0.002)
    within = Guardrail("cost", base, _costs(2, 4000, 0.0021), ratio=1.2, tau=0.0004)  # +5%, budget +20%
    over = Guardrail("cost", base, _costs(3, 4000, 0.0030), ratio=1.2, tau=0.0004)  # +50%
    assert decide(*equal, [within]).action == ADVANCE
    assert decide(*equal, [over]).action == ROLLBACK
    with pytest.raises(ValueError, match="tau"):
        decide(*equal, [Guardrail("cost", base, base, ratio=1.2)])  # a mean's tau has no default


def test_min_samples_holds_decisions_back():
    worse = (Arm(150, 112), Arm(150, 38))  # 75% against 25%
    assert decide(*worse).action == ROLLBACK  # min_samples 100 by default
    held = decide(*worse, min_samples=200)
    assert held.action == CONTINUE and "min_samples" in held.reason
    assert held.samples["primary"] == (150, 150)
    assert held.primary.status == "harm"  # the evidence is there; the rule holds it back
    guardrail = Guardrail("error_rate", Arm(40, 1), Arm(40, 1), tolerance=0.01)
    assert decide(Arm(30_000, 21_000), Arm(30_000, 21_000), [guardrail]).action == CONTINUE


def test_an_early_step_advances_on_the_evidence_its_exposure_needs():
    """Not worse by 8 points is enough to go to 25% (at most 2 points on the whole route), not to 100%."""
    arms = (Arm(4000, 2800), Arm(1500, 1050))
    assert decide(*arms, exposure=0.25).action == ADVANCE
    assert decide(*arms, exposure=1.0).action == CONTINUE
    with pytest.raises(ValueError):
        decide(*arms, exposure=0)


# --- a pairwise judge's score against a known 0.5 ------------------------------------------------

KNOWN = 10**12  # the baseline of a pairwise score, as plugins/auto_rollback/evidence.py passes it
VERDICTS = 400  # per stream


def _pairwise_stream(seed: int, wins: float, ties: float, n: int = VERDICTS) -> tuple[bool, bool, float]:
    """(Arm form ever missed, MeanArm form ever missed, their final width ratio), checked after every verdict.

    Judge verdicts 1 / 0.5 / 0 against a baseline known to score 0.5, in two strata (a share change
    halfway), from 100 verdicts on (decide's min_samples); the true difference is the win rate - 0.5."""
    rng = random.Random(seed)
    truth = wins + ties / 2 - 0.5
    arms, means = [Arm(), Arm()], [MeanArm(), MeanArm()]
    known_arms, known_means = [Arm(KNOWN, KNOWN / 2)] * 2, [MeanArm(KNOWN, 0.5, 0.0)] * 2
    missed_arm = missed_mean = False
    for i in range(n):
        k = 0 if i < n // 2 else 1
        u = rng.random()
        score = 1.0 if u < wins else 0.5 if u < wins + ties else 0.0
        arms[k], means[k] = arms[k].add(score), means[k].add(score)
        if i + 1 < 100:  # decide's min_samples
            continue
        low, high = proportion_difference_cs(known_arms, arms, 0.05, tau=0.02)
        missed_arm = missed_arm or not low <= truth <= high
        mlow, mhigh = mean_difference_cs(known_means, means, 0.05, tau=0.02)
        missed_mean = missed_mean or not mlow <= truth <= mhigh
    return missed_arm, missed_mean, (mhigh - mlow) / (high - low)


@pytest.mark.parametrize("wins, ties", [(0.2, 0.6), (0.185, 0.58)])  # equal; 5 points worse (bench/rollout_sim)
def test_a_pairwise_score_against_a_known_half_covers_however_often_it_is_checked(wins, ties):
    """Both forms cover the win rate under continuous monitoring; the MeanArm one with the scores' variance.

    As a proportion Arm the score's variance is taken as p (1 - p), about 0.25, whatever the ties;
    as a MeanArm it is the 0 / 0.5 / 1 scores' own, (1 - ties) / 4 for an equal candidate (0.10 at
    60% ties): 2.5 times the information, and an interval as much narrower as the boundary says."""
    results = [_pairwise_stream(seed, wins, ties) for seed in range(STREAMS)]
    for form, misses in (("Arm", sum(r[0] for r in results)), ("MeanArm", sum(r[1] for r in results))):
        assert misses / STREAMS <= 0.05, f"{form}: missed the win rate in {misses} of {STREAMS} streams"
    mean = wins + ties / 2
    variance = wins + ties / 4 - mean * mean
    information = VERDICTS / variance, VERDICTS / (mean * (1 - mean))
    expected = half_width(information[0], 0.05, 0.02) / half_width(information[1], 0.05, 0.02)
    ratios = sorted(r[2] for r in results)
    assert ratios[STREAMS // 2] == pytest.approx(expected, rel=0.03)


def test_decide_takes_a_pairwise_score_as_means_against_a_known_half():
    """An equal candidate (60% ties) advances on the scores' variance where the proportion form still waits."""
    rng = random.Random(11)
    scores = [1.0 if u < 0.2 else 0.5 if u < 0.8 else 0.0 for u in (rng.random() for _ in range(12_000))]
    as_means = decide(MeanArm(KNOWN, 0.5, 0.0), MeanArm.of(scores), margin=0.01)
    as_arm = decide(Arm(KNOWN, KNOWN / 2), Arm(len(scores), sum(scores)), margin=0.01)
    assert as_means.action == ADVANCE and as_arm.action == CONTINUE
    assert as_means.primary_interval.half_width < 0.7 * as_arm.primary_interval.half_width
    assert as_means.samples["primary"] == (KNOWN, 12_000)
    worse = [1.0 if u < 0.14 else 0.5 if u < 0.7 else 0.0 for u in (rng.random() for _ in range(3_000))]  # 0.44
    assert decide(MeanArm(KNOWN, 0.5, 0.0), MeanArm.of(worse), margin=0.01).action == ROLLBACK


def test_a_one_sided_mixture_would_gain_little():
    """Why each end is the two-sided boundary at 2 alpha / (1 + alpha), not its own half-normal mixture.

    The half-normal mixture over the claim's side alone, 2 / sqrt(1 + x) exp(s^2 / 2A) Phi(s / sqrt(A))
    with A = I + 1 / tau^2, reaches 1 / alpha at a margin with about 1.2% less information at
    tau = 2 x margin: a second boundary for about 1% of the samples."""

    def one_sided(information: float, alpha: float, tau: float) -> float:
        a = information + 1 / (tau * tau)
        x = tau * tau * information

        def log_m(s: float) -> float:
            return math.log(2 / math.sqrt(1 + x)) + s * s / (2 * a) + math.log(0.5 * math.erfc(-s / math.sqrt(2 * a)))

        low, high = 0.0, half_width(information, one_sided_level(alpha), tau) * information
        assert log_m(high) >= math.log(1 / alpha)  # the two-sided end is valid, so never tighter
        for _ in range(100):
            mid = (low + high) / 2
            low, high = (mid, high) if log_m(mid) < math.log(1 / alpha) else (low, mid)
        return high / information

    def needed(width) -> float:
        low, high = 1.0, 1e9
        while high / low > 1 + 1e-9:
            mid = math.sqrt(low * high)
            low, high = (mid, high) if width(mid) > 0.02 else (low, mid)
        return high

    two = needed(lambda i: half_width(i, one_sided_level(0.05), 0.04))
    one = needed(lambda i: one_sided(i, 0.05, 0.04))
    assert 0.98 < one / two < 0.995
