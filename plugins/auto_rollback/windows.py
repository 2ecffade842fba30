"""Sliding windows of what each route's variants did: the figures auto-rollback judges.

Per (route, variant) and per second: attempts, errors, a latency histogram, cost, and reported
scores, kept as flat counters (`n`, `e`, `l<bucket>`, `c`, `cn`, `s:<name>`, `q:<name>`,
`k:<name>`) so that seconds, and replicas, merge by addition. Latency goes into fixed
log-spaced buckets, not raw samples, so a p95 over many replicas' traffic is exact up to the
bucket width (10%) instead of an average of percentiles.

Alone (no Redis) the counters live in memory. Shared (`state.redis_url`), each replica adds to
local counters and a flusher moves its per-second deltas into Redis hashes every ~250 ms
(HINCRBY with EXPIRE), so whichever replica evaluates sees every replica's traffic. Recording
never waits on anything: it only adds to a dict.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from evaluators.stats import Z95, wilson_interval

GROWTH = 1.1  # each latency bucket is 10% wider than the one before
TOP_BUCKET = 160  # 1.1**159 ms is about an hour: everything slower shares the last bucket
# One shared name per latency bucket: formatting the name per call would leave a copy of it in every
# second's counters (about 40% of their memory, kept for the whole retention).
LATENCY_FIELDS = tuple(f"l{i}" for i in range(TOP_BUCKET + 1))
TTFT_FIELDS = tuple(f"t{i}" for i in range(TOP_BUCKET + 1))  # time to first token, streamed answers
REDIS_PREFIX = "llmgate:win:"
REDIS_PAIRS = "llmgate:win:pairs"


# --- latency histogram --------------------------------------------------------------------------


def latency_bucket(ms: float) -> int:
    """Bucket 0 holds [0, 1) ms; bucket i >= 1 holds [1.1**(i-1), 1.1**i) ms."""
    if ms < 1:
        return 0
    return min(TOP_BUCKET, int(math.log(ms) / math.log(GROWTH)) + 1)


def bucket_bounds(i: int) -> tuple[float, float]:
    return (0.0, 1.0) if i == 0 else (GROWTH ** (i - 1), GROWTH**i)


def _within(i: int, share: float) -> float:
    """The value `share` (0..1) of the way through bucket i: linear in bucket 0, geometric above."""
    low, high = bucket_bounds(i)
    return low + share * (high - low) if i == 0 else low * (high / low) ** share


def quantile(histogram: Mapping[int, float], q: float) -> float | None:
    """The q-quantile of a histogram, interpolated inside the bucket it falls in; None when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for i in sorted(histogram):
        count = histogram[i]
        if count and seen + count >= rank:
            return _within(i, (rank - seen) / count)
        seen += count
    return _within(max(histogram), 1.0)


def count_above(histogram: Mapping[int, float], threshold: float) -> float:
    """How many samples exceed `threshold` (the bucket holding it is split the way `quantile` reads it)."""
    above = 0.0
    for i, count in histogram.items():
        low, high = bucket_bounds(i)
        if low >= threshold:
            above += count
        elif high > threshold:
            share = (high - threshold) / (high - low) if i == 0 else math.log(high / threshold) / math.log(high / low)
            above += count * share
    return above


# --- significance ---------------------------------------------------------------------------------


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_proportion_p(x1: float, n1: float, x2: float, n2: float) -> float:
    """One-sided p-value that rate 1 (x1 of n1) is higher than rate 2 (x2 of n2): pooled z-test."""
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0  # both all-success or both all-failure: no evidence of a difference
    return normal_sf((x1 / n1 - x2 / n2) / se)


def rate_above_p(x: float, n: float, p0: float) -> float:
    """One-sided p-value that the true rate behind x of n is higher than p0 (normal approximation)."""
    if n <= 0:
        return 1.0
    if p0 <= 0:
        return 0.0 if x > 0 else 1.0
    if p0 >= 1:
        return 1.0
    return normal_sf((x / n - p0) / math.sqrt(p0 * (1 - p0) / n))


def mean_below_p(mean: float, sd: float, n: float, floor: float) -> float:
    """One-sided p-value that the true mean behind `mean` (n samples, spread sd) is below `floor`."""
    if n <= 0:
        return 1.0
    if sd <= 0:
        return 0.0 if mean < floor else 1.0
    return normal_sf((floor - mean) / (sd / math.sqrt(n)))


