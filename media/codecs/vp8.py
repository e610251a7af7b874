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

from ..seq_manager import SeqManager

NO_TEMPORAL_LIMIT = 0xFF


class Vp8Descriptor:
    """One packet's descriptor, parsed in place (reused from packet to packet)."""

    __slots__ = (
        "key_frame",
        "layer_sync",
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


def parse_descriptor(d: Vp8Descriptor, buf: bytes | bytearray, pos: int, end: int) -> None:
    """Fill ``d`` from the payload at ``buf[pos:end]``; ``d.valid`` says if it parsed."""
    d.valid = False
    d.key_frame = False
    d.picture_id = -1
    d.tl0 = -1
    d.tid = 0
    d.layer_sync = True
    if pos >= end:
        return
    first = buf[pos]
    pos += 1
    if first & 0x80:  # X: extension byte
        if pos >= end:
            return
        ext = buf[pos]
        pos += 1
        if ext & 0x80:  # I: PictureID
            if pos >= end:
                return
            byte = buf[pos]
            d.picture_id_pos = pos
            if byte & 0x80:  # M: 15 bits
                if pos + 1 >= end:
                    return
                d.picture_id = ((byte & 0x7F) << 8) | buf[pos + 1]
                d.picture_id_wide = True
                pos += 2
            else:
                d.picture_id = byte
                d.picture_id_wide = False
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if pos >= end:
                return
            d.tl0 = buf[pos]
            d.tl0_pos = pos
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            if pos >= end:
                return
            if ext & 0x20:
                byte = buf[pos]
                d.tid = byte >> 6
                d.layer_sync = bool(byte & 0x20)
            pos += 1
    # First packet of a frame (S set, partition 0) whose payload header says key frame.
    d.key_frame = pos < end and first & 0x17 == 0x10 and not buf[pos] & 0x01
    d.valid = True


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

    def sync(self) -> None:
        """The next packet processed starts a new stream (a switch, or a resume)."""
        self._sync = True
        self._last_picture = -1

    def _widen(self, d: Vp8Descriptor) -> int:
        """The PictureID as a 15-bit number (a 7-bit one is unwrapped against the last)."""
        picture = d.picture_id
        if d.picture_id_wide or self._last_input_picture < 0 or self._sync:
            self._last_input_picture = picture
            return picture
        last = self._last_input_picture
        delta = (picture - last) & 0x7F
        widened = (last + delta - (0x80 if delta >= 0x40 else 0)) & 0x7FFF
        if delta < 0x40:
            self._last_input_picture = widened
        return widened

    def process(self, d: Vp8Descriptor) -> tuple[int, int] | None:
        """(output PictureID, output TL0PICIDX) for this packet, or None to drop it.

        Either output is -1 when the packet has no such field.  A packet that
        does not parse as VP8 is passed on untouched ((-1, -1)).
        """
        if not d.valid:
            return -1, -1
        raw = d.picture_id
        if raw >= 0 and raw == self._last_picture:
            return self._last_result  # the rest of the picture (most packets of video)
        result = self._process(d)
        self._last_picture = raw
        self._last_result = result
        return result

    def _process(self, d: Vp8Descriptor) -> tuple[int, int] | None:
        picture = self._widen(d) if d.picture_id >= 0 else -1
        if self._sync:
            if picture >= 0:
                self._pictures.sync(picture - 1)
            if d.tl0 >= 0:
                self._tl0s.sync(d.tl0 - 1)
            self._sync = False
        if d.key_frame:
            self.current_temporal = NO_TEMPORAL_LIMIT
        tid = d.tid
        # The last declared temporal layer means "everything": a sender may use
        # more layers than its scalabilityMode said, and none of them is dropped.
        limit = (
            self.target_temporal if self.target_temporal < self.max_temporal else NO_TEMPORAL_LIMIT
        )
        pictures = self._pictures
        # The first packet of a new picture decides for the whole picture: above
        # the limit, or going up without a layer sync (its references are missing).
        if (
            picture >= 0
            and tid
            and d.tl0 >= 0
            and pictures.is_newer(picture)
            and (tid > limit or (tid > self.current_temporal and not d.layer_sync))
        ):
            pictures.drop(picture)
            return None
        picture_out = -1
        if picture >= 0:
            picture_out = pictures.input(picture)
            if picture_out < 0:
                return None
        tl0_out = -1
        if d.tl0 >= 0:
            tl0_out = self._tl0s.input(d.tl0)
            if tl0_out < 0:
                return None
        if tid > self.current_temporal:
            self.current_temporal = tid
        elif self.current_temporal > limit:
            self.current_temporal = min(limit, self.max_temporal)
        return picture_out, tl0_out


def write_descriptor(out: bytearray, d: Vp8Descriptor, picture_out: int, tl0_out: int) -> bytearray:
    """Write the rewritten fields into ``out`` (a copy of the packet ``d`` was parsed from).

    A 7-bit PictureID becomes a 15-bit one (the output numbering is 15-bit),
    which makes the packet one byte longer (``out`` grows in place).
    """
    if picture_out >= 0:
        pos = d.picture_id_pos
        if d.picture_id_wide:
            out[pos] = 0x80 | (picture_out >> 8)
            out[pos + 1] = picture_out & 0xFF
        else:
            out[pos : pos + 1] = bytes((0x80 | (picture_out >> 8), picture_out & 0xFF))
    if tl0_out >= 0:
        shift = 0 if d.picture_id < 0 or d.picture_id_wide else 1
        out[d.tl0_pos + shift] = tl0_out
    return out


__all__ = [
    "Vp8Descriptor",
    "Vp8Rewriter",
    "is_key_frame",
    "parse_descriptor",
    "write_descriptor",
]
