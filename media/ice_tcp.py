"""ICE-TCP framing (RFC 6544 section 3, RFC 4571): a 2-byte length before each packet.

Sans-I/O: ``FrameDecoder.feed`` takes whatever bytes the socket returned and
gives back the complete frames, keeping at most one partial frame (so the
read buffer of a connection never holds more than ``2 + max_frame`` bytes).
``frame`` prefixes a packet for sending.  Over an ICE-TCP connection every
STUN message, DTLS record, SRTP/SRTCP packet (and so SCTP, inside DTLS) is one
frame; the receiver demultiplexes the frames exactly as UDP datagrams
(RFC 7983).

The length field is 16 bits, so a frame is at most 65535 bytes by
construction.  A zero-length frame carries nothing and is reported as one
(``empty``), not passed on.  Before a connection has proved itself with an
authenticated STUN binding request its peer may only send STUN, and a STUN
binding request is small: ``max_frame`` is lowered for that time
(``UNVALIDATED_MAX_FRAME``), and a frame declaring more is a ``FramingError``
at once, without waiting for its bytes.
"""

from __future__ import annotations

import struct

MAX_FRAME_SIZE = 65535
"""The largest frame the 16-bit length can describe."""
UNVALIDATED_MAX_FRAME = 1024
"""The largest frame accepted before the first authenticated binding request:
a STUN binding request from a browser is about 100-200 bytes (RFC 8489 keeps
STUN messages within a path MTU, 576 bytes when nothing is known)."""

_HEADER = struct.Struct("!H")


class FramingError(ValueError):
    """The byte stream breaks the framing rules: the connection must be closed."""


def frame(payload: bytes) -> bytes:
    """``payload`` with its RFC 4571 length prefix."""
    size = len(payload)
    if not 0 < size <= MAX_FRAME_SIZE:
        raise ValueError(f"an ICE-TCP frame carries 1..{MAX_FRAME_SIZE} bytes, not {size}")
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Splits one connection's byte stream into frames.

    ``feed`` returns the frames completed by ``data`` (possibly none, possibly
    several); a frame split over several reads is kept until it is whole.
    After a ``FramingError`` the stream is out of step: the caller closes the
    connection and feeds nothing more.
    """

    __slots__ = ("_buffer", "_max_frame", "empty")

    def __init__(self, max_frame: int = MAX_FRAME_SIZE) -> None:
        self.max_frame = max_frame
        self.empty = 0
        """Zero-length frames seen (skipped)."""
        self._buffer = bytearray()

    @property
    def max_frame(self) -> int:
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        if not 0 < value <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame must be within 1..{MAX_FRAME_SIZE}")
        self._max_frame = value

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (at most ``2 + max_frame``)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # the usual case: no partial frame pending, no copy
        frames: list[bytes] = []
        limit = self._max_frame
        total = len(view)
        pos = 0
        while total - pos >= 2:
            size = (view[pos] << 8) | view[pos + 1]
            if size > limit:
                raise FramingError(f"frame of {size} bytes (at most {limit} accepted)")
            end = pos + 2 + size
            if end > total:
                break
            if size:
                frames.append(bytes(view[pos + 2 : end]))
            else:
                self.empty += 1
            pos = end
        if view is buffer:
            del buffer[:pos]
        elif pos < total:
            buffer += data[pos:]
        return frames


__all__ = ["MAX_FRAME_SIZE", "UNVALIDATED_MAX_FRAME", "FrameDecoder", "FramingError", "frame"]
