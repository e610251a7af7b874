"""Byte-level RTP and RTCP helpers for the forwarding path.

Packets are never fully parsed: the forwarder only needs a few fixed header
fields (RFC 3550 section 5.1) and rewrites header extension ids in place
(RFC 8285), so nothing here allocates more than the output buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

RTP_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, seq, timestamp, ssrc
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_PROFILE_AND_LENGTH = struct.Struct("!HH")  # RFC 8285 extension block header
_BLOCK_AND_FIRST_ELEMENT = struct.Struct("!HHI")  # ... and the first 4 bytes of it

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205  # RFC 4585: generic NACK is FMT 1
RTCP_PSFB = 206  # RFC 4585: PLI is FMT 1; RFC 5104: FIR is FMT 4
PSFB_AFB = 15  # RFC 4585 section 6.4: application layer feedback (REMB rides on it)


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 section 4: RTCP packet types 192-223 share the port with RTP."""
    return len(data) > 1 and 192 <= data[1] <= 223


def rtp_ssrc(data: bytes | bytearray) -> int:
    return int(_U32.unpack_from(data, 8)[0])


def rtp_seq(data: bytes | bytearray) -> int:
    return int(_U16.unpack_from(data, 2)[0])


def set_seq_and_ssrc(buf: bytearray, seq: int, ssrc: int) -> None:
    # Two packs: a struct pad byte ("x") would overwrite the timestamp with zeros.
    _U16.pack_into(buf, 2, seq)
    _U32.pack_into(buf, 8, ssrc)


def header_length(data: bytes | bytearray) -> int:
    """Length of the fixed header, CSRCs and extension block; -1 if truncated."""
    length = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < length + 4:
            return -1
        length += 4 + 4 * _U16.unpack_from(data, length + 2)[0]
    return length if len(data) >= length else -1


def payload_end(data: bytes | bytearray) -> int:
    """Where the payload ends: RTP padding (P bit) is not payload."""
    if data[0] & 0x20:
        return len(data) - data[-1]
    return len(data)


