"""Fake VP8 RTP packets for the simulcast tests (no encoder: the forwarder never decodes)."""

from __future__ import annotations

import struct


def vp8_descriptor(
    *,
    picture_id: int | None = None,
    wide: bool = True,
    tl0: int | None = None,
    tid: int | None = None,
    layer_sync: bool = False,
    start: bool = True,
) -> bytes:
    """An RFC 7741 payload descriptor with the fields asked for."""
    first = 0x10 if start else 0x00
    ext = 0
    tail = b""
    if picture_id is not None:
        ext |= 0x80
        tail += struct.pack("!H", 0x8000 | picture_id) if wide else bytes([picture_id & 0x7F])
    if tl0 is not None:
        ext |= 0x40
        tail += bytes([tl0 & 0xFF])
    if tid is not None:
        ext |= 0x20
        tail += bytes([(tid << 6) | (0x20 if layer_sync else 0)])
    if not ext:
        return bytes([first])
    return bytes([first | 0x80, ext]) + tail


def vp8_payload(
    *, key: bool = False, start: bool = True, size: int = 40, **fields: object
) -> bytes:
    """Descriptor + a VP8 payload header whose P bit says key frame or not."""
    header = bytes([0x00 if key else 0x01]) + bytes(size - 1)
    return vp8_descriptor(start=start, **fields) + header  # type: ignore[arg-type]


def rtp(
    *,
    ssrc: int,
    seq: int,
    timestamp: int,
    payload: bytes,
    pt: int = 97,
    marker: bool = False,
    extensions: bytes = b"",
    padding: int = 0,
) -> bytearray:
    """An RTP packet (RFC 3550), with an RFC 8285 one-byte extension block if given."""
    first = 0x80
    head = b""
    if extensions:
        first |= 0x10
        extensions += bytes(-len(extensions) % 4)
        head = struct.pack("!HH", 0xBEDE, len(extensions) // 4) + extensions
    body = payload
    if padding:
        first |= 0x20
        body += bytes(padding - 1) + bytes([padding])
    header = struct.pack(
        "!BBHII",
        first,
        (0x80 if marker else 0) | pt,
        seq & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    return bytearray(header + head + body)


def one_byte_extension(ext_id: int, value: bytes) -> bytes:
    """One RFC 8285 one-byte element."""
    return bytes([(ext_id << 4) | (len(value) - 1)]) + value


def parse_vp8_fields(packet: bytes | bytearray) -> tuple[int, int, int]:
    """(PictureID, TL0PICIDX, TID) of a forwarded packet (-1 when absent)."""
    from media.codecs.vp8 import Vp8Descriptor, parse_descriptor
    from media.rtp_packet import header_length, payload_end

    d = Vp8Descriptor()
    parse_descriptor(d, packet, header_length(packet), payload_end(packet))
    assert d.valid
    return d.picture_id, d.tl0, d.tid
