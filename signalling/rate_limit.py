"""Rate limits: token buckets fed with ``now`` (sans-I/O).

A client may send in bursts (a page joining produces a dozen requests at once)
but not sustain a flood: each bucket holds ``burst`` tokens and refills at
``rate`` per second.  Per connection, three buckets keep the classes of
traffic apart, so that a flood of one never starves another:

- heartbeats (``ping``, ``activity``) have their own bucket: a client that is
  over its request limit is still heard, and its session stays alive;
- methods that make the server write to every peer of the room
  (``changeDisplayName``, ``produce``...) take from a tighter bucket as well,
  because their cost is multiplied by the room's size;
- everything else takes from the message bucket.

A refused message is answered ``429`` (a request) or dropped (a notification).
Refusals are themselves counted in a strike bucket: a client that keeps
sending after being told is closed (``4429``), while one that overshoots now
and then is not.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate > 0 and self.burst >= 1):
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.rate = limit.rate
        self.burst = limit.burst
        self.tokens = limit.burst
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough; False (nothing taken) if not."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """The per-connection limits (configuration: docs/security.md)."""

    messages: RateLimit = RateLimit(rate=50.0, burst=200.0)
    broadcasts: RateLimit = RateLimit(rate=2.0, burst=20.0)
    heartbeats: RateLimit = RateLimit(rate=5.0, burst=20.0)
    strikes: RateLimit = RateLimit(rate=1.0, burst=50.0)
    """Refusals allowed before the connection is closed (``4429``)."""


HEARTBEAT_METHODS = frozenset({"ping", "activity"})
"""Never counted against the message limit: liveness must not starve."""

BROADCAST_METHODS = frozenset(
    {
        "changeDisplayName",
        "produce",
        "produceData",
        "closeProducer",
        "pauseProducer",
        "resumeProducer",
    }
)
"""Methods whose handling writes to every other peer of the room."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer 429 (request) or drop (notification)
    CLOSE = "close"  # refused too often: close the connection (4429)


class MessageLimiter:
    """The rate limits of one connection."""

    __slots__ = ("_broadcasts", "_heartbeats", "_messages", "_strikes", "refused")

    def __init__(self, policy: RatePolicy, now: float) -> None:
        self._messages = TokenBucket(policy.messages, now)
        self._broadcasts = TokenBucket(policy.broadcasts, now)
        self._heartbeats = TokenBucket(policy.heartbeats, now)
        self._strikes = TokenBucket(policy.strikes, now)
        self.refused = 0

    def check(self, method: str, now: float) -> Verdict:
        """May a message calling ``method`` (a request, notification or response) go ahead?"""
        if method in HEARTBEAT_METHODS:
            allowed = self._heartbeats.take(now)
        elif method in BROADCAST_METHODS:
            # Both buckets must agree; the message bucket is only charged when
            # the broadcast bucket lets it through.
            allowed = self._broadcasts.take(now) and self._messages.take(now)
        else:
            allowed = self._messages.take(now)
        if allowed:
            return Verdict.ALLOW
        self.refused += 1
        return Verdict.REFUSE if self._strikes.take(now) else Verdict.CLOSE


class KeyedRateLimiter:
    """One token bucket per key (e.g. per client address), forgotten when full again.

    Memory stays bounded by the number of keys seen within one refill period:
    ``prune`` drops buckets that have refilled completely, since a fresh bucket
    is equivalent.
    """

    __slots__ = ("_buckets", "limit")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.limit, now)
        return bucket.take(now)

    def prune(self, now: float) -> None:
        refill = self.limit.burst / self.limit.rate
        stale = [key for key, b in self._buckets.items() if now - b.updated >= refill]
        for key in stale:
            del self._buckets[key]
