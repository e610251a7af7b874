"""Connection quality: grade each participant good / unstable / poor.

A sans-I/O state machine fed with ``now``, like ``liveness.py``: the asyncio
layer samples what the server already sees of each participant every
``QualityPolicy.interval`` seconds -- the heartbeat round trip the client
reports, and its transports' ``link_sample`` (RTCP receiver-report loss and
jitter, RFC 3550 section 6.4.1; the SFU's own reception; ICE consent gaps,
RFC 7675) -- and hands it to ``QualityGrader.observe``, which returns the new
grade when it changes.  Tests drive it with a fake clock.

Why the hysteresis: a grade is shown to everyone in the room, so a grade that
flaps is worse than none.  Each signal is graded on its own:

- worse at once after ``degrade_samples`` consecutive samples at or above a
  threshold, or when the smoothed value crosses it.  The smoothed value is an
  EWMA of the median of the last three samples, so one outlier (a single bad
  receiver report, one slow ping) moves nothing;
- better only after every sample and the smoothed value stayed below the
  threshold less ``recovery_margin`` for ``recovery_hold`` seconds;
- unknown (no media, no report, not enough packets) is never evidence of a
  bad link: it changes nothing, and a signal unknown for ``forget_after``
  seconds is forgotten (graded good again).

The grade is the worst signal's; ``reasons`` names the signals that set it.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from media.link import LinkSample, combine


class Quality(enum.StrEnum):
    """A participant's grade: the ``quality`` of ``peerQuality`` and of the metrics."""

    GOOD = "good"
    UNSTABLE = "unstable"
    POOR = "poor"


_RANK = {Quality.GOOD: 0, Quality.UNSTABLE: 1, Quality.POOR: 2}

RTT = "rtt"
LOSS = "loss"
JITTER = "jitter"
CONSENT = "consent"
REASONS = (RTT, LOSS, JITTER, CONSENT)
"""Every reason, in the order ``reasons`` lists them."""


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    """Thresholds and hysteresis; all configuration.

    A threshold is "at or above this value is that bad"; ``None`` switches
    that level of that signal off (both ``None``: the signal is ignored).
    Loss is a fraction (0.03 is 3 %), times are in seconds unless ``_ms``.
    """

    interval: float | None = 2.0
    """How often the caller samples each joined participant (None: grading off)."""
    rtt_unstable_ms: float | None = 300.0
    rtt_poor_ms: float | None = 800.0
    loss_unstable: float | None = 0.03
    loss_poor: float | None = 0.10
    jitter_unstable_ms: float | None = 30.0
    jitter_poor_ms: float | None = 80.0
    consent_gap_unstable: float | None = 8.0
    """Clients check consent every 5 s +/- 20 % (RFC 7675 section 5.1): a gap
    above 8 s means at least one check was lost."""
    consent_gap_poor: float | None = 15.0
    degrade_samples: int = 3
    """Consecutive samples at or above a threshold that make the grade worse."""
    smoothing: float = 0.3
    """EWMA weight of a new (median-filtered) sample, 0 < smoothing <= 1."""
    recovery_margin: float = 0.2
    """Recovering needs the smoothed value below threshold * (1 - margin)."""
    recovery_hold: float = 10.0
    """... and every sample below the threshold, for this many seconds."""
    min_loss_packets: int = 20
    """Loss over fewer expected packets is pooled with the next sample's:
    1 lost of 3 is not 33 % loss."""
    forget_after: float | None = 30.0
    """A signal unknown this long is graded good again (None: never)."""

    def __post_init__(self) -> None:
        for name, unstable, poor in (
            ("rtt", self.rtt_unstable_ms, self.rtt_poor_ms),
            ("loss", self.loss_unstable, self.loss_poor),
            ("jitter", self.jitter_unstable_ms, self.jitter_poor_ms),
            ("consent_gap", self.consent_gap_unstable, self.consent_gap_poor),
        ):
            for value in (unstable, poor):
                if value is not None and not value > 0:
                    raise ValueError(f"{name} thresholds must be positive")
            if unstable is not None and poor is not None and not unstable < poor:
                raise ValueError(f"{name}: the unstable threshold must be below the poor one")
        if self.interval is not None and not self.interval > 0:
            raise ValueError("interval must be positive")
        if self.degrade_samples < 1 or self.min_loss_packets < 0:
            raise ValueError("degrade_samples must be at least 1, min_loss_packets not negative")
        if not 0 < self.smoothing <= 1 or not 0 <= self.recovery_margin < 1:
            raise ValueError("smoothing must be in (0, 1], recovery_margin in [0, 1)")
        if self.recovery_hold < 0 or (self.forget_after is not None and self.forget_after <= 0):
            raise ValueError("recovery_hold must not be negative, forget_after must be positive")


