"""Key frames and VP8 numbering: what switching between encodings relies on."""

from __future__ import annotations

import random
import struct

from media.codecs import h264
from media.codecs.vp8 import Vp8Descriptor, Vp8Rewriter, parse_descriptor, write_descriptor

from .vp8_packets import vp8_payload


def parsed(payload: bytes) -> Vp8Descriptor:
    d = Vp8Descriptor()
    parse_descriptor(d, payload, 0, len(payload))
    return d


# -- VP8 payload descriptor (RFC 7741) ------------------------------------------------------


def test_a_full_descriptor_parses_into_its_fields() -> None:
    d = parsed(vp8_payload(picture_id=0x1234, tl0=77, tid=2, layer_sync=True, key=False))

    assert d.valid and not d.key_frame
    assert (d.picture_id, d.picture_id_wide, d.tl0, d.tid, d.layer_sync) == (
        0x1234,
        True,
        77,
        2,
        True,
    )


def test_a_key_frame_is_the_start_of_partition_0_with_the_p_bit_clear() -> None:
    assert parsed(vp8_payload(picture_id=1, tl0=0, tid=0, key=True)).key_frame
    assert not parsed(vp8_payload(picture_id=1, tl0=0, tid=0, key=False)).key_frame
    # A continuation packet of a key frame does not start it.
    assert not parsed(vp8_payload(picture_id=1, key=True, start=False)).key_frame
    # Minimal descriptor (no X byte), as a sender without picture ids sends.
    assert parsed(vp8_payload(key=True)).key_frame


def test_a_truncated_descriptor_is_not_valid() -> None:
    assert not parsed(bytes([0x90, 0xE0, 0x81])).valid  # 15-bit PictureID cut short
    assert not parsed(b"").valid


def test_a_7_bit_picture_id_is_rewritten_as_15_bits() -> None:
    payload = vp8_payload(picture_id=5, wide=False, tl0=9, tid=0)
    d = parsed(payload)
    out = write_descriptor(bytearray(payload), d, 0x4321, 200)

    again = parsed(bytes(out))
    assert (again.picture_id, again.picture_id_wide, again.tl0) == (0x4321, True, 200)
    assert len(out) == len(payload) + 1


def reference_fields(payload: bytes) -> tuple[object, ...] | None:
    """RFC 7741 section 4.2, read the plain way: (key frame, PictureID, its offset,
    15 bits, TL0PICIDX, its offset, TID, Y), or None if it does not parse."""
    if not payload:
        return None
    first, pos = payload[0], 1
    picture = picture_pos = tl0 = tl0_pos = -1
    wide = False
    tid, sync = 0, True
    if first & 0x80:
        if len(payload) < 2:
            return None
        ext, pos = payload[1], 2
        if ext & 0x80:
            if len(payload) <= pos:
                return None
            picture_pos, wide = pos, bool(payload[pos] & 0x80)
            if wide and len(payload) <= pos + 1:
                return None
            picture = ((payload[pos] & 0x7F) << 8 | payload[pos + 1]) if wide else payload[pos]
            pos += 2 if wide else 1
        if ext & 0x40:
            if len(payload) <= pos:
                return None
            tl0, tl0_pos, pos = payload[pos], pos, pos + 1
        if ext & 0x30:
            if len(payload) <= pos:
                return None
            if ext & 0x20:
                tid, sync = payload[pos] >> 6, bool(payload[pos] & 0x20)
            pos += 1
    key = len(payload) > pos and first & 0x17 == 0x10 and not payload[pos] & 1
    return key, picture, picture_pos, wide, tl0, tl0_pos, tid, sync


