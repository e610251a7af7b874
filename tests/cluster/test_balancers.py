"""Several HAProxy instances sharing their stick table through ``peers``, and a
node added at runtime (docs/scaling.md).

Light protoo clients (no media) join through the balancers; the directory in
Redis and each balancer's table (``show table nodes`` on its stats socket) say
where each room is.  Default lease timings (3 s lease renewed every 1 s, reaper
every 1 s); HAProxy checks /readyz every 0.5 s.
"""

from __future__ import annotations

import asyncio
import signal
import time

from redis.asyncio import Redis

from signalling.cluster import Cluster
from tests.cluster.conftest import ClusterFactory
from tests.cluster.helpers import (
    LightClient,
    directory_client,
    eventually,
    holder,
    records_of,
    sessions,
)


async def joined(clients: list[LightClient], url: str, room: str, peer: str) -> LightClient:
    client = LightClient(url, room, peer)
    clients.append(client)
    await client.join(retry_for=10)
    return client


async def session_node(redis: Redis, session_id: str | None) -> str | None:
    """The node of a session in the directory, once written (in the background,
    a few milliseconds after the change)."""

    async def written() -> bool:
        return bool(await redis.exists(f"ghostless:session:{session_id}"))

    await eventually(written, 3)
    node = await redis.hget(f"ghostless:session:{session_id}", "node")
    return None if node is None else str(node)


async def tables(cluster: Cluster) -> list[dict[str, str]]:
    return [
        await asyncio.to_thread(cluster.stick_table, balancer.name)
        for balancer in cluster.haproxies
    ]


async def test_two_balancers_share_the_stick_table_and_agree_after_a_node_dies(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    cluster = make_cluster(balancers=2)
    redis = directory_client(cluster)
    try:
        lb1, lb2 = cluster.urls
        alice = await joined(clients, lb1, "shared", "alice")
        owner = await holder(redis, "shared")
        assert owner is not None
        assert await session_node(redis, alice.session_id) == owner

        # lb2 never saw the room: its entry comes from lb1, through peers.
        async def learned() -> bool:
            return (await asyncio.to_thread(cluster.stick_table, "lb2")).get("shared") == owner

        shared_after = await eventually(learned, 5)
        bob = await joined(clients, lb2, "shared", "bob")
        assert await session_node(redis, bob.session_id) == owner
        assert bob.refusals == []  # straight to the holder
        assert [table.get("shared") for table in await tables(cluster)] == [owner, owner]

        # The holder dies: each client reconnects through its own balancer.
        killed = time.monotonic()
        await asyncio.to_thread(cluster.kill_node, owner, signal.SIGKILL)

        async def rejoin(client: LightClient) -> float:
            await client.wait_closed(5)
            await client.join(retry_for=15)
            return time.monotonic() - killed

        alice_after, bob_after = await asyncio.gather(rejoin(alice), rejoin(bob))
        now_owner = await holder(redis, "shared")
        assert now_owner not in (None, owner)
        assert now_owner is not None and cluster.node(now_owner).alive
        assert await session_node(redis, alice.session_id) == now_owner
        assert await session_node(redis, bob.session_id) == now_owner

        async def reaped() -> bool:
            return not await records_of(redis, owner)

        await eventually(reaped, 6)
        in_room = [s for s in (await sessions(redis)).values() if s["room"] == "shared"]
        assert sorted((s["peer"], s["node"]) for s in in_room) == [
            ("alice", now_owner),
            ("bob", now_owner),
        ]

        async def redispatched() -> bool:
            return [table.get("shared") for table in await tables(cluster)] == [
                now_owner,
                now_owner,
            ]

        await eventually(redispatched, 5)
        print(
            f"two balancers: lb2 learned the entry {shared_after:.2f} s after lb1 made it;"
            f" after SIGKILL of {owner}, alice (lb1) rejoined on {now_owner} after"
            f" {alice_after:.2f} s ({len(alice.refusals)} refused tries), bob (lb2) after"
            f" {bob_after:.2f} s ({len(bob.refusals)})"
        )
        assert max(alice_after, bob_after) <= 10.0
    finally:
        await redis.aclose()


async def test_a_node_added_at_runtime_takes_new_rooms_and_moves_no_live_room(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    cluster = make_cluster(balancers=2)
    redis = directory_client(cluster)
    try:
        # Live rooms on all three nodes, each with a client, through either balancer.
        live: dict[str, str] = {}
        first: dict[str, LightClient] = {}
        for index in range(40):
            if len(set(live.values())) == 3 and len(live) >= 6:
                break
            room = f"live-{index}"
            first[room] = await joined(clients, cluster.urls[index % 2], room, "first")
            owner = await holder(redis, room)
            assert owner is not None
            live[room] = owner
        assert len(set(live.values())) == 3, live
        before = {client.session_id for client in first.values()}
        for table in await tables(cluster):
            assert {room: table.get(room) for room in live} == live

        started = time.monotonic()
        added = await asyncio.to_thread(cluster.add_node)
        added_after = time.monotonic() - started
        for balancer in cluster.haproxies:
            assert await asyncio.to_thread(cluster.server_state, added.name, balancer.name) == "UP"

        # No live room moved: the tables, the directory, every session as it was.
        for table in await tables(cluster):
            assert {room: table.get(room) for room in live} == live
        for room, owner in live.items():
            assert await holder(redis, room) == owner
        assert all(client.connected for client in first.values())
        assert set(await sessions(redis)) == before

        # A newcomer of each live room, through either balancer, lands on its node.
        for index, (room, owner) in enumerate(live.items()):
            second = await joined(clients, cluster.urls[index % 2], room, "second")
            assert second.refusals == [], (room, second.refusals)
            assert await session_node(redis, second.session_id) == owner
        assert all(client.connected for client in first.values())
        assert before <= set(await sessions(redis))

        # New rooms spread over four nodes now: one lands on the new node.
        landed = None
        for index in range(60):
            room = f"new-{index}"
            await joined(clients, cluster.urls[index % 2], room, "solo")
            if await holder(redis, room) == added.name:
                landed = index + 1
                break
        assert landed is not None, "no new room on the new node after 60"
        print(
            f"add node: {added.name} started and UP on both balancers after {added_after:.2f} s;"
            f" {len(live)} live rooms kept their node; a new room landed on it after {landed}"
        )
    finally:
        await redis.aclose()
