"""RecvStream's receive path: what it does to a packet in place, and what it keeps aside.

The stream maps one-byte header extension ids with a table of its own (the
hot path): it must do exactly what ``rtp_packet.rewrite_extension_ids`` does,
after the same padding check, for every packet shape.  Its cache must find
packets by sequence number even after simulcast consumers wrote their own
header fields into them.
"""

from __future__ import annotations

from typing import Any

import pytest

from media.rtp_packet import header_length, payload_end, rewrite_extension_ids, rtp_seq
from media.rtp_stream import RecvStream

from .test_rtp_packet import ONE_BYTE, TWO_BYTE, one_byte_elements, rtp, two_byte_elements
from .vp8_packets import vp8_payload

SSRC = 0x11223344
PRODUCER_PT = 96
ROUTER_PT = 101
RTX_PT = 97


class Transport:
    rtcp_ssrc = 1
    last_activity = 100.0

    def send_rtcp(self, packet: bytes) -> None:
        pass


class Sink:
    """A consumer that records what it was handed (and writes into it, like a simulcast one)."""

    def __init__(self, scribble: bool = False) -> None:
        self.packets: list[tuple[bytes, int]] = []
        self.scribble = scribble

    def send_rtp(self, packet: bytearray, seq: int, stream: Any) -> None:
        self.packets.append((bytes(packet), seq))
        if self.scribble:
            packet[2:12] = bytes(range(10))  # its own sequence number, timestamp and SSRC

    def send_sender_report(self, ntp: int, rtp_timestamp: int, stream: Any) -> None:
        pass


def recv_stream(extension_ids: dict[int, int], *, simulcast: bool = False) -> RecvStream:
    return RecvStream(
        producer=None,
        transport=Transport(),
        index=0,
        encoding={"ssrc": SSRC, "rtx": {"ssrc": SSRC + 1}},
        kind="video",
        payload_types={PRODUCER_PT: ROUTER_PT},
        rtx_payload_types={RTX_PT: PRODUCER_PT},
        extension_ids=extension_ids,
        clock_rate=90000,
        mime_type="video/VP8",
        simulcast=simulcast,
    )


def reference(packet: bytes, id_map: dict[int, int]) -> bytearray:
    """What the stream did before it had its own table: the rtp_packet helpers."""
    buf = bytearray(packet)
    if buf[0] & 0x20 and payload_end(buf) < header_length(buf):
        raise ValueError("RTP padding overruns the payload")
    rewrite_extension_ids(buf, id_map)
    buf[1] = (buf[1] & 0x80) | ROUTER_PT
    return buf


PACKETS = {
    "no-extension": (rtp(), {1: 2}),
    "one-byte": (
        rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"0"), (3, b"abc"), (10, b"x")]))),
        {3: 4, 10: 1},
    ),
    "one-byte-same-ids": (
        rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"0"), (4, b"abc")]))),
        {1: 1, 4: 4},
    ),
    "one-byte-above-14": (
        rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"ab"), (2, b"c")]))),
        {1: 15, 2: 2},
    ),
    "one-byte-padding-between": (
        rtp(
            extension=(
                ONE_BYTE,
                one_byte_elements([(1, b"a")]) + b"\x00\x00" + one_byte_elements([(2, b"bc")]),
            )
        ),
        {1: 5, 2: 6},
    ),
    "one-byte-id-15-stops": (
        rtp(
            extension=(
                ONE_BYTE,
                one_byte_elements([(1, b"a")]) + b"\xf0" + one_byte_elements([(2, b"b")]),
            )
        ),
        {1: 3},
    ),
    "one-byte-element-overruns-block": (
        rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"ab")]) + bytes([2 << 4 | 15]) + b"c")),
        {1: 1, 2: 2},
    ),
    "one-byte-with-csrcs-and-padding": (
        rtp(
            csrcs=[7, 8],
            extension=(ONE_BYTE, one_byte_elements([(1, b"0"), (2, b"zz")])),
            padding=4,
        ),
        {2: 3},
    ),
    "two-byte": (
        rtp(extension=(TWO_BYTE, two_byte_elements([(1, b"ab"), (20, b""), (200, b"xyz")]))),
        {20: 21, 200: 7},
    ),
    "two-byte-appbits": (
        rtp(extension=(TWO_BYTE | 0x5, two_byte_elements([(1, b"ab"), (2, b"c")]))),
        {2: 9},
    ),
    "unknown-profile": (rtp(extension=(0xABAC, two_byte_elements([(1, b"ab")]))), {1: 2}),
    "padding-only": (rtp(payload=b"", padding=8), {}),
    "csrcs-beyond-the-packet": (bytes([0x8F]) + rtp()[1:20], {}),
}

MALFORMED = {
    "no-block-header": rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])))[:13],
    "half-block": rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])))[:17],
    "one-short": rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])))[:19],
    "padding-overruns": rtp(payload=b"ab", padding=4)[:-4] + bytes([0, 0, 0, 200]),
    "padding-overruns-extension": rtp(
        extension=(ONE_BYTE, one_byte_elements([(1, b"a")])), payload=b"", padding=2
    )[:-2]
    + bytes([0, 30]),
}


