"""Unit tests of media/bwe.py: the two bandwidth loops, without sockets or sleeping.

The uplink estimator is driven by a simulated sender and bottleneck link: frames
at 30 fps, packets paced at 2.5 x the rate (as browsers pace), a FIFO queue of
the link's capacity and 20 ms of propagation delay; time is only ever a
number.  Streams start at t = 60 s, so abs-send-time (which wraps every 64 s)
wraps during every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from aiortc.rate import OveruseDetector, OveruseEstimator

from media.bwe import (
    AST_UNITS_PER_SECOND,
    PROBE_CLUSTER_GAP,
    PROBE_INTERVAL,
    PROBE_PACKETS,
    BitrateDistributor,
    DelayGradientDetector,
    Demand,
    IncomingBitrateEstimator,
    OutgoingBitrateEstimator,
    PaddingBudget,
    RembPolicy,
    StartupProbe,
    allocate_bitrate,
)

PACKET = 1200
START = 60.0


def abs_send_time(t: float) -> int:
    return int(t * AST_UNITS_PER_SECOND) & 0xFFFFFF


@dataclass
class Link:
    """A bottleneck: FIFO queue drained at ``capacity`` bits/s (None: no queue)."""

    capacity: float | None = None
    delay: float = 0.02
    busy_until: float = 0.0

    def arrival(self, sent: float, size: int) -> float:
        if self.capacity is None:
            return sent + self.delay
        self.busy_until = max(sent, self.busy_until) + size * 8 / self.capacity
        return self.busy_until + self.delay


@dataclass
class Meter:
    """The receiving transport's byte counter, shared by what arrives on it."""

    total: int = 0


@dataclass
class Sender:
    """Frames at 30 fps of ``rate`` bits/s; each call sends the frames up to ``until``."""

    estimator: IncomingBitrateEstimator
    link: Link
    ssrc: int = 1111
    fps: int = 30
    frame: int = field(default=round(START * 30))
    rembs: list[tuple[float, int]] = field(default_factory=list)
    meter: Meter = field(default_factory=Meter)

    def send(self, until: float, rate: float | Callable[[], float]) -> None:
        while (t := self.frame / self.fps) < until:
            bits = rate() if callable(rate) else rate
            packets = max(1, math.ceil(bits / 8 / self.fps / PACKET))
            pace = PACKET * 8 / (2.5 * bits)
            for k in range(packets):
                sent = t + k * pace
                arrival = self.link.arrival(sent, PACKET)
                self.meter.total += PACKET
                remb = self.estimator.on_packet(
                    arrival, abs_send_time(sent), self.meter.total, self.ssrc
                )
                if remb is not None:
                    self.rembs.append((arrival, remb))
            self.frame += 1

    def follow_rembs(self, until: float, ceiling: float) -> None:
        """Send at the latest REMB (as a browser does), up to what the encoder can give."""
        self.send(until, lambda: min(ceiling, self.rembs[-1][1] if self.rembs else ceiling))

    def rembs_between(self, start: float, end: float) -> list[int]:
        return [bitrate for at, bitrate in self.rembs if start <= at < end]


# -- uplink: the receive-side estimator --------------------------------------------------


def test_a_steady_sender_is_measured_then_given_room_to_grow() -> None:
    sender = Sender(IncomingBitrateEstimator(initial_bitrate=0), Link())

    sender.send(START + 12, 1_000_000)

    first_at, first = sender.rembs[0]
    incoming = sender.estimator.incoming_bitrate(START + 12)
    assert incoming is not None
    # No initial value: nothing is said until ~3 s of measurement, then the
    # measured rate (4 packets of 1200 bytes a frame: 1.15 Mbit/s on the wire).
    assert 2.5 < first_at - START < 4.5
    assert first == pytest.approx(incoming, rel=0.05)
    # Then +8 %/s while nothing queues, up to 1.5 x what arrives (libwebrtc's AIMD).
    assert sender.rembs[-1][1] == pytest.approx(1.5 * incoming + 10_000, rel=0.02)
    assert not sender.estimator.overusing


