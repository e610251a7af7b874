"""Cluster-wide admission with a real redis-server and two nodes (``Server``s
on the test's loop sharing it), through real WebSockets: the per-address
connection limit and the session capacity hold across nodes; a dead node's
share goes with the reaper; an empty Redis is refilled from the nodes' live
state; while Redis is away each node applies its local limits.  Short lease
timings (1 s lease renewed every 0.25 s, reaper every 0.25 s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from signalling.cluster import Cluster
from signalling.protoo_client import ProtooClient
from signalling.redis_directory import RedisDirectory
from signalling.server import Server
from tests.cluster.test_node_directory import SHORT, admitted, metric, refused_with
from tests.signalling import conftest as signalling
from tests.signalling.conftest import ServerFactory, url

make_server = signalling.make_server  # the fixture of tests/signalling, shared

IP = "ghostless:ip:127.0.0.1"


async def node(
    make_server: ServerFactory, redis_process: Cluster, node_id: str, **options: Any
) -> Server:
    return await make_server(
        redis_url=redis_process.redis_url, node_id=node_id, **{**SHORT, **options}
    )


def directory(server: Server) -> RedisDirectory:
    assert isinstance(server.directory, RedisDirectory)
    return server.directory


def die(server: Server) -> None:
    """The node's directory stops without a word (as after SIGKILL): nothing
    is removed for it; its lease expires and the reaper takes its records."""
    found = directory(server)
    for task in (found._task, found._pump_task, found._watch_task):
        if task is not None:
            task.cancel()
    if found._keeper is not None:
        found._keeper.halt()  # the thread renewing its lease dies with it


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Seconds until ``check`` held (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def holds(redis: Redis, key: str, expected: dict[str, str]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await redis.hgetall(key) == expected  # type: ignore[no-any-return]

    return check


async def refusals(server: Server, reason: str) -> float:
    line = await metric(server.metrics_port, f'ghostless_refusals_total{{reason="{reason}"}}')
    return float(line.rsplit(" ", 1)[1])


async def viewer_refused(server: Server) -> int | None:
    client = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/lobby")
    code, _ = await asyncio.wait_for(client.closed, 5)
    return code


async def at_rest(redis: Redis, *servers: Server) -> None:
    """Every count is back to zero: in Redis, in each ledger, at each edge."""

    async def rested() -> bool:
        keys = await redis.keys("ghostless:ip:*") + await redis.keys("ghostless:node:*:ips")
        ledgers = [directory(server).ledger for server in servers]
        return (
            not keys
            and not await redis.exists("ghostless:admitted")
            and all(not book.counted and not book.reservations for book in ledgers)
            and all(not book.pending for book in ledgers)
            and all(not server.connections_by_ip for server in servers)
        )

    await eventually(rested)


async def test_connections_of_one_address_are_limited_across_nodes(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", max_connections_per_ip=3)
    b = await node(make_server, redis_process, "b", max_connections_per_ip=3)
    on_a = [await admitted(url(a, "ra", f"p{i}")) for i in range(2)]
    on_b = [await admitted(url(b, "rb", "p2"))]
    assert await redis.hgetall(IP) == {"a": "2", "b": "1"}

    assert await refused_with(url(a, "ra", "x")) == 4429
    assert await refused_with(url(b, "rb", "y")) == 4429
    assert await viewer_refused(b) == 4429  # a lobby viewer is a connection too
    assert await refusals(a, "cluster_connections_per_ip") == 1
    assert await refusals(b, "cluster_connections_per_ip") == 2
    assert await refusals(b, "connections_per_ip") == 0  # (b alone has one)

    # A closed connection is taken off the count (batched: within the release delay).
    await on_a.pop().close()
    freed = await eventually(holds(redis, IP, {"a": "1", "b": "1"}))
    on_b.append(await admitted(url(b, "rb", "p3")))
    assert await redis.hgetall(IP) == {"a": "1", "b": "2"}
    assert await refused_with(url(a, "ra", "z")) == 4429
    print(f"a closed connection off the cluster count after {freed:.2f} s")

    for client in (*on_a, *on_b):
        await client.close()
    await at_rest(redis, a, b)


async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_one_counted(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    # As behind HAProxy (option forwardfor): every connection comes from the
    # proxy, the client address is the last X-Forwarded-For hop.
    options = {"max_connections_per_ip": 2, "trusted_proxies": ("127.0.0.1/32",)}
    a = await node(make_server, redis_process, "a", **options)
    b = await node(make_server, redis_process, "b", **options)

    async def via_proxy(server: Server, peer: str, client: str) -> ProtooClient:
        headers = {"X-Forwarded-For": f"198.51.100.1, {client}"}
        room = f"room-{server.directory.node_id}"  # (a room lives on one node)
        return await ProtooClient.connect(url(server, room, peer), additional_headers=headers)

    clients = [await via_proxy(a, "p1", "203.0.113.7"), await via_proxy(b, "p2", "203.0.113.7")]
    for client in clients:
        await client.request("getRouterRtpCapabilities")
    third = await via_proxy(a, "p3", "203.0.113.7")
    assert (await asyncio.wait_for(third.closed, 5))[0] == 4429
    other = await via_proxy(a, "p4", "203.0.113.8")  # another client behind the same proxy
    await other.request("getRouterRtpCapabilities")
    assert await redis.hgetall("ghostless:ip:203.0.113.7") == {"a": "1", "b": "1"}
    assert await redis.hgetall("ghostless:ip:203.0.113.8") == {"a": "1"}
    assert not await redis.exists(IP)  # the proxy's own address is not counted

    for client in (*clients, other):
        await client.close()
    await at_rest(redis, a, b)


async def test_the_session_capacity_of_the_cluster(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", cluster_max_sessions=3)
    b = await node(make_server, redis_process, "b", cluster_max_sessions=3)
    on_a = [await admitted(url(a, "ra", f"p{i}")) for i in range(2)]
    on_b = [await admitted(url(b, "rb", "p2"))]
    assert await redis.hgetall("ghostless:admitted") == {"a": "2", "b": "1"}
    assert not await redis.keys("ghostless:ip:*")  # per-address limit off here

    assert await refused_with(url(a, "ra", "x")) == 4503
    assert await refused_with(url(b, "rb", "y")) == 4503
    assert await refusals(a, "cluster_full") == 1 and await refusals(b, "cluster_full") == 1
    # A takeover keeps the seat its identity holds; a lobby viewer holds no session.
    on_a.append(await admitted(url(a, "ra", "p0")))
    viewer = await ProtooClient.connect(f"ws://127.0.0.1:{a.port}/lobby")
    await viewer.next_notification("rooms")
    await asyncio.sleep(0.3)  # (past the release delay)
    assert await redis.hgetall("ghostless:admitted") == {"a": "2", "b": "1"}
    assert directory(a).ledger.cluster_sessions == 3

    await on_b.pop().close()
    await eventually(holds(redis, "ghostless:admitted", {"a": "2"}))
    on_a.append(await admitted(url(a, "ra", "p3")))
    assert await redis.hgetall("ghostless:admitted") == {"a": "3"}
    assert await refused_with(url(b, "rb", "z")) == 4503

    for client in (*on_a, viewer):
        await client.close()
    await at_rest(redis, a, b)


async def test_a_dead_nodes_share_goes_with_the_reaper(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    limits = {"max_connections_per_ip": 3, "cluster_max_sessions": 3}
    a = await node(make_server, redis_process, "a", **limits)
    b = await node(make_server, redis_process, "b", **limits)
    on_a = [await admitted(url(a, "ra", f"p{i}")) for i in range(2)]
    on_b = [await admitted(url(b, "rb", "p2"))]
    assert await redis.hgetall(IP) == {"a": "2", "b": "1"}
    assert await refused_with(url(b, "rb", "x")) == 4429

    killed = time.monotonic()
    die(a)

    async def reaped() -> bool:
        return (
            await redis.hgetall(IP) == {"b": "1"}
            and await redis.hgetall("ghostless:admitted") == {"b": "1"}
            and not await redis.exists("ghostless:node:a:ips")
        )

    await eventually(reaped)
    gone_after = time.monotonic() - killed
    # The lease (1 s), one reaper interval (0.25 s), scheduling slack.
    assert gone_after <= 1.0 + 0.25 + 1.0, gone_after
    print(f"dead node's admission counts gone after {gone_after:.2f} s")
    on_b += [await admitted(url(b, "rb", f"q{i}")) for i in range(2)]
    assert await refused_with(url(b, "rb", "y")) == 4429

    for client in (*on_a, *on_b):
        await client.close()
    await eventually(holds(redis, IP, {}))
    assert not await redis.exists("ghostless:admitted")


async def test_redis_away_means_local_limits_and_an_empty_redis_is_refilled(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    limits = {"max_connections_per_ip": 4, "cluster_max_sessions": 10}
    a = await node(make_server, redis_process, "a", **limits)
    b = await node(make_server, redis_process, "b", **limits)
    on_a = [await admitted(url(a, "ra", f"p{i}")) for i in range(2)]
    on_b = [await admitted(url(b, "rb", "p2"))]

    redis_process.stop_redis()  # killed: it comes back empty
    await eventually(lambda: _now(not directory(a).up and not directory(b).up))
    # Each node alone: 4 on a (2 + 2), then its local limit (4429, connections_per_ip).
    on_a += [await admitted(url(a, "ra", f"q{i}")) for i in range(2)]
    assert await refused_with(url(a, "ra", "x")) == 4429
    assert await refusals(a, "connections_per_ip") == 1
    on_b += [await admitted(url(b, "rb", f"q{i}")) for i in range(2)]
    await on_a.pop().close()

    redis_process.start_redis()
    await redis.connection_pool.disconnect()  # the test's own client: connect anew
    rebuilt = await eventually(holds(redis, IP, {"a": "3", "b": "3"}))
    await eventually(holds(redis, "ghostless:admitted", {"a": "3", "b": "3"}))
    print(f"counts rebuilt {rebuilt:.2f} s after Redis came back empty")
    # And the cluster-wide limit holds again.
    assert await refused_with(url(a, "ra", "y")) == 4429
    assert await refused_with(url(b, "rb", "y")) == 4429

    for client in (*on_a, *on_b):
        await client.close()
    await at_rest(redis, a, b)


async def _now(value: bool) -> bool:
    return value


async def test_one_admission_call_per_accepted_connection_and_batched_releases(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    limits = {"max_connections_per_ip": 1000, "cluster_max_sessions": 1000}
    a = await node(make_server, redis_process, "a", **limits)
    await node(make_server, redis_process, "b", **limits)
    ledger = directory(a).ledger
    await asyncio.sleep(0.3)
    calls, stats = ledger.calls, await _evalsha(redis)

    one_by_one = [await admitted(url(a, "room", f"p{i}")) for i in range(20)]
    sequential = ledger.calls - calls
    burst = await asyncio.gather(*(admitted(url(a, "room", f"b{i}")) for i in range(60)))
    concurrent = ledger.calls - calls - sequential
    await asyncio.sleep(0.3)
    accepted_calls = await _evalsha(redis) - stats
    calls = ledger.calls
    for client in (*one_by_one, *burst):
        client.abort()
    await eventually(holds(redis, IP, {}))
    releases = ledger.calls - calls

    print(
        f"admission calls: {sequential} for 20 connections one by one, {concurrent} for 60"
        f" at once, {releases} to release all 80; EVALSHA of node a and b while accepting"
        f" the 80 (admission, sessions, renewals, reaper): {accepted_calls}"
    )
    assert sequential == 20  # exactly one call per accepted connection
    assert concurrent <= 60
    assert releases <= 5  # 80 connections (and sessions) given back in a few calls
    await at_rest(redis, a)


async def _evalsha(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
