"""REMB and abs-send-time on the wire: the bandwidth helpers of media/rtp_packet.py,
and the abs-send-time and probe padding we send.

REMB bytes are checked field by field against draft-alvestrand-rmcat-remb-03
section 2.2 and cross-checked with aiortc's parser (the one aiortc's sender
obeys); abs-send-time is read from hand-built RFC 8285 blocks.  What a
consumer's receiver gets is read back with aiortc's RTP parser.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from media import rtp_stream
from media.bwe import AST_UNITS_PER_SECOND
from media.rtp_packet import (
    PSFB_AFB,
    RTCP_PSFB,
    abs_send_time,
    build_pli,
    build_remb,
    extension_value,
    iter_rtcp,
    parse_remb,
    rtp_seq,
)
from media.rtp_parameters import ABS_SEND_TIME_URI
from media.rtp_stream import RecvStream, stamp_send_time

from .simulcast_harness import CONSUMER_RTX_SSRC, Simulcast


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


# -- our abs-send-time on the way out ------------------------------------------------------

SENT_AT = 1234.5  # time.monotonic() when the packet leaves (a fake clock)
OURS = int(SENT_AT * AST_UNITS_PER_SECOND) & 0xFFFFFF
TCC = bytes([3 << 4 | 1]) + b"\x01\x02"  # Chrome's transport-wide number, padded out
MID = bytes([1 << 4 | 0]) + b"0"
RID = bytes([2 << 4 | 1]) + b"r2"
CVO = bytes([13 << 4 | 0]) + b"\x01"  # video orientation: forwarded, as the router's 11
CHROMES_AST = bytes([5 << 4 | 2]) + b"\xab\xcd\xef"


class Transport:
    rtcp_ssrc = 1
    last_activity = 0.0

    def send_rtcp(self, packet: bytes) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send_rtp(self, packet: bytearray, seq: int, stream: Any) -> None:
        self.packets.append(bytes(packet))

    def send_sender_report(self, ntp: int, rtp_timestamp: int, stream: Any) -> None:
        pass


def forwarded(elements: bytes, *, send_time: bool = True) -> bytearray:
    """What a video stream hands its consumers of a packet with these elements."""
    stream = RecvStream(
        producer=None,
        transport=Transport(),
        index=0,
        encoding={"ssrc": 3},
        kind="video",
        payload_types={96: 101},
        rtx_payload_types={},
        extension_ids={13: 11},
        clock_rate=90000,
        mime_type="video/VP8",
    )
    stream.send_time = send_time
    sink = Sink()
    stream.sinks = (sink,)
    stream.receive_rtp(rtp_with_extension(0xBEDE, elements))
    [packet] = sink.packets
    return bytearray(packet)


def as_a_receiver_reads_it(packet: bytes | bytearray) -> Any:
    """aiortc's parser, with the ids a consumer's client negotiated."""
    ids = HeaderExtensionsMap()
    ids.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=4, uri=ABS_SEND_TIME_URI),
            ]
        )
    )
    return RtpPacket.parse(bytes(packet), ids)


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtp_stream, "_monotonic", lambda: SENT_AT)


@pytest.mark.parametrize(
    ("elements", "where"),
    [
        (TCC, 0),  # what Chrome sends once its SSRCs are acknowledged
        (TCC + MID + RID, 0),  # ... and before
        (CHROMES_AST + TCC, 0),  # a sender's own abs-send-time, padded out: ours instead
        (CVO + TCC, 2),  # after a forwarded element, in the padding that follows it
    ],
    ids=["transport-cc", "with-mid-and-rid", "senders-own", "after-orientation"],
)
def test_video_leaves_with_our_send_time_in_the_padding_where_the_senders_elements_were(
    elements: bytes, where: int
) -> None:
    packet = forwarded(elements)

    assert abs_send_time(packet, 4) == OURS
    assert packet[16 + where] == 4 << 4 | 2
    assert as_a_receiver_reads_it(packet).extensions.abs_send_time == OURS
    assert packet.count(b"\xab\xcd\xef") == packet.count(b"r2") == 0  # nothing of theirs


@pytest.mark.parametrize(
    "elements",
    [TCC + CVO, MID + bytes([13 << 4 | 0]) + b"\x00"],
    ids=["three-and-three", "two-then-orientation-0"],
)
def test_no_room_means_no_send_time_and_nothing_forwarded_is_touched(elements: bytes) -> None:
    packet = forwarded(elements)  # padding runs of 3 bytes at most around the orientation

    assert abs_send_time(packet, 4) == -1
    assert as_a_receiver_reads_it(packet).extensions.abs_send_time is None
    assert extension_value(packet, 11) == elements[-1:]


def test_a_stream_without_send_time_only_pads_the_senders_elements_out() -> None:
    packet = forwarded(TCC + MID + RID, send_time=False)

    assert packet[16:24] == bytes(8)


def test_a_retransmission_is_stamped_again_when_it_leaves() -> None:
    packet = forwarded(TCC)

    assert stamp_send_time(packet, SENT_AT + 1.0)
    assert abs_send_time(packet, 4) == (OURS + AST_UNITS_PER_SECOND) & 0xFFFFFF
    without = rtp_with_extension(0xBEDE, CVO)
    assert not stamp_send_time(without, SENT_AT) and without == rtp_with_extension(0xBEDE, CVO)
    two_byte = rtp_with_extension(0x1000, b"\x04\x03abc")
    assert not stamp_send_time(two_byte, SENT_AT)


def test_a_probe_packet_is_padding_only_on_the_consumers_rtx_stream() -> None:
    sim = Simulcast()
    consumer, _ = sim.consumer()

    first = consumer.padding_packet(255, SENT_AT)
    second = consumer.padding_packet(255, SENT_AT)

    assert first is not None and second is not None and len(first) == 12 + 8 + 255
    received = as_a_receiver_reads_it(first)
    assert (received.ssrc, received.payload_type) == (CONSUMER_RTX_SSRC, consumer.rtx_payload_type)
    assert (received.payload, received.padding_size) == (b"", 255)
    assert received.extensions.abs_send_time == OURS
    assert rtp_seq(second) == (rtp_seq(first) + 1) & 0xFFFF
    paused, _ = sim.consumer(paused=True)
    assert paused.padding_packet(255, SENT_AT) is None  # nothing goes to a paused consumer