# --- figures ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    """One variant's counters over a span of seconds, merged from any number of buckets and replicas."""

    requests: int = 0
    errors: int = 0
    latency: dict[int, float] = field(default_factory=dict)
    cost_sum: float = 0.0
    cost_n: int = 0
    cost_squares: float = 0.0
    ttft: dict[int, float] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, sum of squares, count]

    def add(self, fields: Mapping[str, Any]) -> "Figures":
        for name, raw in fields.items():
            value = float(raw)
            if name == "n":
                self.requests += int(value)
            elif name == "e":
                self.errors += int(value)
            elif name == "c":
                self.cost_sum += value
            elif name == "cn":
                self.cost_n += int(value)
            elif name == "cq":
                self.cost_squares += value
            elif name[0] in "lt" and name[1:].isdigit():
                i = int(name[1:])
                histogram = self.latency if name[0] == "l" else self.ttft
                histogram[i] = histogram.get(i, 0) + value
            elif name[:2] in ("s:", "q:", "k:"):
                entry = self.scores.setdefault(name[2:], [0.0, 0.0, 0.0])
                entry["sqk".index(name[0])] += value
        return self

    def counters(self) -> dict[str, float]:
        """The flat counters `add` reads back: how a closed step's figures are kept with its schedule."""
        out: dict[str, float] = {"n": self.requests, "e": self.errors, "c": self.cost_sum, "cn": self.cost_n}
        out["cq"] = self.cost_squares
        out.update({LATENCY_FIELDS[i]: v for i, v in self.latency.items()})
        out.update({TTFT_FIELDS[i]: v for i, v in self.ttft.items()})
        for name, (total, squares, n) in self.scores.items():
            out.update({f"s:{name}": total, f"q:{name}": squares, f"k:{name}": n})
        return out

    @classmethod
    def merged(cls, buckets: Iterable[Mapping[str, Any]]) -> "Figures":
        figures = cls()
        for fields in buckets:
            figures.add(fields)
        return figures

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def latency_n(self) -> int:
        return int(sum(self.latency.values()))

    @property
    def p95_ms(self) -> float | None:
        return quantile(self.latency, 0.95)

    @property
    def cost_per_request(self) -> float | None:
        return self.cost_sum / self.cost_n if self.cost_n else None

    @property
    def ttft_n(self) -> int:
        return int(sum(self.ttft.values()))

    @property
    def p95_ttft_ms(self) -> float | None:
        return quantile(self.ttft, 0.95)

    def score(self, name: str) -> tuple[float, float, int] | None:
        """(mean, standard deviation, count) of a reported score; None when none was reported."""
        total, squares, n = self.scores.get(name, (0.0, 0.0, 0.0))
        if n <= 0:
            return None
        mean = total / n
        return mean, math.sqrt(max(0.0, squares / n - mean * mean)), int(n)

    def summary(self) -> dict[str, Any]:
        """The figures an operator reads, each with its sample count and 95% interval: an error rate's
        Wilson interval, a p95's from the ranks a binomial puts it between, a mean's from its spread."""

        def r(value, digits):
            return None if value is None else round(value, digits)

        def band(interval, digits):
            return None if interval is None else [r(interval[0], digits), r(interval[1], digits)]

        out = {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": r(self.error_rate, 4),
            "error_rate_interval": band(wilson_interval(self.errors, self.requests), 4),
            "p95_ms": r(self.p95_ms, 1),
            "p95_ms_interval": band(quantile_interval(self.latency, 0.95), 1),
            "latency_n": self.latency_n,
            "cost_per_request": r(self.cost_per_request, 8),
            "cost_per_request_interval": band(
                _mean_interval(self.cost_sum, self.cost_squares, self.cost_n) if self.cost_squares else None, 8
            ),
            "cost_n": self.cost_n,
        }
        if self.ttft_n:
            out.update(
                p95_ttft_ms=r(self.p95_ttft_ms, 1),
                p95_ttft_ms_interval=band(quantile_interval(self.ttft, 0.95), 1),
                ttft_n=self.ttft_n,
            )
        for name in sorted(self.scores):
            if (found := self.score(name)) is not None:
                total, squares, n = self.scores[name]
                out[name] = round(found[0], 4)
                out[f"{name}_interval"] = band(_mean_interval(total, squares, n), 4)
                out[f"{name}_n"] = found[2]
        return out


def quantile_interval(histogram: Mapping[int, float], q: float, z: float = Z95) -> tuple[float, float] | None:
    """A distribution-free 95% interval for the q-quantile: the values at the ranks a binomial(n, q) puts
    the quantile's rank between (n q +- z sqrt(n q (1 - q)))."""
    n = sum(histogram.values())
    if n < 2:
        return None
    spread = z * math.sqrt(q * (1 - q) / n)
    low, high = quantile(histogram, max(0.0, q - spread)), quantile(histogram, min(1.0, q + spread))
    return None if low is None or high is None else (low, high)


def _mean_interval(total: float, squares: float, n: float, z: float = Z95) -> tuple[float, float] | None:
    if n < 2:
        return None
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    spread = z * math.sqrt(variance / n)
    return mean - spread, mean + spread


def _is_float_field(name: str) -> bool:
    """Cost and score sums are fractions; every other field counts."""
    return name in ("c", "cq") or name[:2] in ("s:", "q:")


