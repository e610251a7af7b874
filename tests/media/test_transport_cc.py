"""Transport-wide congestion control feedback: what the receiver of a client's media reports.

Every feedback is read back with ``parse_feedback`` (the wire format of
draft-holmer-rmcat-transport-wide-cc-extensions-01), so the tests say what a
sending browser learns: which transport-wide sequence numbers arrived, and when.
"""

from __future__ import annotations

import struct

import pytest

from media.rtp_packet import transport_wide_sequence_number
from media.transport_cc import (
    LARGE_DELTA,
    MAX_STATUSES_PER_FEEDBACK,
    NOT_RECEIVED,
    SMALL_DELTA,
    TransportCcFeedback,
    encode_chunks,
    parse_feedback,
)

SENDER_SSRC = 0x1234
MEDIA_SSRC = 0xABCD
START_US = 10_000_000  # a multiple of 64 ms, so reference times are exact


def report(
    feedback: TransportCcFeedback, arrivals: dict[int, int]
) -> list[tuple[int, list[int | None]]]:
    for seq, arrival in arrivals.items():
        feedback.on_packet(seq, arrival, MEDIA_SSRC)
    return [parse_feedback(packet) for packet in feedback.build(SENDER_SSRC)]


def reported(parsed: list[tuple[int, list[int | None]]]) -> dict[int, int | None]:
    out: dict[int, int | None] = {}
    for base, arrivals in parsed:
        for i, arrival in enumerate(arrivals):
            out[(base + i) & 0xFFFF] = arrival
    return out


def test_packets_in_order_are_reported_with_their_arrival_times_to_250_us() -> None:
    arrivals = {seq: START_US + seq * 5_000 + 123 for seq in range(100, 130)}

    [(base, times)] = report(TransportCcFeedback(), arrivals)

    assert base == 100 and len(times) == 30
    for seq, time_us in zip(range(100, 130), times, strict=True):
        assert time_us is not None and 0 <= arrivals[seq] - time_us < 250


def test_missing_sequence_numbers_are_reported_as_not_received() -> None:
    arrivals = {seq: START_US + seq * 1_000 for seq in range(50) if seq % 10 not in (3, 4)}
    arrivals.update({seq: START_US + seq * 1_000 for seq in range(80, 90)})  # 50-79 lost

    got = reported(report(TransportCcFeedback(), arrivals))

    assert sorted(got) == list(range(90))
    assert {seq for seq, time_us in got.items() if time_us is None} == (
        {seq for seq in range(50) if seq % 10 in (3, 4)} | set(range(50, 80))
    )


def test_gaps_over_64_ms_and_reordering_use_two_byte_deltas() -> None:
    arrivals = {
        0: START_US,
        1: START_US + 200_000,  # 200 ms later: more than a one-byte delta holds
        3: START_US + 201_000,
        2: START_US + 200_500 - 3_000,  # arrived before 1: a negative delta
    }

    got = reported(report(TransportCcFeedback(), arrivals))

    for seq, arrival in arrivals.items():
        time_us = got[seq]
        assert time_us is not None and 0 <= arrival - time_us < 250 * (seq + 1)


def test_a_packet_arriving_after_its_number_was_reported_is_not_reported_again() -> None:
    feedback = TransportCcFeedback()
    first = reported(report(feedback, {0: START_US, 2: START_US + 1_000}))
    assert first == {0: START_US, 1: None, 2: START_US + 1_000}

    second = reported(report(feedback, {1: START_US + 2_000, 3: START_US + 3_000}))

    assert second == {3: START_US + 3_000}


def test_sequence_numbers_wrap_around_65535() -> None:
    arrivals = {(65530 + i) & 0xFFFF: START_US + i * 2_000 for i in range(12)}

    parsed = report(TransportCcFeedback(), arrivals)

    assert parsed[0][0] == 65530
    assert reported(parsed) == {seq: arrival for seq, arrival in arrivals.items()}


def test_nothing_received_means_no_feedback() -> None:
    feedback = TransportCcFeedback()

    assert feedback.build(SENDER_SSRC) == []
    report(feedback, {7: START_US})
    assert feedback.build(SENDER_SSRC) == []


def test_long_stretches_are_split_into_several_feedbacks_each_counted() -> None:
    count = MAX_STATUSES_PER_FEEDBACK * 2 + 10
    arrivals = {seq: START_US + seq * 500 for seq in range(count)}  # exact in 250 us ticks
    feedback = TransportCcFeedback()
    for seq, arrival in arrivals.items():
        feedback.on_packet(seq, arrival, MEDIA_SSRC)

    packets = feedback.build(SENDER_SSRC)

    assert len(packets) == 3
    assert [packet[19] for packet in packets] == [0, 1, 2]  # the feedback packet count
    assert all(len(packet) <= 1200 for packet in packets)
    assert reported([parse_feedback(packet) for packet in packets]) == arrivals


def test_a_jump_far_ahead_starts_over_so_pending_state_stays_bounded() -> None:
    feedback = TransportCcFeedback(max_gap=100)
    for seq in range(50):
        feedback.on_packet(seq, START_US + seq, MEDIA_SSRC)

    feedback.on_packet(30_000, START_US + 100, MEDIA_SSRC)  # a hostile or restarted sender

    assert feedback.pending == 1
    [(base, times)] = [parse_feedback(p) for p in feedback.build(SENDER_SSRC)]
    assert base == 30_000 and len(times) == 1


