"""What the server sees of one client's link, sampled at intervals.

Nothing here runs per packet.  Producers and consumers keep cumulative
counters that already exist for RTCP (RFC 3550 appendix A.3 on the way in,
the client's receiver reports on the way out); a ``LinkMonitor`` reads them
when asked and diffs them against its previous reading, which is how
RFC 3550 section 6.4.4 says to measure loss over any interval: from the
differences of cumulative lost and extended highest sequence numbers.

Each reader owns its monitor, so reading has no side effect on the
transport: the quality grader and a test can both sample the same
transport without stealing each other's intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

_SEQ_MASK = 0xFFFFFFFF  # extended highest sequence numbers are 32 bits (RFC 3550 §6.4.1)


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """Cumulative reception counters of one RTP stream, as of one reading.

    ``expected`` only means something as a difference between two readings
    of the same stream: packets expected in between (for a consumer it is
    the extended highest sequence number the client last reported).
    """

    kind: str
    expected: int
    lost: int
    jitter_ms: float | None
    rtt_ms: float | None = None
    reports: int = 0
    """Downlink: receiver reports received so far; a new one is new information."""
    sent: int | None = None
    """Downlink: packets we had sent on the stream when that report came."""


def upstream_gaps(expected: int, sent: int) -> int:
    """Of ``expected`` packets a receiver counted between two of its reports,
    how many we never sent (``sent``: what we did send meanwhile).

    An SFU keeps the sender's sequence numbers (or one continuous run of its
    own), so what the sender lost before reaching us shows up as numbers the
    receiver reports lost: loss on the sender's link, not on this one.  The
    count of what we sent is read when each report arrives, a little after
    the highest number it covers; the packets in flight then are about as
    many at both readings, so the difference holds.
    """
    return max(0, expected - sent)


@dataclass(frozen=True, slots=True)
class LinkSample:
    """One interval of one client's link, as the server saw it.

    ``None`` means unknown (no media in that direction, no receiver report
    yet, ICE not connected): never a reason to think the link is bad.
    Loss is a fraction (0..1) of the ``*_packets`` packets expected in the
    interval, so a caller can tell a 1-in-3 from a 30-in-100.
    """

    uplink_loss: float | None = None
    """Client -> server: what the SFU received of the client's producers."""
    uplink_packets: int = 0
    downlink_loss: float | None = None
    """Server -> client: what the client's receiver reports say of our consumers."""
    downlink_packets: int = 0
    uplink_jitter_ms: float | None = None
    downlink_jitter_ms: float | None = None
    rtt_ms: float | None = None
    """Round trip from the client's receiver reports (LSR/DLSR, RFC 3550 §6.4.1)."""
    consent_gap: float | None = None
    """Seconds since the last authenticated ICE consent check (RFC 7675)."""
    interval: float | None = None
    """Seconds since the previous sample of the same monitor (None: the first)."""

    @property
    def jitter_ms(self) -> float | None:
        """The worse of the two directions' jitter, if either is known."""
        known = [j for j in (self.uplink_jitter_ms, self.downlink_jitter_ms) if j is not None]
        return max(known) if known else None

    def to_json(self) -> dict[str, float | int | None]:
        """camelCase, for ``get_stats``."""
        return {
            "uplinkLoss": self.uplink_loss,
            "uplinkPackets": self.uplink_packets,
            "downlinkLoss": self.downlink_loss,
            "downlinkPackets": self.downlink_packets,
            "uplinkJitterMs": self.uplink_jitter_ms,
            "downlinkJitterMs": self.downlink_jitter_ms,
            "rttMs": self.rtt_ms,
            "consentGap": self.consent_gap,
            "interval": self.interval,
        }


UNKNOWN = LinkSample()


class UplinkStream(Protocol):
    """A stream the client sends (``Producer``)."""

    @property
    def id(self) -> str: ...

    def reception_counters(self) -> StreamCounters: ...


class DownlinkStream(Protocol):
    """A stream the client receives (``Consumer``)."""

    @property
    def id(self) -> str: ...

    def report_counters(self) -> StreamCounters | None: ...


class LinkSource(Protocol):
    """What a monitor reads: a ``WebRtcTransport``."""

    @property
    def closed(self) -> bool: ...

    @property
    def producers(self) -> Mapping[str, UplinkStream]: ...

    @property
    def consumers(self) -> Mapping[str, DownlinkStream]: ...

    def consent_gap(self, now: float) -> float | None: ...


@dataclass(slots=True)
class _Direction:
    """One direction's interval, summed over its streams."""

    expected: int = 0
    lost: int = 0
    audio_jitter: float | None = None
    video_jitter: float | None = None

    def add(self, expected: int, lost: int, kind: str, jitter_ms: float | None) -> None:
        if expected <= 0:
            return  # the stream did not move: its jitter is old news
        self.expected += expected
        self.lost += max(0, min(lost, expected))  # duplicates can make it negative
        if jitter_ms is None:
            return
        if kind == "audio":
            self.audio_jitter = max(jitter_ms, self.audio_jitter or 0.0)
        else:
            self.video_jitter = max(jitter_ms, self.video_jitter or 0.0)

    @property
    def loss(self) -> float | None:
        return self.lost / self.expected if self.expected > 0 else None

    @property
    def jitter_ms(self) -> float | None:
        # RFC 3550 jitter of video counts the spread of one frame's packets
        # (they share a timestamp and leave paced), so it runs high on a
        # healthy link; audio packets are one per timestamp and tell more.
        return self.audio_jitter if self.audio_jitter is not None else self.video_jitter


