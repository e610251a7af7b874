"""Fixtures: a real server on loopback with short timings, and protoo clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from signalling.config import Config, replace
from signalling.protoo_client import ProtooClient
from signalling.rate_limit import RateLimit
from signalling.server import Server

# Short timings for tests that wait on real timeouts (production defaults in docs/liveness.md).
TEST_CONFIG = replace(
    Config(),
    port=0,
    metrics_port=0,
    rtc_min_port=0,
    rtc_max_port=0,
    consent_timeout=10.0,
    grace_period=1.0,
    silence_timeout=3.0,
    probe_after=2.0,
    # The media rule with the same timings (production: 6 s / 10 s / 15 s).
    media_probe_after=2.0,
    media_silence_timeout=3.0,
    socket_probe_after=2.0,
    stale_after=60.0,
    sweep_interval=30.0,
    room_close_delay=0.5,
    request_timeout=5.0,
    shutdown_timeout=3.0,
    gc_freeze=False,
    # Tests open many connections from 127.0.0.1; tests/security sets these itself.
    max_connections_per_ip=None,
    ip_connection_rate=RateLimit(1e6, 1e6),
)

ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[Server] = []

    async def make(**changes: Any) -> Server:
        server = Server(replace(TEST_CONFIG, **changes))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


ClientFactory = Callable[..., Awaitable[ProtooClient]]


def url(server: Server, room: str = "room", peer: str = "alice", **params: str) -> str:
    query = f"roomId={room}&peerId={peer}" + "".join(f"&{k}={v}" for k, v in params.items())
    return f"ws://127.0.0.1:{server.port}/?{query}"


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[ClientFactory]:
    clients: list[ProtooClient] = []

    async def make(
        peer: str = "alice",
        room: str = "room",
        *,
        to: Server | None = None,
        join: bool = True,
        **params: str,
    ) -> ProtooClient:
        client = await ProtooClient.connect(url(to or server, room, peer, **params))
        clients.append(client)
        if join:
            client.join_data = await client.request(  # type: ignore[attr-defined]
                "join", {"displayName": peer, "device": {"name": "test"}}
            )
        return client

    yield make
    for client in clients:
        if not client.closed.done():
            client.abort()
        await client._wait_reader()


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (polling), or fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