def test_the_estimate_rises_with_a_sender_that_follows_it() -> None:
    sender = Sender(IncomingBitrateEstimator(initial_bitrate=300_000), Link(capacity=10e6))

    sender.follow_rembs(START + 20, ceiling=5e6)

    values = [bitrate for _, bitrate in sender.rembs]
    assert values[0] == 300_000  # at once: the initial estimate, for the browser's start phase
    assert values == sorted(values)
    assert values[-1] > 4 * values[0]
    # Never faster than 8 % a second (plus a REMB's worth of rounding).
    growth = [(b2 / b1) ** (1 / (t2 - t1)) for (t1, b1), (t2, b2) in pairwise(sender.rembs)]
    assert max(growth) < 1.09


def test_queueing_is_overuse_and_the_drop_goes_out_at_once() -> None:
    link = Link(capacity=1_500_000)
    estimator = IncomingBitrateEstimator(initial_bitrate=1_000_000)
    sender = Sender(estimator, link)
    sender.send(START + 5, 1_000_000)
    incoming = estimator.incoming_bitrate(START + 5)
    assert incoming is not None and not estimator.overusing

    # More than the link carries: its queue grows, and so does the delay.
    sender.send(START + 5.2, 2_000_000)

    assert estimator.overusing
    (previous_at, previous), (drop_at, dropped) = sender.rembs[-2:]
    assert drop_at - previous_at < 1.0  # at once, not with the next regular REMB
    assert drop_at - (START + 5) < 0.2
    # libwebrtc's multiplicative decrease: 0.85 x what arrived over the last second.
    assert dropped == pytest.approx(0.85 * incoming, rel=0.05)
    assert dropped < previous * 0.97 and dropped < link.capacity
    sender.send(START + 8, 2_000_000)
    assert min(b for at, b in sender.rembs if at > drop_at) <= dropped  # never back up


def test_a_sender_that_follows_the_estimate_stays_just_below_the_bottleneck() -> None:
    capacity = 1_500_000
    sender = Sender(IncomingBitrateEstimator(initial_bitrate=1_000_000), Link(capacity))

    for step in range(1, 40 * 20 + 1):  # 40 s, the sender adjusting 20 times a second
        sender.follow_rembs(START + step / 20, ceiling=2_500_000)

    settled = sender.rembs_between(START + 15, START + 40)
    # A sawtooth: up 8 %/s until the queue grows, then down to 0.85 x throughput.
    assert 0.75 * capacity < min(settled) < max(settled) < capacity
    assert sum(b < sender.rembs_between(START + 10, START + 40)[0] for b in settled) > 0


def test_rembs_go_out_about_once_a_second() -> None:
    sender = Sender(IncomingBitrateEstimator(initial_bitrate=500_000), Link())

    sender.send(START + 10, 400_000)

    times = [at for at, _ in sender.rembs]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(times) == 10
    assert all(1.0 <= gap < 1.0 + 2 / 30 for gap in gaps)  # the next frame after 1 s


def test_the_cap_bounds_every_remb_and_lowering_it_is_said_at_once() -> None:
    estimator = IncomingBitrateEstimator(initial_bitrate=1_000_000, max_bitrate=800_000)
    sender = Sender(estimator, Link())
    sender.send(START + 3, 2_000_000)
    assert {bitrate for _, bitrate in sender.rembs} == {800_000}

    assert estimator.set_max_bitrate(START + 3.1, 400_000) == 400_000
    assert estimator.set_max_bitrate(START + 3.2, 395_000) is None  # < 3 %: next REMB
    assert estimator.set_max_bitrate(START + 3.3, 0) is None  # raised: next REMB
    sender.send(START + 5, 2_000_000)
    assert sender.rembs[-1][1] > 800_000


