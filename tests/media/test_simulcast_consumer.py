"""A simulcast consumer: which encoding it forwards, when it switches, and what stays continuous.

Every test drives a fake three-encoding VP8 producer (``simulcast_harness``)
packet by packet with a fake clock, and reads what the consumer would have
sent to its receiver.
"""

from __future__ import annotations

import itertools
import random
import struct
from typing import Any

import pytest

from media.errors import InvalidParametersError
from media.rtp_packet import RTCP_SR, build_nack, header_length, iter_rtcp, parse_nack
from media.rtp_stream import RecvStream
from media.seq_manager import SeqManager
from media.simulcast_consumer import SimulcastConsumer

from .simulcast_harness import (
    CONSUMER_RTX_SSRC,
    CONSUMER_SSRC,
    FRAME_TICKS,
    L1T3,
    ConsumerSide,
    Sent,
    Simulcast,
)


def layers(spatial: int, temporal: int) -> dict[str, int]:
    return {"spatialLayer": spatial, "temporalLayer": temporal}


def forwarding(sim: Simulcast, side: ConsumerSide, layer: int = 2) -> None:
    """Every encoding active, then a key frame of ``layer`` (the consumer's target)."""
    sim.send_all(1)
    sim.send(layer, key=True)
    side.take()
    sim.send_side.rtcp.clear()


def measured(layer: int = 2, **options: Any) -> tuple[Simulcast, SimulcastConsumer, ConsumerSide]:
    """A consumer forwarding ``layer`` after 1.5 s of every encoding: bitrates measured."""
    sim = Simulcast()
    consumer, side = sim.consumer(**options)
    forwarding(sim, side, layer)
    sim.run(1.5)
    return sim, consumer, side


def consecutive(sent: list[Sent]) -> bool:
    return all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(sent))


# -- what is offered ------------------------------------------------------------------------------


def test_the_consumer_gets_one_encoding_whose_layers_are_the_producers_encodings() -> None:
    sim = Simulcast()
    consumer, _ = sim.consumer()

    assert sim.producer.type == "simulcast" and consumer.type == "simulcast"
    assert consumer.rtp_parameters["encodings"] == [
        {
            "ssrc": CONSUMER_SSRC,
            "rtx": {"ssrc": CONSUMER_RTX_SSRC},
            "scalabilityMode": "L3T3",
            "maxBitrate": 1_600_000,
        }
    ]
    assert consumer.preferred_layers == layers(2, 2)
    assert consumer.current_layers is None and consumer.target_layers is None


# -- switching only on key frames -----------------------------------------------------------------


def test_nothing_is_forwarded_before_a_key_frame_of_the_target_which_is_asked_for() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    changes: list[object] = []
    consumer.on("layerschange", changes.append)

    sim.send_all(5)

    assert side.sent == []
    assert consumer.target_layers == layers(2, 2)
    assert 1003 in sim.send_side.key_frame_requests()
    sim.send(2, key=True)
    [first] = side.take()
    assert first.ssrc == CONSUMER_SSRC
    assert consumer.current_layers == layers(2, 2)
    assert changes == [layers(2, 2)]


async def test_a_switch_waits_for_the_targets_key_frame_while_the_current_one_flows() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)

    await consumer.set_preferred_layers({"spatialLayer": 0})
    assert consumer.target_layers == layers(0, 2)
    assert sim.send_side.key_frame_requests() == [1001]

    sim.send_all(4)  # deltas: layer 0's dropped, layer 2 still forwarded
    assert len(side.take()) == 4
    assert consumer.current_layers == layers(2, 2)

    key = sim.send(0, key=True)
    sim.send(2)
    [switched] = side.take()
    assert switched.payload[-40:] == key[-40:]  # r0's key frame (descriptor renumbered)
    assert consumer.current_layers == layers(0, 2)


async def test_preferred_layers_are_clamped_and_checked() -> None:
    sim = Simulcast()
    consumer, _ = sim.consumer(preferred_layers={"spatialLayer": 7, "temporalLayer": 9})

    assert consumer.preferred_layers == layers(2, 2)
    with pytest.raises(InvalidParametersError):
        await consumer.set_preferred_layers({"spatialLayer": -1})
    with pytest.raises(InvalidParametersError):
        await consumer.set_preferred_layers("high")


