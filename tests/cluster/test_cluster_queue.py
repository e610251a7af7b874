"""The waiting queue for the session capacity of the cluster (``--cluster-max-sessions``
with ``--when-full queue``), with a real redis-server: a newcomer refused only
because the cluster is full waits in its node's queue, holding no session
slot, and is admitted once a slot frees on any node: told at once by the
node's release message, or by the backstop when none is heard.

Two nodes as ``Server``s on the test's loop (short lease timings), then two
node processes behind a real HAProxy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from signalling.cluster import Cluster
from signalling.protocol import CloseCode
from signalling.protoo_client import ProtooClient
from signalling.server import Server
from tests.cluster.conftest import ClusterFactory
from tests.cluster.helpers import holder, node_json
from tests.cluster.test_cluster_admission import at_rest, directory, eventually, holds, node
from tests.cluster.test_node_directory import admitted
from tests.signalling import conftest as signalling
from tests.signalling.conftest import ServerFactory, url

make_server = signalling.make_server  # the fixture of tests/signalling, shared

QUEUE = {"cluster_max_sessions": 3, "when_full": "queue"}
ADMITTED = "ghostless:admitted"


async def position(client: ProtooClient, timeout: float = 5.0) -> int:
    _, data = await client.next_notification("queuePosition", timeout=timeout)
    return int(data["position"])


async def admitted_from_queue(client: ProtooClient, timeout: float = 5.0) -> float:
    """Seconds until ``client`` is told ``queueAdmitted``."""
    started = time.monotonic()
    await client.next_notification("queueAdmitted", timeout=timeout)
    return time.monotonic() - started


async def joined(client: ProtooClient, name: str) -> dict[str, Any]:
    answer: dict[str, Any] = await client.request("join", {"displayName": name})
    return answer


async def told_of(client: ProtooClient, peer: str) -> None:
    """Until ``client`` is told that ``peer`` joined its room."""
    while (await client.next_notification("newPeer", timeout=5))[1]["id"] != peer:
        pass


async def member(server: Server, room: str, peer: str) -> ProtooClient:
    """A peer joined in ``room`` of ``server``."""
    client = await ProtooClient.connect(url(server, room, peer))
    await joined(client, peer)
    return client


async def _now(value: bool) -> bool:
    return value


async def queue_at_rest(*servers: Server) -> None:
    """Nothing of the queue is left: no ticket, no slot, no call, no subscription."""

    async def rested() -> bool:
        return all(
            not len(server.queue)
            and not server._queued
            and not server.cluster_slots.waiting
            and not server.cluster_slots.slots
            and not server.cluster_slots.in_flight
            and server.lifecycle.admitting == 0
            and not directory(server).following_releases
            for server in servers
        )

    await eventually(rested)


async def fill(a: Server, b: Server) -> tuple[list[ProtooClient], list[ProtooClient]]:
    """The cluster's 3 slots (``QUEUE``) taken: two sessions on ``a``, one on ``b``."""
    on_a = [await admitted(url(a, "ra", f"p{i}")) for i in range(2)]
    on_b = [await admitted(url(b, "rb", "p2"))]
    return on_a, on_b


