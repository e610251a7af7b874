"""Three nodes behind HAProxy with a real Redis directory, and pymediasoup bots
that know nothing of nodes (docs/scaling.md).

Default lease timings (3 s lease renewed every 1 s, reaper every 1 s); HAProxy
checks /readyz every 0.5 s.  Bots run on the test's event loop; every process
of the cluster is a child the fixture kills at teardown.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from signalling.bot import Bot
from signalling.cluster import Cluster
from signalling.protocol import CloseCode
from signalling.protoo_client import ProtooClient
from tests.cluster.helpers import eventually, holder, records_of, sessions


@pytest.fixture
async def directory(cluster: Cluster) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(cluster.redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def bots() -> AsyncIterator[list[Bot]]:
    made: list[Bot] = []
    yield made
    for bot in made:
        await bot.close()


async def joined(
    cluster: Cluster, bots: list[Bot], room: str, peer: str, *, video: bool = True
) -> Bot:
    bot = Bot(cluster.url, room, peer, video=video)
    bots.append(bot)
    await bot.join(retry_for=10)
    return bot


async def test_a_rooms_clients_land_on_one_node_and_exchange_media_and_rooms_spread(
    cluster: Cluster, directory: Redis, bots: list[Bot]
) -> None:
    alice = await joined(cluster, bots, "call", "alice")
    bob = await joined(cluster, bots, "call", "bob")
    assert await alice.wait_for_frames(10, 20) and await bob.wait_for_frames(10, 20)

    owner = await holder(directory, "call")
    assert owner in {node.name for node in cluster.members}
    in_call = [s for s in (await sessions(directory)).values() if s["room"] == "call"]
    assert sorted((s["peer"], s["node"], s["state"]) for s in in_call) == [
        ("alice", owner, "joined"),
        ("bob", owner, "joined"),
    ]

    for index in range(8):  # the consistent hash of roomId spreads new rooms
        await joined(cluster, bots, f"room-{index}", "solo", video=False)
    owners = {await holder(directory, f"room-{index}") for index in range(8)}
    assert len(owners) >= 2, owners

    # A node that does not hold the room refuses a direct connection to it.
    other = next(node for node in cluster.members if node.name != owner)
    carol = await ProtooClient.connect(f"ws://{other.address}/?roomId=call&peerId=carol")
    code, _ = await asyncio.wait_for(carol.closed, 5)
    assert code == CloseCode.ROOM_ELSEWHERE


@pytest.mark.slow
async def test_sigkill_of_a_node_frees_its_records_and_its_clients_rejoin_a_live_node(
    cluster: Cluster, directory: Redis, bots: list[Bot]
) -> None:
    alice = await joined(cluster, bots, "call", "alice")
    bob = await joined(cluster, bots, "call", "bob")
    assert await alice.wait_for_frames(5, 20) and await bob.wait_for_frames(5, 20)
    dead = await holder(directory, "call")
    assert dead is not None
    old_sessions = set(await sessions(directory))

    killed = time.monotonic()
    await asyncio.to_thread(cluster.kill_node, dead, signal.SIGKILL)

    async def rejoin(bot: Bot) -> float:
        assert bot.client is not None
        await asyncio.wait_for(asyncio.shield(bot.client.closed), 5)
        await bot.join(retry_for=15, retry_lost=True)
        return time.monotonic() - killed

    async def no_record() -> bool:
        return not await records_of(directory, dead)

    gone_after, *rejoined_after = await asyncio.gather(
        eventually(no_record, 10), rejoin(alice), rejoin(bob)
    )
    print(f"SIGKILL: records gone after {gone_after:.2f} s, rejoined after {rejoined_after}")
    assert gone_after <= 6.0
    assert max(rejoined_after) <= 10.0

    alive = await holder(directory, "call")
    assert alive not in (None, dead)
    now = await sessions(directory)
    assert sorted((s["peer"], s["node"]) for s in now.values() if s["room"] == "call") == [
        ("alice", alive),
        ("bob", alive),
    ]
    assert not set(now) & old_sessions  # fresh sessions
    assert await alice.wait_for_frames(5, 20) and await bob.wait_for_frames(5, 20)


@pytest.mark.slow
async def test_sigterm_drains_a_node_and_its_room_moves(
    cluster: Cluster, directory: Redis, bots: list[Bot]
) -> None:
    alice = await joined(cluster, bots, "call", "alice", video=False)
    draining = await holder(directory, "call")
    assert draining is not None and alice.client is not None

    stopped = time.monotonic()
    await asyncio.to_thread(cluster.kill_node, draining, signal.SIGTERM)
    exited_after = time.monotonic() - stopped

    _, data = await alice.client.next_notification("serverShutdown", timeout=5)
    assert data == {"reconnectDelay": 500}
    code, _ = await asyncio.wait_for(alice.client.closed, 5)
    assert code == CloseCode.GOING_AWAY
    assert await records_of(directory, draining) == []  # removed by the node itself

    await alice.join(retry_for=10, retry_lost=True)
    moved_after = time.monotonic() - stopped
    print(f"SIGTERM: node exited after {exited_after:.2f} s, room moved after {moved_after:.2f} s")
    assert (await holder(directory, "call")) not in (None, draining)
    assert moved_after <= 10.0
