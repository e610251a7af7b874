"""Continuous numbering across dropped packets and switched streams.

A simulcast consumer forwards a subset of what it receives (one spatial layer,
some temporal layers) and sometimes switches to another stream whose numbers
have nothing to do with the previous one's.  The receiver must still see one
gap-free sequence: a hole in RTP sequence numbers is a loss it would NACK, a
hole in VP8 PictureIDs a missing frame it would wait for.  mediasoup solves
this with its ``SeqManager``; this is the same idea in our own terms.

Inputs are *extended* (unwrapped, unbounded ints) inside the manager, so
ordering never needs modular comparisons after the first step:

* ``input(n)`` maps an input number to the output number, or -1 when it must
  not be sent (it was dropped, or it predates the last ``sync``);
* ``drop(n)`` removes a number that is newer than anything seen: every later
  input moves down by one, so the drop leaves no hole;
* ``sync(n)`` starts a new input space (a new stream) where ``n`` maps to the
  last output, so ``n + 1`` continues right after it;
* ``input_for(out)`` maps an output back to its input (to relay a NACK for a
  packet that never arrived upstream).

A late input (older than the newest one seen) is mapped with the offset that
was in force at its position: the drop points are kept in a sorted list and
found by bisection.  Nothing here allocates on the in-order path.
"""

from __future__ import annotations

from bisect import bisect_right

# Drop points remembered for late inputs: far more than the reordering window
# of a jitter buffer (a retransmission arrives about one RTT late).
_MAX_POINTS = 2048


class SeqManager:
    """Maps a stream of ``bits``-wide numbers to a gap-free output sequence."""

    __slots__ = (
        "_base",
        "_bits_mask",
        "_dropped_max",
        "_floor",
        "_half",
        "_max",
        "_offset",
        "_points",
        "_pruned",
        "_size",
        "_started",
    )

    def __init__(self, bits: int = 16, initial_output: int = 0) -> None:
        self._size = 1 << bits
        self._bits_mask = self._size - 1
        self._half = self._size >> 1
        # Before the first sync, the last output is the one before the initial.
        self._base = (initial_output - 1) & self._bits_mask
        self._offset = 0
        self._max = 0
        self._floor = 0
        self._started = False
        self._dropped_max = False
        self._points: list[int] = []
        self._pruned = 0

    @property
    def max_output(self) -> int:
        """The highest output number so far (or the one before the first)."""
        if not self._started:
            return self._base
        return (self._max + self._offset) & self._bits_mask

    def sync(self, value: int) -> None:
        """A new input space: ``value`` maps to the last output, ``value + 1`` follows it."""
        last = self.max_output
        self._started = True
        self._max = value & self._bits_mask
        self._floor = self._max
        self._dropped_max = True  # ``value`` itself was never output by this space
        self._offset = last - self._max
        self._points.clear()
        self._pruned = 0

    def is_newer(self, value: int) -> bool:
        """Whether ``value`` is newer than every input seen (or nothing was seen)."""
        if not self._started:
            return True
        delta = (value - self._max) & self._bits_mask
        return 0 < delta < self._half

    def input(self, value: int) -> int:
        """The output number for ``value``; -1 if it must not be sent."""
        mask = self._bits_mask
        delta = (value - self._max) & mask
        if 0 < delta < self._half and self._started:  # newer: the common case
            top = self._max + delta
            self._max = top
            self._dropped_max = False
            return (top + self._offset) & mask
        if not self._started:
            self.sync((value - 1) & mask)
            delta = (value - self._max) & mask
        if delta == 0:
            return -1 if self._dropped_max else (self._max + self._offset) & self._bits_mask
        if delta < self._half:  # newer: the common case
            self._max += delta
            self._dropped_max = False
            return (self._max + self._offset) & self._bits_mask
        ext = self._max + delta - self._size  # late
        if ext <= self._floor:
            return -1  # from before the last sync (another stream's past)
        points = self._points
        i = bisect_right(points, ext)
        if i and points[i - 1] == ext:
            return -1  # it was dropped
        if self._pruned and (not points or ext < points[0]):
            return -1  # older than the drops we remember: cannot be placed
        drops_after = len(points) - i
        return (ext + self._offset + drops_after) & self._bits_mask

    def drop(self, value: int) -> None:
        """Leave ``value`` out; only a number newer than any seen moves the others."""
        if not self._started:
            self.sync((value - 1) & self._bits_mask)
        delta = (value - self._max) & self._bits_mask
        if delta == 0 or delta >= self._half:
            return  # already seen (or late): its output number, if any, stays
        self._max += delta
        self._dropped_max = True
        self._offset -= 1
        points = self._points
        points.append(self._max)
        if len(points) > _MAX_POINTS:
            half = _MAX_POINTS // 2
            self._pruned += half
            del points[:half]

    def input_for(self, output: int) -> int | None:
        """The input number that ``output`` stands for, if it is in the current space.

        None for outputs from before the last ``sync`` (another stream) or
        beyond the newest output.
        """
        if not self._started:
            return None
        newest = self._max + self._offset
        back = (newest - output) & self._bits_mask
        if back >= self._half:
            return None  # in the future
        target = newest - back  # the extended output
        points = self._points
        # output = input + offset_now + (drops after input): solve for input by
        # fixed-point iteration on the number of drop points after it.
        after = 0
        while True:
            candidate = target - self._offset - after
            now_after = len(points) - bisect_right(points, candidate)
            if now_after == after:
                break
            after = now_after
        if candidate <= self._floor or (self._pruned and points and candidate < points[0]):
            return None
        i = bisect_right(points, candidate)
        if i and points[i - 1] == candidate:
            return None
        return candidate & self._bits_mask


__all__ = ["SeqManager"]
