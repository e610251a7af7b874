"""What the server sees of a client's link: jitter, loss, round trip, consent gap.

Unit tests drive a producer with chosen arrival times and a ``LinkMonitor``
with fake streams; then the real SRTP path (``RawClient``) sends exact loss
patterns and receiver reports; then a real pymediasoup call shows what a
healthy loopback link looks like (no false alarm material).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from media import LinkMonitor, LinkSample, Producer, Router, WebRtcTransport
from media.link import UNKNOWN, StreamCounters, combine
from media.rtp_packet import (
    RTCP_RR,
    build_receiver_report,
    build_sender_report,
    iter_rtcp,
    parse_report_blocks,
    report_block,
)
from media.rtp_parameters import ProducerMapping

from .clients import Client, RawClient, count_frames, join
from .test_leaks import video_parameters

SSRC = 0x1111
VP8_PT = 97
RTX_PT = 98

# -- the producer's reception counters and jitter (RFC 3550 A.3, A.8) ---------------------


class FakeTransport:
    """What a producer reads of its transport: the arrival time of the datagram."""

    id = "transport"
    rtcp_ssrc = 1

    def __init__(self) -> None:
        self.last_activity = 0.0
        self.rtcp: list[bytes] = []

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)


def bare_producer(transport: FakeTransport, kind: str = "video") -> Producer:
    params = video_parameters(SSRC)
    return Producer(
        transport=transport,  # type: ignore[arg-type]
        kind=kind,
        rtp_parameters=params,
        mapping=ProducerMapping(
            payload_types={VP8_PT: 101},
            rtx_payload_types={RTX_PT: VP8_PT},
            header_extension_ids={},
            mid_id=None,
            rid_id=None,
            rrid_id=None,
        ),
        consumable_rtp_parameters=params,
        paused=False,
        key_frame_request_interval=1.0,
        app_data=None,
    )


def rtp(seq: int, timestamp: int, *, ssrc: int = SSRC, pt: int = VP8_PT) -> bytearray:
    return bytearray(struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, timestamp, ssrc) + bytes(20))


def arrive(producer: Producer, transport: FakeTransport, at: float, packet: bytearray) -> None:
    transport.last_activity = at
    producer.receive_rtp(packet)


def test_packets_arriving_at_their_timestamps_pace_have_no_jitter() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)

    for i in range(50):  # 30 fps, one packet a frame, 90 kHz clock
        arrive(producer, transport, 100 + i / 30, rtp(i, 3000 * i))

    counters = producer.reception_counters()
    assert (counters.kind, counters.expected, counters.lost) == ("video", 50, 0)
    assert counters.jitter_ms == pytest.approx(0.0, abs=1e-3)


def test_uneven_arrivals_give_rfc_3550_jitter_in_milliseconds() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)

    # Every other packet 5 ms late: |D| alternates 5 ms and 5 ms (late, then back).
    for i in range(300):
        arrive(producer, transport, 100 + i * 0.02 + (0.005 if i % 2 else 0), rtp(i, 1800 * i))

    counters = producer.reception_counters()
    assert counters.jitter_ms == pytest.approx(5.0, rel=0.01)
    assert producer.jitter == pytest.approx(450, rel=0.01)  # timestamp units (90 kHz)


def test_a_retransmission_arriving_late_is_not_jitter() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)
    for i in range(100):
        if i != 40:  # lost on the way
            arrive(producer, transport, 100 + i * 0.02 + (0.005 if i % 2 else 0), rtp(i, 1800 * i))
    jitter = producer.jitter
    assert jitter > 400

    # Repaired a second later (RFC 4588: the original sequence number leads the payload).
    rtx = rtp(7, 1800 * 40, ssrc=SSRC + 1, pt=RTX_PT)
    rtx[12:12] = (40).to_bytes(2, "big")
    transport.last_activity = 103.0
    producer.receive_rtx(rtx)

    assert producer.jitter == jitter
    assert producer.reception_counters().lost == 0  # repaired counts as received, as in RRs


def test_a_timestamp_wrap_is_not_jitter() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)

    for i in range(40):
        arrive(producer, transport, 100 + i / 30, rtp(i, (2**32 - 3000 * 20 + 3000 * i) % 2**32))

    assert producer.jitter == pytest.approx(0.0, abs=1e-3)


def test_reception_counters_count_what_never_arrived_across_a_sequence_wrap() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)

    for seq in range(65500, 65536 + 64):
        if seq % 8 != 0:
            arrive(producer, transport, 100.0, rtp(seq, 0))

    counters = producer.reception_counters()
    assert counters.expected == 100 and counters.lost == 12  # 65504, 65512, ... 65592


def test_the_receiver_report_we_send_carries_the_jitter() -> None:
    transport = FakeTransport()
    producer = bare_producer(transport)
    for i in range(300):
        arrive(producer, transport, 100 + i * 0.02 + (0.005 if i % 2 else 0), rtp(i, 1800 * i))

    block = producer.receive_sender_report(0x0102030405060708, 0, 107.0)

    rr = build_receiver_report(1, [block])
    [(pt, count, packet)] = list(iter_rtcp(rr))
    assert pt == RTCP_RR
    [parsed] = parse_report_blocks(packet, count, 8)
    assert parsed.jitter == int(producer.jitter) and parsed.jitter > 400
    assert parsed.highest_seq == 299 and parsed.cumulative_lost == 0


# -- the monitor: intervals from cumulative counters ---------------------------------------


@dataclass
class FakeStream:
    id: str
    counters: StreamCounters | None

    def reception_counters(self) -> StreamCounters:
        assert self.counters is not None
        return self.counters

    def report_counters(self) -> StreamCounters | None:
        return self.counters


@dataclass
class FakeSource:
    producers: dict[str, FakeStream] = field(default_factory=dict)
    consumers: dict[str, FakeStream] = field(default_factory=dict)
    closed: bool = False
    last_consent: float | None = None

    def consent_gap(self, now: float) -> float | None:
        return None if self.last_consent is None else now - self.last_consent


def up(expected: int, lost: int, jitter_ms: float = 1.0, kind: str = "video") -> StreamCounters:
    return StreamCounters(kind=kind, expected=expected, lost=lost, jitter_ms=jitter_ms)


def report(
    highest: int,
    lost: int,
    reports: int,
    *,
    jitter_ms: float = 2.0,
    rtt_ms: float | None = None,
    kind: str = "video",
) -> StreamCounters:
    return StreamCounters(
        kind=kind, expected=highest, lost=lost, jitter_ms=jitter_ms, rtt_ms=rtt_ms, reports=reports
    )


def test_uplink_loss_is_what_was_lost_in_the_interval_only() -> None:
    source = FakeSource(producers={"p": FakeStream("p", up(100, 10))})
    monitor = LinkMonitor(source)

    first = monitor.sample(10.0)
    source.producers["p"].counters = up(300, 12)
    second = monitor.sample(12.0)

    assert (first.uplink_loss, first.uplink_packets, first.interval) == (0.1, 100, None)
    assert (second.uplink_loss, second.uplink_packets, second.interval) == (0.01, 200, 2.0)


def test_a_stream_that_did_not_move_says_nothing() -> None:
    source = FakeSource(producers={"p": FakeStream("p", up(100, 0, jitter_ms=50.0))})
    monitor = LinkMonitor(source)
    monitor.sample(10.0)

    sample = monitor.sample(12.0)

    assert sample.uplink_loss is None and sample.uplink_jitter_ms is None
    assert sample.uplink_packets == 0


def test_downlink_loss_comes_from_two_receiver_reports() -> None:
    # RFC 3550 section 6.4.4: the difference of cumulative lost over the
    # difference of extended highest sequence numbers.
    consumer = FakeStream("c", report(2**32 - 50, 5, reports=1, rtt_ms=40.0))
    source = FakeSource(consumers={"c": consumer})
    monitor = LinkMonitor(source)

    baseline = monitor.sample(10.0)
    same_report = monitor.sample(11.0)
    consumer.counters = report(150, 25, reports=2, jitter_ms=12.0, rtt_ms=60.0)  # wrapped
    after = monitor.sample(12.0)

    assert baseline.downlink_loss is None and baseline.rtt_ms == 40.0
    assert same_report.downlink_loss is None and same_report.rtt_ms is None
    assert (after.downlink_loss, after.downlink_packets) == (0.1, 200)
    assert (after.downlink_jitter_ms, after.rtt_ms) == (12.0, 60.0)


def test_numbers_lost_before_the_server_are_not_downlink_loss() -> None:
    # The sender lost 20 of 200 numbers on its own link: we sent 180 and the
    # receiver, which lost 9 of those, reports 29 lost.
    consumer = FakeStream("c", replace(report(1000, 0, reports=1), sent=500))
    monitor = LinkMonitor(FakeSource(consumers={"c": consumer}))
    monitor.sample(10.0)

    consumer.counters = replace(report(1200, 29, reports=2), sent=680)
    sample = monitor.sample(12.0)

    assert (sample.downlink_loss, sample.downlink_packets) == (0.05, 180)


def test_reports_going_backwards_are_ignored() -> None:
    consumer = FakeStream("c", report(1000, 5, reports=1))
    monitor = LinkMonitor(FakeSource(consumers={"c": consumer}))
    monitor.sample(10.0)

    consumer.counters = report(990, 50, reports=2)  # an older report arriving late

    assert monitor.sample(12.0).downlink_loss is None


def test_duplicates_never_make_loss_negative() -> None:
    consumer = FakeStream("c", report(1000, 5, reports=1))
    monitor = LinkMonitor(FakeSource(consumers={"c": consumer}))
    monitor.sample(10.0)

    consumer.counters = report(1100, 2, reports=2)

    assert monitor.sample(12.0).downlink_loss == 0.0


def test_audio_jitter_is_preferred_to_video_jitter() -> None:
    source = FakeSource(
        producers={
            "v": FakeStream("v", up(100, 0, jitter_ms=40.0)),
            "a": FakeStream("a", up(100, 0, jitter_ms=4.0, kind="audio")),
        }
    )

    assert LinkMonitor(source).sample(1.0).uplink_jitter_ms == 4.0
    del source.producers["a"]
    assert LinkMonitor(source).sample(1.0).uplink_jitter_ms == 40.0


def test_the_consent_gap_and_a_closed_transport() -> None:
    source = FakeSource(last_consent=95.0)
    monitor = LinkMonitor(source)

    assert monitor.sample(100.0).consent_gap == 5.0
    source.closed = True
    assert monitor.sample(102.0) == UNKNOWN


def test_two_monitors_do_not_steal_each_others_intervals() -> None:
    source = FakeSource(producers={"p": FakeStream("p", up(100, 10))})
    mine, theirs = LinkMonitor(source), LinkMonitor(source)
    mine.sample(1.0)

    assert theirs.sample(2.0).uplink_loss == 0.1
    source.producers["p"].counters = up(200, 10)
    assert mine.sample(3.0).uplink_loss == 0.0


def test_combining_a_send_and_a_receive_transport() -> None:
    send = LinkSample(uplink_loss=0.2, uplink_packets=50, consent_gap=1.0)
    recv = LinkSample(downlink_loss=0.0, downlink_packets=10, consent_gap=9.0, rtt_ms=30.0)

    both = combine([send, recv])

    assert (both.uplink_loss, both.downlink_loss) == (0.2, 0.0)
    assert (both.consent_gap, both.rtt_ms) == (9.0, 30.0)
    assert combine([]) == UNKNOWN
    assert LinkSample(uplink_jitter_ms=3.0, downlink_jitter_ms=8.0).jitter_ms == 8.0


# -- the real SRTP path: exact loss and reports from a raw client ---------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@dataclass
class RawCall:
    sender: RawClient
    receiver: RawClient
    send_transport: WebRtcTransport
    recv_transport: WebRtcTransport
    producer: Producer


@pytest.fixture
async def raw_call(router: Router) -> AsyncIterator[RawCall]:
    send_transport = await router.create_webrtc_transport()
    recv_transport = await router.create_webrtc_transport()
    producer = await send_transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    await recv_transport.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    sender, receiver = RawClient(), RawClient()
    await asyncio.wait_for(sender.connect(send_transport), 10)
    await asyncio.wait_for(receiver.connect(recv_transport), 10)
    await wait_until(
        lambda: (
            send_transport.dtls_state == "connected" and recv_transport.dtls_state == "connected"
        )
    )
    yield RawCall(sender, receiver, send_transport, recv_transport, producer)
    await sender.close()
    await receiver.close()
    send_transport.close()
    recv_transport.close()


async def test_uplink_loss_on_the_real_srtp_path_is_exact(raw_call: RawCall) -> None:
    loop = asyncio.get_running_loop()
    for seq in range(100):
        if seq % 10 != 5:  # 10 of 100 never sent
            await raw_call.sender.send_srtp(bytes(rtp(seq, 0)))
    await wait_until(lambda: raw_call.producer.packet_count == 90)

    sample = raw_call.send_transport.link_sample(loop.time())

    assert (sample.uplink_loss, sample.uplink_packets) == (0.1, 100)
    assert sample.uplink_jitter_ms is not None
    assert sample.consent_gap is not None and 0 <= sample.consent_gap < 6
    [stats] = await raw_call.send_transport.get_stats()
    assert stats["linkSample"] == sample.to_json()
    assert 0 <= stats["iceConsentGap"] < 6


async def test_downlink_loss_jitter_and_round_trip_come_from_the_clients_reports(
    raw_call: RawCall,
) -> None:
    loop = asyncio.get_running_loop()
    [consumer] = raw_call.recv_transport.consumers.values()
    for seq in range(10):
        await raw_call.sender.send_srtp(bytes(rtp(seq, 0)))
    await wait_until(lambda: consumer.packet_count == 10)
    # The sender's SR reaches the receiver as the consumer's SR; its RR refers to it.
    ntp = 0x0102030405060708
    await raw_call.sender.send_srtp(build_sender_report(SSRC, ntp, 0, 10, 320))
    await wait_until(lambda: len(consumer._sr_sent) == 1)
    lsr = (ntp >> 16) & 0xFFFFFFFF

    async def receiver_reports(highest: int, lost: int, jitter: int) -> None:
        block = report_block(consumer.ssrc, 0, lost, highest, jitter, lsr, 0)
        await raw_call.receiver.send_srtp(build_receiver_report(0x2222, [block]))

    await receiver_reports(highest=1000, lost=3, jitter=90)
    await wait_until(lambda: consumer.reports_received == 1)
    baseline = raw_call.recv_transport.link_sample(loop.time())
    for seq in range(10, 210):  # what the next report covers: all of it sent
        await raw_call.sender.send_srtp(bytes(rtp(seq, 0)))
    await wait_until(lambda: consumer.packet_count == 210)
    await receiver_reports(highest=1200, lost=23, jitter=1800)
    await wait_until(lambda: consumer.reports_received == 2)
    sample = raw_call.recv_transport.link_sample(loop.time())

    assert baseline.downlink_loss is None
    assert (sample.downlink_loss, sample.downlink_packets) == (0.1, 200)
    # 1800 at 90 kHz, less the little the stream had on arrival (sent back to back).
    assert sample.downlink_jitter_ms == pytest.approx(20.0, abs=1.0)
    assert sample.rtt_ms is not None and 0 <= sample.rtt_ms < 1000
    stats = await consumer.get_stats()
    assert stats[0]["highestSeqReported"] == 1200 and stats[0]["reportsReceived"] == 2


async def test_jitter_the_stream_had_on_reaching_the_server_is_not_downlink_jitter(
    raw_call: RawCall,
) -> None:
    loop = asyncio.get_running_loop()
    [consumer] = raw_call.recv_transport.consumers.values()

    async def send(count: int) -> None:
        # Back to back with timestamps 10 ms apart every other packet: the
        # sender's link "jittered" them by 10 ms (900 units at 90 kHz).
        start = consumer.packet_count
        for seq in range(start, start + count):
            await raw_call.sender.send_srtp(bytes(rtp(seq, 900 * (seq % 2))))
        await wait_until(lambda: consumer.packet_count == start + count)

    async def receiver_reports(jitter: int) -> LinkSample:
        reports = consumer.reports_received + 1
        block = report_block(consumer.ssrc, 0, 0, consumer.packet_count, jitter, 0, 0)
        await raw_call.receiver.send_srtp(build_receiver_report(0x2222, [block]))
        await wait_until(lambda: consumer.reports_received == reports)
        return raw_call.recv_transport.link_sample(loop.time())

    await send(150)
    assert raw_call.producer.jitter == pytest.approx(900, abs=90)
    await receiver_reports(900)  # the baseline
    # The receiver has 25 ms: 15 ms of it (at least) is its own link's.
    await send(50)
    sample = await receiver_reports(2250)
    assert sample.downlink_jitter_ms == pytest.approx(15.0, abs=1.0)
    # The receiver has no more than the stream had on arrival: none of it is its link's.
    await send(50)
    sample = await receiver_reports(800)
    assert sample.downlink_jitter_ms == 0.0
    # The stats still say what the client reported (as mediasoup's do).
    stats = await consumer.get_stats()
    assert stats[0]["jitter"] == 800


# -- a real call on loopback: what a healthy link looks like -----------------------------------


async def test_a_healthy_call_shows_no_loss_little_jitter_and_fresh_consent(
    router: Router, clients: list[Client]
) -> None:
    loop = asyncio.get_running_loop()
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    _, audio = await alice.produce(AudioStreamTrack())
    bob_video, _ = await bob.consume(video)
    await bob.consume(audio)
    assert len(await count_frames(bob_video.track, 10, timeout=20)) == 10
    assert alice.send_transport is not None and bob.recv_transport is not None
    alice_link, bob_link = LinkMonitor(alice.send_transport), LinkMonitor(bob.recv_transport)
    alice_link.sample(loop.time())
    bob_link.sample(loop.time())

    samples: list[tuple[LinkSample, LinkSample]] = []
    reading = asyncio.ensure_future(count_frames(bob_video.track, 1000, timeout=4.5))
    for _ in range(4):
        await asyncio.sleep(1.0)
        samples.append((alice_link.sample(loop.time()), bob_link.sample(loop.time())))
    await reading

    uplink = [a for a, _ in samples]
    downlink = [b for _, b in samples]
    assert all(s.uplink_loss == 0.0 and s.uplink_packets > 0 for s in uplink)
    assert all((s.uplink_jitter_ms or 0.0) < 30 for s in uplink)
    reported = [s for s in downlink if s.downlink_loss is not None]
    assert reported and all(s.downlink_loss == 0.0 for s in reported)
    assert all((s.downlink_jitter_ms or 0.0) < 30 for s in downlink)
    assert any(s.rtt_ms is not None for s in downlink)
    assert all(s.consent_gap is not None and s.consent_gap < 7.0 for s in uplink + downlink)
