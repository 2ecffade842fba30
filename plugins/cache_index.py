"""The semantic cache's in-process store: entries, an exact-key map, and a vector index per scope.

Each scope (route + tenant + system prompt + tools + answer-changing parameters) is its own
partition, so a search only ever sees entries the request may receive. A partition keeps its
vectors in one contiguous float32 array (grown by doubling; a removed row is filled by the last
one), so a search is one matrix-vector product. Entries expire after their TTL (expired rows are
never returned and are swept out) and the whole store holds at most `max_entries`: inserting
past the bound evicts the least recently used entry. All methods run on the event loop's thread.
"""
from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Entry:
    id: int
    scope: str
    route: str
    exact_key: str
    text: str                      # the user turns the entry answers
    facts: Any                     # cache_guards.Facts of `text`
    answer: dict[str, Any]
    expires_at: float
    request_id: str | None = None
    hits: int = 0
    row: int = field(default=-1, repr=False)  # its row in the partition's array; -1 when not in the vector index


class Partition:
    """One scope's vectors, rows 0..size-1 of a contiguous array."""

    def __init__(self, dimension: int, capacity: int = 64):
        self.vectors = np.zeros((capacity, dimension), np.float32)
        self.entries: list[Entry] = []

    @property
    def size(self) -> int:
        return len(self.entries)

    def add(self, entry: Entry, vector: np.ndarray) -> None:
        if self.size == len(self.vectors):
            grown = np.zeros((2 * len(self.vectors), self.vectors.shape[1]), np.float32)
            grown[: self.size] = self.vectors
            self.vectors = grown
        entry.row = self.size
        self.vectors[entry.row] = vector
        self.entries.append(entry)

    def remove(self, entry: Entry) -> None:
        row, last = entry.row, self.size - 1
        if row != last:
            moved = self.entries[last]
            self.vectors[row] = self.vectors[last]
            self.entries[row] = moved
            moved.row = row
        self.entries.pop()
        entry.row = -1

    def search(self, vector: np.ndarray, k: int, min_score: float) -> list[tuple[float, Entry]]:
        """Up to k (score, entry) with score >= min_score, best first."""
        if not self.size:
            return []
        scores = self.vectors[: self.size] @ vector
        if self.size > k:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(self.size)
        top = top[np.argsort(-scores[top])]
        return [(float(scores[i]), self.entries[i]) for i in top if scores[i] >= min_score]


class CacheIndex:
    def __init__(self, dimension: int | None, max_entries: int, clock: Callable[[], float] = time.time):
        self.dimension = dimension
        self.max_entries = max_entries
        self.clock = clock
        self.evicted = 0
        self.expired = 0
        self._ids = itertools.count(1)
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self._exact: dict[str, Entry] = {}
        self._partitions: dict[str, Partition] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def exact(self, key: str) -> Entry | None:
        entry = self._exact.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock():
            self._remove(entry)
            self.expired += 1
            return None
        self._touch(entry)
        return entry

    def search(self, scope: str, vector: np.ndarray, k: int, min_score: float) -> list[tuple[float, Entry]]:
        """The nearest live entries of `scope` scoring at least `min_score`, best first."""
        partition = self._partitions.get(scope)
        if partition is None:
            return []
        now = self.clock()
        found = []
        for score, entry in partition.search(vector, k, min_score):
            if entry.expires_at <= now:
                self._remove(entry)
                self.expired += 1
                continue
            found.append((score, entry))
        return found

    def touch(self, entry: Entry) -> None:
        """A hit: the entry becomes the most recently used."""
        entry.hits += 1
        self._touch(entry)

    def add(self, *, scope: str, route: str, exact_key: str, text: str, facts: Any, answer: dict,
            ttl: float, vector: np.ndarray | None, request_id: str | None = None) -> Entry:
        """Store an answer (replacing an entry with the same exact key), evicting past the size bound."""
        old = self._exact.get(exact_key)
        if old is not None:
            self._remove(old)
        entry = Entry(next(self._ids), scope, route, exact_key, text, facts, answer, self.clock() + ttl, request_id)
        self._entries[entry.id] = entry
        self._exact[exact_key] = entry
        if vector is not None and self.dimension:
            partition = self._partitions.get(scope)
            if partition is None:
                partition = self._partitions[scope] = Partition(self.dimension)
            partition.add(entry, vector)
        while len(self._entries) > self.max_entries:
            _, oldest = next(iter(self._entries.items()))
            self._remove(oldest)
            self.evicted += 1
        return entry

    def sweep(self) -> int:
        """Remove every expired entry; how many went."""
        now = self.clock()
        gone = [e for e in self._entries.values() if e.expires_at <= now]
        for entry in gone:
            self._remove(entry)
        self.expired += len(gone)
        return len(gone)

    def clear(self, route: str | None = None) -> int:
        """Invalidate one route's entries (every entry when None); how many went."""
        gone = [e for e in self._entries.values() if route is None or e.route == route]
        for entry in gone:
            self._remove(entry)
        return len(gone)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "scopes": len(self._partitions), "evicted": self.evicted,
                "expired": self.expired}

    def _touch(self, entry: Entry) -> None:
        self._entries.move_to_end(entry.id)

    def _remove(self, entry: Entry) -> None:
        self._entries.pop(entry.id, None)
        if self._exact.get(entry.exact_key) is entry:
            del self._exact[entry.exact_key]
        if entry.row >= 0:
            partition = self._partitions[entry.scope]
            partition.remove(entry)
            if not partition.size:
                del self._partitions[entry.scope]
