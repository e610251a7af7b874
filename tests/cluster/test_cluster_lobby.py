"""The lobby across nodes with a real redis-server and two nodes (``Server``s
on the test's loop): a viewer on node a sees the rooms of node b appear,
change, close, and disappear when b dies and is reaped; a new viewer's list,
``getRooms`` and ``GET /rooms`` are the cluster's; a node follows the others
only while it has viewers (and a linger); Redis restarting empty is survived."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from signalling.cluster import Cluster, http_get
from signalling.protoo_client import ProtooClient
from signalling.server import Server
from tests.cluster.test_cluster_admission import die, directory, eventually, node
from tests.signalling import conftest as signalling
from tests.signalling.conftest import ServerFactory, url

make_server = signalling.make_server  # the fixture of tests/signalling, shared


async def viewer(server: Server) -> tuple[ProtooClient, list[dict[str, Any]]]:
    client = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/lobby")
    _, data = await client.next_notification("rooms")
    return client, data["rooms"]


async def joined(server: Server, room: str, peer: str) -> ProtooClient:
    client = await ProtooClient.connect(url(server, room, peer))
    await client.request("join", {"displayName": peer})
    return client


async def until(
    client: ProtooClient, room: str, event: str, peers: int | None = None, timeout: float = 4.0
) -> float:
    """Seconds until ``client`` is told ``event`` about ``room`` (with ``peers``)."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        method, data = await client.next_notification(timeout=deadline - time.monotonic())
        matches = data.get("roomId") == room and method == event
        if matches and (peers is None or data.get("peers") == peers):
            return time.monotonic() - started


async def _true(value: bool) -> bool:
    return value


async def test_a_viewer_on_one_node_follows_the_rooms_of_another(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a")
    b = await node(make_server, redis_process, "b", max_peers_per_room=8)
    watcher, initial = await viewer(a)
    assert initial == []

    alice = await joined(b, "call", "alice")
    appeared = await until(watcher, "call", "roomChanged", peers=1)
    bob = await joined(b, "call", "bob")
    grew = await until(watcher, "call", "roomChanged", peers=2)

    # A new viewer's first list, getRooms and GET /rooms are the cluster's.
    expected = {"roomId": "call", "peers": 2, "capacity": 8, "queued": 0, "listed": True}
    late, rooms = await viewer(a)
    assert rooms == [expected]
    assert (await late.request("getRooms"))["rooms"] == [expected]
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{a.port}/rooms")
    assert status == 200 and orjson.loads(body)["rooms"] == [expected]
    own = await joined(a, "local", "carol")  # a's own rooms are listed with b's
    await until(watcher, "local", "roomChanged", peers=1)
    assert [r["roomId"] for r in (await late.request("getRooms"))["rooms"]] == ["call", "local"]

    await bob.close()
    shrank = await until(watcher, "call", "roomChanged", peers=1)
    await alice.close()
    closed = await until(watcher, "call", "roomClosed")  # after --room-close-delay 0.5 s
    print(
        f"viewer on a: b's room appeared {appeared:.2f} s after the join, grew"
        f" {grew:.2f} s, shrank {shrank:.2f} s, closed {closed:.2f} s after the last left"
    )
    for took in (appeared, grew, shrank):
        assert took < 2.0  # two lobby intervals (0.5 s) and a publication, with slack
    assert not await redis.hlen("ghostless:node:b:lobby")
    for client in (own, watcher, late):
        await client.close()


async def test_the_rooms_of_a_dead_node_close_once_it_is_reaped(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a")
    b = await node(make_server, redis_process, "b")
    alice = await joined(b, "doomed", "alice")
    watcher, _ = await viewer(a)
    await eventually(lambda: _true(directory(a)._lobby is not None and _listed(a, "doomed")))

    killed = time.monotonic()
    die(b)
    await until(watcher, "doomed", "roomClosed", timeout=5)
    gone = time.monotonic() - killed
    print(f"a dead node's room closed for viewers {gone:.2f} s after its death")
    assert gone <= 1.0 + 0.25 + 0.5 + 1.0  # lease, reaper, lobby interval, slack
    assert not await redis.exists("ghostless:node:b:lobby")
    for client in (alice, watcher):
        await client.close()


def _listed(server: Server, room: str) -> bool:
    return any(r["roomId"] == room for r in server.lobby.listing())


async def test_a_node_follows_the_others_only_while_it_has_viewers(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a", lobby_linger=0.5)
    b = await node(make_server, redis_process, "b")
    alice = await joined(b, "call", "alice")
    await asyncio.sleep(0.8)  # b published its room meanwhile; a follows nothing
    assert not directory(a).status()["lobby"]["following"]
    assert await redis.pubsub_numsub("ghostless:lobby") == [("ghostless:lobby", 0)]

    watcher, rooms = await viewer(a)
    assert [r["roomId"] for r in rooms] == ["call"]
    assert directory(a).status()["lobby"]["following"]
    await watcher.close()
    await eventually(lambda: _true(not directory(a).status()["lobby"]["following"]), 3)
    assert a.lobby.remote is not None and len(a.lobby.remote) == 0  # nothing kept
    assert await redis.pubsub_numsub("ghostless:lobby") == [("ghostless:lobby", 0)]
    await alice.close()


async def test_the_cluster_lobby_survives_redis_restarting_empty(
    redis_process: Cluster, redis: Redis, make_server: ServerFactory
) -> None:
    a = await node(make_server, redis_process, "a")
    b = await node(make_server, redis_process, "b")
    watcher, _ = await viewer(a)
    alice = await joined(b, "kept", "alice")
    await until(watcher, "kept", "roomChanged", peers=1)

    redis_process.stop_redis()
    await eventually(lambda: _true(not directory(a).up and not directory(b).up))
    redis_process.start_redis()
    await redis.connection_pool.disconnect()
    await eventually(lambda: _true(directory(a).up and directory(b).up), 5)
    # a's viewers kept b's room as last seen; b writes its rooms again.
    assert _listed(a, "kept")

    async def rewritten() -> bool:
        return bool(await redis.hexists("ghostless:node:b:lobby", "kept"))

    await eventually(rewritten, 5)
    # a subscribed and loaded again: the room is still listed, and changes flow again.
    assert _listed(a, "kept")
    bob = await joined(b, "new", "bob")
    await until(watcher, "new", "roomChanged", peers=1, timeout=5)
    for client in (alice, bob, watcher):
        await client.close()
