"""Sticky allocation: percent changes only ever move users between a candidate and the baseline."""

import random

import pytest

from gateway.allocation import BUCKETS, Allocation, bucket_of


def assignment(alloc: Allocation) -> list:
    return [alloc.variant_for(b) for b in range(BUCKETS)]


def test_bucket_is_stable_and_uniform():
    assert bucket_of("bot", "user:alice") == bucket_of("bot", "user:alice")
    same_decile = sum(
        bucket_of("bot", f"user:{i}") * 10 // BUCKETS == bucket_of("other", f"user:{i}") * 10 // BUCKETS
        for i in range(5_000)
    )
    assert 350 < same_decile < 650, "routes bucket users independently (about 10% share a decile by chance)"
    counts = [0] * 10
    for i in range(20_000):
        counts[bucket_of("bot", f"user:{i}") * 10 // BUCKETS] += 1
    assert all(1_800 < c < 2_200 for c in counts), counts


def test_percents_are_exact():
    alloc = Allocation().set_percent("a", 10).set_percent("b", 2.5)
    assert alloc.percents() == {"a": 10.0, "b": 2.5}
    assigned = assignment(alloc)
    assert assigned.count("a") == 1000 and assigned.count("b") == 250 and assigned.count(None) == 8750


def test_random_changes_only_move_users_to_or_from_the_baseline():
    rng = random.Random(7)
    alloc = Allocation()
    before = assignment(alloc)
    for _ in range(300):
        name = rng.choice("abc")
        others = sum(alloc.percent(n) for n in "abc" if n != name)
        percent = round(rng.uniform(0, 100 - others), 2)
        raising = percent >= alloc.percent(name)
        alloc = alloc.set_percent(name, percent)
        after = assignment(alloc)
        for old, new in zip(before, after):
            if old != new:
                if raising:
                    assert old is None and new == name, "a raise takes users from the baseline only"
                else:
                    assert old == name and new is None, "a cut gives users back to the baseline only"
        assert after.count(name) == round(percent * 100)
        before = after


def test_over_allocation_is_refused():
    alloc = Allocation().set_percent("a", 70)
    with pytest.raises(ValueError, match="other candidates hold 70%"):
        alloc.set_percent("b", 40)
    with pytest.raises(ValueError):
        alloc.set_percent("a", 101)


def test_json_round_trip():
    alloc = Allocation().set_percent("a", 12.34).set_percent("b", 5)
    assert Allocation.from_json(alloc.to_json()) == alloc
    assert Allocation.from_json(alloc.set_percent("a", 0).to_json()).percents() == {"b": 5.0}
