"""Clients that send but never read: bounded memory, no task per message, others unharmed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from signalling.liveness import EndReason, SessionState
from signalling.protoo_client import ProtooClient
from signalling.rate_limit import RateLimit
from signalling.server import Server

from .conftest import (
    ClientFactory,
    PingWatchFactory,
    ServerFactory,
    eventually,
    rss_bytes,
    url,
)

PING = orjson.dumps({"notification": True, "method": "ping", "data": {}})


def stop_reading(client: ProtooClient) -> None:
    """The client's kernel buffer fills, then the server's writes back up."""
    client.ws.transport.pause_reading()


async def flood(
    client: ProtooClient, frame: bytes, seconds: float, until: Callable[[], bool] | None = None
) -> int:
    """Send ``frame`` as fast as the socket takes it, for ``seconds`` or until
    ``until()`` holds (the kernel buffers take megabytes first, more slowly on
    a loaded machine); how many went."""
    sent = 0
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        while asyncio.get_running_loop().time() < deadline and not (until and until()):
            for _ in range(100):
                await client.ws.send(frame, text=True)
            sent += 100
            await asyncio.sleep(0)
    except Exception:
        pass  # closed by the server: the point of the test
    return sent


def ended(server: Server, reason: EndReason) -> float:
    return server.metrics.ended.labels(reason.value)._value.get()  # type: ignore[no-any-return]


def refused(server: Server, reason: str) -> float:
    return server.metrics.refusals.labels(reason)._value.get()  # type: ignore[no-any-return]


async def test_a_ping_flood_that_never_reads_is_closed_for_its_rate_and_costs_no_tasks(
    server: Server, connect: ClientFactory, healthy_pings: PingWatchFactory
) -> None:
    watch = await healthy_pings(server)
    attacker = await connect("mallory")
    stop_reading(attacker)
    before = rss_bytes()

    sent = await flood(attacker, PING, 3.0)

    await eventually(lambda: ended(server, EndReason.RATE_LIMITED) == 1)
    assert sent > 100
    assert server.debug_stats()["connectionTasks"] <= 1  # the attacker's close, at most
    assert rss_bytes() - before < 64 << 20
    await watch.stop()
    assert watch.failures == 0
    assert watch.p99() < 0.25  # generous: the machine is shared


async def test_a_client_that_does_not_read_is_closed_as_a_slow_reader_and_may_resume(
    make_server: ServerFactory, healthy_pings: PingWatchFactory
) -> None:
    # Heartbeats are not rate limited here, so only the outbound bound acts.
    server = await make_server(
        max_outbound_bytes=65536, heartbeat_rate=RateLimit(1e6, 1e6), grace_period=5.0
    )
    watch = await healthy_pings(server)
    bob = await ProtooClient.connect(url(server, peer="bob"))
    await bob.request("join", {"displayName": "bob"})
    alice = await ProtooClient.connect(url(server, peer="alice"))
    joined = await alice.request("join", {"displayName": "alice"})
    stop_reading(alice)
    before = rss_bytes()

    await flood(alice, PING, 30.0, until=lambda: refused(server, "slow_reader") == 1)

    await eventually(lambda: refused(server, "slow_reader") == 1)
    assert rss_bytes() - before < 64 << 20
    _, data = await bob.next_notification("peerReconnecting", timeout=5)
    assert data == {"peerId": "alice"}
    session = server.registry.by_peer[("room", "alice")]
    assert session.state is SessionState.RECONNECTING  # handled as a lost socket
    alice.abort()

    again = await ProtooClient.connect(
        url(server, peer="alice", resumeToken=joined["resumeToken"])
    )
    method, _ = await again.next_notification("sessionResumed")
    assert method == "sessionResumed"
    await again.close()
    await bob.close()
    await watch.stop()
    assert watch.failures == 0


async def test_a_slow_reader_that_does_not_come_back_ends_as_slow_reader(
    make_server: ServerFactory,
) -> None:
    server = await make_server(
        max_outbound_bytes=65536, heartbeat_rate=RateLimit(1e6, 1e6), grace_period=0.5
    )
    bob = await ProtooClient.connect(url(server, peer="bob"))
    await bob.request("join", {"displayName": "bob"})
    alice = await ProtooClient.connect(url(server, peer="alice"))
    await alice.request("join", {"displayName": "alice"})
    stop_reading(alice)

    await flood(alice, PING, 30.0, until=lambda: refused(server, "slow_reader") == 1)
    await eventually(lambda: refused(server, "slow_reader") == 1)
    alice.abort()

    _, data = await bob.next_notification("peerClosed", timeout=10)
    assert data == {"peerId": "alice", "reason": "slow_reader"}
    assert ended(server, EndReason.SLOW_READER) == 1
    assert ended(server, EndReason.SOCKET_LOST) == 0
    await bob.close()


async def test_a_broadcast_storm_into_a_room_of_non_readers_is_bounded(
    make_server: ServerFactory, healthy_pings: PingWatchFactory
) -> None:
    server = await make_server(max_outbound_bytes=65536)
    watch = await healthy_pings(server)
    sleepers = []
    for name in ("s1", "s2", "s3"):
        sleeper = await ProtooClient.connect(url(server, peer=name))
        await sleeper.request("join", {"displayName": name})
        stop_reading(sleeper)
        sleepers.append(sleeper)
    storm = await ProtooClient.connect(url(server, peer="storm"))
    await storm.request("join", {"displayName": "storm"})
    before = rss_bytes()
    frame = orjson.dumps(
        {
            "request": True,
            "id": 1,
            "method": "changeDisplayName",
            "data": {"displayName": "x" * 120},
        }
    )

    await flood(storm, frame, 3.0)

    code, _ = await asyncio.wait_for(storm.closed, 5)
    assert code == 4429
    assert ended(server, EndReason.RATE_LIMITED) == 1
    assert rss_bytes() - before < 64 << 20
    assert server.debug_stats()["connectionTasks"] <= 4  # close handshakes at most
    for sleeper in sleepers:
        sleeper.abort()
    await eventually(lambda: len(server.registry) == 1, timeout=10)  # the healthy peer
    await watch.stop()
    assert watch.failures == 0