def test_a_remb_names_the_streams_heard_in_the_last_two_seconds() -> None:
    estimator, meter = IncomingBitrateEstimator(initial_bitrate=1_000_000), Meter()
    Sender(estimator, Link(), ssrc=1, meter=meter).send(START + 1, 500_000)
    later = round((START + 1) * 30)
    Sender(estimator, Link(), ssrc=2, meter=meter, frame=later).send(START + 4, 500_000)

    assert estimator.remb_ssrcs(START + 2) == [1, 2]
    assert estimator.remb_ssrcs(START + 4) == [2]


def test_a_silence_is_not_congestion() -> None:
    sender = Sender(IncomingBitrateEstimator(initial_bitrate=1_000_000), Link())
    sender.send(START + 5, 800_000)

    sender.frame = round((START + 15) * 30)  # ten silent seconds: a paused producer
    sender.send(START + 20, 800_000)

    assert not sender.estimator.overusing
    values = [bitrate for _, bitrate in sender.rembs]
    assert values == sorted(values)


def test_late_packets_count_as_traffic_but_not_as_timing() -> None:
    late = Sender(IncomingBitrateEstimator(), Link())
    control = Sender(IncomingBitrateEstimator(), Link())
    for sender in (late, control):
        sender.send(START + 2.5, 1_000_000)

    # A packet sent a whole second ago arrives now, then the stream goes on.
    late.meter.total += 50_000
    late.estimator.on_packet(START + 2.51, abs_send_time(START + 1.5), late.meter.total, 1111)
    for sender in (late, control):
        sender.send(START + 3, 1_000_000)

    assert late.estimator._detector.offset == control.estimator._detector.offset
    assert late.estimator._detector.deltas == control.estimator._detector.deltas
    late_rate = late.estimator.incoming_bitrate(START + 3)
    control_rate = control.estimator.incoming_bitrate(START + 3)
    assert late_rate is not None and control_rate is not None
    # 50 kB more over the last second or so (the window starts at a 100 ms sample).
    assert late_rate - control_rate == pytest.approx(50_000 * 8, rel=0.1)