# -- layer choice: activity and bitrate -----------------------------------------------------------


def test_an_encoding_that_stops_is_left_within_about_a_second_and_taken_again_when_back() -> None:
    sim = Simulcast(inactivity_timeout=1.0)
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    stopped_at = sim.clock.now

    sim.run(1.3, layers=(0, 1))  # r2 stops (the sender's bandwidth estimate dropped)

    assert consumer.target_layers == layers(1, 2)
    assert 1002 in sim.send_side.key_frame_requests()
    assert sim.clock.now - stopped_at <= 1.35
    sim.send(1, key=True)
    assert consumer.current_layers == layers(1, 2)

    sim.send(2)  # r2 is back: taken again at its next key frame
    assert consumer.target_layers == layers(2, 2)
    assert 1003 in sim.send_side.key_frame_requests()
    sim.send(2, key=True)
    assert consumer.current_layers == layers(2, 2)


def test_an_encoding_turned_off_while_a_lower_one_sends_is_left_within_the_stop_timeout() -> None:
    sim = Simulcast(inactivity_timeout=0.5, stop_timeout=0.25)
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    stopped_at = sim.clock.now

    sim.run(0.4, layers=(0, 1), tick=0.125)  # Chrome turned r2 off; r0 and r1 go on

    assert not sim.producer.streams[2].active
    assert consumer.target_layers == layers(1, 2)
    assert 1002 in sim.send_side.key_frame_requests()
    left_after = sim.clock.now - stopped_at
    assert left_after <= 0.4


def test_copies_of_old_packets_do_not_keep_an_encoding_the_sender_turned_off() -> None:
    # After a network change Chrome stops its top encoding (its estimate was
    # reset) and probes with RTX copies of that encoding's packets from before
    # the change, which the old path lost.
    sim = Simulcast(inactivity_timeout=0.5, stop_timeout=0.25)
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    lost = [sim.packet(2, size=1000) for _ in range(30)]  # never arrived
    stopped_at = sim.clock.now
    next_tick = stopped_at + 0.125

    for copy in lost[:12]:  # 0.4 s: r0 and r1 go on, r2 comes only as copies
        sim.send(0)
        sim.send(1)
        sim.retransmit(2, copy)
        sim.clock.now += 1 / 30
        if sim.clock.now >= next_tick:
            sim.producer.tick(sim.clock.now)
            next_tick += 0.125

    stream = sim.producer.streams[2]
    assert stream.packets_repaired > 0  # the copies were taken while it was active
    assert not stream.active
    assert consumer.target_layers == layers(1, 2)
    assert 1002 in sim.send_side.key_frame_requests()

    for copy in lost[12:]:  # more copies do not revive it ...
        sim.retransmit(2, copy)
    sim.tick(0.125)
    assert not stream.active and consumer.target_layers == layers(1, 2)
    sim.send(2)  # ... a packet of its own does
    assert stream.active and consumer.target_layers == layers(2, 2)


def test_retransmissions_do_not_hold_off_the_inactivity_timeout() -> None:
    sim = Simulcast(inactivity_timeout=0.5)
    _, side = sim.consumer(preferred_layers={"spatialLayer": 0})
    forwarding(sim, side, 0)
    lost = [sim.packet(0) for _ in range(10)]

    for copy in lost:  # the sender stopped; only NACKed copies come, for 0.6 s
        sim.retransmit(0, copy)
        sim.tick(0.06)

    assert not sim.producer.streams[0].active


def test_a_late_frame_of_the_top_encoding_is_not_taken_for_it_being_turned_off() -> None:
    sim = Simulcast(inactivity_timeout=0.5, stop_timeout=0.25)
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)

    for _ in range(3):
        sim.run(0.2, layers=(0, 1), tick=0.1)  # r2 late by 200 ms (a paced key frame)
        sim.run(0.1, tick=0.1)

    assert sim.producer.streams[2].active
    assert consumer.target_layers == layers(2, 2)


