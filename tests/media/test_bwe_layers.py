"""How a simulcast consumer's layers follow its share of the downlink estimate.

At once when the cap clearly cannot take them; after a grace when the
measurement merely bumps above it (a key frame weighs on a second's bitrate
for a second); back up only on new room or after a hold that doubles while
the layers flap, so that a cap sitting near a layer's bitrate does not flip
it up and down.  A fake three-encoding VP8 producer (``simulcast_harness``),
a fake clock, no sleeping.
"""

from __future__ import annotations

from typing import Any

from media.simulcast_consumer import (
    DOWNGRADE_AT_ONCE,
    DOWNGRADE_GRACE,
    DOWNGRADE_SLACK,
    UPGRADE_HOLD,
    UPGRADE_HOLD_MAX,
    SimulcastConsumer,
)

from .simulcast_harness import Simulcast

SIZES = (100, 300, 2400)  # bytes per frame of r0, r1, r2 (r2: about 580 kbit/s)
BIG = 3400  # r2 over a cap at its usual bitrate by more than the slack, less than 1.5 x


def layers(spatial: int, temporal: int) -> dict[str, int]:
    return {"spatialLayer": spatial, "temporalLayer": temporal}


def forwarding_the_top() -> tuple[Simulcast, SimulcastConsumer]:
    sim = Simulcast()
    consumer, side = sim.consumer()
    sim.send_all(1)
    sim.send(2, key=True)
    sim.run(1.5, sizes=SIZES)
    assert consumer.current_layers == layers(2, 2)
    side.take()
    return sim, consumer


def run(
    sim: Simulcast,
    consumer: SimulcastConsumer,
    seconds: float,
    r2: int | None = SIZES[2],
    *,
    until_change: bool = False,
) -> list[tuple[float, Any]]:
    """30 frames a second of each encoding for ``seconds`` (or until the target
    changes), r2's ``r2`` bytes each (None: r2 stops), the producer ticking every
    0.27 s; the target changes seen, with the clock when they were."""
    changes = []
    sizes = (SIZES[0], SIZES[1], r2)
    for frame in range(round(seconds * 30)):
        before = consumer.target_layers
        for index, size in enumerate(sizes):
            if size is not None:
                sim.send(index, size=size)
        sim.clock.now += 1 / 30
        if frame % 8 == 7:
            sim.producer.tick(sim.clock.now)
        if consumer.target_layers != before:
            changes.append((sim.clock.now, consumer.target_layers))
            if until_change:
                break
    return changes


def test_a_cap_far_below_the_layers_takes_them_down_at_once() -> None:
    sim, consumer = forwarding_the_top()
    r2 = sim.producer.streams[2]

    consumer.available_bitrate = int(r2.bitrate / 1.6)

    assert consumer.target_layers == layers(1, 2)


def test_an_excess_that_lasts_the_grace_takes_them_down_one_that_ends_does_not() -> None:
    sim, consumer = forwarding_the_top()
    r2 = sim.producer.streams[2]
    bitrate = r2.bitrate

    # Over the cap by more than the slack, not by enough to act at once.
    over = (DOWNGRADE_SLACK + DOWNGRADE_AT_ONCE) / 2
    consumer.available_bitrate = int(bitrate / over)
    assert consumer.target_layers == layers(2, 2)
    assert run(sim, consumer, DOWNGRADE_GRACE / 2) == []
    consumer.available_bitrate = bitrate  # the next estimate has room again
    assert run(sim, consumer, 2.0) == []

    consumer.available_bitrate = int(bitrate / over)
    started = sim.clock.now
    [(when, target)] = run(sim, consumer, 2.0)
    assert target == layers(1, 2)
    assert DOWNGRADE_GRACE <= when - started <= DOWNGRADE_GRACE + 0.2


def test_after_a_downgrade_the_same_room_brings_them_back_only_after_the_hold() -> None:
    sim, consumer = forwarding_the_top()
    cap = sim.producer.streams[2].bitrate
    consumer.available_bitrate = cap

    # r2's frames grow by 40 %: over the cap (and its slack) for the grace.
    [(down, target)] = run(sim, consumer, 3.0, r2=BIG)
    assert target == layers(1, 2)
    # ... and shrink to half: it fits within a second, but the cap is the same one.
    [(up, target)] = run(sim, consumer, 4.0, r2=1200)
    assert target == layers(2, 2)
    assert UPGRADE_HOLD <= up - down <= UPGRADE_HOLD + 0.3


def test_new_room_brings_them_back_at_once() -> None:
    sim, consumer = forwarding_the_top()
    bitrate = sim.producer.streams[2].bitrate
    consumer.available_bitrate = int(bitrate / 1.6)
    assert consumer.target_layers == layers(1, 2)

    consumer.available_bitrate = int(bitrate * 1.2)  # a higher estimate

    assert consumer.target_layers == layers(2, 2)


def test_flapping_doubles_the_hold_and_a_quiet_spell_resets_it() -> None:
    sim, consumer = forwarding_the_top()
    consumer.available_bitrate = sim.producer.streams[2].bitrate
    holds = []
    for _ in range(5):
        [(down, _)] = run(sim, consumer, 3.0, r2=BIG, until_change=True)
        [(up, _)] = run(sim, consumer, UPGRADE_HOLD_MAX + 1.0, r2=1200, until_change=True)
        holds.append(up - down)
    # 2, 4, 8, 16, 16 s: each downgrade came within 10 s of going up (flapping).
    assert [round(h) for h in holds] == [2, 4, 8, UPGRADE_HOLD_MAX, UPGRADE_HOLD_MAX]

    assert run(sim, consumer, 12.0) == []  # a quiet spell
    [(down, _)] = run(sim, consumer, 3.0, r2=BIG, until_change=True)
    [(up, _)] = run(sim, consumer, UPGRADE_HOLD_MAX + 1.0, r2=1200, until_change=True)
    assert round(up - down) == UPGRADE_HOLD


def test_a_new_preference_or_encoding_is_taken_at_once_whatever_the_hold() -> None:
    sim, consumer = forwarding_the_top()
    bitrate = sim.producer.streams[2].bitrate
    consumer.available_bitrate = bitrate
    run(sim, consumer, 3.0, r2=BIG)
    assert consumer.target_layers == layers(1, 2)

    # r2 stops: what the consumer desires changes, and r1 fits at once.
    run(sim, consumer, 1.5, r2=None)
    assert consumer.target_layers == layers(1, 2)
    # r2 comes back: taken as soon as it is measured to fit, hold or not.
    changes = run(sim, consumer, 1.0, r2=1200)
    assert changes and changes[-1][1] == layers(2, 2)
