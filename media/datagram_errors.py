"""Counting, and rate-limited logging of, inbound datagrams the media plane drops.

Anyone who can reach a media port can send it garbage, so a parse error is an
expected event, not a bug: it is counted, the datagram is dropped, and the
datagram path goes on.  Logging each one is itself the attack (a 22-line
traceback per packet once stalled a healthy call), so each transport logs at
most one line per ``interval`` and says how many it held back; a traceback is
kept for ``internal`` errors, our own bugs, again at most one per interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

ERROR_KINDS: tuple[str, ...] = (
    "stun",
    "dtls",
    "srtp",
    "rtp",
    "rtcp",
    "sctp",
    "tcp",
    "internal",
)
"""Every key of ``Worker.datagram_errors`` and of a transport's ``datagramErrors``:

- ``stun``: a STUN message that does not parse (RFC 8489 framing, attribute sizes);
- ``dtls``: a datagram in the DTLS range (RFC 7983: first byte 20-63) that is not a
  sequence of well-formed DTLS records, or that found the handshake queue full;
- ``srtp``: SRTP/SRTCP that is too short, fails authentication or replay checks;
- ``rtp``: decrypted RTP whose header does not hold together (e.g. an extension
  block longer than the packet);
- ``rtcp``: decrypted RTCP with a truncated or inconsistent packet;
- ``sctp``: an SCTP packet or chunk that does not parse, a data channel message
  that cannot be decoded, a DCEP message (mediasoup-client negotiates channels
  out of band), or an inbound message over ``maxMessageSize``;
- ``tcp``: an ICE-TCP connection breaking the rules (``media.tcp_listener``): a
  zero-length frame, anything but a STUN binding request with valid credentials
  first, a first frame too big for one, or no such request within the timeout
  (all close the connection, but a zero-length frame once it is validated);
- ``internal``: an unexpected exception on a datagram path (a bug of ours),
  contained by the backstop and logged with its traceback.
"""


def new_error_counts() -> dict[str, int]:
    """A zeroed counter for every kind, so metrics export each one from the start."""
    return dict.fromkeys(ERROR_KINDS, 0)


class DatagramErrors:
    """One transport's error counts, added to its worker's, with a rate-limited log.

    ``interval`` (seconds) is the shortest time between two log lines of the
    same transport; 0 logs every error.  ``clock`` is the event loop's clock
    (a fake one in tests).
    """

    __slots__ = (
        "_clock",
        "_internal_quiet_until",
        "_internal_suppressed",
        "_interval",
        "_owner",
        "_quiet_until",
        "_suppressed",
        "_worker_counts",
        "counts",
    )

    def __init__(
        self,
        *,
        owner: str,
        worker_counts: dict[str, int],
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.counts = new_error_counts()
        self._worker_counts = worker_counts
        self._owner = owner
        self._interval = interval
        self._clock = clock
        self._quiet_until = float("-inf")
        self._suppressed = 0
        self._internal_quiet_until = float("-inf")
        self._internal_suppressed = 0

    def record(self, kind: str, detail: BaseException | str) -> None:
        """Count one dropped datagram of ``kind``; log it unless a line went out recently.

        ``detail`` is only formatted when a line is actually logged, so a flood
        costs two dict updates and a clock read per datagram.
        """
        self.counts[kind] += 1
        self._worker_counts[kind] += 1
        now = self._clock()
        if kind == "internal":
            if now < self._internal_quiet_until:
                self._internal_suppressed += 1
                return
            held, self._internal_suppressed = self._internal_suppressed, 0
            self._internal_quiet_until = now + self._interval
            logger.error(
                "%s: unexpected error on a datagram path, datagram dropped%s",
                self._owner,
                _held_back(held),
                exc_info=detail if isinstance(detail, BaseException) else None,
            )
            return
        if now < self._quiet_until:
            self._suppressed += 1
            return
        held, self._suppressed = self._suppressed, 0
        self._quiet_until = now + self._interval
        logger.warning(
            "%s: dropped a malformed %s datagram (%s)%s",
            self._owner,
            kind,
            _describe(detail),
            _held_back(held),
        )

    def flush(self) -> None:
        """Report what the last interval held back (called when the transport closes)."""
        held = self._suppressed + self._internal_suppressed
        self._suppressed = self._internal_suppressed = 0
        if held:
            logger.warning(
                "%s: %d more malformed datagrams were dropped without a log line (totals: %s)",
                self._owner,
                held,
                ", ".join(f"{kind} {count}" for kind, count in self.counts.items() if count),
            )


def _describe(detail: BaseException | str) -> str:
    if isinstance(detail, BaseException):
        return f"{type(detail).__name__}: {detail}"
    return detail


def _held_back(count: int) -> str:
    return f"; {count} more held back since the last line" if count else ""


__all__ = ["ERROR_KINDS", "DatagramErrors", "new_error_counts"]
