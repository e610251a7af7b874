"""REMB and abs-send-time on the wire: the bandwidth helpers of media/rtp_packet.py.

REMB bytes are checked field by field against draft-alvestrand-rmcat-remb-03
section 2.2 and cross-checked with aiortc's parser (the one aiortc's sender
obeys); abs-send-time is read from hand-built RFC 8285 blocks.
"""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

from media.rtp_packet import (
    PSFB_AFB,
    RTCP_PSFB,
    abs_send_time,
    build_pli,
    build_remb,
    iter_rtcp,
    parse_remb,
)


def test_a_remb_has_the_drafts_layout() -> None:
    remb = build_remb(0x01020304, 1_000_000, [0xAABBCCDD, 0x11223344])

    first, pt, length = struct.unpack_from("!BBH", remb)
    assert (first >> 6, first >> 5 & 1, first & 0x1F) == (2, 0, 15)  # V=2, P=0, FMT=15
    assert pt == RTCP_PSFB == 206
    assert (length + 1) * 4 == len(remb) == 28
    assert struct.unpack_from("!II", remb, 4) == (0x01020304, 0)  # sender; media source 0
    assert remb[12:16] == b"REMB"
    assert remb[16] == 2  # Num SSRC
    exponent, mantissa = remb[17] >> 2, (remb[17] & 3) << 16 | remb[18] << 8 | remb[19]
    assert mantissa <= 0x3FFFF and mantissa << exponent == 1_000_000  # 15625 << 6
    assert struct.unpack_from("!II", remb, 20) == (0xAABBCCDD, 0x11223344)


def test_a_remb_round_trips_through_ours_and_aiortcs_parsers() -> None:
    remb = build_remb(7, 2_500_000, [1, 2, 3])

    [(pt, fmt, packet)] = list(iter_rtcp(remb))
    [parsed] = RtcpPacket.parse(remb)

    assert (pt, fmt) == (RTCP_PSFB, PSFB_AFB)
    assert parse_remb(packet) == (2_500_000, [1, 2, 3])
    assert isinstance(parsed, RtcpPsfbPacket) and parsed.media_ssrc == 0
    assert unpack_remb_fci(parsed.fci) == (2_500_000, [1, 2, 3])
    # And what aiortc's receiver builds, we read.
    theirs = struct.pack("!BBHII", 0x80 | 15, RTCP_PSFB, 5, 9, 0) + pack_remb_fci(640_000, [4])
    assert parse_remb(theirs) == (640_000, [4])


@pytest.mark.parametrize("bitrate", [0, 1, 0x3FFFF, 0x40000, 123_456_789, 10**12])
def test_a_bitrate_too_fine_for_18_bits_is_rounded_down_never_up(bitrate: int) -> None:
    sent = parse_remb(build_remb(1, bitrate, []))

    assert sent is not None
    assert sent[0] <= bitrate
    assert bitrate - sent[0] < max(1, bitrate >> 17)


def test_a_remb_names_at_most_255_streams() -> None:
    remb = parse_remb(build_remb(1, 1000, range(300)))

    assert remb is not None and remb[1] == list(range(255))


def test_other_application_feedback_is_not_a_remb() -> None:
    other = struct.pack("!BBHII", 0x80 | 15, RTCP_PSFB, 4, 1, 0) + b"GOOG" + bytes(4)

    assert parse_remb(other) is None
    assert parse_remb(build_pli(1, 2)) is None


def test_a_remb_listing_more_streams_than_it_carries_is_malformed() -> None:
    remb = bytearray(build_remb(1, 1000, [5]))
    remb[16] = 3

    with pytest.raises(ValueError):
        parse_remb(bytes(remb))


# -- abs-send-time -------------------------------------------------------------------------


def rtp_with_extension(profile: int, elements: bytes, csrcs: int = 0) -> bytearray:
    elements += bytes(-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90 | csrcs, 96, 1, 2, 3) + bytes(4 * csrcs)
    return bytearray(
        header + struct.pack("!HH", profile, len(elements) // 4) + elements + b"payload"
    )


def test_abs_send_time_is_read_from_a_one_byte_block() -> None:
    mid = bytes([1 << 4 | 0]) + b"0"
    ast = bytes([4 << 4 | 2]) + b"\x12\x34\x56"
    packet = rtp_with_extension(0xBEDE, mid + b"\x00" + ast, csrcs=2)

    assert abs_send_time(packet, 4) == 0x123456
    assert abs_send_time(packet, 5) == -1


def test_abs_send_time_first_as_browsers_put_it_is_read_at_once() -> None:
    ast = bytes([4 << 4 | 2]) + b"\x12\x34\x56"
    mid = bytes([1 << 4 | 0]) + b"0"

    assert abs_send_time(rtp_with_extension(0xBEDE, ast + mid), 4) == 0x123456
    assert abs_send_time(rtp_with_extension(0xBEDE, b"\x00" + ast), 4) == 0x123456  # padding
    assert abs_send_time(rtp_with_extension(0xBEDE, ast + mid), 1) == -1  # MID is 1 byte


def test_abs_send_time_is_read_from_a_two_byte_block() -> None:
    packet = rtp_with_extension(0x1000, b"\x01\x01a" + b"\x00" + b"\x20\x03\xab\xcd\xef")

    assert abs_send_time(packet, 0x20) == 0xABCDEF


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (rtp_with_extension(0xBEDE, bytes([4 << 4 | 1]) + b"\x12\x34"), "2 bytes, not 3"),
        (rtp_with_extension(0xBEDE, b"\xf0" + bytes([4 << 4 | 2]) + b"abc"), "after id 15"),
        (rtp_with_extension(0xBEDE, bytes([1 << 4 | 3]) + b"abcd"), "not there"),
        (rtp_with_extension(0xBEDE, bytes([4 << 4 | 2]) + b"ab")[:-9], "block overruns"),
        (rtp_with_extension(0x1234, bytes([4 << 4 | 2]) + b"abc"), "not RFC 8285"),
        (bytearray(struct.pack("!BBHII", 0x90, 96, 1, 2, 3)), "no room for a block"),
    ],
)
def test_a_missing_or_malformed_abs_send_time_reads_as_minus_one(
    packet: bytearray, why: str
) -> None:
    assert abs_send_time(packet, 4) == -1, why