async def test_a_newcomer_waits_for_a_slot_freed_on_any_node(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    # No backstop within the test: only the release messages can admit in time.
    a = await node(make_server, redis_process, "a", cluster_queue_retry=30, **QUEUE)
    b = await node(make_server, redis_process, "b", cluster_queue_retry=30, **QUEUE)
    on_a = [await member(a, "ra", f"p{i}") for i in range(2)]
    on_b = [await member(b, "rb", "p2")]

    dave = await ProtooClient.connect(url(a, "ra", "dave"))
    assert await position(dave) == 1
    erin = await ProtooClient.connect(url(a, "other", "erin"))
    assert await position(erin) == 2  # the cluster is full: behind dave, another room or not
    assert await redis.hgetall(ADMITTED) == {"a": "2", "b": "1"}  # queued: no slot held
    assert directory(a).following_releases
    # (Once subscribed, one call: a slot freed before it was not heard.)
    await eventually(lambda: _now(a.cluster_slots.attempts == 1 and not a.cluster_slots.in_flight))

    # Waiting costs no call while nothing frees.
    calls = directory(a).ledger.calls
    await asyncio.sleep(1.0)
    assert directory(a).ledger.calls == calls

    # A slot frees on the other node: its release message admits dave.
    await on_b.pop().close()
    waited = await admitted_from_queue(dave)
    assert sorted(peer["id"] for peer in (await joined(dave, "dave"))["peers"]) == ["p0", "p1"]
    await told_of(on_a[0], "dave")
    assert await position(erin) == 1
    await eventually(holds(redis, ADMITTED, {"a": "3"}))

    # A slot frees on this node: its own queue has it in the same call.
    await on_a.pop().close()
    own = await admitted_from_queue(erin)
    await joined(erin, "erin")
    print(f"admitted {waited:.2f} s after a slot freed on another node, {own:.2f} s on its own")
    assert waited <= 1.5 and own <= 1.0
    assert await redis.hgetall(ADMITTED) == {"a": "3"}
    assert directory(a).releases_heard >= 1

    for client in (*on_a, dave, erin):
        await client.close()
    await queue_at_rest(a, b)
    await at_rest(redis, a, b)


async def test_a_node_announces_released_slots_once_per_batch_not_per_session(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    b = await node(make_server, redis_process, "b", cluster_max_sessions=10)
    on_b = [await member(b, "rb", f"p{i}") for i in range(6)]
    listener = redis.pubsub()
    await listener.subscribe("ghostless:freed")
    try:
        confirmed = await listener.get_message(timeout=2)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        await asyncio.gather(*(client.close() for client in on_b))
        await eventually(holds(redis, ADMITTED, {}))
        messages = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                messages.append(message["data"])
    finally:
        await listener.aclose()  # type: ignore[no-untyped-call]
    print(f"6 sessions ended at once: {len(messages)} release message(s)")
    assert 1 <= len(messages) <= 2 and set(messages) == {"b"}
    await at_rest(redis, b)


async def test_without_a_release_message_the_backstop_admits(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", cluster_queue_retry=0.5, **QUEUE)
    b = await node(make_server, redis_process, "b", **QUEUE)
    on_a, on_b = await fill(a, b)
    directory(a).follow_releases = lambda freed: None  # type: ignore[method-assign]
    dave = await ProtooClient.connect(url(a, "ra", "dave"))
    assert await position(dave) == 1

    calls = directory(a).ledger.calls
    await asyncio.sleep(1.2)
    asked = directory(a).ledger.calls - calls
    await on_b.pop().close()
    waited = await admitted_from_queue(dave)

    print(f"{asked} calls in 1.2 s of waiting; admitted {waited:.2f} s after the slot freed")
    assert 1 <= asked <= 3  # one per backstop interval (0.5 s), no more
    assert waited <= 0.1 + 0.5 + 0.5  # release delay, one interval, slack
    for client in (*on_a, dave):
        await client.close()
    await queue_at_rest(a)
    await at_rest(redis, a, b)


async def test_the_queue_timeout_and_leaving_the_queue_leave_nothing_behind(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", queue_timeout=1.0, max_queue_length=2, **QUEUE)
    b = await node(make_server, redis_process, "b", **QUEUE)
    on_a, on_b = await fill(a, b)

    dave = await ProtooClient.connect(url(a, "ra", "dave"))
    erin = await ProtooClient.connect(url(a, "ra", "erin"))
    assert await position(dave) == 1 and await position(erin) == 2
    frank = await ProtooClient.connect(url(a, "ra", "frank"))  # beyond --max-queue-length
    assert await asyncio.wait_for(frank.closed, 5) == (
        CloseCode.SERVER_FULL,
        "the waiting queue is full",
    )
    await erin.close()  # leaves while queued
    code, reason = await asyncio.wait_for(dave.closed, 4)
    assert (code, reason) == (CloseCode.SESSION_TIMEOUT, "queue_timeout")
    await queue_at_rest(a)
    assert await redis.hgetall(ADMITTED) == {"a": "2", "b": "1"}

    for client in (*on_a, *on_b):
        await client.close()
    await at_rest(redis, a, b)


async def test_with_redis_away_a_queued_newcomer_gets_in_under_the_local_limits(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", cluster_queue_retry=0.5, **QUEUE)
    b = await node(make_server, redis_process, "b", **QUEUE)
    on_a, on_b = await fill(a, b)
    dave = await ProtooClient.connect(url(a, "ra", "dave"))
    assert await position(dave) == 1

    redis_process.stop_redis()
    waited = await admitted_from_queue(dave, timeout=5)
    await joined(dave, "dave")
    print(f"Redis away: admitted under local limits after {waited:.2f} s")

    redis_process.start_redis()
    await redis.connection_pool.disconnect()
    await eventually(holds(redis, ADMITTED, {"a": "3", "b": "1"}), 5)  # rebuilt, over the cap
    for client in (*on_a, *on_b, dave):
        await client.close()
    await queue_at_rest(a)
    await at_rest(redis, a, b)


async def test_a_queued_client_flooding_requests_is_rate_limited(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", cluster_max_sessions=1, when_full="queue")
    alice = await admitted(url(a, "ra", "alice"))
    mallory = await ProtooClient.connect(url(a, "ra", "mallory"))
    assert await position(mallory) == 1
    calls = directory(a).ledger.calls

    for index in range(400):
        message = {"request": True, "id": index, "method": "join", "data": {}}
        await mallory.ws.send(orjson.dumps(message), text=True)

    code, _ = await asyncio.wait_for(mallory.closed, 5)
    assert code == CloseCode.RATE_LIMITED
    assert directory(a).ledger.calls - calls <= 1  # its requests cost Redis nothing
    await queue_at_rest(a)
    await alice.close()
    await at_rest(redis, a)


# -- two node processes behind HAProxy ------------------------------------------------------


async def test_through_haproxy_a_newcomer_queued_on_one_node_gets_a_slot_freed_on_the_other(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(
        nodes=2,
        node_args=(
            "--cluster-max-sessions",
            "3",
            "--when-full",
            "queue",
            "--queue-timeout",
            "3",
            "--cluster-queue-retry",
            "30",  # only the release message can admit within the test
        ),
    )
    redis: Redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    clients: list[ProtooClient] = []

    async def connect(base: str, room: str, peer: str) -> ProtooClient:
        client = await ProtooClient.connect(f"{base}/?roomId={room}&peerId={peer}")
        clients.append(client)
        return client

    try:
        carol = await connect(cluster.url, "lounge", "carol")
        await joined(carol, "carol")
        here = cluster.node(str(await holder(redis, "lounge")))
        there = next(member for member in cluster.members if member is not here)
        await joined(await connect(f"ws://{here.address}", "solo-here", "hugo"), "hugo")
        leaving = await connect(f"ws://{there.address}", "solo-there", "tess")
        await joined(leaving, "tess")

        dave = await connect(cluster.url, "lounge", "dave")  # to the lounge's node
        assert await position(dave) == 1
        stats = await node_json(here, "/debug/stats")
        assert stats["queued"] == 1 and stats["clusterQueue"]["waiting"]
        assert await redis.hgetall(ADMITTED) == {here.name: "2", there.name: "1"}

        await leaving.close()
        waited = await admitted_from_queue(dave)
        answer = await joined(dave, "dave")
        assert [peer["id"] for peer in answer["peers"]] == ["carol"]
        await told_of(carol, "dave")
        print(f"through HAProxy: admitted {waited:.2f} s after a slot freed on the other node")
        assert waited <= 2.0

        # Full again: the queue timeout still holds, and leaving the queue is clean.
        erin = await connect(cluster.url, "lounge", "erin")
        frank = await connect(cluster.url, "lounge", "frank")
        assert await position(erin) == 1 and await position(frank) == 2
        await frank.close()
        code, reason = await asyncio.wait_for(erin.closed, 6)
        assert (code, reason) == (CloseCode.SESSION_TIMEOUT, "queue_timeout")

        for client in clients:
            await client.close()

        async def nothing_left() -> bool:
            for member in cluster.members:
                stats = await node_json(member, "/debug/stats")
                queue = stats["clusterQueue"]
                if stats["queued"] or stats["queuedConnections"] or stats["admitting"]:
                    return False
                if queue["waiting"] or queue["asking"] or queue["slots"]:
                    return False
                if stats["directory"]["admission"]["followingReleases"]:
                    return False
            return not await redis.exists(ADMITTED)

        await eventually(nothing_left, 5)
    finally:
        for client in clients:
            client.abort()
        await redis.aclose()