class LinkMonitor:
    """Samples one transport's link; keep one per reader.

    ``sample(now)`` returns what happened since this monitor's previous
    sample (the first covers everything so far on the uplink, and starts the
    downlink's baseline at the latest receiver report).  ``now`` is the event
    loop's clock (``loop.time()``), the one the transport stamps consent
    checks with.
    """

    __slots__ = ("_downlink", "_last_at", "_transport", "_uplink")

    def __init__(self, transport: LinkSource) -> None:
        self._transport = transport
        self._uplink: dict[str, StreamCounters] = {}
        self._downlink: dict[str, StreamCounters] = {}
        self._last_at: float | None = None

    def sample(self, now: float) -> LinkSample:
        transport = self._transport
        interval = None if self._last_at is None else max(0.0, now - self._last_at)
        self._last_at = now
        if transport.closed:
            self._uplink.clear()
            self._downlink.clear()
            return UNKNOWN
        up = _Direction()
        uplink: dict[str, StreamCounters] = {}
        for producer in transport.producers.values():
            counters = producer.reception_counters()
            uplink[producer.id] = counters
            before = self._uplink.get(producer.id)
            # A new producer's counters start at its first packet: no baseline needed.
            expected = counters.expected - (before.expected if before else 0)
            lost = counters.lost - (before.lost if before else 0)
            up.add(expected, lost, counters.kind, counters.jitter_ms)
        self._uplink = uplink

        down = _Direction()
        rtts: list[float] = []
        downlink: dict[str, StreamCounters] = {}
        for consumer in transport.consumers.values():
            report = consumer.report_counters()
            if report is None:
                continue  # no receiver report yet
            downlink[consumer.id] = report
            before = self._downlink.get(consumer.id)
            if before is not None and report.reports == before.reports:
                continue  # nothing new since our last look
            if report.rtt_ms is not None:
                rtts.append(report.rtt_ms)
            if before is None:
                continue  # the first report we see is the baseline for loss
            expected = (report.expected - before.expected) & _SEQ_MASK
            if expected > 0x7FFFFFFF:
                continue  # reordered reports: the highest sequence went backwards
            lost = report.lost - before.lost
            if report.sent is not None and before.sent is not None:
                gaps = upstream_gaps(expected, report.sent - before.sent)
                expected, lost = expected - gaps, lost - gaps
            down.add(expected, lost, report.kind, report.jitter_ms)
        self._downlink = downlink

        return LinkSample(
            uplink_loss=up.loss,
            uplink_packets=up.expected,
            downlink_loss=down.loss,
            downlink_packets=down.expected,
            uplink_jitter_ms=up.jitter_ms,
            downlink_jitter_ms=down.jitter_ms,
            rtt_ms=max(rtts) if rtts else None,
            consent_gap=transport.consent_gap(now),
            interval=interval,
        )


def combine(samples: Iterable[LinkSample]) -> LinkSample:
    """One client's transports (send and receive) as one link.

    Loss is weighted by the packets it covers; jitter, round trip and consent
    gap take the worst known value: any transport losing consent is a
    problem.
    """
    samples = list(samples)
    if len(samples) == 1:
        return samples[0]

    def loss(pairs: Iterable[tuple[float | None, int]]) -> tuple[float | None, int]:
        known = [(fraction, packets) for fraction, packets in pairs if fraction is not None]
        total = sum(packets for _, packets in known)
        if total <= 0:
            return None, 0
        return sum(fraction * packets for fraction, packets in known) / total, total

    def worst(values: Iterable[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    uplink_loss, uplink_packets = loss((s.uplink_loss, s.uplink_packets) for s in samples)
    downlink_loss, downlink_packets = loss((s.downlink_loss, s.downlink_packets) for s in samples)
    return LinkSample(
        uplink_loss=uplink_loss,
        uplink_packets=uplink_packets,
        downlink_loss=downlink_loss,
        downlink_packets=downlink_packets,
        uplink_jitter_ms=worst(s.uplink_jitter_ms for s in samples),
        downlink_jitter_ms=worst(s.downlink_jitter_ms for s in samples),
        rtt_ms=worst(s.rtt_ms for s in samples),
        consent_gap=worst(s.consent_gap for s in samples),
        interval=worst(s.interval for s in samples),
    )


__all__ = [
    "UNKNOWN",
    "DownlinkStream",
    "LinkMonitor",
    "LinkSample",
    "LinkSource",
    "StreamCounters",
    "UplinkStream",
    "combine",
]
