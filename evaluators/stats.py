"""The statistics a deploy gate needs: a win rate with its confidence interval, and percentiles."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval


def win_rate(wins: int, losses: int, ties: int) -> float | None:
    """The candidate's share of judged comparisons, a tie counting half a win.

    Splitting ties keeps "as good as the baseline" at exactly 50%: counting ties as losses would
    fail a candidate that matches the baseline everywhere, counting them as wins would pass it,
    and dropping them would let a handful of decisive cases speak for a mostly tied run."""
    judged = wins + losses + ties
    return (wins + ties / 2) / judged if judged else None


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion of `successes` out of `n` (95% by default).

    Wilson rather than the normal approximation because it stays inside [0, 1] and keeps its
    coverage near 0 and 1 and for small samples, which is where a gate's decisions are made.
    With ties split, `successes` may be fractional: a tie contributes less variance than a coin
    flip between win and loss, so treating the split count as binomial errs on the wide side."""
    if n <= 0:
        return None
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    # At 0 and n the bound is exactly 0 or 1; the float arithmetic can land a hair inside it.
    low = 0.0 if successes <= 0 else max(0.0, (centre - spread) / denominator)
    high = 1.0 if successes >= n else min(1.0, (centre + spread) / denominator)
    return low, high


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(v for v in values if v is not None)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else None


def mean_interval(values: list[float | None], z: float = Z95) -> dict | None:
    """The mean of the known values with its 95% interval (normal approximation: mean +- z s / sqrt(n))
    and their count; the interval is None below two values. An operator reads a difference with the
    sample count and interval beside it, so "the shadow is 80 ms slower" over 5 requests reads as noise."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    n = len(known)
    mean = sum(known) / n
    if n < 2:
        return {"mean": mean, "interval": None, "n": n}
    spread = z * math.sqrt(sum((v - mean) ** 2 for v in known) / (n - 1) / n)
    return {"mean": mean, "interval": [mean - spread, mean + spread], "n": n}


def rate_interval(hits: int, n: int) -> dict | None:
    """A proportion with its Wilson interval and its count (None when nothing was counted)."""
    if n <= 0:
        return None
    return {"rate": hits / n, "interval": list(wilson_interval(hits, n)), "n": n}
