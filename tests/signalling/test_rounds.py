"""SpreadRound: periodic work over many items, a share per tick (fake clock)."""

from __future__ import annotations

import pytest

from signalling.rounds import SpreadRound


def test_nothing_is_handed_out_before_the_first_round_is_due() -> None:
    round_: SpreadRound[int] = SpreadRound(2.0, 0.1, first_at=2.0)
    assert round_.take(1.9, lambda: range(100)) == []


def test_a_round_is_spread_over_the_ticks_of_its_interval_in_order() -> None:
    round_: SpreadRound[int] = SpreadRound(2.0, 0.1, first_at=0.0)
    shares = [round_.take(tick * 0.1, lambda: range(1000)) for tick in range(20)]

    assert [len(share) for share in shares] == [50] * 20
    assert [item for share in shares for item in share] == list(range(1000))


def test_each_item_keeps_its_place_round_after_round() -> None:
    round_: SpreadRound[str] = SpreadRound(1.0, 0.25, first_at=0.0)
    items = ["a", "b", "c", "d", "e", "f", "g", "h"]
    visits: dict[str, list[float]] = {item: [] for item in items}
    for tick in range(12):
        now = tick * 0.25
        for item in round_.take(now, lambda: items):
            visits[item].append(now)

    assert visits["a"] == [0.0, 1.0, 2.0]
    assert visits["h"] == [0.75, 1.75, 2.75]


def test_items_are_collected_when_the_round_starts_not_before() -> None:
    round_: SpreadRound[int] = SpreadRound(1.0, 0.5, first_at=0.0)
    items = [1, 2]
    assert round_.take(0.0, lambda: list(items)) == [1]
    items.append(3)  # joins after the round started: in the next one
    assert round_.take(0.5, lambda: list(items)) == [2]
    assert round_.take(1.0, lambda: list(items)) == [1, 2]
    assert round_.take(1.5, lambda: list(items)) == [3]


def test_a_late_round_starts_at_the_next_tick_and_a_few_items_go_one_per_tick() -> None:
    round_: SpreadRound[int] = SpreadRound(2.0, 0.1, first_at=0.0)
    assert round_.take(0.0, lambda: [7, 8, 9]) == [7]
    assert len(round_) == 2
    round_.clear()
    assert round_.take(0.1, lambda: [1]) == []  # the next round is due at 2.0
    assert round_.take(2.5, lambda: [1]) == [1]


def test_an_empty_round_waits_for_the_next_interval() -> None:
    round_: SpreadRound[int] = SpreadRound(2.0, 0.1, first_at=0.0)
    calls = []
    for tick in range(25):
        round_.take(tick * 0.1, lambda: calls.append(1) or [])
    assert len(calls) == 2  # at 0.0 and at 2.0


@pytest.mark.parametrize(("interval", "tick"), [(0.0, 0.1), (1.0, 0.0), (-1.0, 0.1)])
def test_a_round_needs_positive_timings(interval: float, tick: float) -> None:
    with pytest.raises(ValueError):
        SpreadRound(interval, tick, first_at=0.0)
