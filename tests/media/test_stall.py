"""A server stall is not the clients' fault: consent survives the event loop blocking.

The whole process (server and aiortc clients alike) is blocked with ``time.sleep``
past every transport's consent deadline.  When the loop runs again, the consent
timers are due in the same iteration as the clients' checks are sent, and run
before those checks are read: without the stall rule every transport would end
as ``ice_consent_expired``.  The short settings keep the test near 15 s; the
policy itself is unit-tested with a fake clock in test_ice_lite.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiortc.mediastreams import VideoStreamTrack

from media import Router, Worker, WorkerSettings

from .clients import Client, count_frames

CONSENT_TIMEOUT = 10.0  # the minimum RFC 7675 allows for 5 s checks
STALL_TOLERANCE = 0.3
RESYNC_WINDOW = 2.0


@pytest.fixture
async def stall_router() -> AsyncIterator[Router]:
    worker = Worker(
        WorkerSettings(
            consent_timeout=CONSENT_TIMEOUT,
            stall_tolerance=STALL_TOLERANCE,
            consent_resync_window=RESYNC_WINDOW,
        )
    )
    yield await worker.create_router()
    worker.close()


@pytest.mark.slow
async def test_blocking_the_event_loop_past_the_consent_deadline_ends_no_session(
    stall_router: Router,
) -> None:
    alice, bob = Client(stall_router), Client(stall_router)
    try:
        for client in (alice, bob):
            await client.load()
        await alice.open_send_transport()
        await bob.open_recv_transport()
        _, video = await alice.produce(VideoStreamTrack())
        bob_video, _ = await bob.consume(video)
        assert len(await count_frames(bob_video.track, 3, timeout=20)) == 3
        transports = list(stall_router.transports.values())
        ended: list[str] = []
        for transport in transports:
            transport.on("ended", ended.append)
        loop = asyncio.get_running_loop()
        # Block until every consent deadline is a full second in the past.
        last_checks = [t._ice.last_consent for t in transports]
        assert all(last is not None for last in last_checks)
        stall = max(last or 0.0 for last in last_checks) + CONSENT_TIMEOUT + 1.0 - loop.time()

        time.sleep(stall)
        resumed = loop.time()
        await asyncio.sleep(RESYNC_WINDOW + 0.5)

        assert ended == []
        assert all(not t.closed for t in transports)
        assert all((t._ice.last_consent or 0.0) >= resumed for t in transports)
        assert all(t._consent.stalls >= 1 for t in transports)
        assert len(await count_frames(bob_video.track, 5, timeout=10)) == 5
    finally:
        await alice.close()
        await bob.close()
