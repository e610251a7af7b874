"""TimeBuckets (signalling/buckets.py): "who is older than T" in O(answer)."""

from __future__ import annotations

import pytest

from signalling.buckets import TimeBuckets


def filled(times: dict[str, float], width: float = 10.0) -> TimeBuckets[str]:
    buckets: TimeBuckets[str] = TimeBuckets(width)
    for key, time in times.items():
        buckets.touch(key, time)
    return buckets


def test_a_bucket_width_must_be_positive() -> None:
    for width in (0.0, -1.0):
        with pytest.raises(ValueError, match="width must be positive"):
            TimeBuckets[str](width)


def test_an_empty_index_has_no_candidates() -> None:
    buckets: TimeBuckets[str] = TimeBuckets(1.0)

    assert len(buckets) == 0
    assert list(buckets.candidates(1e12)) == []


def test_touched_keys_are_counted_and_contained() -> None:
    buckets = filled({"a": 1.0, "b": 15.0})

    assert len(buckets) == 2
    assert "a" in buckets and "b" in buckets
    assert "c" not in buckets


def test_touching_a_key_again_does_not_duplicate_it() -> None:
    buckets = filled({"a": 1.0})
    buckets.touch("a", 2.0)
    buckets.touch("a", 25.0)

    assert len(buckets) == 1
    assert list(buckets.candidates(100.0)) == ["a"]


def test_touch_moves_a_key_forward() -> None:
    buckets = filled({"a": 1.0})

    buckets.touch("a", 35.0)

    assert list(buckets.candidates(25.0)) == []
    assert list(buckets.candidates(35.0)) == ["a"]


def test_touch_never_moves_a_key_back() -> None:
    buckets = filled({"a": 35.0})

    buckets.touch("a", 1.0)

    assert list(buckets.candidates(25.0)) == []
    assert list(buckets.candidates(35.0)) == ["a"]


def test_candidates_are_every_key_older_than_the_cutoff_plus_at_most_the_boundary_bucket() -> None:
    width = 10.0
    times = {f"k{t}": float(t) for t in range(100)}
    buckets = filled(times, width)

    for cutoff in (0.0, 0.5, 9.99, 10.0, 45.0, 49.99, 50.0, 99.0, 150.0):
        found = list(buckets.candidates(cutoff))
        older = {key for key, time in times.items() if time < cutoff}
        boundary_end = (cutoff // width + 1) * width
        assert older <= set(found), cutoff
        assert all(times[key] < boundary_end for key in found), cutoff
        assert len(found) == len(set(found)), cutoff


def test_candidates_leave_the_keys_in_place() -> None:
    buckets = filled({"a": 1.0, "b": 2.0})

    assert sorted(buckets.candidates(50.0)) == ["a", "b"]
    assert sorted(buckets.candidates(50.0)) == ["a", "b"]
    assert len(buckets) == 2


def test_a_removed_key_is_gone_and_removing_it_again_is_harmless() -> None:
    buckets = filled({"a": 1.0, "b": 2.0})

    buckets.remove("a")
    buckets.remove("a")
    buckets.remove("never-there")

    assert "a" not in buckets and len(buckets) == 1
    assert list(buckets.candidates(50.0)) == ["b"]


def test_a_removed_key_may_be_touched_back_in_at_an_earlier_time() -> None:
    buckets = filled({"a": 55.0})

    buckets.remove("a")
    buckets.touch("a", 5.0)

    assert list(buckets.candidates(9.0)) == ["a"]


def test_candidates_are_a_snapshot_the_caller_may_change_while_iterating() -> None:
    buckets = filled({f"k{i}": float(i) for i in range(50)}, width=5.0)

    visited = []
    for key in buckets.candidates(30.0):
        visited.append(key)
        index = int(key[1:])
        if index % 2:
            buckets.remove(key)
        else:
            buckets.touch(key, 1000.0 + index)
        buckets.touch(f"new{index}", float(index))  # new keys during iteration too

    assert sorted(visited) == sorted(f"k{i}" for i in range(35))
    assert not any(f"k{i}" in buckets for i in range(1, 35, 2))
    assert sorted(buckets.candidates(30.0)) == sorted(f"new{i}" for i in range(35))


def test_a_bucket_emptied_and_refilled_still_yields_its_keys() -> None:
    buckets = filled({"a": 5.0})
    buckets.touch("a", 15.0)  # bucket 0 emptied, its index still in the heap
    buckets.touch("b", 5.0)  # bucket 0 again

    assert sorted(buckets.candidates(9.0)) == ["b"]
    assert list(buckets.candidates(9.0)) == ["b"]

    buckets.remove("b")
    assert list(buckets.candidates(9.0)) == []  # index 0 now forgotten
    buckets.touch("c", 5.0)  # and re-created
    assert list(buckets.candidates(9.0)) == ["c"]


def test_negative_and_fractional_times_are_bucketed_correctly() -> None:
    buckets = filled({"past": -0.5, "zero": 0.0, "later": 0.75}, width=0.25)

    assert list(buckets.candidates(-0.3)) == ["past"]
    assert sorted(buckets.candidates(0.1)) == ["past", "zero"]
    assert sorted(buckets.candidates(0.75)) == ["later", "past", "zero"]


def test_emptied_buckets_are_forgotten() -> None:
    buckets = filled({f"k{i}": float(i) for i in range(100)}, width=1.0)
    for i in range(100):
        buckets.remove(f"k{i}")

    assert list(buckets.candidates(1000.0)) == []
    assert buckets._heap == [] and buckets._in_heap == set() and buckets._buckets == {}


def test_a_long_run_with_periodic_candidates_keeps_the_internal_heap_small() -> None:
    # 1,000 keys touched round-robin (100,000 touches), as sessions heard over time;
    # the caller asks for the keys older than 15 s every simulated second.
    buckets: TimeBuckets[int] = TimeBuckets(1.0)
    now = 0.0
    largest_heap = 0
    for step in range(100_000):
        now = step * 0.01
        buckets.touch(step % 1000, now)
        if step % 100 == 0:
            for key in buckets.candidates(now - 15.0):
                buckets.remove(key)  # ended, as silent sessions are
            largest_heap = max(largest_heap, len(buckets._heap))

    assert len(buckets) == 1000
    assert largest_heap <= 32
    assert len(buckets._heap) <= 32
    assert len(buckets._in_heap) == len(buckets._heap)
    assert len(buckets._buckets) <= 32


def test_keys_touched_within_one_bucket_cost_no_reshuffling() -> None:
    buckets = filled({"a": 10.0})
    heap_before = list(buckets._heap)

    for i in range(1000):
        buckets.touch("a", 10.0 + i * 0.001)

    assert buckets._heap == heap_before
    assert list(buckets._buckets) == [1]