def test_every_descriptor_parses_as_rfc_7741_reads_it() -> None:
    # The parser has a short path for what browsers send (X, I with 15 bits, L,
    # T): it must agree with the plain reading on that and on everything else.
    rng = random.Random(7741)
    d = Vp8Descriptor()
    for _ in range(5000):
        first = rng.choice([0x10, 0x90, 0x80, 0x00, 0x91, 0xB0, rng.randrange(256)])
        ext = rng.choice([0xE0, 0xF0, 0xC0, 0x80, 0x60, 0x20, 0x10, 0x00, rng.randrange(256)])
        body = bytes([first, ext]) + bytes(rng.randrange(256) for _ in range(6))
        payload = body[: rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8])]
        if rng.random() < 0.5 and len(payload) > 2:
            payload = payload[:2] + bytes([payload[2] | 0x80]) + payload[3:]  # M: 15 bits
        parse_descriptor(d, payload, 0, len(payload))
        expected = reference_fields(payload)
        assert d.valid == (expected is not None), payload.hex()
        if expected is None:
            continue
        key, picture, picture_pos, wide, tl0, tl0_pos, tid, sync = expected
        assert (d.key_frame, d.picture_id, d.tl0, d.tid, d.layer_sync) == (
            key,
            picture,
            tl0,
            tid,
            sync,
        ), payload.hex()
        if picture >= 0:
            assert (d.picture_id_pos, d.picture_id_wide) == (picture_pos, wide), payload.hex()
        if tl0 >= 0:
            assert d.tl0_pos == tl0_pos, payload.hex()
        # Within a buffer, at an offset, and with a payload behind it.
        packet = bytes(12) + payload + bytes(rng.randrange(3))
        again = Vp8Descriptor()
        parse_descriptor(again, packet, 12, 12 + len(payload))
        assert (again.valid, again.picture_id, again.tl0, again.tid, again.layout) == (
            d.valid,
            d.picture_id,
            d.tl0,
            d.tid,
            d.layout,
        )


def test_the_layout_says_which_fields_there_are_and_how_wide_the_picture_id_is() -> None:
    full = parsed(vp8_payload(picture_id=0x1234, tl0=7, tid=1))
    layouts = {
        full.layout,
        parsed(vp8_payload(picture_id=5, wide=False, tl0=7, tid=1)).layout,
        parsed(vp8_payload(picture_id=0x1234, tid=1)).layout,
        parsed(vp8_payload(picture_id=0x1234, tl0=7)).layout,
        parsed(vp8_payload()).layout,
    }

    assert len(layouts) == 5
    # The values do not matter, only which fields there are (and so where they are).
    other = parsed(vp8_payload(picture_id=99, tl0=200, tid=2, layer_sync=True, key=True))
    assert other.layout == full.layout and other.picture_id_pos == full.picture_id_pos


def test_a_descriptor_reused_for_a_packet_that_does_not_parse_is_reset() -> None:
    d = parsed(vp8_payload(picture_id=0x1234, tl0=7, tid=2, key=True))

    parse_descriptor(d, bytes([0x90, 0xE0, 0x81]), 0, 3)  # 15-bit PictureID cut short

    assert not d.valid and not d.key_frame
    assert (d.picture_id, d.tl0, d.tid, d.layer_sync, d.layout) == (-1, -1, 0, True, -1)


def test_a_field_the_packet_does_not_have_is_not_written() -> None:
    # A picture's first packet decides its numbers; a later packet of it may
    # lack a field (a sender's choice): nothing is written where it would be.
    bare = vp8_payload(start=False)
    assert write_descriptor(bytearray(bare), parsed(bare), 0x4321, 200) == bare

    tl0_only = vp8_payload(tl0=9, tid=0)
    out = write_descriptor(bytearray(tl0_only), parsed(tl0_only), 0x4321, 200)
    again = parsed(bytes(out))
    assert (again.picture_id, again.tl0, len(out)) == (-1, 200, len(tl0_only))

    picture_only = vp8_payload(picture_id=5, wide=False, tid=1)
    out = write_descriptor(bytearray(picture_only), parsed(picture_only), 0x4321, 200)
    again = parsed(bytes(out))
    assert (again.picture_id, again.tl0, again.tid) == (0x4321, -1, 1)
    assert out[4:] == picture_only[3:]  # one byte longer, the rest intact


# -- the per-consumer rewriter ---------------------------------------------------------------


