"""Token buckets and the per-connection limiter (signalling/rate_limit.py), on a fake clock."""

from __future__ import annotations

import pytest

from signalling.rate_limit import (
    KeyedRateLimiter,
    MessageLimiter,
    RateLimit,
    RatePolicy,
    TokenBucket,
    Verdict,
)

T0 = 500.0


def test_a_bucket_allows_its_burst_at_once_then_its_rate() -> None:
    bucket = TokenBucket(RateLimit(rate=2, burst=5), T0)

    assert [bucket.take(T0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(T0 + 0.4) is False  # 0.8 of a token
    assert bucket.take(T0 + 0.5) is True
    assert bucket.take(T0 + 0.5) is False


def test_a_bucket_never_saves_up_more_than_its_burst() -> None:
    bucket = TokenBucket(RateLimit(rate=10, burst=3), T0)

    allowed = sum(bucket.take(T0 + 3600) for _ in range(10))

    assert allowed == 3


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(RateLimit(rate=1, burst=1), T0)
    assert bucket.take(T0)

    assert bucket.take(T0 - 100) is False


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (1, 0.5)])
def test_a_rate_limit_needs_a_positive_rate_and_a_burst_of_one(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)


POLICY = RatePolicy(
    messages=RateLimit(10, 10),
    broadcasts=RateLimit(1, 2),
    heartbeats=RateLimit(1, 3),
    strikes=RateLimit(1, 5),
)


def test_requests_beyond_the_message_limit_are_refused_then_the_connection_closed() -> None:
    limiter = MessageLimiter(POLICY, T0)

    verdicts = [limiter.check("getRouterRtpCapabilities", T0) for _ in range(16)]

    assert verdicts[:10] == [Verdict.ALLOW] * 10
    assert verdicts[10:15] == [Verdict.REFUSE] * 5  # the strike bucket holds 5
    assert verdicts[15] is Verdict.CLOSE
    assert limiter.refused == 6


def test_occasional_overshoots_never_close_the_connection() -> None:
    limiter = MessageLimiter(POLICY, T0)
    verdicts = []
    for burst in range(30):  # every 10 s, 14 at once against a burst of 10
        now = T0 + 10 * burst
        verdicts += [limiter.check("getTransportStats", now) for _ in range(14)]

    assert Verdict.CLOSE not in verdicts
    assert verdicts.count(Verdict.REFUSE) == 30 * 4


def test_a_sustained_overshoot_closes_the_connection() -> None:
    limiter = MessageLimiter(POLICY, T0)
    verdicts = []
    for second in range(60):  # 12 a second against 10: 2 refusals a second, 1 forgiven
        verdicts += [limiter.check("getTransportStats", T0 + second) for _ in range(12)]

    assert Verdict.CLOSE in verdicts
    assert verdicts.index(Verdict.CLOSE) < 12 * 8


def test_heartbeats_are_heard_while_requests_are_refused() -> None:
    limiter = MessageLimiter(POLICY, T0)
    for _ in range(10):
        limiter.check("getTransportStats", T0)
    assert limiter.check("getTransportStats", T0) is Verdict.REFUSE

    assert limiter.check("ping", T0) is Verdict.ALLOW
    assert limiter.check("activity", T0) is Verdict.ALLOW


def test_a_heartbeat_flood_is_limited_by_its_own_bucket() -> None:
    limiter = MessageLimiter(POLICY, T0)

    verdicts = [limiter.check("ping", T0) for _ in range(10)]

    assert verdicts[:3] == [Verdict.ALLOW] * 3
    assert Verdict.CLOSE in verdicts


def test_methods_that_write_to_every_peer_have_a_tighter_limit() -> None:
    limiter = MessageLimiter(POLICY, T0)

    renames = [limiter.check("changeDisplayName", T0) for _ in range(3)]

    assert renames == [Verdict.ALLOW, Verdict.ALLOW, Verdict.REFUSE]
    assert limiter.check("getTransportStats", T0) is Verdict.ALLOW
    assert limiter.check("changeDisplayName", T0 + 1) is Verdict.ALLOW


def test_per_address_buckets_are_independent_and_forgotten_once_full() -> None:
    limiter = KeyedRateLimiter(RateLimit(rate=1, burst=2))

    assert [limiter.take("a", T0) for _ in range(3)] == [True, True, False]
    assert limiter.take("b", T0) is True
    assert len(limiter) == 2

    limiter.prune(T0 + 1)  # "a" is still refilling
    assert len(limiter) == 2
    limiter.prune(T0 + 2)
    assert len(limiter) == 0
