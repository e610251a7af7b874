"""Key frames and VP8 numbering: what switching between encodings relies on."""

from __future__ import annotations

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