def run(rewriter: Vp8Rewriter, frames: list[tuple[int, int, int, bool]]) -> list[tuple[int, int]]:
    """(PictureID, TL0PICIDX) out for each (picture, tl0, tid, key) in, dropped ones left out."""
    out = []
    for picture, tl0, tid, key in frames:
        result = rewriter.process(
            parsed(vp8_payload(picture_id=picture, tl0=tl0, tid=tid, key=key))
        )
        if result is not None:
            out.append(result)
    return out


L1T3 = [0, 2, 1, 2]  # the TID of each picture in libwebrtc's three-layer pattern


def l1t3_frames(first_picture: int, first_tl0: int, count: int) -> list[tuple[int, int, int, bool]]:
    frames = []
    tl0 = first_tl0 - 1
    for i in range(count):
        tid = L1T3[i % 4]
        if tid == 0:
            tl0 += 1
        frames.append(((first_picture + i) & 0x7FFF, tl0 & 0xFF, tid, i == 0))
    return frames


def test_dropping_temporal_layers_keeps_picture_ids_continuous() -> None:
    rewriter = Vp8Rewriter(temporal_layers=3)
    rewriter.target_temporal = 0

    out = run(rewriter, l1t3_frames(1000, 40, 12))

    assert [p for p, _ in out] == [0, 1, 2]  # only TL0 pictures, numbered 0, 1, 2
    assert [t for _, t in out] == [0, 1, 2]


def test_temporal_layer_1_keeps_half_the_pictures() -> None:
    rewriter = Vp8Rewriter(temporal_layers=3)
    rewriter.target_temporal = 1

    out = run(rewriter, l1t3_frames(1000, 40, 8))

    assert [p for p, _ in out] == [0, 1, 2, 3]
    assert rewriter.current_temporal == 1


def test_going_up_a_temporal_layer_waits_for_a_layer_sync() -> None:
    rewriter = Vp8Rewriter(temporal_layers=3)
    rewriter.target_temporal = 0
    run(rewriter, l1t3_frames(0, 0, 4))
    rewriter.target_temporal = 2

    # TID 2 without the Y bit references a TID 1 picture the receiver never got.
    no_sync = rewriter.process(parsed(vp8_payload(picture_id=5, tl0=1, tid=2)))
    synced = rewriter.process(parsed(vp8_payload(picture_id=6, tl0=1, tid=1, layer_sync=True)))

    assert no_sync is None
    assert synced is not None and rewriter.current_temporal == 1


def test_a_switch_continues_picture_ids_and_tl0picidx_from_the_last_sent() -> None:
    rewriter = Vp8Rewriter(temporal_layers=3)
    before = run(rewriter, l1t3_frames(30000, 250, 8))
    rewriter.sync()
    after = run(rewriter, l1t3_frames(12, 7, 8))

    pictures = [p for p, _ in before + after]
    tl0s = [t for _, t in before + after]
    assert pictures == list(range(16))
    assert tl0s == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]


def test_an_undeclared_temporal_layer_is_not_dropped_at_the_top_target() -> None:
    rewriter = Vp8Rewriter(temporal_layers=1)  # scalabilityMode said L1T1

    out = run(rewriter, l1t3_frames(0, 0, 8))

    assert len(out) == 8


# -- H.264 (RFC 6184) ----------------------------------------------------------------------


def nal(kind: int, size: int = 10) -> bytes:
    return bytes([0x60 | kind]) + bytes(size - 1)


def test_h264_key_frames_start_with_an_sps() -> None:
    sps, pps, idr, p_slice = nal(7), nal(8), nal(5), nal(1)
    stap_a = bytes([24]) + b"".join(struct.pack("!H", len(n)) + n for n in (sps, pps))
    fu_start_sps = bytes([28, 0x80 | 7]) + bytes(8)
    fu_idr = bytes([28, 0x80 | 5]) + bytes(8)

    def key(payload: bytes) -> bool:
        return h264.is_key_frame(payload, 0, len(payload))

    assert key(sps) and key(stap_a) and key(fu_start_sps)
    assert not key(idr) and not key(p_slice) and not key(pps) and not key(fu_idr)
    assert not key(bytes([24, 0, 50]) + sps)  # STAP-A whose size overruns