def test_the_overuse_detector_is_libwebrtcs_as_aiortc_ports_it() -> None:
    # Ours is written with plain floats for speed; it must decide exactly as
    # aiortc's OveruseEstimator + OveruseDetector do, through every state.
    rng = random.Random(7)
    ours, kalman, detector = DelayGradientDetector(), OveruseEstimator(), OveruseDetector()
    now_ms, seen = 1000, set()
    for i in range(6000):
        send_ms = rng.choice([5.0, 6.3, 10.1, 33.3])
        queue_trend = (0.0, 3.0, -2.0)[i // 500 % 3]  # steady, building, draining
        arrival_ms = max(0.0, send_ms + queue_trend + rng.gauss(0, 1.5))
        size_delta = rng.randint(-3000, 3000)
        now_ms += int(send_ms)

        kalman.update(arrival_ms, send_ms, size_delta, detector.state(), now_ms)
        detector.detect(kalman.offset(), send_ms, kalman.num_of_deltas(), now_ms)
        ours.update(arrival_ms, send_ms, size_delta, now_ms)

        assert ours.usage == detector.state()
        assert ours.offset == pytest.approx(kalman.offset(), abs=1e-9)
        assert ours.threshold == pytest.approx(detector.threshold, abs=1e-9)
        seen.add(ours.usage)
    assert len(seen) == 3


def test_remb_policy_sends_every_second_and_at_once_on_a_three_percent_drop() -> None:
    policy = RembPolicy()

    assert policy.should_send(0.0, 1_000_000)  # the first one
    assert not policy.should_send(0.5, 1_200_000)  # a rise waits for the interval
    assert not policy.should_send(0.6, 980_000)  # -2 %: waits too
    assert policy.should_send(0.7, 970_000)  # -3 %: at once
    assert not policy.should_send(1.6, 970_000)
    assert policy.should_send(1.7, 1_100_000)  # a second after the last one
    assert policy.last_bitrate == 1_100_000 and policy.last_sent == 1.7


# -- downlink: the send-side estimate from the client's feedback -------------------------


@dataclass
class Reports:
    """A receiver's RRs about one of our streams: ``packets`` more each, ``loss`` lost."""

    estimator: OutgoingBitrateEstimator
    ssrc: int = 5555
    highest: int = 1000
    lost: int = 0

    def report(self, now: float, packets: int = 100, loss: float = 0.0) -> bool:
        self.highest += packets
        self.lost += round(packets * loss)
        self.estimator.on_report_block(self.ssrc, self.highest, self.lost)
        return self.estimator.on_reports(now)


def test_without_feedback_the_downlink_estimate_is_the_initial_one() -> None:
    assert OutgoingBitrateEstimator().bitrate == 600_000
    assert OutgoingBitrateEstimator(initial_bitrate=10_000, min_bitrate=30_000).bitrate == 30_000


def test_little_loss_raises_the_estimate_eight_percent_a_second() -> None:
    estimator = OutgoingBitrateEstimator(initial_bitrate=600_000)
    reports = Reports(estimator)
    assert not reports.report(0.0)  # the first report is the baseline

    for second in range(1, 11):
        assert reports.report(float(second), loss=0.01)

    expected = 600_000.0
    for _ in range(10):
        expected = expected * 1.08 + 1000
    assert estimator.bitrate == pytest.approx(expected, rel=0.01)
    assert estimator.loss == pytest.approx(0.01)


def test_moderate_loss_holds_and_heavy_loss_cuts_by_half_the_loss() -> None:
    estimator = OutgoingBitrateEstimator(initial_bitrate=1_000_000)
    reports = Reports(estimator)
    reports.report(0.0)

    assert not reports.report(1.0, loss=0.05)
    assert estimator.bitrate == 1_000_000
    assert reports.report(2.0, loss=0.20)
    assert estimator.bitrate == 900_000  # x (1 - 0.2 / 2)
    assert not reports.report(2.1, loss=0.20)  # at most one cut per 300 ms
    assert reports.report(2.4, loss=0.40)
    assert estimator.bitrate == 720_000


def test_the_estimate_never_falls_below_the_floor_nor_rises_above_the_cap() -> None:
    estimator = OutgoingBitrateEstimator(
        initial_bitrate=100_000, min_bitrate=50_000, max_bitrate=700_000
    )
    reports = Reports(estimator)
    reports.report(0.0)
    for second in range(1, 20):
        reports.report(float(second), loss=0.9)
    assert estimator.bitrate == 50_000

    estimator.on_remb(30.0, 5_000_000)
    assert estimator.bitrate == 50_000  # still lossy: a REMB can only lower it
    for second in range(31, 80):
        reports.report(float(second))
    assert estimator.bitrate == 700_000


def test_a_handful_of_packets_is_not_a_loss_rate() -> None:
    estimator = OutgoingBitrateEstimator(initial_bitrate=1_000_000)
    reports = Reports(estimator)
    reports.report(0.0)

    assert not reports.report(1.0, packets=5, loss=0.4)  # 2 of 5: wait for more
    assert estimator.loss is None
    assert not reports.report(2.0, packets=20, loss=0.0)  # 2 of 25 = 8 %: hold
    assert estimator.loss == pytest.approx(0.08)


def test_a_clean_clients_remb_is_its_estimate_both_ways() -> None:
    estimator = OutgoingBitrateEstimator(initial_bitrate=600_000)

    assert estimator.on_remb(1.0, 2_500_000)
    assert estimator.bitrate == 2_500_000
    assert estimator.on_remb(2.0, 400_000)
    assert estimator.bitrate == 400_000
    assert not estimator.on_remb(3.0, 400_000)


def test_moderate_loss_does_not_stop_a_remb_from_raising_the_estimate() -> None:
    # 5 % in the reports (random loss, or the sender's uplink losses not yet
    # repaired upstream): the receiver saw no queue, its REMB says so.
    estimator = OutgoingBitrateEstimator(initial_bitrate=600_000)
    reports = Reports(estimator)
    reports.report(0.0)
    reports.report(1.0, loss=0.05)
    estimator.on_remb(1.5, 150_000)
    assert estimator.bitrate == 150_000

    assert estimator.on_remb(2.5, 300_000)
    assert estimator.bitrate == 300_000
    reports.report(3.0, loss=0.15)  # heavy: cut, and a REMB can only lower it now
    assert estimator.bitrate == 277_500
    assert not estimator.on_remb(3.5, 900_000)
    assert estimator.bitrate == 277_500


def test_a_fresh_remb_caps_the_loss_based_increase_and_an_old_one_does_not() -> None:
    estimator = OutgoingBitrateEstimator(initial_bitrate=600_000)
    reports = Reports(estimator)
    reports.report(0.0)
    estimator.on_remb(0.5, 800_000)

    for second in range(1, 4):
        reports.report(float(second))
    assert estimator.bitrate == 800_000  # REMB sent 0.5-2.5 s ago: still the ceiling

    reports.report(4.0)  # 3.5 s without a REMB: the loss controller goes on alone
    assert estimator.bitrate > 800_000


def test_baselines_of_streams_no_longer_sent_are_forgotten() -> None:
    estimator = OutgoingBitrateEstimator()
    Reports(estimator, ssrc=1).report(0.0)
    Reports(estimator, ssrc=2).report(0.0)

    estimator.forget_streams({2})

    assert set(estimator._reports) == {2}


# -- sharing the downlink among consumers --------------------------------------------------


def test_with_enough_for_everyone_each_consumer_gets_what_it_wants_and_shares_the_rest() -> None:
    demands = [Demand(desired=300_000), Demand(priority=3, desired=1_200_000)]

    # 500 kbit/s left over: a quarter and three quarters of it, as headroom.
    assert allocate_bitrate(2_000_000, demands) == [425_000, 1_575_000]


def test_when_short_the_higher_priority_gets_more_in_proportion() -> None:
    demands = [Demand(priority=2, desired=2_000_000), Demand(priority=1, desired=2_000_000)]

    assert allocate_bitrate(900_000, demands) == [600_000, 300_000]


def test_what_a_modest_consumer_leaves_goes_to_the_others() -> None:
    demands = [Demand(desired=100_000), Demand(desired=5_000_000), Demand(desired=5_000_000)]

    assert allocate_bitrate(1_000_000, demands) == [100_000, 450_000, 450_000]


def test_a_consumer_with_no_known_desire_takes_an_equal_share_of_the_rest() -> None:
    demands = [Demand(desired=None), Demand(desired=200_000), Demand(desired=None)]

    assert allocate_bitrate(1_000_000, demands) == [400_000, 200_000, 400_000]


def test_nothing_to_share_or_no_priority_gives_nothing() -> None:
    assert allocate_bitrate(0, [Demand(desired=100), Demand()]) == [0, 0]
    assert allocate_bitrate(1_000, [Demand(priority=0), Demand()]) == [0, 1_000]
    assert allocate_bitrate(1_000, []) == []


def test_distribution_is_at_most_once_a_second_unless_the_estimate_jumps() -> None:
    distributor = BitrateDistributor()
    assert distributor.due(0.0, 1_000_000)
    distributor.distribute(0.0, 1_000_000, [Demand()])

    assert not distributor.due(0.5, 1_100_000)
    assert distributor.due(0.5, 700_000)  # below 75 %
    assert distributor.due(0.5, 1_600_000)  # above 150 %
    assert distributor.due(1.0, 1_000_000)


def test_a_trace_follows_a_five_percent_move_or_a_few_seconds() -> None:
    distributor = BitrateDistributor()
    demands = [Demand(desired=300_000), Demand(desired=None)]

    _, first = distributor.distribute(0.0, 1_000_000, demands)
    _, small_move = distributor.distribute(1.0, 1_040_000, demands)
    _, big_move = distributor.distribute(2.0, 1_060_000, demands)
    _, quiet = distributor.distribute(3.0, 1_060_000, demands)
    _, periodic = distributor.distribute(5.0, 1_060_000, demands)

    assert first == {
        "desiredBitrate": 300_000,
        "effectiveDesiredBitrate": 300_000,
        "availableBitrate": 1_000_000,
    }
    assert small_move is None and quiet is None
    assert big_move is not None and big_move["availableBitrate"] == 1_060_000
    assert periodic is not None


def test_the_effective_desired_bitrate_rises_at_once_and_decays_slowly() -> None:
    distributor = BitrateDistributor(trace_interval=0.0)

    _, high = distributor.distribute(0.0, 1_000_000, [Demand(desired=1_000_000)])
    _, dip = distributor.distribute(2.0, 1_000_000, [Demand(desired=200_000)])

    assert high is not None and high["effectiveDesiredBitrate"] == 1_000_000
    assert dip is not None and dip["desiredBitrate"] == 200_000
    assert dip["effectiveDesiredBitrate"] == 900_000  # 5 %/s of the high for 2 s


# -- probing the downlink ------------------------------------------------------------------


def test_the_startup_probe_is_three_clusters_of_ten_packets_a_millisecond_apart() -> None:
    probe = StartupProbe()
    delays = []
    while (delay := probe.next_delay()) is not None:
        delays.append(delay)

    # 30 packets: the first goes at once, 29 delays follow it.
    assert len(delays) == 3 * PROBE_PACKETS - 1
    assert delays.count(PROBE_CLUSTER_GAP) == 2
    assert delays[PROBE_PACKETS - 1] == delays[2 * PROBE_PACKETS - 1] == PROBE_CLUSTER_GAP
    assert set(delays) == {PROBE_INTERVAL, PROBE_CLUSTER_GAP}
    # Each cluster: what libwebrtc's receiver takes for a probe (at least five
    # packets, a millisecond or more apart), of 255 padding bytes each (2 Mbit/s).
    assert PROBE_PACKETS >= 5 and PROBE_INTERVAL >= 0.001


def test_a_probe_of_one_cluster_ends_after_its_packets() -> None:
    probe = StartupProbe(clusters=1, packets=5)

    assert [probe.next_delay() for _ in range(5)] == [PROBE_INTERVAL] * 4 + [None]


def test_padding_tops_the_media_up_to_the_target_rate() -> None:
    budget = PaddingBudget(interval=0.02)
    media = 0
    sent = 0
    for tick in range(100):  # 2 s of 20 ms calls; 250 kbit/s of media
        media += 625
        sent += budget.packets(tick * 0.02, 600_000, media, 275)
    # 600 kbit/s in all: 350 kbit/s of padding, in whole packets.
    assert sent * 275 * 8 / 2.0 == pytest.approx(350_000, rel=0.03)


def test_a_burst_of_media_is_no_debt_and_a_stall_no_credit() -> None:
    budget = PaddingBudget(interval=0.02)
    budget.packets(0.0, 600_000, 0, 275)
    # A key frame of 50 kB: no padding for a moment, not for seconds.
    counts = [budget.packets(0.02 * i, 600_000, 50_000, 275) for i in range(1, 6)]
    assert counts[:3] == [0, 0, 0] and counts[4] > 0
    # The loop stalls for a second: two intervals' worth at most, not a second's.
    assert budget.packets(1.1, 600_000, 50_000, 275) <= 2 * 1500 // 275 + 1
    # A target of nothing: nothing.
    assert budget.packets(1.12, 0, 50_000, 275) == 0
