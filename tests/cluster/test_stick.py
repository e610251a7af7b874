"""A room's stick entry keeps naming its holder (docs/scaling.md, "When HAProxy
sees a live holder down").

HAProxy writes a room's entry only from a node's accepted handshake that
names no other holder; a node that does not hold the room names the holder
(``X-Ghostless-Holder``) and HAProxy sends the room's next connection there.
A node out of media ports answers /readyz 404: HAProxy sends it no new room
and still routes the rooms it holds.  The clients are light protoo clients
that know nothing of nodes (no hint of any kind): they retry 4421 with backoff
as every client does.  Default lease timings; HAProxy checks /readyz every
0.5 s (fall 3, rise 2).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from signalling.cluster import Cluster, http_get
from tests.cluster.conftest import ClusterFactory
from tests.cluster.helpers import (
    LightClient,
    directory_client,
    eventually,
    free_udp_ports,
    holder,
)


async def joined(
    clients: list[LightClient], url: str, room: str, peer: str, retry_for: float = 10.0
) -> LightClient:
    client = LightClient(url, room, peer)
    clients.append(client)
    await client.join(retry_for=retry_for)
    return client


async def session_node(redis: Redis, client: LightClient) -> str:
    """The node of the client's session in the directory (written in the background)."""
    key = f"ghostless:session:{client.session_id}"

    async def written() -> bool:
        return bool(await redis.exists(key))

    await eventually(written, 3)
    return str(await redis.hget(key, "node"))


async def entries(cluster: Cluster, room: str) -> list[str | None]:
    """The room's stick entry on every balancer."""
    return [
        (await asyncio.to_thread(cluster.stick_table, balancer.name)).get(room)
        for balancer in cluster.haproxies
    ]


async def states(cluster: Cluster, name: str) -> list[str | None]:
    return [
        await asyncio.to_thread(cluster.server_state, name, balancer.name)
        for balancer in cluster.haproxies
    ]


async def command(cluster: Cluster, text: str) -> None:
    """A runtime API command on every balancer."""
    for balancer in cluster.haproxies:
        answer = await asyncio.to_thread(cluster.haproxy_command, text, balancer.name)
        assert not answer.strip(), (balancer.name, text, answer)


async def refused_meanwhile(url: str, room: str, seconds: float) -> list[int | None]:
    """A newcomer that keeps trying for ``seconds``: the close codes it got
    (AssertionError if it got in)."""
    newcomer = LightClient(url, room, "meanwhile")
    try:
        await newcomer.join(retry_for=seconds, backoff=(0.1, 0.3))
    except AssertionError:
        return newcomer.refusals
    finally:
        await newcomer.close()
    raise AssertionError(f"{room}: a newcomer got in while its holder was down")


@pytest.mark.parametrize("how", ["maintenance", "failed checks"])
async def test_a_live_holder_seen_down_gets_its_newcomers_back_once_it_is_up(
    make_cluster: ClusterFactory, clients: list[LightClient], how: str
) -> None:
    cluster = make_cluster(balancers=2)
    redis = directory_client(cluster)
    try:
        lb1, lb2 = cluster.urls
        await joined(clients, lb1, "call", "alice")
        owner = await holder(redis, "call")
        assert owner is not None

        async def shared() -> bool:
            return await entries(cluster, "call") == [owner, owner]

        await eventually(shared, 5)

        # Both balancers see the holder down while it is alive and holds the room.
        if how == "maintenance":
            await command(cluster, f"disable server nodes/{owner}")
            down = "MAINT"
        else:  # its checks failed (a timeout under load): DOWN until two pass
            await command(cluster, f"disable health nodes/{owner}")
            await command(cluster, f"set server nodes/{owner} health down")
            down = "DOWN"
        assert await states(cluster, owner) == [down, down]
        refusals = await asyncio.gather(
            refused_meanwhile(lb1, "call", 2.0), refused_meanwhile(lb2, "call", 2.0)
        )
        assert all(codes and set(codes) == {4421} for codes in refusals), refusals
        # The other nodes refused the room naming its holder: the entry stays.
        assert await entries(cluster, "call") == [owner, owner]

        # Back up: newcomers through either balancer reach the holder.
        back = time.monotonic()
        if how == "maintenance":
            await command(cluster, f"enable server nodes/{owner}")
        else:
            await command(cluster, f"enable health nodes/{owner}")  # real checks again

        async def up() -> bool:
            return await states(cluster, owner) == ["UP", "UP"]

        up_after = await eventually(up, 10)
        seen_up = time.monotonic()
        bob, carol = await asyncio.gather(
            joined(clients, lb1, "call", "bob"), joined(clients, lb2, "call", "carol")
        )
        in_after = time.monotonic() - seen_up
        since_back = time.monotonic() - back
        assert await session_node(redis, bob) == owner
        assert await session_node(redis, carol) == owner
        assert bob.refusals == [] and carol.refusals == []
        assert await entries(cluster, "call") == [owner, owner]
        print(
            f"{how}: {len(refusals[0])} + {len(refusals[1])} refusals in 2 s while down, entry"
            f" kept on both balancers; UP {up_after:.2f} s after it was let back; newcomers"
            f" through both balancers on the holder {in_after:.2f} s after UP, no refusal"
            f" ({since_back:.2f} s after it was let back)"
        )
        assert in_after <= 5.0
    finally:
        await redis.aclose()


