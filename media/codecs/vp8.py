"""VP8 payload descriptor (RFC 7741 section 4.2): read it, rewrite it per consumer.

A simulcast consumer switches between encodings that each number their
pictures on their own, and drops the temporal layers its receiver should not
get.  The receiver's VP8 depacketizer uses PictureID and TL0PICIDX to find
frames and their references, so both must stay continuous on the way out:

* PictureID (7 or 15 bits) goes through a ``SeqManager``: pictures of a
  dropped temporal layer are removed from the numbering, and a switch
  re-anchors it right after the last picture sent;
* TL0PICIDX (8 bits) counts base-layer pictures, which are never dropped,
  so a switch is all that re-anchors it.

Parsing happens once per packet per *stream* (``parse_descriptor`` into a
reusable ``Vp8Descriptor``), not per consumer; each consumer keeps only its
numbering state (``Vp8Rewriter``), as mediasoup's VP8 ``EncodingContext``.

::

     0 1 2 3 4 5 6 7
    +-+-+-+-+-+-+-+-+
    |X|R|N|S|R| PID |  S: start of a partition, PID: partition index
    +-+-+-+-+-+-+-+-+
    |I|L|T|K| RSV   |  (X)
    +-+-+-+-+-+-+-+-+
    |M| PictureID   |  (I) M: 15-bit PictureID, one more byte follows
    +-+-+-+-+-+-+-+-+
    |   TL0PICIDX   |  (L)
    +-+-+-+-+-+-+-+-+
    |TID|Y| KEYIDX  |  (T or K) Y: layer sync
    +-+-+-+-+-+-+-+-+

The first byte after the descriptor starts the VP8 payload header, whose
lowest bit (P) is 0 for a key frame (RFC 6386 section 9.1), on the first
packet of a frame (S set, PID 0).
"""

from __future__ import annotations

import struct

from ..seq_manager import SeqManager

NO_TEMPORAL_LIMIT = 0xFF

# The descriptor browsers send with simulcast: S/PID byte, X byte (I, L, T),
# 15-bit PictureID, TL0PICIDX, TID/Y/KEYIDX.
_BROWSER_DESCRIPTOR = struct.Struct("!BBHBB")


class Vp8Descriptor:
    """One packet's descriptor, parsed in place (reused from packet to packet)."""

    __slots__ = (
        "key_frame",
        "layer_sync",
        "layout",
        "picture_id",
        "picture_id_pos",
        "picture_id_wide",
        "tid",
        "tl0",
        "tl0_pos",
        "valid",
    )

    def __init__(self) -> None:
        self.valid = False
        self.key_frame = False
        self.picture_id = -1
        self.picture_id_pos = 0
        self.picture_id_wide = False
        self.tl0 = -1
        self.tl0_pos = 0
        self.tid = 0
        self.layer_sync = True
        self.layout = -1
        """Which optional fields there are: the X byte, plus 0x100 for a 15-bit
        PictureID (-1 when invalid).  Equal layouts put the fields at equal offsets."""


def parse_descriptor(d: Vp8Descriptor, buf: bytes | bytearray, pos: int, end: int) -> None:
    """Fill ``d`` from the payload at ``buf[pos:end]``; ``d.valid`` says if it parsed.

    Runs for every packet of a simulcast VP8 stream: each field is read into a
    local and stored once (an invalid descriptor gets the defaults).
    """
    if pos + 6 < end:
        first, ext, picture, tl0, byte = _BROWSER_DESCRIPTOR.unpack_from(buf, pos)
        if first & 0x80 and ext == 0xE0 and picture & 0x8000:
            # What browsers send for simulcast: X; I with a 15-bit PictureID, L, T.
            d.picture_id = picture & 0x7FFF
            d.picture_id_pos = pos + 2
            d.picture_id_wide = True
            d.tl0 = tl0
            d.tl0_pos = pos + 4
            d.tid = byte >> 6
            d.layer_sync = bool(byte & 0x20)
            d.layout = 0x1E0
            d.key_frame = first & 0x17 == 0x10 and not buf[pos + 6] & 0x01
            d.valid = True
            return
    picture = tl0 = -1
    tid = 0
    layer_sync = True
    layout = 0
    if pos >= end:
        _invalid(d)
        return
    first = buf[pos]
    pos += 1
    if first & 0x80:  # X: extension byte
        if pos >= end:
            _invalid(d)
            return
        ext = layout = buf[pos]
        pos += 1
        if ext & 0x80:  # I: PictureID
            if pos >= end:
                _invalid(d)
                return
            byte = buf[pos]
            d.picture_id_pos = pos
            if byte & 0x80:  # M: 15 bits
                if pos + 1 >= end:
                    _invalid(d)
                    return
                picture = ((byte & 0x7F) << 8) | buf[pos + 1]
                d.picture_id_wide = True
                layout |= 0x100
                pos += 2
            else:
                picture = byte
                d.picture_id_wide = False
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= end:
                _invalid(d)
                return
            tl0 = buf[pos]
            d.tl0_pos = pos
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            if pos >= end:
                _invalid(d)
                return
            if ext & 0x20:
                byte = buf[pos]
                tid = byte >> 6
                layer_sync = bool(byte & 0x20)
            pos += 1
    d.picture_id = picture
    d.tl0 = tl0
    d.tid = tid
    d.layer_sync = layer_sync
    d.layout = layout
    # First packet of a frame (S set, partition 0) whose payload header says key frame.
    d.key_frame = pos < end and first & 0x17 == 0x10 and not buf[pos] & 0x01
    d.valid = True


