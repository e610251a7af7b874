"""Connection quality grading, driven by a fake clock (no sockets, no sleeps)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from media.link import LinkSample
from signalling.quality import (
    NOTHING,
    Quality,
    QualityBoard,
    QualityGrader,
    QualityPolicy,
    QualitySample,
)

POLICY = QualityPolicy()
INTERVAL = 2.0  # seconds between samples, the default policy's


class Feed:
    """A grader with a fake clock: one sample every ``INTERVAL`` seconds."""

    def __init__(self, policy: QualityPolicy = POLICY) -> None:
        self.grader = QualityGrader(policy)
        self.now = 1000.0
        self.changes: list[tuple[float, Quality]] = []

    def sample(self, sample: QualitySample) -> Quality | None:
        self.now += INTERVAL
        change = self.grader.observe(sample, self.now)
        if change is not None:
            self.changes.append((self.now, change))
        return change

    def run(self, samples: Iterable[QualitySample]) -> None:
        for sample in samples:
            self.sample(sample)

    def until_change(self, sample: QualitySample, limit: int = 100) -> int:
        """How many samples of ``sample`` until the grade changes."""
        for count in range(1, limit + 1):
            if self.sample(sample) is not None:
                return count
        raise AssertionError(f"no change after {limit} samples")

    def grade(self) -> Quality:
        return self.grader.grade

    def reasons(self) -> tuple[str, ...]:
        return self.grader.reasons


def healthy(rng: random.Random, i: int) -> QualitySample:
    """A good link with the noise real ones have: a lost packet now and then,
    RTT and jitter wobbling, the consent gap a 0-6 s sawtooth."""
    loss = 0.0 if rng.random() < 0.8 else rng.choice([0.01, 0.02, 0.025])
    return QualitySample(
        rtt_ms=rng.uniform(30, 120),
        downlink_loss=loss,
        downlink_packets=100,
        uplink_loss=0.0,
        uplink_packets=150,
        jitter_ms=rng.uniform(1, 15),
        consent_gap=(i * INTERVAL) % rng.uniform(4.0, 6.0),
    )


def loss(fraction: float) -> QualitySample:
    return QualitySample(downlink_loss=fraction, downlink_packets=100, consent_gap=1.0)


GOOD_SAMPLE = loss(0.0)


# -- no false alarms -----------------------------------------------------------------


def test_a_healthy_link_stays_good() -> None:
    rng = random.Random(7)
    feed = Feed()

    feed.run(healthy(rng, i) for i in range(500))

    assert feed.changes == []
    assert feed.grade() is Quality.GOOD and feed.reasons() == ()


@pytest.mark.parametrize("spike", [0.15, 0.5, 1.0])
def test_a_single_lossy_receiver_report_does_not_change_the_grade(spike: float) -> None:
    feed = Feed()
    feed.run([GOOD_SAMPLE] * 10)

    feed.sample(loss(spike))
    feed.run([GOOD_SAMPLE] * 20)

    assert feed.changes == []


def test_not_even_when_it_is_the_very_first_sample() -> None:
    feed = Feed()

    feed.sample(loss(1.0))
    feed.sample(QualitySample(rtt_ms=5000.0, jitter_ms=500.0))
    feed.run([GOOD_SAMPLE] * 5)

    assert feed.changes == []


def test_a_single_slow_heartbeat_does_not_change_the_grade() -> None:
    feed = Feed()

    feed.run([QualitySample(rtt_ms=60.0)] * 5 + [QualitySample(rtt_ms=2000.0)])
    feed.run([QualitySample(rtt_ms=60.0)] * 5)

    assert feed.changes == []


def test_flapping_near_a_threshold_does_not_produce_a_stream_of_changes() -> None:
    rng = random.Random(11)
    feed = Feed()

    # 100 noisy samples straddling every "unstable" threshold at once.
    feed.run(
        QualitySample(
            rtt_ms=rng.uniform(250, 350),
            downlink_loss=rng.uniform(0.02, 0.04),
            downlink_packets=100,
            jitter_ms=rng.uniform(25, 35),
            consent_gap=rng.uniform(0, 6),
        )
        for _ in range(100)
    )

    assert len(feed.changes) <= 2
    assert feed.grade() is not Quality.POOR


def test_loss_wobbling_around_the_threshold_changes_the_grade_a_few_times_at_most() -> None:
    changes: list[int] = []
    for seed in range(20):
        rng = random.Random(seed)
        feed = Feed()
        # 1 % or 5 %, at random: 3 % on average, exactly the threshold.
        feed.run(loss(rng.choice([0.01, 0.05])) for _ in range(100))
        assert feed.changes[0][1] is Quality.UNSTABLE
        changes.append(len(feed.changes))

    # Back to good only after a run of clean samples long enough for the hold.
    assert max(changes) <= 3 and sum(changes) <= 2 * len(changes)


# -- loss ----------------------------------------------------------------------------


def test_sustained_5_percent_loss_becomes_unstable_within_the_configured_samples() -> None:
    feed = Feed()
    feed.run([GOOD_SAMPLE] * 5)

    samples = feed.until_change(loss(0.05))

    assert samples <= POLICY.degrade_samples
    assert feed.grade() is Quality.UNSTABLE and feed.reasons() == ("loss",)


def test_sustained_15_percent_loss_becomes_poor_within_the_configured_samples() -> None:
    feed = Feed()
    feed.run([GOOD_SAMPLE] * 5)

    feed.run([loss(0.15)] * POLICY.degrade_samples)

    assert feed.grade() is Quality.POOR and feed.reasons() == ("loss",)


def test_uplink_loss_counts_as_much_as_downlink_loss() -> None:
    feed = Feed()

    feed.run([QualitySample(uplink_loss=0.15, uplink_packets=100)] * POLICY.degrade_samples)

    assert feed.grade() is Quality.POOR and feed.reasons() == ("loss",)


def test_a_larger_number_of_consecutive_samples_can_be_configured() -> None:
    feed = Feed(QualityPolicy(degrade_samples=6, smoothing=0.1))

    samples = feed.until_change(loss(0.05))

    assert 3 < samples <= 6


def test_loss_over_a_handful_of_packets_is_pooled_before_it_is_graded() -> None:
    feed = Feed()

    # 1 of 2 packets lost is 50 %, but only together with what follows is it a figure.
    for _ in range(10):
        feed.sample(QualitySample(downlink_loss=0.5, downlink_packets=2))
        feed.run([QualitySample(downlink_loss=0.0, downlink_packets=2)] * 20)

    assert feed.changes == []


def test_heavy_loss_over_few_packets_still_shows_once_pooled() -> None:
    feed = Feed()

    feed.run([QualitySample(downlink_loss=0.5, downlink_packets=5)] * 40)

    assert feed.grade() is Quality.POOR


# -- recovery ------------------------------------------------------------------------


def test_recovery_needs_the_hold_time() -> None:
    feed = Feed()
    feed.run([loss(0.05)] * 5)
    assert feed.grade() is Quality.UNSTABLE
    recovering_from = feed.now

    feed.until_change(GOOD_SAMPLE)

    assert feed.grade() is Quality.GOOD
    waited = feed.now - recovering_from
    assert POLICY.recovery_hold <= waited <= POLICY.recovery_hold + 4 * INTERVAL


def test_a_bad_sample_during_recovery_starts_the_hold_again() -> None:
    feed = Feed()
    feed.run([loss(0.05)] * 5)
    feed.run([GOOD_SAMPLE] * 4)  # 8 s of the 10 s hold

    feed.sample(loss(0.04))
    feed.run([GOOD_SAMPLE] * 4)

    assert feed.grade() is Quality.UNSTABLE
    feed.run([GOOD_SAMPLE] * 2)
    assert feed.grade() is Quality.GOOD


def test_poor_steps_down_to_unstable_while_loss_is_only_moderate() -> None:
    feed = Feed()
    feed.run([loss(0.15)] * 5)
    assert feed.grade() is Quality.POOR

    feed.run([loss(0.05)] * 20)

    assert [grade for _, grade in feed.changes] == [
        Quality.UNSTABLE,
        Quality.POOR,
        Quality.UNSTABLE,
    ]


# -- the other signals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "unstable", "poor", "reason"),
    [
        (lambda v: QualitySample(rtt_ms=v), 400.0, 1000.0, "rtt"),
        (lambda v: QualitySample(jitter_ms=v), 45.0, 120.0, "jitter"),
    ],
    ids=["rtt", "jitter"],
)
def test_round_trip_and_jitter_each_drive_the_grade(
    make: Callable[[float], QualitySample], unstable: float, poor: float, reason: str
) -> None:
    feed = Feed()

    feed.run([make(unstable)] * POLICY.degrade_samples)
    assert feed.grade() is Quality.UNSTABLE and feed.reasons() == (reason,)

    feed.run([make(poor)] * POLICY.degrade_samples)
    assert feed.grade() is Quality.POOR and feed.reasons() == (reason,)


def test_lost_consent_checks_make_the_grade_unstable_then_poor_before_consent_expires() -> None:
    feed = Feed()
    # Checks every 5 s: the gap seen every 2 s is a sawtooth under 6 s.
    feed.run(QualitySample(consent_gap=(i * INTERVAL) % 5) for i in range(20))
    assert feed.changes == []
    checks_stopped = feed.now

    gap = 0.0
    while feed.grade() is not Quality.POOR:
        gap += INTERVAL
        feed.sample(QualitySample(consent_gap=gap))

    unstable_at, poor_at = (at - checks_stopped for at, _ in feed.changes)
    assert POLICY.consent_gap_unstable is not None and POLICY.consent_gap_poor is not None
    assert POLICY.consent_gap_unstable <= unstable_at <= POLICY.consent_gap_unstable + 6
    assert POLICY.consent_gap_poor <= poor_at < 30.0  # the default consent timeout
    assert feed.reasons() == ("consent",)


def test_reasons_name_every_signal_at_the_grade() -> None:
    feed = Feed()

    feed.run(
        [QualitySample(rtt_ms=400.0, jitter_ms=45.0, downlink_loss=0.15, downlink_packets=100)]
        * POLICY.degrade_samples
    )

    assert feed.grade() is Quality.POOR and feed.reasons() == ("loss",)
    assert feed.grader.levels() == {
        "rtt": Quality.UNSTABLE,
        "loss": Quality.POOR,
        "jitter": Quality.UNSTABLE,
        "consent": Quality.GOOD,
    }
    feed.run(
        [QualitySample(rtt_ms=400.0, jitter_ms=45.0, downlink_loss=0.0, downlink_packets=100)] * 10
    )
    assert feed.grade() is Quality.UNSTABLE and feed.reasons() == ("rtt", "jitter")


# -- unknown inputs ------------------------------------------------------------------


def test_unknown_inputs_never_degrade_the_grade() -> None:
    feed = Feed()

    feed.run([QualitySample()] * 100)
    feed.run([QualitySample(downlink_loss=None, rtt_ms=None, consent_gap=None)] * 100)

    assert feed.changes == [] and feed.grade() is Quality.GOOD


# An empty sample, and NOTHING (what a participant without transports gives):
# the grader skips the latter while no signal is due to be forgotten.
@pytest.mark.parametrize("empty", [QualitySample(), NOTHING], ids=["empty", "nothing"])
def test_unknown_inputs_do_not_count_as_recovery_either(empty: QualitySample) -> None:
    feed = Feed()
    feed.run([loss(0.15)] * 5)

    feed.run([empty] * 10)  # 20 s without media: nothing to judge on

    assert feed.grade() is Quality.POOR


# An empty sample, and NOTHING (what a participant without transports gives):
# the grader skips the latter while no signal is due to be forgotten.
@pytest.mark.parametrize("empty", [QualitySample(), NOTHING], ids=["empty", "nothing"])
def test_a_signal_unknown_for_forget_after_is_forgotten(empty: QualitySample) -> None:
    feed = Feed()
    feed.run([loss(0.15)] * 5)

    assert POLICY.forget_after is not None
    feed.run([empty] * int(POLICY.forget_after / INTERVAL))

    assert feed.grade() is Quality.GOOD


# An empty sample, and NOTHING (what a participant without transports gives):
# the grader skips the latter while no signal is due to be forgotten.
@pytest.mark.parametrize("empty", [QualitySample(), NOTHING], ids=["empty", "nothing"])
def test_evidence_older_than_forget_after_does_not_add_up_with_new_samples(
    empty: QualitySample,
) -> None:
    feed = Feed()
    feed.sample(loss(0.15))  # one outlier: nothing
    assert POLICY.forget_after is not None
    feed.run([empty] * int(POLICY.forget_after / INTERVAL))

    feed.sample(loss(0.15))  # another, half a minute later: still an outlier

    assert feed.changes == []


def test_a_threshold_of_none_switches_that_signal_off() -> None:
    feed = Feed(QualityPolicy(rtt_unstable_ms=None, rtt_poor_ms=None, loss_unstable=None))

    feed.run([QualitySample(rtt_ms=5000.0, downlink_loss=0.05, downlink_packets=100)] * 10)
    assert feed.changes == []
    feed.run([loss(0.15)] * 5)
    assert feed.grade() is Quality.POOR


# -- building samples ----------------------------------------------------------------


def test_a_sample_combines_the_send_and_receive_transports() -> None:
    send = LinkSample(uplink_loss=0.10, uplink_packets=100, consent_gap=2.0, uplink_jitter_ms=5.0)
    recv = LinkSample(
        downlink_loss=0.02,
        downlink_packets=50,
        downlink_jitter_ms=12.0,
        rtt_ms=90.0,
        consent_gap=4.0,
    )

    sample = QualitySample.from_links([send, recv], rtt_ms=120.0)

    assert sample == QualitySample(
        rtt_ms=120.0,
        uplink_loss=0.10,
        uplink_packets=100,
        downlink_loss=0.02,
        downlink_packets=50,
        jitter_ms=12.0,
        consent_gap=4.0,
    )


def test_the_round_trip_is_the_worse_of_the_heartbeat_and_rtcp() -> None:
    link = LinkSample(rtt_ms=250.0)

    assert QualitySample.from_links([link], rtt_ms=None).rtt_ms == 250.0
    assert QualitySample.from_links([link], rtt_ms=80.0).rtt_ms == 250.0
    assert QualitySample.from_links([link], rtt_ms=400.0).rtt_ms == 400.0
    assert QualitySample.from_links([], rtt_ms=None) is NOTHING
    assert QualitySample.from_links([], rtt_ms=80.0) == QualitySample(rtt_ms=80.0)


def test_loss_of_two_transports_is_weighted_by_their_packets() -> None:
    a = LinkSample(uplink_loss=0.5, uplink_packets=10)
    b = LinkSample(uplink_loss=0.0, uplink_packets=90)

    sample = QualitySample.from_links([a, b], rtt_ms=None)

    assert sample.uplink_loss == pytest.approx(0.05) and sample.uplink_packets == 100


# -- the board -----------------------------------------------------------------------


def test_the_board_counts_participants_by_grade() -> None:
    board: QualityBoard[str] = QualityBoard()
    board.add("alice")
    board.add("bob")
    assert board.counts_by_grade() == {Quality.GOOD: 2, Quality.UNSTABLE: 0, Quality.POOR: 0}

    changes = [board.observe("bob", loss(0.15), 1000.0 + 2 * i) for i in range(3)]
    board.observe("alice", GOOD_SAMPLE, 1000.0)

    assert [c for c in changes if c is not None][-1] is Quality.POOR
    assert board.grade("bob") is Quality.POOR and board.grade("alice") is Quality.GOOD
    assert board.counts_by_grade() == {Quality.GOOD: 1, Quality.UNSTABLE: 0, Quality.POOR: 1}

    board.remove("bob")
    board.remove("bob")  # idempotent
    assert board.counts_by_grade() == {Quality.GOOD: 1, Quality.UNSTABLE: 0, Quality.POOR: 0}
    assert "bob" not in board and len(board) == 1 and board.grade("bob") is None


def test_the_board_adds_a_participant_it_has_not_seen() -> None:
    board: QualityBoard[tuple[str, str]] = QualityBoard(QualityPolicy(degrade_samples=1))

    assert board.observe(("room", "carol"), loss(0.15), 0.0) is Quality.POOR
    assert board.counts_by_grade()[Quality.POOR] == 1


# -- the policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"loss_unstable": 0.2, "loss_poor": 0.1},
        {"rtt_poor_ms": 0.0},
        {"degrade_samples": 0},
        {"smoothing": 0.0},
        {"recovery_margin": 1.0},
        {"interval": 0.0},
        {"forget_after": 0.0},
    ],
)
def test_the_policy_refuses_thresholds_that_make_no_sense(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QualityPolicy(**changes)  # type: ignore[arg-type]


def test_a_grader_with_nothing_to_forget_is_not_even_looked_at_for_nothing() -> None:
    grader = QualityGrader(POLICY)
    grader.observe(QualitySample(rtt_ms=500.0), 0.0)
    assert POLICY.forget_after is not None

    # Until the RTT evidence is forget_after old, NOTHING is skipped...
    assert grader.observe(NOTHING, POLICY.forget_after - 0.01) is None
    assert grader._rtt.last_known == 0.0 and grader._rtt.recent == [500.0]
    # ... and at that time it is forgotten, as an empty sample would have it.
    grader.observe(NOTHING, POLICY.forget_after)
    assert grader._rtt.last_known is None and grader._rtt.recent == []