@dataclass(frozen=True, slots=True)
class QualitySample:
    """What the server saw of one participant in one interval; None is unknown.

    ``rtt_ms`` must be a new measurement (a heartbeat report received since
    the previous sample, or RTCP's): passing the same old report at every
    sample would count one slow ping many times.
    """

    rtt_ms: float | None = None
    uplink_loss: float | None = None
    """Fraction (0..1) of what the client sent that the server did not get."""
    uplink_packets: int | None = None
    """Packets ``uplink_loss`` is over (None: take the figure as it is)."""
    downlink_loss: float | None = None
    """Fraction (0..1) of what the server sent that the client did not get."""
    downlink_packets: int | None = None
    jitter_ms: float | None = None
    consent_gap: float | None = None
    """Seconds since the client's last ICE consent check."""

    @classmethod
    def from_links(cls, links: Sequence[LinkSample], *, rtt_ms: float | None) -> QualitySample:
        """A participant's sample from its transports' ``link_sample`` and its
        latest heartbeat round trip (when a new one was reported).

        The round trip is the worse of the client's figure and RTCP's: both
        measure the same path, and the user feels the worse one.
        """
        if not links:  # no transports: the heartbeat's round trip at most
            return NOTHING if rtt_ms is None else cls(rtt_ms=rtt_ms)
        link = combine(links)
        rtts = [r for r in (rtt_ms, link.rtt_ms) if r is not None]
        return cls(
            rtt_ms=max(rtts) if rtts else None,
            uplink_loss=link.uplink_loss,
            uplink_packets=link.uplink_packets if link.uplink_loss is not None else None,
            downlink_loss=link.downlink_loss,
            downlink_packets=link.downlink_packets if link.downlink_loss is not None else None,
            jitter_ms=link.jitter_ms,
            consent_gap=link.consent_gap,
        )


NOTHING = QualitySample()
"""The sample of an interval with nothing new (no transports, no heartbeat
report): most participants of a large server, most of the time."""


class _Pool:
    """Loss of one direction, pooled until it covers ``min_loss_packets``."""

    __slots__ = ("expected", "lost")

    def __init__(self) -> None:
        self.lost = 0.0
        self.expected = 0

    def take(self, loss: float | None, packets: int | None, policy: QualityPolicy) -> float | None:
        """The loss to grade now, or None while too few packets were expected."""
        if loss is None:
            return None
        if packets is None:
            return loss
        self.lost += loss * packets
        self.expected += packets
        if self.expected < max(1, policy.min_loss_packets):
            return None
        value = self.lost / self.expected
        self.lost, self.expected = 0.0, 0
        return value


class _Signal:
    """One signal's hysteresis: its own level, smoothed value and timers."""

    __slots__ = (
        "clear_since",
        "last_known",
        "level",
        "name",
        "recent",
        "runs",
        "smoothed",
        "thresholds",
    )

    def __init__(self, name: str, unstable: float | None, poor: float | None) -> None:
        self.name = name
        self.thresholds: tuple[tuple[Quality, float], ...] = tuple(
            (level, value)
            for level, value in ((Quality.UNSTABLE, unstable), (Quality.POOR, poor))
            if value is not None
        )
        self.level = Quality.GOOD
        self.smoothed = 0.0
        self.recent: list[float] = []
        self.runs = [0] * len(self.thresholds)
        self.clear_since: list[float | None] = [None] * len(self.thresholds)
        self.last_known: float | None = None

    def reset(self) -> None:
        self.last_known = None
        self.level = Quality.GOOD
        self.smoothed = 0.0
        self.recent.clear()
        self.runs = [0] * len(self.thresholds)
        self.clear_since = [None] * len(self.thresholds)

    def observe(self, value: float | None, now: float, policy: QualityPolicy) -> None:
        if not self.thresholds:
            return
        if value is None:
            if (
                policy.forget_after is not None
                and self.last_known is not None
                and now - self.last_known >= policy.forget_after
            ):
                self.reset()  # old evidence, good or bad, says nothing about now
            return
        self.last_known = now
        recent = self.recent
        recent.append(value)
        if len(recent) > 3:
            del recent[0]
        # Median of three, the missing ones counted as 0 (a good value): one
        # outlier, even the very first sample, never reaches the EWMA.
        padded = sorted([*recent, *([0.0] * (3 - len(recent)))])
        self.smoothed += policy.smoothing * (padded[1] - self.smoothed)

        target = Quality.GOOD
        for i, (level, threshold) in enumerate(self.thresholds):
            self.runs[i] = self.runs[i] + 1 if value >= threshold else 0
            if self.runs[i] >= policy.degrade_samples or self.smoothed >= threshold:
                target = level
            clear = value < threshold and self.smoothed < threshold * (1 - policy.recovery_margin)
            if not clear:
                self.clear_since[i] = None
            elif self.clear_since[i] is None:
                self.clear_since[i] = now
        if _RANK[target] > _RANK[self.level]:
            self.level = target
            return
        # Better one level at a time, each after its own hold.
        while self.level is not Quality.GOOD:
            i = next(i for i, (level, _) in enumerate(self.thresholds) if level is self.level)
            since = self.clear_since[i]
            if since is None or now - since < policy.recovery_hold:
                break
            self.level = self.thresholds[i - 1][0] if i > 0 else Quality.GOOD