@pytest.mark.parametrize("name", list(PACKETS))
def test_a_packet_is_rewritten_in_place_exactly_as_the_rtp_packet_helpers_do(name: str) -> None:
    packet, id_map = PACKETS[name]
    stream = recv_stream(id_map)
    sink = Sink()
    stream.sinks = (sink,)

    buf = bytearray(packet)
    stream.receive_rtp(buf)

    assert buf == reference(packet, id_map)
    assert sink.packets == [(bytes(buf), rtp_seq(packet))]


@pytest.mark.parametrize("taken", [True, False], ids=["forwarded", "taken-by-nobody"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_packet_is_refused_as_the_rtp_packet_helpers_refuse_it(
    name: str, taken: bool
) -> None:
    packet = MALFORMED[name]
    stream = recv_stream({1: 2})
    sink = Sink()
    stream.sinks = (sink,) if taken else ()

    with pytest.raises(ValueError, match="overruns") as refused:
        reference(packet, {1: 2})
    with pytest.raises(ValueError, match="overruns") as raised:
        stream.receive_rtp(bytearray(packet))

    assert str(raised.value).split()[1] == str(refused.value).split()[1]  # padding / header
    assert sink.packets == [] and stream.packet_count == 0


def test_a_payload_type_that_is_not_the_producers_is_ignored() -> None:
    stream = recv_stream({})
    sink = Sink()
    stream.sinks = (sink,)

    stream.receive_rtp(bytearray(rtp(payload_type=100)))

    assert sink.packets == [] and stream.packet_count == 0


def test_the_cache_finds_packets_whose_header_a_consumer_rewrote() -> None:
    stream = recv_stream({}, simulcast=True)
    stream.sinks = (Sink(scribble=True),)
    for seq in (10, 11, 12):
        stream.receive_rtp(bytearray(rtp(seq=seq, payload=vp8_payload(picture_id=seq))))

    cached = stream.cached_packet(11)
    assert cached is not None and cached[12:] == rtp(payload=vp8_payload(picture_id=11))[12:]
    assert stream.cached_packet(10 + 512) is None
    # A retransmission of a packet it has is recognised as such, not taken again.
    rtx = rtp(ssrc=SSRC + 1, seq=1, payload_type=RTX_PT, payload=b"\x00\x0b" + bytes(cached[12:]))
    stream.receive_rtx(bytearray(rtx))
    assert stream.packets_repaired == 0 and stream.packet_count == 3


def test_a_vp8_simulcast_streams_frame_is_the_same_for_the_packets_of_one_picture() -> None:
    stream = recv_stream({}, simulcast=True)
    stream.sinks = (Sink(),)
    frames = []
    for seq, picture, start, tl0 in (
        (1, 7, True, 3),
        (2, 7, False, 3),
        (3, 8, True, 4),
        (4, 8, False, None),
    ):
        payload = vp8_payload(picture_id=picture, tl0=tl0, tid=0, start=start)
        stream.receive_rtp(bytearray(rtp(seq=seq, timestamp=picture * 3000, payload=payload)))
        frames.append(stream.frame)
    stream.receive_rtp(bytearray(rtp(seq=5, timestamp=8 * 3000, payload=b"", padding=8)))

    assert frames[0] == frames[1] != frames[2]
    assert frames[3] != frames[2]  # no TL0PICIDX: another layout
    assert stream.frame is None  # padding


@pytest.mark.parametrize("name", list(PACKETS))
def test_a_packet_nobody_takes_is_counted_but_left_as_it_came_and_not_cached(name: str) -> None:
    packet, id_map = PACKETS[name]
    stream = recv_stream(id_map)

    buf = bytearray(packet)
    stream.receive_rtp(buf)

    assert buf[2:] == packet[2:]  # extension ids as they came (and no send time)
    assert stream.packet_count == 1 and stream.byte_count == len(packet)
    assert stream.cached_packet(rtp_seq(packet)) is None


def test_a_simulcast_layer_nobody_takes_still_counts_its_temporal_layers_and_key_frames() -> None:
    stream = recv_stream({}, simulcast=True)
    key_frames = []
    for seq, tid in ((1, 0), (2, 2), (3, 1), (4, 2)):
        payload = vp8_payload(picture_id=seq, tl0=1, tid=tid, key=seq == 1)
        buf = bytearray(rtp(seq=seq, timestamp=seq * 3000, payload=payload))
        stream.receive_rtp(buf)
        key_frames.append(stream.is_key_frame(buf))  # what a consumer about to switch asks

    assert key_frames == [True, False, False, False]

    size = len(rtp(payload=vp8_payload(picture_id=1, tl0=1, tid=0)))
    assert stream.layer_bytes[:3] == [size, size, 2 * size]
    assert stream.packet_count == 4 and stream.frame is None  # no consumer compares frames


def test_a_repair_of_a_packet_nobody_took_is_known_as_a_copy_and_not_counted_again() -> None:
    stream = recv_stream({})
    for seq in (10, 11):
        stream.receive_rtp(bytearray(rtp(seq=seq)))

    # Chrome probes with RTX copies of recent packets: they are not new media.
    rtx = rtp(ssrc=SSRC + 1, seq=1, payload_type=RTX_PT, payload=b"\x00\x0b" + rtp()[12:])
    stream.receive_rtx(bytearray(rtx))

    assert stream.packets_repaired == 0 and stream.packet_count == 2
    assert stream.cached_packet(11) is None