async def test_a_wrong_stick_entry_is_repaired_at_the_next_try(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    cluster = make_cluster()
    redis = directory_client(cluster)
    try:
        # An entry naming a live node that does not hold the room (as a race
        # between balancers could leave): written through the runtime API.
        await joined(clients, cluster.url, "call", "alice")
        owner = await holder(redis, "call")
        wrong = next(node for node in cluster.members if node.name != owner)
        server_id = cluster.members.index(wrong) + 1
        await command(cluster, "clear table nodes key call")
        await command(cluster, f"set table nodes key call data.server_id {server_id}")
        started = time.monotonic()
        bob = await joined(clients, cluster.url, "call", "bob")
        repaired_after = time.monotonic() - started
        assert bob.refusals == [4421]  # the wrong node, once
        assert await session_node(redis, bob) == owner
        assert await entries(cluster, "call") == [owner]
        carol = await joined(clients, cluster.url, "call", "carol")
        assert carol.refusals == []

        # Rooms opened on n1 by direct connections: HAProxy has no entry for them,
        # and its hash picks another node for about two in three.  Their first
        # newcomer through HAProxy is refused once there, then sent to n1.
        direct = cluster.node("n1")
        repaired = []
        for index in range(12):
            room = f"direct{index}"
            await joined(clients, f"ws://{direct.address}", room, "first")
            assert await entries(cluster, room) == [None]
            newcomer = await joined(clients, cluster.url, room, "newcomer")
            assert newcomer.refusals in ([], [4421]), newcomer.refusals
            assert await session_node(redis, newcomer) == "n1"
            assert await entries(cluster, room) == ["n1"]
            repaired += newcomer.refusals
            if len(repaired) == 3:
                break
        assert len(repaired) == 3, "the hash picked n1 for nearly every room"
        print(
            f"a wrong entry ({wrong.name} for a room of {owner}) repaired after one refusal,"
            f" newcomer in after {repaired_after:.2f} s; {index + 1} rooms opened on n1"
            f" directly: each newcomer on n1 after at most one refusal"
        )
    finally:
        await redis.aclose()


async def test_a_node_out_of_media_ports_keeps_its_rooms_and_takes_no_new_one(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    # n1 has 4 media ports and reports itself full at 2 in use (the others let
    # the kernel pick ports: no pool, no threshold).
    cluster = make_cluster(
        balancers=2,
        node_args=("--ready-max-port-use", "0.5"),
        rtc_ports={"n1": free_udp_ports(4)},
    )
    redis = directory_client(cluster)
    try:
        room = None
        for index in range(40):  # a room the hash gives to n1
            first = await joined(clients, cluster.urls[index % 2], f"r{index}", "first")
            if await holder(redis, f"r{index}") == "n1":
                room = f"r{index}"
                break
            await first.close()
        assert room is not None, "no room landed on n1"
        assert first.client is not None
        for producing in (True, False):
            await first.client.request("createWebRtcTransport", {"producing": producing})

        async def nolb() -> bool:
            return await states(cluster, "n1") == ["NOLB", "NOLB"]

        nolb_after = await eventually(nolb, 10)
        status, body = await asyncio.to_thread(
            http_get, f"http://{cluster.node('n1').address}/readyz"
        )
        assert status == 404 and b"media ports 2/4" in body

        # Its room's newcomers still reach it, through either balancer, at once.
        for index, url in enumerate(cluster.urls):
            newcomer = await joined(clients, url, room, f"newcomer{index}")
            assert newcomer.refusals == []
            assert await session_node(redis, newcomer) == "n1"
        assert await entries(cluster, room) == ["n1", "n1"]
        # New rooms go elsewhere.
        landed = []
        for index in range(12):
            await joined(clients, cluster.urls[index % 2], f"new{index}", "solo")
            landed.append(await holder(redis, f"new{index}"))
        assert "n1" not in landed, landed

        # Ports back: ready again.
        await first.leave()

        async def ready() -> bool:
            return await states(cluster, "n1") == ["UP", "UP"]

        ready_after = await eventually(ready, 10)
        elsewhere = sorted({str(node) for node in landed})
        print(
            f"out of ports: NOLB on both balancers {nolb_after:.2f} s after the 2nd transport,"
            " newcomers of its room on it with no refusal,"
            f" 12 new rooms elsewhere ({elsewhere}); UP {ready_after:.2f} s after"
            " its ports were freed"
        )
    finally:
        await redis.aclose()