class QualityGrader:
    """One participant's grade: feed it ``observe(sample, now)`` every interval."""

    __slots__ = (
        "_consent",
        "_downlink",
        "_jitter",
        "_pending_down",
        "_pending_up",
        "_quiet_until",
        "_rtt",
        "_uplink",
        "policy",
        "previous_grade",
    )

    def __init__(self, policy: QualityPolicy | None = None) -> None:
        self.policy = policy = policy or QualityPolicy()
        self._rtt = _Signal(RTT, policy.rtt_unstable_ms, policy.rtt_poor_ms)
        self._uplink = _Signal(LOSS, policy.loss_unstable, policy.loss_poor)
        self._downlink = _Signal(LOSS, policy.loss_unstable, policy.loss_poor)
        self._jitter = _Signal(JITTER, policy.jitter_unstable_ms, policy.jitter_poor_ms)
        self._consent = _Signal(CONSENT, policy.consent_gap_unstable, policy.consent_gap_poor)
        self._pending_up = _Pool()
        self._pending_down = _Pool()
        self.previous_grade = Quality.GOOD
        """The grade before the latest change."""
        self._quiet_until = float("inf")
        """Until then, a sample of ``NOTHING`` changes nothing (no signal is
        due to be forgotten), so it is not even looked at."""

    def _signals(self) -> Iterator[_Signal]:
        return iter((self._rtt, self._uplink, self._downlink, self._jitter, self._consent))

    @property
    def grade(self) -> Quality:
        """The worst signal's level."""
        return max((s.level for s in self._signals()), key=_RANK.__getitem__)

    @property
    def reasons(self) -> tuple[str, ...]:
        """The signals that set the grade (empty when good), in ``REASONS`` order."""
        grade = self.grade
        if grade is Quality.GOOD:
            return ()
        names = {s.name for s in self._signals() if s.level is grade}
        return tuple(name for name in REASONS if name in names)

    def levels(self) -> dict[str, Quality]:
        """Each signal's own level (both loss directions as the worse): for logs."""
        levels: dict[str, Quality] = {}
        for signal in self._signals():
            old = levels.get(signal.name, Quality.GOOD)
            levels[signal.name] = max(old, signal.level, key=_RANK.__getitem__)
        return levels

    def observe(self, sample: QualitySample, now: float) -> Quality | None:
        """Take one sample; the new grade if it changed, else None."""
        if sample is NOTHING and now < self._quiet_until:
            return None  # what observing it would conclude, without the work
        before = self.grade
        policy = self.policy
        self._rtt.observe(sample.rtt_ms, now, policy)
        uplink = self._pending_up.take(sample.uplink_loss, sample.uplink_packets, policy)
        downlink = self._pending_down.take(sample.downlink_loss, sample.downlink_packets, policy)
        self._uplink.observe(uplink, now, policy)
        self._downlink.observe(downlink, now, policy)
        self._jitter.observe(sample.jitter_ms, now, policy)
        self._consent.observe(sample.consent_gap, now, policy)
        forget_after = policy.forget_after
        known = [s.last_known for s in self._signals() if s.last_known is not None]
        self._quiet_until = (
            min(known) + forget_after if known and forget_after is not None else float("inf")
        )
        after = self.grade
        if after is before:
            return None
        self.previous_grade = before
        return after


K = TypeVar("K", bound=Hashable)


class QualityBoard(Generic[K]):
    """The graders of every participant, keyed by the caller's id, with counts
    per grade kept up to date (for a gauge read at scrape time)."""

    def __init__(self, policy: QualityPolicy | None = None) -> None:
        self.policy = policy or QualityPolicy()
        self._graders: dict[K, QualityGrader] = {}
        self._counts = dict.fromkeys(Quality, 0)

    def __len__(self) -> int:
        return len(self._graders)

    def __contains__(self, key: object) -> bool:
        return key in self._graders

    def add(self, key: K) -> QualityGrader:
        """Start grading ``key`` (good until shown otherwise); idempotent."""
        grader = self._graders.get(key)
        if grader is None:
            grader = self._graders[key] = QualityGrader(self.policy)
            self._counts[grader.grade] += 1
        return grader

    def remove(self, key: K) -> None:
        grader = self._graders.pop(key, None)
        if grader is not None:
            self._counts[grader.grade] -= 1

    def get(self, key: K) -> QualityGrader | None:
        return self._graders.get(key)

    def grade(self, key: K) -> Quality | None:
        grader = self._graders.get(key)
        return grader.grade if grader is not None else None

    def observe(self, key: K, sample: QualitySample, now: float) -> Quality | None:
        """``QualityGrader.observe`` for ``key`` (added if new)."""
        grader = self._graders.get(key) or self.add(key)
        change = grader.observe(sample, now)
        if change is not None:
            self._counts[grader.previous_grade] -= 1
            self._counts[change] += 1
        return change

    def counts_by_grade(self) -> dict[Quality, int]:
        """Participants per grade, every grade present (``ghostless_peers_by_quality``)."""
        return dict(self._counts)


__all__ = [
    "CONSENT",
    "JITTER",
    "LOSS",
    "NOTHING",
    "REASONS",
    "RTT",
    "Quality",
    "QualityBoard",
    "QualityGrader",
    "QualityPolicy",
    "QualitySample",
]