def is_error(status: int) -> bool:
    """An attempt the backend is to blame for: 5xx, 429, or a timeout (408); a caller's 4xx is not."""
    return status >= 500 or status in (408, 429)


# --- the windows -----------------------------------------------------------------------------------


class Windows:
    """Per-second counters per (route, variant): in memory alone, flushed to Redis when shared."""

    def __init__(self, redis=None, retention_seconds: float = 600):
        self.redis = redis  # a redis.asyncio client, or None for local mode
        self.retention_seconds = retention_seconds
        # local mode: the data itself; shared mode: deltas not yet flushed
        self._buckets: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        self._seen: set[tuple[str, str]] = set()

    @property
    def shared(self) -> bool:
        return self.redis is not None

    # recording: called on the request path, so only dictionary arithmetic

    def _add(self, route: str, variant: str, fields: Mapping[str, float], now: float | None) -> None:
        second = int(time.time() if now is None else now)
        bucket = self._buckets.setdefault((route, variant), {}).setdefault(second, {})
        for name, value in fields.items():
            bucket[name] = bucket.get(name, 0) + value

    def record_attempt(
        self, route: str, variant: str, status: int, latency_ms: float | None, now: float | None = None
    ) -> None:
        """One call to a backend (or one answer from a plugin); latency counts only when it succeeded."""
        fields = {"n": 1}
        if is_error(status):
            fields["e"] = 1
        elif status < 400 and latency_ms is not None:
            fields[LATENCY_FIELDS[latency_bucket(latency_ms)]] = 1
        self._add(route, variant, fields, now)

    def record_cost(self, route: str, variant: str, cost_usd: float, now: float | None = None) -> None:
        self._add(route, variant, {"c": cost_usd, "cn": 1, "cq": cost_usd * cost_usd}, now)

    def record_ttft(self, route: str, variant: str, ms: float, now: float | None = None) -> None:
        """A streamed answer's time to its first token."""
        self._add(route, variant, {TTFT_FIELDS[latency_bucket(ms)]: 1}, now)

    def record_score(self, route: str, variant: str, name: str, value: float, now: float | None = None) -> None:
        self._add(route, variant, {f"s:{name}": value, f"q:{name}": value * value, f"k:{name}": 1}, now)

    # reading

    @staticmethod
    def _seconds(since: float, until: float) -> range:
        """The seconds that [since, until] touches, both ends' seconds included."""
        return range(int(since), int(until) + 1)

    @staticmethod
    def _key(route: str, variant: str, second: int) -> str:
        return REDIS_PREFIX + json.dumps([route, variant, second], separators=(",", ":"))

    async def read(self, route: str, variant: str, since: float, until: float | None = None) -> Figures:
        """Every replica's counters for one variant between two times (seconds since the epoch)."""
        seconds = self._seconds(since, time.time() if until is None else until)
        if not self.shared:
            stored = self._buckets.get((route, variant), {})
            return Figures.merged(stored[s] for s in seconds if s in stored)
        async with self.redis.pipeline(transaction=False) as pipe:
            for second in seconds:
                pipe.hgetall(self._key(route, variant, second))
            return Figures.merged(await pipe.execute())

    async def variants(self) -> set[tuple[str, str]]:
        """Every (route, variant) that has counters."""
        if not self.shared:
            return set(self._buckets)
        members = await self.redis.smembers(REDIS_PAIRS)
        return {tuple(json.loads(m)) for m in members} | self._seen

    # upkeep

    def prune(self, now: float | None = None) -> None:
        """Forget seconds older than the retention (local mode, or deltas kept while Redis was away)."""
        oldest = (time.time() if now is None else now) - self.retention_seconds
        for pair, seconds in list(self._buckets.items()):
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]
            if not seconds:
                del self._buckets[pair]

    async def flush(self) -> None:
        """Move the pending deltas into Redis; on failure keep them for the next try."""
        if not self.shared or not self._buckets:
            return
        pending, self._buckets = self._buckets, {}
        ttl = max(1, int(self.retention_seconds))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (route, variant), seconds in pending.items():
                    pipe.sadd(REDIS_PAIRS, json.dumps([route, variant]))
                    for second, fields in seconds.items():
                        key = self._key(route, variant, second)
                        for name, value in fields.items():
                            if _is_float_field(name):
                                pipe.hincrbyfloat(key, name, float(value))
                            else:
                                pipe.hincrby(key, name, int(value))
                        pipe.expire(key, ttl)
                pipe.expire(REDIS_PAIRS, ttl)
                await pipe.execute()
            self._seen |= set(pending)
        except Exception as exc:
            for pair, seconds in pending.items():  # put them back, merged with what arrived meanwhile
                mine = self._buckets.setdefault(pair, {})
                for second, fields in seconds.items():
                    bucket = mine.setdefault(second, {})
                    for name, value in fields.items():
                        bucket[name] = bucket.get(name, 0) + value
            self.prune()
            raise ConnectionError(f"window flush to redis failed: {exc}") from exc
