"""The semantic cache's store: entries, an exact-key map, and a vector index per scope.

Each scope (route + tenant + system prompt + tools + answer-changing parameters) is its own
partition, so a search only ever sees entries the request may receive. A partition's vectors live in
an HNSW graph (usearch, float16) when usearch is installed: a search visits a few hundred vectors
instead of all of them, so it stays well under a millisecond at 100,000 entries, where scanning them
all takes about 9 ms (memory-bound). The graph is approximate: now and then it misses the nearest
neighbour, which makes a miss, never a wrong answer (the guards still judge every candidate).
Without usearch, or with `ann=False`, a partition keeps its vectors in one contiguous float32 array
and a search is one exact matrix-vector product.

Entries expire after their TTL (expired ones are never returned and are swept out) and the whole
store holds at most `max_entries`: inserting past the bound evicts the least recently used entry.
Not thread-safe: the plugin runs every call on one thread of its own, off the event loop.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

try:
    import numpy as np
except ImportError:  # no embeddings extra: only the exact tier runs, and it holds no vectors
    np = None


@dataclass
class Entry:
    id: int
    scope: str
    route: str
    exact_key: str
    text: str  # the user turns the entry answers
    facts: Any  # guards.Facts of `text`
    answer: dict[str, Any]
    expires_at: float
    request_id: str | None = None
    hits: int = 0
    indexed: bool = False  # its vector is in the scope's partition


class Vectors(Protocol):
    """One scope's vectors, by entry id."""

    def __len__(self) -> int: ...
    def add(self, key: int, vector: np.ndarray) -> None: ...
    def remove(self, key: int) -> None: ...
    def search(self, vector: np.ndarray, k: int) -> list[tuple[float, int]]: ...


class ExactVectors:
    """Rows 0..n-1 of a contiguous float32 array (grown by doubling; a removed row is filled by the last)."""

    def __init__(self, dimension: int, capacity: int = 64):
        self.vectors = np.zeros((capacity, dimension), np.float32)
        self.keys: list[int] = []
        self.rows: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: int, vector: np.ndarray) -> None:
        size = len(self.keys)
        if size == len(self.vectors):
            grown = np.zeros((2 * len(self.vectors), self.vectors.shape[1]), np.float32)
            grown[:size] = self.vectors
            self.vectors = grown
        self.vectors[size] = vector
        self.keys.append(key)
        self.rows[key] = size

    def remove(self, key: int) -> None:
        row, last = self.rows.pop(key), len(self.keys) - 1
        if row != last:
            moved = self.keys[last]
            self.vectors[row] = self.vectors[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()

    def search(self, vector: np.ndarray, k: int) -> list[tuple[float, int]]:
        size = len(self.keys)
        if not size:
            return []
        scores = self.vectors[:size] @ vector
        top = np.argpartition(-scores, k - 1)[:k] if size > k else np.arange(size)
        return [(float(scores[i]), self.keys[i]) for i in top]


class HnswVectors:
    """An HNSW graph of float16 vectors (usearch), inner product on unit vectors = cosine."""

    def __init__(self, dimension: int, connectivity: int = 16, expansion_add: int = 64, expansion_search: int = 64):
        from usearch.index import Index  # the embeddings extra

        self.index = Index(
            ndim=dimension,
            metric="ip",
            dtype="f16",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

    def __len__(self) -> int:
        return len(self.index)

    def add(self, key: int, vector: np.ndarray) -> None:
        self.index.add(key, vector)

    def remove(self, key: int) -> None:
        self.index.remove(key)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[float, int]]:
        if not len(self.index):
            return []
        matches = self.index.search(vector, k)
        return [(1.0 - float(d), int(key)) for key, d in zip(matches.keys, matches.distances)]


def ann_available() -> bool:
    return importlib.util.find_spec("usearch") is not None


class CacheIndex:
    def __init__(
        self, dimension: int | None, max_entries: int, clock: Callable[[], float] = time.time, ann: bool | None = None
    ):
        self.dimension = dimension
        self.max_entries = max_entries
        self.clock = clock
        self.ann = ann_available() if ann is None else ann
        self.evicted = 0
        self.expired = 0
        self._ids = itertools.count(1)
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self._exact: dict[str, Entry] = {}
        self._partitions: dict[str, Vectors] = {}

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
        for score, key in sorted(partition.search(vector, k), key=lambda pair: -pair[0]):
            entry = self._entries.get(key)
            if entry is None or score < min_score:
                continue
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

    def add(
        self,
        *,
        scope: str,
        route: str,
        exact_key: str,
        text: str,
        facts: Any,
        answer: dict,
        ttl: float,
        vector: np.ndarray | None,
        request_id: str | None = None,
        expires_at: float | None = None,
    ) -> Entry:
        """Store an answer (replacing an entry with the same exact key), evicting past the size bound.
        `expires_at` (an absolute time) overrides `ttl`, for an entry copied from another replica."""
        old = self._exact.get(exact_key)
        if old is not None:
            self._remove(old)
        entry = Entry(
            next(self._ids),
            scope,
            route,
            exact_key,
            text,
            facts,
            answer,
            expires_at if expires_at is not None else self.clock() + ttl,
            request_id,
        )
        self._entries[entry.id] = entry
        self._exact[exact_key] = entry
        if vector is not None and self.dimension:
            partition = self._partitions.get(scope)
            if partition is None:
                partition = self._partitions[scope] = (
                    HnswVectors(self.dimension) if self.ann else ExactVectors(self.dimension)
                )
            partition.add(entry.id, vector)
            entry.indexed = True
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

    def forget(self, request_ids: set[str]) -> int:
        """Remove the entries whose answer came from these exchanges (an erasure); how many went."""
        gone = [e for e in self._entries.values() if e.request_id in request_ids]
        for entry in gone:
            self._remove(entry)
        return len(gone)

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "scopes": len(self._partitions),
            "evicted": self.evicted,
            "expired": self.expired,
            "index": "hnsw" if self.ann else "exact",
        }

    def _touch(self, entry: Entry) -> None:
        self._entries.move_to_end(entry.id)

    def _remove(self, entry: Entry) -> None:
        self._entries.pop(entry.id, None)
        if self._exact.get(entry.exact_key) is entry:
            del self._exact[entry.exact_key]
        if entry.indexed:
            partition = self._partitions[entry.scope]
            partition.remove(entry.id)
            entry.indexed = False
            if not len(partition):
                del self._partitions[entry.scope]
