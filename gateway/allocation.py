"""Which users a route sends to which candidate: sticky buckets that only ever move to or from the baseline.

Every sticky key hashes to one of 10,000 buckets (a stable hash, identical on every replica).
A route's allocation says which buckets belong to which candidate; the rest serve the baseline.
Raising a candidate's percent takes buckets from the baseline's pool only; lowering it gives
buckets back to that pool. So raising 10% to 25% moves users from baseline to candidate and
never between candidates, whatever the order of changes, and lowering never moves a user onto
another candidate. Buckets are kept as sorted, non-overlapping [start, end) ranges.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

BUCKETS = 10_000


def bucket_of(route: str, sticky_key: str) -> int:
    digest = hashlib.sha256(f"{route}\x1f{sticky_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


Ranges = list[tuple[int, int]]


def _size(ranges: Ranges) -> int:
    return sum(end - start for start, end in ranges)


def _merge(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def _take_lowest(ranges: Ranges, count: int) -> tuple[Ranges, Ranges]:
    """Split off the `count` lowest buckets of `ranges`: (taken, remaining)."""
    taken: Ranges = []
    remaining: Ranges = []
    for start, end in ranges:
        if count <= 0:
            remaining.append((start, end))
            continue
        width = min(count, end - start)
        taken.append((start, start + width))
        if start + width < end:
            remaining.append((start + width, end))
        count -= width
    return taken, remaining


def _take_highest(ranges: Ranges, count: int) -> tuple[Ranges, Ranges]:
    """Split off the `count` highest buckets of `ranges`: (taken, remaining)."""
    taken, remaining = _take_lowest([(BUCKETS - e, BUCKETS - s) for s, e in reversed(ranges)], count)
    flip = lambda rs: _merge([(BUCKETS - e, BUCKETS - s) for s, e in rs])  # noqa: E731
    return flip(taken), flip(remaining)


@dataclass
class Allocation:
    """The candidates' buckets of one route; everything unallocated belongs to the baseline."""

    ranges: dict[str, Ranges] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict | None) -> "Allocation":
        return cls({name: [tuple(r) for r in rs] for name, rs in (data or {}).items()})

    def to_json(self) -> dict:
        return {name: [list(r) for r in rs] for name, rs in self.ranges.items() if rs}

    def percent(self, candidate: str) -> float:
        return _size(self.ranges.get(candidate, [])) * 100 / BUCKETS

    def percents(self) -> dict[str, float]:
        return {name: self.percent(name) for name in self.ranges if self.ranges[name]}

    def free(self) -> Ranges:
        used = _merge([r for rs in self.ranges.values() for r in rs])
        free, cursor = [], 0
        for start, end in used:
            if start > cursor:
                free.append((cursor, start))
            cursor = end
        if cursor < BUCKETS:
            free.append((cursor, BUCKETS))
        return free

    def set_percent(self, candidate: str, percent: float) -> "Allocation":
        """A new allocation with `candidate` at `percent`; raises ValueError if the baseline has too few buckets."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be between 0 and 100, got {percent}")
        target = round(percent * BUCKETS / 100)
        ranges = {name: list(rs) for name, rs in self.ranges.items()}
        current = ranges.get(candidate, [])
        have = _size(current)
        if target > have:
            free = self.free()
            if _size(free) < target - have:
                others = sum(self.percent(n) for n in ranges if n != candidate)
                raise ValueError(f"cannot give '{candidate}' {percent:g}%: other candidates hold {others:g}%")
            taken, _ = _take_lowest(free, target - have)
            ranges[candidate] = _merge(current + taken)
        elif target < have:
            _, kept = _take_highest(current, have - target)  # its highest buckets go back to the baseline
            ranges[candidate] = kept
        return Allocation({name: rs for name, rs in ranges.items() if rs})

    def variant_for(self, bucket: int) -> str | None:
        """The candidate that owns `bucket`, or None for the baseline."""
        for name, rs in self.ranges.items():
            i = bisect.bisect_right(rs, (bucket, BUCKETS)) - 1
            if i >= 0 and rs[i][0] <= bucket < rs[i][1]:
                return name
        return None
