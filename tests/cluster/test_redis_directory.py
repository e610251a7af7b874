"""RedisDirectory against a real redis-server: node leases (renewed from a
thread, through a busy loop), room leases with fencing epochs, sessions, the
elected reaper, Redis going away and coming back.

The directory is given a stand-in of the lifecycle (what it reads: observer,
registry, rooms, room_lost); short timings (1 s lease renewed every 0.25 s).
A node "dies" by losing its loop without a word (nothing is removed for it).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from media.events import EventEmitter
from signalling.cluster import Cluster
from signalling.directory import ClaimOutcome, LeaseTimings
from signalling.liveness import EndReason, LivenessPolicy, Session, SessionRegistry
from signalling.redis_directory import RedisDirectory

TIMINGS = LeaseTimings(ttl=1.0, renew_interval=0.25, reaper_interval=0.25, timeout=0.2)
_connections = itertools.count(1)


class Stage:
    """What the directory reads of a SessionLifecycle, and nothing else."""

    def __init__(self) -> None:
        self.observer = EventEmitter()
        self.registry = SessionRegistry(LivenessPolicy())
        self.rooms: dict[str, Any] = {}
        self.lost: list[str] = []

    def room_lost(self, room_id: str) -> None:
        self.lost.append(room_id)
        self.rooms.pop(room_id, None)

    def enter(self, room_id: str, peer_id: str) -> Session:
        admission = self.registry.admit(
            room_id=room_id,
            user_id=peer_id,
            peer_id=peer_id,
            connection_id=next(_connections),
            resume_token=None,
            now=time.monotonic(),
        )
        assert admission.session is not None
        self.observer.emit("sessionstarted", admission.session)
        return admission.session

    def leave(self, session: Session) -> None:
        self.registry.end(session, EndReason.GRACEFUL)
        self.observer.emit("sessionended", session, EndReason.GRACEFUL, None)


Node = tuple[RedisDirectory, Stage]
NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def node(redis_process: Cluster) -> AsyncIterator[NodeFactory]:
    started: list[RedisDirectory] = []

    async def make(node_id: str, timings: LeaseTimings = TIMINGS) -> Node:
        directory = RedisDirectory(
            redis_process.redis_url, node_id=node_id, address=f"{node_id}:1", timings=timings
        )
        stage = Stage()
        started.append(directory)
        await directory.start(stage)  # type: ignore[arg-type]
        return directory, stage

    yield make
    for directory in started:
        if directory._task is not None and not directory._task.done():
            await directory.close()
        else:
            await directory.redis.aclose()
            if directory._keeper is not None:
                await directory._keeper.stop()


def die(directory: RedisDirectory) -> None:
    """The node stops without a word (as after SIGKILL): its loop and the lease
    keeper's thread are gone."""
    assert directory._task is not None and directory._keeper is not None
    directory._task.cancel()
    directory._keeper.halt()


