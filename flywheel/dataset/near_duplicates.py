"""Finding texts that are the same but for small edits (case, punctuation, spacing, a few words).

Two tiers: texts equal once normalised (case folded, punctuation and runs of spaces dropped) are
duplicates outright; otherwise MinHash signatures over character 5-grams (one-permutation
hashing: each 5-gram's mixed hash goes to one of 32 bins, a bin keeps its minimum, so a text
costs one pass over its 5-grams), banded for locality-sensitive lookup, propose candidates, and
a candidate is a duplicate when the exact Jaccard similarity of the two 5-gram sets reaches
`threshold`. The bands only find candidates; the exact check decides. Deterministic (no salted
hashes), so the same input keeps the same texts on every run.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from array import array

SHINGLE = 5
BINS = 32
BANDS = 8  # 8 bands of 4 bins: a pair at Jaccard 0.85 becomes a candidate with probability about 0.997
_EMPTY = 1 << 32
_MIX = 0x9E3779B1  # an odd constant: multiplying by it mod 2**32 spreads crc32's bits into the top ones
_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return _NOT_WORD.sub(" ", text.casefold()).strip()


def shingles(normalised: str) -> set[int]:
    if len(normalised) <= SHINGLE:
        return {zlib.crc32(normalised.encode())}
    data = normalised.encode()
    return set(map(zlib.crc32, [data[i : i + SHINGLE] for i in range(len(data) - SHINGLE + 1)]))


def signature(hashes: set[int]) -> list[int]:
    """The minimum mixed hash in each of BINS bins (the top bits pick the bin); _EMPTY where none fell."""
    sig = [_EMPTY] * BINS
    for h in hashes:
        mixed = (h * _MIX) & 0xFFFFFFFF
        slot = mixed >> 27
        if mixed < sig[slot]:
            sig[slot] = mixed
    return sig


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """Texts seen so far; `seen(text)` says whether a text duplicates one of them, else remembers it."""

    def __init__(self, threshold: float = 0.85):
        if not 0 < threshold <= 1:
            raise ValueError("the near-duplicate threshold is a Jaccard similarity in (0, 1]")
        self.threshold = threshold
        self._normalised: set[str] = set()
        self._shingles: list[array] = []  # 4 bytes a 5-gram: about 1 KB per kept text
        self._buckets: dict[tuple[int, bytes], list[int]] = {}

    def seen(self, text: str) -> bool:
        normalised = normalise(text)
        key = hashlib.sha256(normalised.encode()).hexdigest()
        if key in self._normalised:
            return True
        grams = shingles(normalised)
        rows = BINS // BANDS
        sig = signature(grams)
        bands = [
            (band, hashlib.blake2b(repr(sig[band * rows : (band + 1) * rows]).encode(), digest_size=8).digest())
            for band in range(BANDS)
        ]
        checked: set[int] = set()
        for band in bands:
            for index in self._buckets.get(band, ()):
                if index not in checked:
                    checked.add(index)
                    if jaccard(grams, set(self._shingles[index])) >= self.threshold:
                        return True
        self._normalised.add(key)
        self._shingles.append(array("I", grams))
        for band in bands:
            self._buckets.setdefault(band, []).append(len(self._shingles) - 1)
        return False
