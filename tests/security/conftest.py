"""Attacks on a real server: the signalling fixtures, plus raw sockets and a healthy peer."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from signalling.protoo_client import ProtooClient
from signalling.server import Server
from tests.signalling.conftest import (  # noqa: F401  (fixtures, re-exported)
    TEST_CONFIG,
    ClientFactory,
    ServerFactory,
    connect,
    eventually,
    make_server,
    server,
    url,
)


class PingWatch:
    """A healthy peer pinging every ``interval`` while an attack runs: its RTTs.

    4 pings a second: within the heartbeat rate limit (5/s), far above what a
    real client sends (one per heartbeat interval).
    """

    def __init__(self, client: ProtooClient, interval: float = 0.25) -> None:
        self.client = client
        self.interval = interval
        self.rtts: list[float] = []
        self.failures = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                await self.client.request("ping", {}, timeout=5)
            except Exception:
                self.failures += 1
            else:
                self.rtts.append(time.perf_counter() - started)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()

    def p99(self) -> float:
        assert len(self.rtts) >= 5, "the healthy peer hardly pinged"
        return statistics.quantiles(self.rtts, n=100)[98]


PingWatchFactory = Callable[[Server], Awaitable[PingWatch]]


@pytest.fixture
async def healthy_pings() -> AsyncIterator[PingWatchFactory]:
    """Start a healthy peer (in its own room) pinging the server under attack."""
    watches: list[PingWatch] = []

    async def start(target: Server) -> PingWatch:
        client = await ProtooClient.connect(url(target, room="elsewhere", peer="healthy"))
        await client.request("join", {"displayName": "healthy"})
        watch = PingWatch(client)
        watches.append(watch)
        return watch

    yield start
    for watch in watches:
        await watch.stop()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