def test_a_pause_of_every_encoding_is_left_to_the_inactivity_timeout() -> None:
    sim = Simulcast(inactivity_timeout=1.0, stop_timeout=0.25)
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)

    for _ in range(3):
        sim.tick(0.25)  # the link stalls: nothing from any encoding for 0.75 s

    assert [stream.active for stream in sim.producer.streams] == [True, True, True]
    sim.send_all(3)
    assert consumer.target_layers == layers(2, 2)


def test_when_every_encoding_stops_nothing_is_forwarded() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side)
    changes: list[object] = []
    consumer.on("layerschange", changes.append)

    for _ in range(6):
        sim.tick(0.25)

    assert consumer.target_layers is None and consumer.current_layers is None
    assert changes == [None]
    assert consumer.desired_bitrate == 0


def test_the_key_frame_request_is_repeated_while_the_target_does_not_send_one() -> None:
    sim = Simulcast()
    consumer, _ = sim.consumer()
    sim.send_all(1)
    assert consumer.target_layers == layers(2, 2)
    assert 1003 in sim.send_side.key_frame_requests()

    sim.run(1.1)  # r2 sends no key frame

    assert 1003 in sim.send_side.key_frame_requests()


def test_a_bitrate_cap_takes_the_highest_layers_that_fit_and_lifting_it_goes_back_up() -> None:
    sim, consumer, _ = measured()
    r0, r1, r2 = sim.producer.streams
    assert r0.bitrate < r1.bitrate < r2.bitrate
    assert consumer.desired_bitrate == r2.bitrate

    consumer.available_bitrate = int(r1.bitrate * 1.05)
    assert consumer.target_layers == layers(1, 2)
    assert 1002 in sim.send_side.key_frame_requests()

    consumer.available_bitrate = 1
    assert consumer.target_layers == layers(0, 0)  # the base layer always flows

    consumer.available_bitrate = r0.bitrate_up_to(1) + 1  # r0 without its top layer
    assert consumer.target_layers == layers(0, 1)

    consumer.available_bitrate = None
    assert consumer.target_layers == layers(2, 2)
    assert consumer.desired_bitrate == r2.bitrate


def test_a_cap_keeps_the_frame_rate_and_lowers_the_resolution() -> None:
    sim, consumer, _ = measured()
    r1, r2 = sim.producer.streams[1:]
    assert r1.bitrate < r2.bitrate_up_to(1)

    # r2 at 15 fps would fit; r1 at its full 30 fps is taken instead.
    consumer.available_bitrate = int(r2.bitrate_up_to(1) * 1.02)

    assert consumer.target_layers == layers(1, 2)
    assert 1002 in sim.send_side.key_frame_requests()


def test_a_low_cap_takes_the_lowest_encoding_at_full_rate_not_a_higher_ones_base_layer() -> None:
    # A jittery downlink's REMB (68 kbit/s for a 2026-11-29 call): r1's base
    # layer (7.5 fps) would fit, and so does r0 at 30 fps, which is taken.
    sim, consumer, _ = measured()
    r0, r1, _ = sim.producer.streams
    cap = int(r0.bitrate * 1.1)
    assert r1.bitrate_up_to(0) < cap < r1.bitrate_up_to(1)

    consumer.available_bitrate = cap

    assert consumer.target_layers == layers(0, 2)


def test_a_cap_below_the_lowest_encodings_frame_rate_cuts_temporal_layers_without_a_key_frame() -> (
    None
):
    sim, consumer, side = measured(0, preferred_layers={"spatialLayer": 0})
    r0 = sim.producer.streams[0]

    consumer.available_bitrate = int(r0.bitrate_up_to(1) * 1.02)
    assert consumer.target_layers == layers(0, 1)
    assert sim.send_side.key_frame_requests() == []

    sim.run(0.5, layers=(0,))
    assert {s.vp8[2] for s in side.take()[-8:]} == {0, 1}
    assert consumer.current_layers == layers(0, 1)


# -- continuity -----------------------------------------------------------------------------------


async def test_sequence_numbers_have_no_gap_across_drops_and_switches() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer(preferred_layers=layers(2, 0))
    sim.send_all(1)
    sim.send(2, key=True)
    for _ in range(8):
        sim.send(2)  # TIDs 2, 1, 2, 0, ...: only TID 0 goes out
    sim.send(2, padding=200)  # a bandwidth probe: not forwarded
    await consumer.set_preferred_layers({"spatialLayer": 0})
    sim.send(2)
    sim.send(0, key=True)
    for _ in range(5):
        sim.send(0)
        sim.send(2)

    sent = side.take()
    assert len(sent) == 1 + 2 + 1 + 5
    assert consecutive(sent)