def _extension_block(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """(profile, start, end) of the header extension elements, if any."""
    if not data[0] & 0x10:
        return None
    start = 12 + 4 * (data[0] & 0x0F)
    if len(data) < start + 4:
        return None
    profile, words = struct.unpack_from("!HH", data, start)
    end = start + 4 + 4 * words
    if end > len(data):
        return None
    return profile, start + 4, end


def rewrite_extension_ids(buf: bytearray, id_map: dict[int, int]) -> None:
    """Map extension ids in place; elements with no mapping become padding.

    RFC 8285 sections 4.2 and 4.3: a zero byte between elements is padding
    that receivers skip, so zeroing an element drops it without moving bytes.
    Raises ValueError when the X bit is set but the block overruns the packet:
    the packet is malformed and must not be forwarded (mediasoup drops it too).
    """
    if not buf[0] & 0x10:
        return
    block = _extension_block(buf)
    if block is None:
        raise ValueError("RTP header extension block overruns the packet")
    profile, pos, end = block
    if profile == 0xBEDE:  # one-byte header
        while pos < end:
            byte = buf[pos]
            ext_id = byte >> 4
            if ext_id == 0:
                pos += 1
                continue
            if ext_id == 15:
                return
            size = (byte & 0x0F) + 2
            new_id = id_map.get(ext_id)
            if new_id is None or new_id > 14 or pos + size > end:
                buf[pos : min(pos + size, end)] = bytes(min(size, end - pos))
            elif new_id != ext_id:
                buf[pos] = (new_id << 4) | (byte & 0x0F)
            pos += size
    elif profile & 0xFFF0 == 0x1000:  # two-byte header
        while pos + 1 < end:
            ext_id = buf[pos]
            if ext_id == 0:
                pos += 1
                continue
            size = buf[pos + 1] + 2
            new_id = id_map.get(ext_id)
            if new_id is None or pos + size > end:
                buf[pos : min(pos + size, end)] = bytes(min(size, end - pos))
            else:
                buf[pos] = new_id
            pos += size


def abs_send_time(data: bytes | bytearray, ext_id: int) -> int:
    """The 24-bit abs-send-time value (6.18 fixed-point seconds) of one packet, or -1.

    Called for every packet with the X bit on a transport whose producers
    negotiated abs-send-time (Google's extension, no RFC: a 3-byte element,
    https://webrtc.googlesource.com/src/+/main/docs/native-code/rtp-hdrext/abs-send-time/),
    so it reads the block in place, allocates nothing and never raises: a
    malformed block gives -1 here and is refused later by the producer.
    """
    start = 12 + ((data[0] & 0x0F) << 2)
    if len(data) >= start + 8:
        # Browsers (libwebrtc) put abs-send-time first: one read decides.
        profile, words, first = _BLOCK_AND_FIRST_ELEMENT.unpack_from(data, start)
        if profile == 0xBEDE and first >> 24 == (ext_id << 4 | 2) and words:
            return int(first) & 0xFFFFFF
    pos = _element_value_at(data, ext_id, 3)
    if pos < 0:
        return -1
    return (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]


def transport_wide_sequence_number(data: bytes | bytearray, ext_id: int) -> int:
    """The 16-bit transport-wide sequence number of one packet, or -1.

    draft-holmer-rmcat-transport-wide-cc-extensions-01 section 2: a 2-byte
    element.  Per packet, like :func:`abs_send_time`: reads in place, never
    raises, -1 for a missing or malformed element.
    """
    pos = _element_value_at(data, ext_id, 2)
    if pos < 0:
        return -1
    return (data[pos] << 8) | data[pos + 1]


def _element_value_at(data: bytes | bytearray, ext_id: int, length: int) -> int:
    """Where the value of element ``ext_id`` starts, if it is ``length`` bytes long; else -1.

    Walks the RFC 8285 extension block in place (both header forms) without
    allocating; a block that overruns the packet, or an element of another
    length, gives -1.
    """
    start = 12 + ((data[0] & 0x0F) << 2)
    size = len(data)
    if size < start + 4:
        return -1
    profile, words = _PROFILE_AND_LENGTH.unpack_from(data, start)
    pos = start + 4
    end = pos + (words << 2)
    if end > size:
        return -1
    if profile == 0xBEDE:  # one-byte header (RFC 8285 section 4.2), as browsers send
        while pos < end:
            head = data[pos]
            if head >> 4 == ext_id:
                if (head & 0x0F) + 1 != length or pos + 1 + length > end:
                    return -1
                return pos + 1
            if head == 0:  # padding
                pos += 1
            elif head >= 0xF0:  # id 15: stop reading (section 4.2)
                return -1
            else:
                pos += (head & 0x0F) + 2
    elif profile & 0xFFF0 == 0x1000:  # two-byte header (section 4.3)
        while pos + 1 < end:
            if data[pos] == 0:
                pos += 1
                continue
            if data[pos] == ext_id:
                if data[pos + 1] != length or pos + 2 + length > end:
                    return -1
                return pos + 2
            pos += data[pos + 1] + 2
    return -1


def extension_value(data: bytes | bytearray, wanted_id: int) -> bytes | None:
    """The value of one header extension element (slow path: new SSRCs)."""
    block = _extension_block(data)
    if block is None:
        return None
    profile, pos, end = block
    one_byte = profile == 0xBEDE
    if not one_byte and profile & 0xFFF0 != 0x1000:
        return None  # not an RFC 8285 block
    while pos < end:
        if one_byte:
            ext_id, size, head = data[pos] >> 4, (data[pos] & 0x0F) + 1, 1
            if ext_id == 15:
                return None
        else:
            if pos + 1 >= end:
                return None
            ext_id, size, head = data[pos], data[pos + 1], 2
        if ext_id == 0:
            pos += 1
            continue
        if ext_id == wanted_id:
            return bytes(data[pos + head : pos + head + size])
        pos += head + size
    return None


# -- RTCP ---------------------------------------------------------------------


def iter_rtcp(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Split a compound RTCP packet into (packet type, count/FMT, packet)."""
    pos = 0
    while pos + 4 <= len(data):
        first, pt, words = struct.unpack_from("!BBH", data, pos)
        end = pos + 4 * (words + 1)
        if first >> 6 != 2 or end > len(data):
            return
        yield pt, first & 0x1F, data[pos:end]
        pos = end


def _header(count: int, pt: int, body_len: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, pt, (body_len + 4) // 4 - 1)


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture Loss Indication, RFC 4585 section 6.3.1."""
    return _header(1, RTCP_PSFB, 8) + struct.pack("!II", sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """Full Intra Request, RFC 5104 section 4.3.1: the media source field is 0 and
    the FCI names the SSRC, with a sequence number the sender bumps per request."""
    body = struct.pack("!IIIB3x", sender_ssrc, 0, media_ssrc, seq_nr & 0xFF)
    return _header(4, RTCP_PSFB, len(body)) + body


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: list[int]) -> bytes:
    """Generic NACK, RFC 4585 section 6.2.1 (PID + bitmask of 16 following)."""
    fci = bytearray()
    seqs = sorted(set(seqs), key=lambda s: (s - seqs[0]) & 0xFFFF)
    i = 0
    while i < len(seqs):
        pid, blp = seqs[i], 0
        i += 1
        while i < len(seqs) and 0 < (seqs[i] - pid) & 0xFFFF <= 16:
            blp |= 1 << (((seqs[i] - pid) & 0xFFFF) - 1)
            i += 1
        fci += struct.pack("!HH", pid, blp)
    body = struct.pack("!II", sender_ssrc, media_ssrc) + bytes(fci)
    return _header(1, RTCP_RTPFB, len(body)) + body


def parse_nack(packet: bytes) -> tuple[int, list[int]]:
    """(media SSRC, lost sequence numbers) of a generic NACK."""
    media_ssrc = _U32.unpack_from(packet, 8)[0]
    lost: list[int] = []
    for pos in range(12, len(packet) - 3, 4):
        pid, blp = struct.unpack_from("!HH", packet, pos)
        lost.append(pid)
        for bit in range(16):
            if blp >> bit & 1:
                lost.append((pid + bit + 1) & 0xFFFF)
    return int(media_ssrc), lost


# REMB, draft-alvestrand-rmcat-remb-03 section 2.2: PSFB FMT 15 (RFC 4585
# application layer feedback) whose FCI is "REMB", the number of SSRCs, the
# bitrate as a 6-bit exponent and an 18-bit mantissa (bits/s = mantissa <<
# exponent), then the SSRCs of the media streams the estimate is about.  The
# media source SSRC of the common header is always 0.
REMB_IDENTIFIER = b"REMB"
_REMB_MAX_MANTISSA = 0x3FFFF


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Receiver Estimated Maximum Bitrate for the streams ``ssrcs`` (at most 255).

    The mantissa keeps the top 18 bits, so the value sent is rounded down, by
    less than 2^-17 of it: never more than estimated.
    """
    ssrcs = list(ssrcs)[:255]
    mantissa, exponent = max(0, int(bitrate)), 0
    while mantissa > _REMB_MAX_MANTISSA:
        mantissa >>= 1
        exponent += 1
    body = (
        struct.pack("!II", sender_ssrc, 0)
        + REMB_IDENTIFIER
        + struct.pack("!BBH", len(ssrcs), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF)
        + b"".join(_U32.pack(ssrc) for ssrc in ssrcs)
    )
    return _header(PSFB_AFB, RTCP_PSFB, len(body)) + body


def parse_remb(packet: bytes) -> tuple[int, list[int]] | None:
    """(bitrate in bits/s, SSRCs) of a PSFB FMT 15 packet; None if it is not a REMB.

    Raises ValueError when it says REMB but its SSRC list does not fit the
    packet (the transport counts it as a malformed RTCP packet).
    """
    if len(packet) < 20 or packet[12:16] != REMB_IDENTIFIER:
        return None
    count = packet[16]
    if len(packet) < 20 + 4 * count:
        raise ValueError("REMB lists more SSRCs than it carries")
    exponent = packet[17] >> 2
    mantissa = ((packet[17] & 0x03) << 16) | (packet[18] << 8) | packet[19]
    ssrcs = [int(_U32.unpack_from(packet, 20 + 4 * i)[0]) for i in range(count)]
    return mantissa << exponent, ssrcs


def build_sender_report(
    ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int
) -> bytes:
    """Sender report with no report blocks, RFC 3550 section 6.4.1."""
    body = struct.pack(
        "!IQIII", ssrc, ntp, rtp_timestamp, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF
    )
    return _header(0, RTCP_SR, len(body)) + body


def build_receiver_report(sender_ssrc: int, blocks: list[bytes]) -> bytes:
    body = _U32.pack(sender_ssrc) + b"".join(blocks)
    return _header(len(blocks), RTCP_RR, len(body)) + body


def report_block(
    ssrc: int,
    fraction_lost: int,
    cumulative_lost: int,
    highest_seq: int,
    jitter: int,
    lsr: int,
    dlsr: int,
) -> bytes:
    """One reception report block, RFC 3550 section 6.4.1."""
    cumulative = max(-0x800000, min(0x7FFFFF, cumulative_lost)) & 0xFFFFFF
    return struct.pack(
        "!IIIIII",
        ssrc,
        (fraction_lost & 0xFF) << 24 | cumulative,
        highest_seq & 0xFFFFFFFF,
        jitter & 0xFFFFFFFF,
        lsr & 0xFFFFFFFF,
        dlsr & 0xFFFFFFFF,
    )


class ReportBlock(NamedTuple):
    """One reception report block (RFC 3550 section 6.4.1), as the client sent it."""

    ssrc: int
    fraction_lost: int
    """Lost since the previous report, in 1/256 (8-bit fixed point)."""
    cumulative_lost: int
    """Signed 24 bits: duplicates can make it negative."""
    highest_seq: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter, in RTP timestamp units."""
    lsr: int
    dlsr: int


def parse_report_blocks(packet: bytes, count: int, offset: int) -> Iterator[ReportBlock]:
    """Each report block of an SR (offset 28) or RR (offset 8); stops at a truncated one."""
    for i in range(count):
        pos = offset + 24 * i
        if pos + 24 > len(packet):
            return
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(packet, pos)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        yield ReportBlock(ssrc, lost_word >> 24, cumulative, highest, jitter, lsr, dlsr)


def parse_bye(packet: bytes, count: int) -> list[int]:
    return [
        int(_U32.unpack_from(packet, 4 + 4 * i)[0])
        for i in range(count)
        if 8 + 4 * i <= len(packet)
    ]