async def keys(redis: Redis) -> set[str]:
    return {str(key) for key in await redis.keys("ghostless:*") if key != "ghostless:epoch"}


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until ``check`` held (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_room_has_one_holder_and_every_acquisition_a_higher_epoch(
    node: NodeFactory, redis: Redis
) -> None:
    (a, _), (b, _) = await node("a"), await node("b")

    first = await a.claim_room("call")
    refused = await b.claim_room("call")
    assert first.outcome is ClaimOutcome.GRANTED and first.epoch > 0
    assert (refused.outcome, refused.owner) == (ClaimOutcome.ELSEWHERE, "a")
    assert await redis.hgetall("ghostless:room:call") == {
        "node": "a",
        "incarnation": a.incarnation,
        "epoch": str(first.epoch),
    }

    a.room_closed("call")  # released in the background
    await eventually(lambda: redis_has_no(redis, "ghostless:room:call"), 2)
    second = await b.claim_room("call")
    assert second.outcome is ClaimOutcome.GRANTED and second.epoch > first.epoch
    assert await redis.smembers("ghostless:node:b:rooms") == {"call"}
    assert await redis.smembers("ghostless:node:a:rooms") == set()


async def redis_has_no(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_a_dead_nodes_lease_expires_in_redis_and_a_stale_release_is_fenced_off(
    node: NodeFactory, redis: Redis
) -> None:
    (a, _), (b, _) = await node("a"), await node("b")
    old = await a.claim_room("call")
    die(a)

    # Redis expires a's liveness key; nothing else tells b.
    waited = await eventually(lambda: redis_has_no(redis, "ghostless:node:a:alive"), 3)
    assert waited <= TIMINGS.ttl + 1.0  # (slack for a loaded machine)
    new = await b.claim_room("call")
    assert new.outcome is ClaimOutcome.GRANTED and new.epoch > old.epoch

    # a's late release carries its old epoch: it removes nothing of b's.
    await a._call(a._release, "a", "call", str(old.epoch))
    assert (await redis.hgetall("ghostless:room:call"))["node"] == "b"


async def test_a_nodes_look_at_a_room_names_the_live_holder_only(
    node: NodeFactory, redis: Redis
) -> None:
    """What a node names in its handshake (X-Ghostless-Holder) for HAProxy."""
    (a, _), (b, _) = await node("a"), await node("b")
    assert await b.holder("call") is None  # nobody holds it
    assert (await a.claim_room("call")).outcome is ClaimOutcome.GRANTED
    assert await b.holder("call") == "a"
    assert await a.holder("call") is None  # its own
    # A lease left by an earlier run of a (another incarnation) names nobody.
    await redis.hset("ghostless:room:old", mapping={"node": "a", "incarnation": "x", "epoch": 1})
    assert await b.holder("old") is None
    die(a)
    await eventually(lambda: redis_has_no(redis, "ghostless:node:a:alive"), 3)
    assert await b.holder("call") is None  # nor does the lease of a dead node


async def test_the_elected_reaper_removes_everything_a_dead_node_left(
    node: NodeFactory, redis: Redis
) -> None:
    (a, stage_a), (b, _), (c, _) = await node("a"), await node("b"), await node("c")
    for room in ("r1", "r2", "r3"):
        assert (await a.claim_room(room)).outcome is ClaimOutcome.GRANTED
        stage_a.rooms[room] = object()
    sessions = [stage_a.enter("r1", f"p{i}") for i in range(5)]
    await eventually(lambda: sessions_written(redis, "a", 5), 2)
    assert await redis.hget(f"ghostless:session:{sessions[0].id}", "room") == "r1"
    killed = time.monotonic()
    die(a)

    async def a_gone() -> bool:
        left = {key for key in await keys(redis) if ":node:a" in key or ":session:" in key}
        rooms = [await redis.exists(f"ghostless:room:{room}") for room in ("r1", "r2", "r3")]
        return not left and not any(rooms) and "a" not in await redis.smembers("ghostless:nodes")

    await eventually(a_gone, 5)
    gone_after = time.monotonic() - killed
    # At most: the lease (1 s) plus one reaper interval, plus scheduling.
    assert gone_after <= TIMINGS.ttl + TIMINGS.reaper_interval + 0.5, gone_after
    assert b.reaped_nodes + c.reaped_nodes == 1  # one reaper did it, once
    assert await redis.get("ghostless:reaper") in ("b", "c")
    print(f"dead node's records gone after {gone_after:.2f} s")


async def sessions_written(redis: Redis, node_id: str, count: int) -> bool:
    return await redis.scard(f"ghostless:node:{node_id}:sessions") == count


async def test_sessions_are_in_the_directory_with_their_state_until_they_end(
    node: NodeFactory, redis: Redis
) -> None:
    _, stage = await node("a")
    alice = stage.enter("call", "alice")
    await eventually(lambda: sessions_written(redis, "a", 1), 2)
    assert await redis.hgetall(f"ghostless:session:{alice.id}") == {
        "node": "a",
        "room": "call",
        "peer": "alice",
        "user": "alice",
        "state": "connecting",
        "name": "",
    }

    stage.leave(alice)
    await eventually(lambda: sessions_written(redis, "a", 0), 2)
    assert not await redis.exists(f"ghostless:session:{alice.id}")


async def test_a_clean_close_leaves_no_record_of_the_node(node: NodeFactory, redis: Redis) -> None:
    a, stage = await node("a")
    await a.claim_room("call")
    stage.enter("call", "alice")
    await eventually(lambda: sessions_written(redis, "a", 1), 2)
    await node("b")

    await a.close()

    assert {key for key in await keys(redis) if ":node:a" in key or ":session:" in key} == set()
    assert not await redis.exists("ghostless:room:call")
    assert await redis.smembers("ghostless:nodes") == {"b"}


async def test_while_redis_is_away_new_rooms_are_refused_and_it_reconciles_when_back(
    node: NodeFactory, redis_process: Cluster, redis: Redis
) -> None:
    a, stage = await node("a")
    assert (await a.claim_room("kept")).outcome is ClaimOutcome.GRANTED
    stage.rooms["kept"] = object()
    alice = stage.enter("kept", "alice")
    await eventually(lambda: sessions_written(redis, "a", 1), 2)

    redis_process.stop_redis()  # killed: it comes back empty
    await eventually(lambda: _async(not a.up), 3)
    assert (await a.claim_room("new")).outcome is ClaimOutcome.UNAVAILABLE
    assert a.status()["up"] is False and a.errors > 0
    bob = stage.enter("kept", "bob")  # the rooms it holds keep serving
    await asyncio.sleep(TIMINGS.ttl)  # its lease runs out meanwhile

    redis_process.start_redis()
    await redis.connection_pool.disconnect()  # the test's own client: connect anew
    await eventually(lambda: _async(a.up and not a.schedule.reconcile_needed), 5)
    await eventually(lambda: sessions_written(redis, "a", 2), 2)
    assert (await redis.hgetall("ghostless:room:kept"))["node"] == "a"
    assert await redis.smembers("ghostless:node:a:sessions") == {alice.id, bob.id}
    assert (await a.claim_room("new")).outcome is ClaimOutcome.GRANTED
    assert stage.lost == []


async def _async(value: bool) -> bool:
    return value


async def test_a_room_taken_while_the_node_was_away_is_dropped_there(
    node: NodeFactory, redis: Redis
) -> None:
    (a, stage_a), (b, _) = await node("a"), await node("b")
    await a.claim_room("call")
    stage_a.rooms["call"] = object()
    stage_a.enter("call", "alice")
    await eventually(lambda: sessions_written(redis, "a", 1), 2)
    die(a)  # a stall, a partition: its lease expires and it is reaped
    await eventually(lambda: redis_has_no(redis, "ghostless:node:a"), 3)
    assert (await b.claim_room("call")).outcome is ClaimOutcome.GRANTED

    assert a._keeper is not None
    await a._keeper.stop()
    a._start_keeper()  # a comes back
    a._task = asyncio.ensure_future(a._run())
    await eventually(lambda: _async(stage_a.lost == ["call"]), 3)
    assert (await redis.hgetall("ghostless:room:call"))["node"] == "b"


def watch_alive_key(url: str, node_id: str, seconds: float) -> list[float]:
    """From a thread: when, within ``seconds``, the node's liveness key was
    missing in Redis (while the test blocks the loop)."""
    client = SyncRedis.from_url(url)
    missing: list[float] = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            if not client.exists(f"ghostless:node:{node_id}:alive"):
                missing.append(elapsed)
            time.sleep(0.02)
    finally:
        client.close()
    return missing


async def test_a_loop_busy_for_longer_than_the_lease_keeps_it_and_its_rooms(
    node: NodeFactory, redis: Redis, redis_process: Cluster
) -> None:
    (a, stage_a), (b, _) = await node("a"), await node("b")
    await a.claim_room("call")
    stage_a.rooms["call"] = object()
    watching = asyncio.ensure_future(
        asyncio.to_thread(watch_alive_key, redis_process.redis_url, "a", 3.0)
    )
    await asyncio.sleep(0.1)

    time.sleep(2.5)  # the loop busy 2.5 s (thousands of sockets closing): 2.5 lease ttls

    assert await watching == []  # renewed throughout, from the keeper's thread
    assert (await b.claim_room("call")).outcome is ClaimOutcome.ELSEWHERE
    await asyncio.sleep(0.5)
    assert a.up and stage_a.lost == [] and not a.schedule.reconcile_needed
    assert a._keeper is not None and a._keeper.renewals >= 5


async def test_a_wedged_loop_stops_the_renewals_and_the_lease_expires(
    node: NodeFactory, redis: Redis, redis_process: Cluster
) -> None:
    timings = LeaseTimings(
        ttl=1.0, renew_interval=0.25, reaper_interval=0.25, timeout=0.2, stall_limit=1.0
    )
    a, stage_a = await node("a", timings)
    await a.claim_room("call")
    stage_a.rooms["call"] = object()
    watching = asyncio.ensure_future(
        asyncio.to_thread(watch_alive_key, redis_process.redis_url, "a", 4.0)
    )
    await asyncio.sleep(0.1)

    time.sleep(3.5)  # wedged: past the stall limit, then past the lease

    missing = await watching
    # The last renewal at most stall_limit after the loop's last sign of life,
    # then the ttl: gone by 1.0 + 0.25 + 1.0 s (slack for a loaded machine).
    assert missing and missing[0] <= 3.0, missing
    # The loop back: the node registers anew and claims its room again.
    await eventually(lambda: _async(a.up and not a.schedule.reconcile_needed), 3)
    assert (await redis.hgetall("ghostless:room:call"))["node"] == "a"
    assert stage_a.lost == []


async def test_a_node_id_in_use_by_a_live_process_claims_nothing(node: NodeFactory) -> None:
    await node("a")
    twin, _ = await node("a")

    assert twin.conflict and not twin.up
    assert (await twin.claim_room("call")).outcome is ClaimOutcome.UNAVAILABLE


async def test_a_connection_redis_dropped_is_tried_again_at_once(
    node: NodeFactory, redis: Redis
) -> None:
    # Long timings: nothing of the directory's own loop touches Redis meanwhile.
    a, _ = await node("a", LeaseTimings(ttl=10.0, renew_interval=5.0, reaper_interval=5.0))
    assert (await a.claim_room("one")).outcome is ClaimOutcome.GRANTED
    # Redis drops every client's connection (a failover, a proxy), this test's aside.
    assert await redis.client_kill_filter(_type="normal") >= 1
    assert (await a.claim_room("two")).outcome is ClaimOutcome.GRANTED  # not refused
    assert a.errors == 0
