"""Unit tests of media/rtp_packet.py: byte-level RTP header access and RTCP build/parse.

RTP packets are assembled by hand with ``struct``; built RTCP is cross-checked with
aiortc's parser to prove it is well-formed on the wire.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from aiortc.rtp import (
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_header_extensions,
)

from media.rtp_packet import (
    RTCP_BYE,
    RTCP_PSFB,
    RTCP_RR,
    RTCP_RTPFB,
    RTCP_SDES,
    RTCP_SR,
    ReportBlock,
    build_nack,
    build_pli,
    build_receiver_report,
    build_sender_report,
    extension_value,
    header_length,
    is_rtcp,
    iter_rtcp,
    parse_bye,
    parse_nack,
    parse_report_blocks,
    payload_end,
    report_block,
    rewrite_extension_ids,
    rtp_seq,
    rtp_ssrc,
    set_seq_and_ssrc,
)

ONE_BYTE = 0xBEDE
TWO_BYTE = 0x1000


def one_byte_elements(elements: Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([ext_id << 4 | (len(value) - 1)]) + value for ext_id, value in elements)


def two_byte_elements(elements: Sequence[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes([ext_id, len(value)]) + value for ext_id, value in elements)


def rtp(
    *,
    seq: int = 4242,
    timestamp: int = 0xCAFEBABE,
    ssrc: int = 0x11223344,
    payload_type: int = 96,
    marker: bool = False,
    csrcs: Sequence[int] = (),
    extension: tuple[int, bytes] | None = None,
    payload: bytes = b"payload!",
    padding: int = 0,
) -> bytes:
    """An RTP packet (RFC 3550 section 5.1); the extension body is zero-padded to 32 bits."""
    first = 0x80 | len(csrcs)
    if extension is not None:
        first |= 0x10
    if padding:
        first |= 0x20
    data = struct.pack(
        "!BBHII", first, (0x80 if marker else 0) | payload_type, seq, timestamp, ssrc
    )
    data += b"".join(struct.pack("!I", csrc) for csrc in csrcs)
    if extension is not None:
        profile, body = extension
        body += bytes(-len(body) % 4)
        data += struct.pack("!HH", profile, len(body) // 4) + body
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


def extensions_of(packet: bytes | bytearray) -> tuple[int, list[tuple[int, bytes]]]:
    """(profile, elements) as aiortc reads them, padding skipped."""
    start = 12 + 4 * (packet[0] & 0x0F)
    profile, words = struct.unpack_from("!HH", packet, start)
    body = bytes(packet[start + 4 : start + 4 + 4 * words])
    return profile, unpack_header_extensions(profile, body)


# -- fixed header -------------------------------------------------------------------------


def test_rtp_ssrc_and_rtp_seq_read_the_fixed_header() -> None:
    packet = rtp(seq=65535, ssrc=0xDEADBEEF)

    assert rtp_seq(packet) == 65535
    assert rtp_ssrc(packet) == 0xDEADBEEF
    assert rtp_seq(bytearray(packet)) == 65535
    assert rtp_ssrc(bytearray(packet)) == 0xDEADBEEF


def test_set_seq_and_ssrc_rewrites_only_the_sequence_number_and_ssrc() -> None:
    original = rtp(
        seq=1, ssrc=2, marker=True, csrcs=[7], extension=(ONE_BYTE, one_byte_elements([(1, b"x")]))
    )
    buf = bytearray(original)

    set_seq_and_ssrc(buf, 0xBEEF, 0xFEEDFACE)

    assert rtp_seq(buf) == 0xBEEF
    assert rtp_ssrc(buf) == 0xFEEDFACE
    assert len(buf) == len(original)
    assert buf[:2] == original[:2]  # V/P/X/CC, M/PT
    assert buf[4:8] == original[4:8]  # timestamp
    assert buf[12:] == original[12:]  # CSRCs, extension and payload


# -- header_length and payload_end -------------------------------------------------------


def test_the_header_of_a_plain_packet_is_twelve_bytes() -> None:
    assert header_length(rtp()) == 12


def test_the_header_length_counts_csrcs() -> None:
    assert header_length(rtp(csrcs=[1, 2, 3])) == 12 + 12


def test_the_header_length_counts_the_extension_block() -> None:
    packet = rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abc"), (2, b"defg")])))

    # 4 bytes of profile/length, 9 bytes of elements padded to 12
    assert header_length(packet) == 12 + 4 + 12


def test_the_header_length_counts_csrcs_and_extension_together() -> None:
    packet = rtp(csrcs=[9, 8], extension=(TWO_BYTE, two_byte_elements([(1, b"ab")])))

    assert header_length(packet) == 12 + 8 + 4 + 4


def test_a_packet_that_ends_with_its_header_has_no_payload_but_is_not_truncated() -> None:
    packet = rtp(csrcs=[1], payload=b"")

    assert header_length(packet) == len(packet) == 16


@pytest.mark.parametrize(
    "packet",
    [
        rtp(csrcs=[1, 2], payload=b"")[:19],
        rtp(extension=(ONE_BYTE, b""), payload=b"")[:15],
        rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])), payload=b"")[:-1],
    ],
    ids=["csrcs-cut", "extension-header-cut", "extension-body-cut"],
)
def test_a_truncated_header_has_length_minus_one(packet: bytes) -> None:
    assert header_length(packet) == -1


def test_the_payload_of_an_unpadded_packet_ends_with_the_packet() -> None:
    packet = rtp(payload=b"12345")

    assert payload_end(packet) == len(packet)


def test_rtp_padding_is_not_payload() -> None:
    packet = rtp(payload=b"12345", padding=3)

    end = payload_end(packet)

    assert end == len(packet) - 3
    assert packet[header_length(packet) : end] == b"12345"


# -- rewrite_extension_ids ---------------------------------------------------------------


def test_one_byte_extension_ids_are_renumbered_in_place_and_unmapped_ones_padded_out() -> None:
    elements = [(1, b"\x30"), (3, b"\xaa\xbb\xcc"), (10, b"\x85")]
    original = rtp(extension=(ONE_BYTE, one_byte_elements(elements)))
    buf = bytearray(original)

    rewrite_extension_ids(buf, {3: 4, 10: 1})

    assert len(buf) == len(original)
    assert buf[:16] == original[:16]
    assert buf[header_length(buf) :] == original[header_length(original) :]
    assert extensions_of(buf) == (ONE_BYTE, [(4, b"\xaa\xbb\xcc"), (1, b"\x85")])
    # the dropped element became zero bytes where it was
    assert buf[16:18] == b"\x00\x00"


def test_a_one_byte_extension_mapped_to_an_id_above_14_is_padded_out() -> None:
    buf = bytearray(rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"ab"), (2, b"c")]))))

    rewrite_extension_ids(buf, {1: 15, 2: 2})

    assert extensions_of(buf) == (ONE_BYTE, [(2, b"c")])


def test_one_byte_padding_between_elements_is_skipped() -> None:
    body = one_byte_elements([(1, b"a")]) + b"\x00\x00" + one_byte_elements([(2, b"bc")])
    buf = bytearray(rtp(extension=(ONE_BYTE, body)))

    rewrite_extension_ids(buf, {1: 5, 2: 6})

    assert extensions_of(buf) == (ONE_BYTE, [(5, b"a"), (6, b"bc")])


def test_one_byte_id_15_stops_the_rewrite() -> None:
    # RFC 8285 section 4.2: id 15 is reserved and ends the processing of the block.
    body = one_byte_elements([(1, b"a")]) + b"\xf0" + one_byte_elements([(2, b"b")])
    original = rtp(extension=(ONE_BYTE, body))
    buf = bytearray(original)

    rewrite_extension_ids(buf, {1: 3})

    assert buf[16] == 3 << 4
    assert buf[18:] == original[18:]


def test_two_byte_extension_ids_are_renumbered_in_place_and_unmapped_ones_padded_out() -> None:
    elements = [(1, b"ab"), (20, b""), (200, b"xyz")]
    original = rtp(extension=(TWO_BYTE, two_byte_elements(elements)))
    buf = bytearray(original)

    rewrite_extension_ids(buf, {20: 21, 200: 7})

    assert len(buf) == len(original)
    assert buf[:16] == original[:16]
    assert buf[header_length(buf) :] == original[header_length(original) :]
    assert extensions_of(buf) == (TWO_BYTE, [(21, b""), (7, b"xyz")])
    assert buf[16:20] == b"\x00\x00\x00\x00"


def test_a_two_byte_profile_with_appbits_is_rewritten_too() -> None:
    buf = bytearray(rtp(extension=(TWO_BYTE | 0x5, two_byte_elements([(1, b"ab"), (2, b"c")]))))

    rewrite_extension_ids(buf, {2: 9})

    assert bytes(buf[16:24]) == b"\x00\x00\x00\x00" + b"\x09\x01c\x00"


def test_an_element_overrunning_the_block_is_padded_out() -> None:
    # The last element claims sixteen bytes of value but the block ends after four.
    body = one_byte_elements([(1, b"ab")]) + bytes([2 << 4 | 15]) + b"c"
    original = rtp(extension=(ONE_BYTE, body))
    buf = bytearray(original)

    rewrite_extension_ids(buf, {1: 1, 2: 2})

    assert buf[16:19] == original[16:19]
    assert buf[19:24] == bytes(5)
    assert buf[24:] == original[24:]


@pytest.mark.parametrize(
    "packet",
    [
        rtp(),
        rtp(extension=(0xABAC, two_byte_elements([(1, b"ab")]))),
    ],
    ids=["no-extension", "unknown-profile"],
)
def test_a_packet_without_a_usable_extension_block_is_left_alone(packet: bytes) -> None:
    buf = bytearray(packet)

    rewrite_extension_ids(buf, {1: 2})

    assert buf == packet


@pytest.mark.parametrize("cut", [13, 17, 19], ids=["no-block-header", "half-block", "one-short"])
def test_an_extension_block_overrunning_the_packet_is_refused(cut: int) -> None:
    packet = rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])))[:cut]
    buf = bytearray(packet)

    with pytest.raises(ValueError, match="overruns"):
        rewrite_extension_ids(buf, {1: 2})

    assert buf == packet


# -- extension_value ---------------------------------------------------------------------


def test_extension_value_finds_a_one_byte_element() -> None:
    body = one_byte_elements([(1, b"0"), (3, b"\x01\x02\x03")]) + b"\x00" + b"\x41r1"
    packet = rtp(extension=(ONE_BYTE, body))

    assert extension_value(packet, 1) == b"0"
    assert extension_value(packet, 3) == b"\x01\x02\x03"
    assert extension_value(packet, 4) == b"r1"


def test_extension_value_finds_a_two_byte_element_even_when_empty() -> None:
    packet = rtp(extension=(TWO_BYTE, two_byte_elements([(1, b""), (100, b"mid-0")])))

    assert extension_value(packet, 1) == b""
    assert extension_value(packet, 100) == b"mid-0"


@pytest.mark.parametrize(
    ("packet", "wanted"),
    [
        (rtp(), 1),
        (rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"a")]))), 2),
        (rtp(extension=(ONE_BYTE, b"\xf0" + one_byte_elements([(2, b"b")]))), 2),
        (rtp(extension=(TWO_BYTE, two_byte_elements([(1, b"a")]))), 2),
        (rtp(extension=(ONE_BYTE, one_byte_elements([(1, b"abcd")])))[:17], 1),
    ],
    ids=["no-extension", "one-byte-absent", "behind-id-15", "two-byte-absent", "truncated"],
)
def test_extension_value_is_none_when_the_element_is_absent(packet: bytes, wanted: int) -> None:
    assert extension_value(packet, wanted) is None


def test_extension_value_reads_nothing_from_a_block_that_is_not_rfc_8285() -> None:
    # Only 0xBEDE and 0x100X are RFC 8285 blocks (rewrite_extension_ids leaves any other
    # profile alone); another profile's bytes must not be misread as two-byte elements.
    packet = rtp(extension=(0xABAC, two_byte_elements([(1, b"ab")])))

    assert extension_value(packet, 1) is None


# -- RTCP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (build_pli(1, 2), True),
        (build_sender_report(1, 0, 0, 0, 0), True),
        (bytes([0x80, 192]), True),
        (bytes([0x80, 223]), True),
        (rtp(payload_type=96), False),
        (rtp(payload_type=96, marker=True), False),  # byte 1 is 224
        (bytes([0x80, 191]), False),
        (b"\x80", False),
        (b"", False),
    ],
)
def test_is_rtcp_tells_rtcp_from_rtp_by_the_packet_type(data: bytes, expected: bool) -> None:
    assert is_rtcp(data) is expected


def test_iter_rtcp_splits_a_compound_packet() -> None:
    sr = build_sender_report(1, 2, 3, 4, 5)
    rr = build_receiver_report(6, [report_block(7, 0, 0, 0, 0, 0, 0)])
    pli = build_pli(8, 9)

    assert list(iter_rtcp(sr + rr + pli)) == [
        (RTCP_SR, 0, sr),
        (RTCP_RR, 1, rr),
        (RTCP_PSFB, 1, pli),
    ]


def test_iter_rtcp_stops_at_a_packet_with_a_bad_version() -> None:
    pli = build_pli(1, 2)
    bad = bytes([0x40 | 1]) + build_pli(3, 4)[1:]

    assert list(iter_rtcp(pli + bad + pli)) == [(RTCP_PSFB, 1, pli)]


def test_iter_rtcp_stops_at_a_packet_whose_length_overruns_the_datagram() -> None:
    pli = build_pli(1, 2)

    assert list(iter_rtcp(pli + pli[:-1])) == [(RTCP_PSFB, 1, pli)]
    assert list(iter_rtcp(pli + pli[:3])) == [(RTCP_PSFB, 1, pli)]
    assert list(iter_rtcp(b"")) == []


def test_a_pli_is_valid_rtcp() -> None:
    pli = build_pli(0x01020304, 0x0A0B0C0D)

    assert len(pli) == 12
    assert RtcpPacket.parse(pli) == [
        RtcpPsfbPacket(fmt=1, ssrc=0x01020304, media_ssrc=0x0A0B0C0D, fci=b"")
    ]


@pytest.mark.parametrize(
    "seqs",
    [
        [100],
        [100, 101, 116],
        [100, 117],
        [65535, 0, 3],
        [65530, 65535, 0, 10, 11],
        list(range(40000, 40050)),
    ],
    ids=["single", "bitmask", "beyond-bitmask", "wrap", "wrap-range", "long-run"],
)
def test_a_nack_round_trips_through_parse_nack(seqs: list[int]) -> None:
    nack = build_nack(0x1234, 0x5678, seqs)

    media_ssrc, lost = parse_nack(nack)

    assert media_ssrc == 0x5678
    assert lost == seqs
    [(pt, fmt, packet)] = list(iter_rtcp(nack))
    assert (pt, fmt, packet) == (RTCP_RTPFB, 1, nack)


def test_a_nack_packs_the_sixteen_following_losses_into_the_bitmask() -> None:
    nack = build_nack(1, 2, [65535, 0, 15])

    assert len(nack) == 16  # one FCI entry
    assert struct.unpack_from("!HH", nack, 12) == (65535, 1 << 0 | 1 << 15)


def test_a_nack_with_unsorted_and_repeated_seqs_lists_each_loss_once() -> None:
    _, lost = parse_nack(build_nack(1, 2, [10, 12, 10, 11]))

    assert lost == [10, 11, 12]


def test_a_nack_is_valid_rtcp() -> None:
    nack = build_nack(0x1234, 0x5678, [65535, 0, 3, 200])

    [parsed] = RtcpPacket.parse(nack)

    assert isinstance(parsed, RtcpRtpfbPacket)
    assert (parsed.fmt, parsed.ssrc, parsed.media_ssrc) == (1, 0x1234, 0x5678)
    # aiortc does not wrap the bitmask entries at 65536
    assert [seq & 0xFFFF for seq in parsed.lost] == [65535, 0, 3, 200]


def test_a_sender_report_is_valid_rtcp() -> None:
    sr = build_sender_report(
        ssrc=0xAABBCCDD,
        ntp=0x0102030405060708,
        rtp_timestamp=90000,
        packets=2**32 + 5,
        octets=2**32 + 1000,
    )

    assert len(sr) == 28
    [parsed] = RtcpPacket.parse(sr)
    assert isinstance(parsed, RtcpSrPacket)
    assert parsed.ssrc == 0xAABBCCDD
    assert parsed.reports == []
    info = parsed.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp) == (0x0102030405060708, 90000)
    assert (info.packet_count, info.octet_count) == (5, 1000)  # counters wrap at 2**32


def test_a_receiver_report_round_trips_through_parse_report_blocks() -> None:
    blocks = [
        report_block(0x111, 25, 1000, 70000, 33, 0xDEAD, 0xBEEF),
        report_block(0x222, 0, -5, 1, 0, 0, 0),
        report_block(0x333, 255, -(2**30), 1, 7, 0, 0),  # clamped to -2**23
        report_block(0x444, 1, 2**30, 1, 8, 0, 0),  # clamped to 2**23 - 1
    ]
    rr = build_receiver_report(0x999, blocks)

    [(pt, count, packet)] = list(iter_rtcp(rr))

    assert (pt, count) == (RTCP_RR, 4)
    assert list(parse_report_blocks(packet, count, 8)) == [
        ReportBlock(0x111, 25, 1000, 70000, 33, 0xDEAD, 0xBEEF),
        ReportBlock(0x222, 0, -5, 1, 0, 0, 0),
        ReportBlock(0x333, 255, -0x800000, 1, 7, 0, 0),
        ReportBlock(0x444, 1, 0x7FFFFF, 1, 8, 0, 0),
    ]


def test_a_receiver_report_is_valid_rtcp() -> None:
    rr = build_receiver_report(0x999, [report_block(0x111, 25, -3, 70000, 33, 0xDEAD, 0xBEEF)])

    [parsed] = RtcpPacket.parse(rr)

    assert isinstance(parsed, RtcpRrPacket)
    assert parsed.ssrc == 0x999
    [report] = parsed.reports
    assert (report.ssrc, report.fraction_lost, report.packets_lost) == (0x111, 25, -3)
    assert (report.highest_sequence, report.jitter) == (70000, 33)
    assert (report.lsr, report.dlsr) == (0xDEAD, 0xBEEF)


def test_an_empty_receiver_report_is_valid_rtcp() -> None:
    rr = build_receiver_report(0x999, [])

    assert RtcpPacket.parse(rr) == [RtcpRrPacket(ssrc=0x999, reports=[])]
    assert list(parse_report_blocks(rr, 0, 8)) == []


def test_parse_report_blocks_stops_at_a_truncated_block() -> None:
    rr = build_receiver_report(1, [report_block(2, 0, 0, 0, 0, 0, 0)] * 2)

    assert [block[0] for block in parse_report_blocks(rr[:-1], 2, 8)] == [2]


def test_parse_bye_lists_the_leaving_sources() -> None:
    bye = struct.pack("!BBHII", 0x80 | 2, RTCP_BYE, 2, 0xAAAA, 0xBBBB)

    [(pt, count, packet)] = list(iter_rtcp(bye))

    assert (pt, count) == (RTCP_BYE, 2)
    assert parse_bye(packet, count) == [0xAAAA, 0xBBBB]


def test_parse_bye_ignores_sources_the_packet_is_too_short_to_hold() -> None:
    bye = struct.pack("!BBHI", 0x80 | 3, RTCP_BYE, 1, 0xAAAA)

    assert parse_bye(bye, 3) == [0xAAAA]


def test_iter_rtcp_reports_the_type_of_packets_it_does_not_parse() -> None:
    sdes = struct.pack("!BBHI", 0x81, RTCP_SDES, 2, 0x1) + b"\x01\x01x\x00"

    assert [pt for pt, _, _ in iter_rtcp(sdes + build_pli(1, 2))] == [RTCP_SDES, RTCP_PSFB]