def _invalid(d: Vp8Descriptor) -> None:
    d.valid = False
    d.key_frame = False
    d.picture_id = -1
    d.tl0 = -1
    d.tid = 0
    d.layer_sync = True
    d.layout = -1


def is_key_frame(buf: bytes | bytearray, pos: int, end: int) -> bool:
    """Whether the payload at ``buf[pos:end]`` starts a VP8 key frame."""
    d = Vp8Descriptor()
    parse_descriptor(d, buf, pos, end)
    return d.valid and d.key_frame


class Vp8Rewriter:
    """One consumer's PictureID/TL0PICIDX numbering and temporal layer filter."""

    __slots__ = (
        "_last_input_picture",
        "_last_picture",
        "_last_result",
        "_pictures",
        "_sync",
        "_tl0_in",
        "_tl0_out",
        "_tl0s",
        "current_temporal",
        "max_temporal",
        "target_temporal",
    )

    def __init__(self, temporal_layers: int) -> None:
        self.max_temporal = max(1, temporal_layers) - 1
        self.target_temporal = self.max_temporal
        self.current_temporal = -1
        self._pictures = SeqManager(15)
        self._tl0s = SeqManager(8)
        self._sync = True
        self._last_input_picture = -1
        # The packets of one picture share its fate and numbers: the first decides.
        self._last_picture = -1
        self._last_result: tuple[int, int] | None = None
        # TL0PICIDX changes on base layer pictures only: the last one asked for.
        self._tl0_in = -1
        self._tl0_out = -1

    def sync(self) -> None:
        """The next packet processed starts a new stream (a switch, or a resume)."""
        self._sync = True
        self._last_picture = -1

    def process(self, d: Vp8Descriptor) -> tuple[int, int] | None:
        """(output PictureID, output TL0PICIDX) for this packet, or None to drop it.

        Either output is -1 when the packet has no such field.  A packet that
        does not parse as VP8 is passed on untouched ((-1, -1)).  Runs once per
        picture for a consumer (on its first packet), so it is one function.
        """
        if not d.valid:
            return -1, -1
        raw = d.picture_id
        if raw >= 0 and raw == self._last_picture:
            return self._last_result  # the rest of the picture (most packets of video)
        self._last_picture = raw
        # The PictureID as a 15-bit number (a 7-bit one is unwrapped against the last).
        picture = raw
        if raw >= 0:
            last = self._last_input_picture
            if d.picture_id_wide or last < 0 or self._sync:
                self._last_input_picture = raw
            else:
                delta = (raw - last) & 0x7F
                picture = (last + delta - (0x80 if delta >= 0x40 else 0)) & 0x7FFF
                if delta < 0x40:
                    self._last_input_picture = picture
        pictures = self._pictures
        tl0 = d.tl0
        if self._sync:
            if picture >= 0:
                pictures.sync(picture - 1)
            if tl0 >= 0:
                self._tl0s.sync(tl0 - 1)
            self._tl0_in = -1
            self._sync = False
        current = self.current_temporal
        if d.key_frame:
            current = self.current_temporal = NO_TEMPORAL_LIMIT
        tid = d.tid
        # The last declared temporal layer means "everything": a sender may use
        # more layers than its scalabilityMode said, and none of them is dropped.
        target = self.target_temporal
        limit = target if target < self.max_temporal else NO_TEMPORAL_LIMIT
        # The first packet of a new picture decides for the whole picture: above
        # the limit, or going up without a layer sync (its references are missing).
        if (
            tid
            and picture >= 0
            and tl0 >= 0
            and (tid > limit or (tid > current and not d.layer_sync))
            and pictures.is_newer(picture)
        ):
            pictures.drop(picture)
            self._last_result = None
            return None
        result: tuple[int, int] | None = None
        picture_out = pictures.input(picture) if picture >= 0 else -1
        if picture_out >= 0 or picture < 0:
            if tl0 < 0:
                tl0_out = -1
            elif tl0 == self._tl0_in:
                tl0_out = self._tl0_out  # what the manager answers again (no drops there)
            else:
                tl0_out = self._tl0s.input(tl0)
                self._tl0_in, self._tl0_out = tl0, tl0_out
            if tl0_out >= 0 or tl0 < 0:
                result = picture_out, tl0_out
                if tid > current:
                    self.current_temporal = tid
                elif current > limit:
                    self.current_temporal = min(limit, self.max_temporal)
        self._last_result = result
        return result


def write_descriptor(out: bytearray, d: Vp8Descriptor, picture_out: int, tl0_out: int) -> bytearray:
    """Write the rewritten fields into ``out`` (a copy of the packet ``d`` was parsed from).

    A 7-bit PictureID becomes a 15-bit one (the output numbering is 15-bit),
    which makes the packet one byte longer (``out`` grows in place).  A field
    this packet does not have is not written (a sender may vary the fields
    within a picture, whose first packet decided the numbers).
    """
    shift = 0
    if picture_out >= 0 and d.picture_id >= 0:
        pos = d.picture_id_pos
        if d.picture_id_wide:
            out[pos] = 0x80 | (picture_out >> 8)
            out[pos + 1] = picture_out & 0xFF
        else:
            out[pos : pos + 1] = bytes((0x80 | (picture_out >> 8), picture_out & 0xFF))
            shift = 1
    if tl0_out >= 0 and d.tl0 >= 0:
        out[d.tl0_pos + shift] = tl0_out
    return out


__all__ = [
    "Vp8Descriptor",
    "Vp8Rewriter",
    "is_key_frame",
    "parse_descriptor",
    "write_descriptor",
]