def test_after_a_new_path_what_was_sent_into_the_old_one_is_not_reported_lost() -> None:
    """An address change: the client sends 400 numbers into a path that no
    longer delivers before it moves; none of them is reported lost."""
    feedback = TransportCcFeedback()
    for seq in range(40):  # the old path, up to the change
        feedback.on_packet(seq, START_US + seq * 1_000, MEDIA_SSRC)
    reported(report(feedback, {}))
    for seq in range(40, 50):  # arrived, not reported yet when ICE moves
        feedback.on_packet(seq, START_US + seq * 1_000, MEDIA_SSRC)

    flushed = reported([parse_feedback(p) for p in feedback.new_path(SENDER_SSRC)])

    assert flushed == {seq: START_US + seq * 1_000 for seq in range(40, 50)}
    # 50-449 went into the old path; 450 on come by the new one, 452 lost there.
    later = {seq: START_US + 3_000_000 + seq * 1_000 for seq in range(450, 460) if seq != 452}
    got = reported(report(feedback, later))
    assert min(got) == 450 and sorted(got) == list(range(450, 460))
    assert [seq for seq, time_us in got.items() if time_us is None] == [452]


def test_late_packets_of_the_old_path_are_not_reported_after_a_new_path() -> None:
    feedback = TransportCcFeedback()
    report(feedback, {seq: START_US + seq * 1_000 for seq in range(10)})
    assert feedback.new_path(SENDER_SSRC) == []  # nothing pending

    # Behind the highest number seen: the old path's, even if never reported.
    assert report(feedback, {9: START_US + 20_000, 5: START_US + 21_000}) == []
    got = reported(report(feedback, {300: START_US + 500_000, 200: START_US + 501_000}))
    assert got == {300: START_US + 500_000}  # 200 came late, after the new path's first


def test_a_new_path_before_any_packet_changes_nothing() -> None:
    feedback = TransportCcFeedback()
    assert feedback.new_path(SENDER_SSRC) == []

    got = reported(report(feedback, {5: START_US, 7: START_US + 1_000}))

    assert got == {5: START_US, 6: None, 7: START_US + 1_000}


def test_packets_are_rtpfb_fmt_15_padded_to_32_bits_with_the_padding_counted() -> None:
    feedback = TransportCcFeedback()
    feedback.on_packet(1, START_US, MEDIA_SSRC)  # 20 header bytes + 2 chunk + 1 delta

    [packet] = feedback.build(SENDER_SSRC)

    first, pt, words, sender, media = struct.unpack_from("!BBHII", packet)
    assert (first >> 6, first & 0x1F, pt) == (2, 15, 205)
    assert len(packet) == 4 * (words + 1) == 24
    assert first & 0x20 and packet[-1] == 1
    assert (sender, media) == (SENDER_SSRC, MEDIA_SSRC)
    assert packet[16:19] == (START_US // 64_000).to_bytes(3, "big")


@pytest.mark.parametrize(
    ("statuses", "chunks"),
    [
        ([SMALL_DELTA] * 20, [0x2000 | 20]),  # one run
        ([NOT_RECEIVED] * 3, [0x8000]),  # a short tail: a one-bit vector
        ([SMALL_DELTA, NOT_RECEIVED] * 7, [0x8000 | 0x2AAA]),  # 14 one-bit symbols
        ([LARGE_DELTA, SMALL_DELTA, NOT_RECEIVED], [0xC000 | 0x2400]),  # two-bit symbols
        ([LARGE_DELTA] * 7, [0x4000 | 7]),  # a run of 7 at the end
    ],
)
def test_status_chunks_use_runs_and_vectors(statuses: list[int], chunks: list[int]) -> None:
    assert encode_chunks(statuses) == chunks


def test_a_feedback_that_does_not_add_up_is_refused() -> None:
    feedback = TransportCcFeedback()
    feedback.on_packet(0, START_US, MEDIA_SSRC)
    [packet] = feedback.build(SENDER_SSRC)

    with pytest.raises(ValueError):
        parse_feedback(packet[:20])
    with pytest.raises(ValueError):
        parse_feedback(b"\x8f\xce" + packet[2:])  # PSFB, not RTPFB


def one_byte_block(*elements: bytes) -> bytes:
    body = b"".join(elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def two_byte_block(*elements: bytes) -> bytes:
    body = b"".join(elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0x1000, len(body) // 4) + body


RTP_HEADER = struct.pack("!BBHII", 0x90, 96, 1, 0, 0xB)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (one_byte_block(b"\x10\x00", b"\x51\x12\x34"), 0x1234),  # after a MID element
        (one_byte_block(b"\x00\x00\x51\xff\xfe"), 0xFFFE),  # after padding
        (two_byte_block(b"\x05\x02\x00\x07"), 7),
        (one_byte_block(b"\x52\x00\x00\x01"), -1),  # 3 bytes: not a transport-wide number
        (one_byte_block(b"\x10\x00"), -1),  # absent
        (struct.pack("!HH", 0xBEDE, 9) + b"\x51\x00\x01\x00", -1),  # block longer than packet
        (b"\xbe", -1),  # truncated block header
    ],
)
def test_the_transport_wide_sequence_number_is_read_in_place(block: bytes, expected: int) -> None:
    assert transport_wide_sequence_number(RTP_HEADER + block, 5) == expected