async def test_an_unfinished_frame_before_a_switch_leaves_one_number_out() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    await consumer.set_preferred_layers({"spatialLayer": 1})
    sim.send(2, tid=0, marker=False)  # the first half of a frame...
    sim.send(1, key=True)  # ...and the switch comes before its end

    before, after = side.take()
    assert (after.seq - before.seq) & 0xFFFF == 2  # the receiver drops that frame


async def test_timestamps_continue_across_a_switch_using_sender_reports() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.run(0.2)
    # The sender reports the same instant for each encoding's latest frame.
    for index, layer in enumerate(sim.layers):
        sim.sender_report(index, 3_900_000_000.5, layer.timestamp)
    await consumer.set_preferred_layers({"spatialLayer": 0})
    sim.send(0, key=True)  # the next frame, captured 1/30 s later
    sim.send(1)
    sim.send(2)
    for _ in range(3):
        sim.send_all(1)

    timestamps = [s.timestamp for s in side.take()]
    steps = {(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(timestamps)}
    assert steps == {FRAME_TICKS}
    assert consumer.current_layers == layers(0, 2)


async def test_timestamps_keep_growing_across_a_switch_without_sender_reports() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.run(0.2)
    await consumer.set_preferred_layers({"spatialLayer": 0})
    sim.send(0, key=True)  # 1/30 s after the last frame sent
    sim.clock.now += 1 / 30
    sim.send(0)

    timestamps = [s.timestamp for s in side.take()]
    steps = [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(timestamps)]
    assert all(0 < step < 0x80000000 for step in steps)
    assert steps[-2] == FRAME_TICKS  # placed by the time it arrived after the last one


async def test_a_stale_sender_report_cannot_send_the_timestamps_backwards() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.run(0.2)
    # r0's report says its frames were captured a second before r2's.
    sim.sender_report(2, 100.0, sim.layers[2].timestamp)
    sim.sender_report(0, 99.0, sim.layers[0].timestamp)
    await consumer.set_preferred_layers({"spatialLayer": 0})
    sim.send(0, key=True)

    *_, last_before, first_after = side.take()
    assert (first_after.timestamp - last_before.timestamp) & 0xFFFFFFFF == FRAME_TICKS


async def test_vp8_picture_ids_and_tl0picidx_run_on_across_switches_and_dropped_layers() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer(preferred_layers=layers(2, 1))
    forwarding(sim, side, 2)
    for _ in range(8):
        sim.send(2)
    await consumer.set_preferred_layers({"spatialLayer": 1, "temporalLayer": 2})
    sim.send(1, key=True)
    for _ in range(8):
        sim.send(1)

    fields = [s.vp8 for s in side.take()]
    pictures = [p for p, _, _ in fields]
    assert all((b - a) & 0x7FFF == 1 for a, b in itertools.pairwise(pictures))
    tl0s = [t for _, t, _ in fields]
    assert all((b - a) & 0xFF in (0, 1) for a, b in itertools.pairwise(tl0s))
    tids = [tid for _, _, tid in fields]
    assert 2 not in tids[:5] and 2 in tids[5:]  # TID 2 dropped on r2 (target 1), kept on r1


# -- RTCP -----------------------------------------------------------------------------------------


def test_a_nack_is_answered_with_what_was_sent_and_the_rest_is_asked_upstream() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.send(2)
    lost_upstream = sim.packet(2)  # never arrives
    sim.send(2)
    first, last = side.take()
    assert (last.seq - first.seq) & 0xFFFF == 2

    consumer.receive_nack([first.seq, (first.seq + 1) & 0xFFFF])

    [rtx] = side.take()
    assert rtx.ssrc == CONSUMER_RTX_SSRC
    assert rtx.data[12:14] == struct.pack("!H", first.seq)  # the original sequence number
    assert rtx.data[14:] == first.data[12:]
    [(_pt, _fmt, nack)] = list(iter_rtcp(sim.send_side.rtcp[-1]))
    assert parse_nack(nack) == (1003, [struct.unpack_from("!H", lost_upstream, 2)[0]])
    # The retransmitted packet the sender repairs goes out as the number it was missing.
    sim.receive(2, lost_upstream)
    [repaired] = side.take()
    assert repaired.seq == (first.seq + 1) & 0xFFFF
    assert build_nack(0, 0, [1])  # (the NACK format round-trips; see test_rtp_packet)


def test_sender_reports_carry_the_current_encodings_clock_in_the_consumers_timeline() -> None:
    sim = Simulcast()
    _consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.send(2)
    [sent] = side.take()

    sim.sender_report(0, 5000.25, sim.layers[0].timestamp)  # not forwarded: no SR
    assert side.rtcp == []
    sim.sender_report(2, 5000.25, sim.layers[2].timestamp)

    [(pt, _, sr)] = list(iter_rtcp(side.rtcp[-1]))
    ssrc, ntp, rtp_timestamp = struct.unpack_from("!IQI", sr, 4)
    assert (pt, ssrc, ntp) == (RTCP_SR, CONSUMER_SSRC, int(5000.25 * (1 << 32)))
    assert rtp_timestamp == sent.timestamp  # the same instant, in our timestamps


def test_a_picture_loss_asks_the_forwarded_encoding_for_a_key_frame() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer(preferred_layers=layers(1, 2))
    forwarding(sim, side, 1)
    assert consumer.current_layers == layers(1, 2)

    consumer.receive_key_frame_request()

    assert sim.send_side.key_frame_requests() == [1002]


# -- pause, resume --------------------------------------------------------------------------------


async def test_resuming_waits_for_a_key_frame_and_continues_the_numbering() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    sim.send(2)
    [before] = side.take()
    changes: list[object] = []
    consumer.on("layerschange", changes.append)

    await consumer.pause()
    sim.send_all(3)
    assert side.take() == []
    await consumer.resume()
    assert 1003 in sim.send_side.key_frame_requests()
    sim.send_all(2)
    assert side.take() == []
    sim.send(2, key=True)

    [after] = side.take()
    assert after.seq == (before.seq + 1) & 0xFFFF
    assert 0 < (after.timestamp - before.timestamp) & 0xFFFFFFFF < 0x80000000
    assert changes == [None, layers(2, 2)]


async def test_a_paused_producer_stops_every_consumer_until_a_key_frame_after_resume() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    events: list[str] = []
    consumer.on("producerpause", lambda: events.append("pause"))
    consumer.on("producerresume", lambda: events.append("resume"))

    await sim.producer.pause()
    sim.send_all(2)
    await sim.producer.resume()
    sim.send_all(1)
    sim.send(2, key=True)

    assert events == ["pause", "resume"]
    assert len(side.take()) == 1


# -- scores, priority, stats ----------------------------------------------------------------------


def test_scores_follow_activity_and_loss_and_are_emitted_on_change() -> None:
    sim = Simulcast()
    producer_scores: list[object] = []
    sim.producer.on("score", producer_scores.append)
    consumer, side = sim.consumer()
    consumer_scores: list[dict[str, object]] = []
    consumer.on("score", consumer_scores.append)

    forwarding(sim, side, 2)
    assert producer_scores[-1] == [
        {"encodingIdx": i, "ssrc": 1001 + i, "rid": f"r{i}", "score": 10} for i in range(3)
    ]
    assert consumer_scores[-1] == {"score": 10, "producerScore": 10, "producerScores": [10] * 3}
    count = len(producer_scores)

    sim.run(0.5)
    assert len(producer_scores) == count  # nothing changed: nothing emitted
    for _ in range(30):  # r1 loses every other packet
        sim.send(1)
        sim.packet(1)
    sim.sender_report(1, 7000.0, sim.layers[1].timestamp)

    assert sim.producer.streams[1].score < 10
    assert producer_scores[-1][1]["score"] == sim.producer.streams[1].score  # type: ignore[index]
    assert consumer_scores[-1]["producerScores"] == [10, sim.producer.streams[1].score, 10]


async def test_priority_is_kept_and_checked() -> None:
    sim = Simulcast()
    consumer, _ = sim.consumer()

    await consumer.set_priority(200)
    assert consumer.priority == 200
    with pytest.raises(InvalidParametersError):
        await consumer.set_priority(0)
    await consumer.unset_priority()
    assert consumer.priority == 1


async def test_stats_show_the_layers_and_the_forwarded_encoding() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer(preferred_layers={"spatialLayer": 1})
    forwarding(sim, side, 1)

    ours, theirs = await consumer.get_stats()

    assert ours["currentLayers"] == layers(1, 2) and ours["preferredLayers"] == layers(1, 2)
    assert theirs["type"] == "inbound-rtp" and theirs["rid"] == "r1" and theirs["ssrc"] == 1002


# -- H.264 ----------------------------------------------------------------------------------------


def test_h264_encodings_switch_at_the_packet_that_carries_the_sps() -> None:
    sim = Simulcast(codec="H264", scalability_mode=None)
    consumer, side = sim.consumer()

    sim.send_all(2)
    assert side.take() == []
    sim.send(2, key=True)
    sim.send(2)

    sent = side.take()
    assert len(sent) == 2 and consecutive(sent)
    assert consumer.rtp_parameters["encodings"][0]["scalabilityMode"] == "L3T1"
    assert consumer.current_layers == layers(2, 0)


def test_a_packet_whose_header_overruns_it_breaks_nothing() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    bogus = sim.packet(2)
    bogus[0] |= 0x0F  # 15 CSRCs that are not there
    sim.receive(2, bogus[:40])
    sim.send(2)

    # libsrtp refuses such headers before this; here it goes on untouched, as a
    # payload without a VP8 descriptor does (mediasoup forwards those too).
    assert len(side.take()) == 2
    assert consumer.current_layers == layers(2, 2)


# -- what a packet costs: the run, in-place writes, who is handed what ----------------------------


def frame(sim: Simulcast, index: int, count: int, *, key: bool = False) -> list[bytearray]:
    """The next frame of encoding ``index`` in ``count`` packets (one picture)."""
    tid = 0 if key else L1T3[sim.layers[index].frame % 4]
    packets = [sim.packet(index, key=key, tid=tid, marker=count == 1, size=300)]
    for i in range(1, count):
        packets.append(
            sim.packet(
                index, tid=tid, start=False, new_frame=False, marker=i == count - 1, size=300
            )
        )
    return packets


def without_the_run(consumer: SimulcastConsumer) -> SimulcastConsumer:
    """Every packet through the managers, as before there was a run."""
    first = consumer._send_first

    def first_only(packet: bytearray, seq: int, stream: RecvStream) -> None:
        first(packet, seq, stream)
        consumer._run_next = -1

    consumer._send_first = first_only  # type: ignore[method-assign]
    return consumer


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_run_sends_what_the_managers_would_send_packet_for_packet(seed: int) -> None:
    # Multi-packet pictures with losses, duplicates, reordering and padding, a
    # spatial and a temporal layer change: each consumer's packets must be
    # exactly its twin's, whose every packet goes through the managers.  The
    # four write into the same producer buffers in turn (a, c, b, d), with
    # different numbers: none may read another's.
    rng = random.Random(seed)
    sim = Simulcast()
    a, side_a = sim.consumer()
    c, side_c = sim.consumer(preferred_layers=layers(2, 1))
    b, side_b = sim.consumer()
    d, side_d = sim.consumer(preferred_layers=layers(2, 1))
    without_the_run(b)
    without_the_run(d)
    for consumer, first in ((a, 1000), (b, 1000), (c, 30000), (d, 30000)):
        consumer._seq = SeqManager(16, initial_output=first)
    firsts = 0
    send_first = a._send_first

    def counted(packet: bytearray, seq: int, stream: RecvStream) -> None:
        nonlocal firsts
        firsts += 1
        send_first(packet, seq, stream)

    a._send_first = counted  # type: ignore[method-assign]

    for number in range(150):
        if number == 50:
            await a.set_preferred_layers(layers(1, 1))
            await b.set_preferred_layers(layers(1, 1))
        if number == 100:
            await a.set_preferred_layers(layers(2, 2))
            await b.set_preferred_layers(layers(2, 2))
        key = number % 30 == 0
        for index, count in ((0, 1), (1, rng.randint(1, 3)), (2, rng.randint(1, 7))):
            packets = frame(sim, index, count, key=key)
            out: list[bytearray] = []
            for packet in packets:
                roll = rng.random()
                if roll < 0.04 and not key:
                    continue  # lost
                out.append(packet)
                if roll > 0.97:
                    out.append(bytearray(packet))  # repeated
                elif roll > 0.94:
                    out.append(sim.packet(index, padding=100, new_frame=False))
            if len(out) > 2 and rng.random() < 0.2:
                i = rng.randrange(len(out) - 1)
                out[i], out[i + 1] = out[i + 1], out[i]
            for packet in out:
                sim.receive(index, packet)
        sim.clock.now += 1 / 30
        if number % 8 == 0:
            sim.producer.tick(sim.clock.now)

    sent_a, sent_b, sent_c, sent_d = (s.take() for s in (side_a, side_b, side_c, side_d))
    assert len(sent_a) > 300 and len(sent_c) > 200
    assert [s.data for s in sent_a] == [s.data for s in sent_b]
    assert [s.data for s in sent_c] == [s.data for s in sent_d]
    assert len(sent_a) - firsts > 100  # so many packets at least took the run
    # Retransmissions are what was sent, run or not.
    asked = [s.seq for s in sent_a[-40:]]
    a.receive_nack(asked)
    b.receive_nack(asked)
    assert [s.data for s in side_a.take()] == [s.data for s in side_b.take()]


def test_a_retransmission_of_a_packet_sent_in_a_run_is_what_was_sent() -> None:
    sim = Simulcast()
    consumer, side = sim.consumer()
    _other, other_side = sim.consumer(preferred_layers=layers(2, 1))
    forwarding(sim, side, 2)
    for packet in frame(sim, 2, 5):
        sim.receive(2, packet)
    sent = side.take()
    assert len(sent) == 5 and consecutive(sent)
    other_side.take()

    consumer.receive_nack([s.seq for s in sent[1:4]])

    rtx = side.take()
    assert [r.ssrc for r in rtx] == [CONSUMER_RTX_SSRC] * 3
    for original, again in zip(sent[1:4], rtx, strict=True):
        assert again.data[12:14] == struct.pack("!H", original.seq)
        assert again.data[14:] == original.data[12:]
        assert again.timestamp == original.timestamp


def test_the_producers_buffer_keeps_its_payload_and_is_found_by_number() -> None:
    sim = Simulcast()
    _consumer, side = sim.consumer()
    forwarding(sim, side, 2)
    packets = frame(sim, 2, 3)
    originals = [bytes(p) for p in packets]
    for packet in packets:
        sim.receive(2, packet)

    stream = sim.producer.streams[2]
    for original in originals:
        cached = stream.cached_packet(struct.unpack_from("!H", original, 2)[0])
        assert cached is not None
        start = header_length(cached)
        # Our numbers are written in place: the header and PictureID/TL0PICIDX
        # are the consumer's; the rest of the payload is the producer's.
        assert cached[start + 6 :] == original[start + 6 :]
    assert [s.data[12:] for s in side.take()] != [o[12:] for o in originals]


async def test_a_stream_hands_its_packets_only_to_consumers_that_forward_or_await_it() -> None:
    sim = Simulcast()
    consumer, _side = sim.consumer()
    streams = sim.producer.streams
    sim.send_all(1)
    assert [s.sinks for s in streams] == [(), (), (consumer,)]  # waiting for r2's key frame
    sim.send(2, key=True)
    assert [s.sinks for s in streams] == [(), (), (consumer,)]

    await consumer.set_preferred_layers(layers(0, 2))
    assert [s.sinks for s in streams] == [(consumer,), (), (consumer,)]
    sim.send(0, key=True)
    assert [s.sinks for s in streams] == [(consumer,), (), ()]

    await consumer.pause()
    assert [s.sinks for s in streams] == [(), (), ()]
    await consumer.resume()
    assert [s.sinks for s in streams] == [(consumer,), (), ()]
    consumer.close()
    assert [s.sinks for s in streams] == [(), (), ()]
