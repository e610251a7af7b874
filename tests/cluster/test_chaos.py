"""Failures over and over: 20 random SIGKILLs of nodes, and Redis killed and
restarted empty under load (docs/scaling.md).

Light protoo clients (no media) join through HAProxy and behave as the client
library does: on a lost node they join again, a fresh session wherever the
load balancer sends them, retrying 4421/4504 with backoff.  Default lease
timings (3 s lease renewed every 1 s, reaper every 1 s); HAProxy checks
/readyz every 0.5 s.  The seed of the random kills is printed
(GHOSTLESS_CHAOS_SEED sets it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time

import orjson
import pytest
from redis.asyncio import Redis

from signalling.cluster import Cluster, http_get
from signalling.protocol import CloseCode
from signalling.protoo_client import ProtooClient
from tests.cluster.conftest import ClusterFactory
from tests.cluster.helpers import (
    LightClient,
    directory_client,
    eventually,
    hash_of,
    incarnation_records,
    metric,
    node_json,
    room_holders,
    rooms_open,
    sessions,
)


class TwoHolders:
    """Polls every live node's rooms (``/rooms`` on its metrics port) in the
    background: a room open on two live nodes at once is a violation."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.polls = 0
        self.violations: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TwoHolders:
        self._task = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            for room, nodes in (await rooms_open(self.cluster)).items():
                if len(nodes) > 1:
                    self.violations.append(f"{room} open on {nodes}")
            self.polls += 1
            await asyncio.sleep(0.1)


async def new_session_on(redis: Redis, client: LightClient, cluster: Cluster) -> str:
    """The live node ``client``'s session is on, per the directory: its room's
    holder, a node that is running, with the holder's current incarnation."""

    async def written() -> bool:
        return bool(await redis.exists(f"ghostless:session:{client.session_id}"))

    await eventually(written, 3)
    session = await hash_of(redis, f"ghostless:session:{client.session_id}")
    lease = await hash_of(redis, f"ghostless:room:{client.room}")
    node = session["node"]
    assert lease["node"] == node, (client.room, session, lease)
    assert cluster.node(node).alive
    assert lease["incarnation"] == await redis.get(f"ghostless:node:{node}:alive")
    return node


async def kill_and_restart(
    cluster: Cluster, redis: Redis, clients: list[LightClient], victim: str
) -> tuple[list[LightClient], float, float, float]:
    """SIGKILL ``victim`` and start it again at once (as a supervisor would):
    its clients, those the kill hit, join again through HAProxy.  The seconds
    until the directory has no record left of the killed run, until the
    restarted node is ready, and until the last hit client is in a new session."""
    incarnation = str(await redis.get(f"ghostless:node:{victim}:alive"))
    holders = {room: lease["node"] for room, lease in (await room_holders(redis)).items()}
    hit = [client for client in clients if holders[client.room] == victim]
    old = {client.session_id for client in hit if client.session_id}

    killed = time.monotonic()
    await asyncio.to_thread(cluster.kill_node, victim, signal.SIGKILL)
    await asyncio.to_thread(cluster.start_node, victim)

    async def rejoin(client: LightClient) -> float:
        await client.wait_closed(5)
        await client.join(retry_for=15)
        assert client.session_id not in old  # a fresh session
        return time.monotonic() - killed

    async def forgotten() -> bool:
        return not await incarnation_records(redis, victim, incarnation, old)

    async def restarted() -> float:
        await asyncio.to_thread(cluster.wait_node_ready, victim, 20)
        return time.monotonic() - killed

    gone_after, ready_after, *rejoined = await asyncio.gather(
        eventually(forgotten, 10), restarted(), *(rejoin(client) for client in hit)
    )
    return hit, gone_after, ready_after, max(rejoined)


@pytest.mark.slow
async def test_twenty_random_sigkills(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    seed = int(os.environ.get("GHOSTLESS_CHAOS_SEED") or random.randrange(2**32))
    print(f"\nrandom kills: seed {seed} (GHOSTLESS_CHAOS_SEED={seed} replays the choices)")
    rng = random.Random(seed)
    cluster = make_cluster()
    redis = directory_client(cluster)
    started = time.monotonic()

    async def room_of(name: str, peers: int) -> None:
        members = [LightClient(cluster.url, name, f"p{index}") for index in range(peers)]
        clients.extend(members)
        await asyncio.gather(*(member.join(retry_for=10) for member in members))

    try:
        # Three rooms, four clients: "a" has two, "b" and "c" one each.
        for name, peers in (("a-0", 2), ("b-0", 1), ("c-0", 1)):
            await room_of(name, peers)
        rounds: list[tuple[float, float, float]] = []
        async with TwoHolders(cluster) as watch:
            for number in range(1, 21):
                holders = {r: h["node"] for r, h in (await room_holders(redis)).items()}
                ours = sorted({client.room for client in clients})
                assert set(ours) <= set(holders), (ours, holders)
                victim = rng.choice(sorted({holders[room] for room in ours}))
                spared = {c: c.session_id for c in clients if holders[c.room] != victim}

                round_started = time.monotonic()
                hit, gone_after, ready_after, rejoined_after = await kill_and_restart(
                    cluster, redis, clients, victim
                )
                for client in hit:
                    await new_session_on(redis, client, cluster)
                for client, session_id in spared.items():  # nobody else noticed
                    assert client.connected and client.session_id == session_id
                    assert await new_session_on(redis, client, cluster) != victim
                assert gone_after <= 6.0, f"round {number}: records left {gone_after} s"
                assert rejoined_after <= 10.0, f"round {number}: rejoined {rejoined_after} s"
                assert not watch.violations, watch.violations
                rounds.append((gone_after, rejoined_after, ready_after))
                print(
                    f"round {number:2}: killed {victim} holding {sorted({c.room for c in hit})};"
                    f" records gone {gone_after:.2f} s, {len(hit)} clients rejoined"
                    f" {rejoined_after:.2f} s, {victim} restarted and ready {ready_after:.2f} s"
                    f" (round {time.monotonic() - round_started:.2f} s)"
                )

                # One room ends and its clients open a new one (wherever its hash
                # falls: a restarted node gets rooms again).
                ending = rng.choice(ours)
                leaving = [client for client in clients if client.room == ending]
                await asyncio.gather(*(client.leave() for client in leaving))
                for client in leaving:
                    clients.remove(client)
                await room_of(f"{ending[0]}-{number}", len(leaving))

        elapsed = time.monotonic() - started
        print(
            f"20 kills in {elapsed:.1f} s ({elapsed / 20:.2f} s a round); records gone"
            f" {min(r[0] for r in rounds):.2f}-{max(r[0] for r in rounds):.2f} s, clients"
            f" rejoined {min(r[1] for r in rounds):.2f}-{max(r[1] for r in rounds):.2f} s,"
            f" restarted node ready {min(r[2] for r in rounds):.2f}-"
            f"{max(r[2] for r in rounds):.2f} s; {watch.polls} polls of every node's rooms"
        )
    finally:
        await redis.aclose()


async def readyz(cluster: Cluster, name: str) -> tuple[int, bool]:
    """A node's /readyz status and whether its directory is up."""
    node = cluster.node(name)
    status, body = await asyncio.to_thread(http_get, f"http://{node.address}/readyz", 2.0)
    return status, bool(orjson.loads(body)["directory"]["up"])


async def refused(url: str, room: str, peer: str) -> int | None:
    """The close code of one attempt to join ``room`` (None: it was admitted)."""
    client = await ProtooClient.connect(f"{url}/?roomId={room}&peerId={peer}")
    try:
        await client.request("join", {"displayName": peer, "device": {"name": "light"}}, 5)
    except Exception:
        code, _ = await asyncio.wait_for(client.closed, 5)
        return code
    await client.close()
    return None


@pytest.mark.slow
async def test_redis_restarted_empty_under_load(
    make_cluster: ClusterFactory, clients: list[LightClient]
) -> None:
    cluster = make_cluster()
    redis = directory_client(cluster)
    rng = random.Random(7)
    rooms = [f"load-{index}" for index in range(8)]
    serial = 0
    joins, leaves = 0, 0
    refusals: list[tuple[str, list[int | None]]] = []

    def new_client(room: str) -> LightClient:
        nonlocal serial
        serial += 1
        client = LightClient(cluster.url, room, f"p{serial}")
        clients.append(client)
        return client

    async def churn(stop: asyncio.Event) -> None:
        """Every 50 ms one client leaves or one joins (30-50 sessions, 2+ a room)."""
        nonlocal joins, leaves
        while not stop.is_set():
            room = rng.choice(rooms)
            present = [client for client in clients if client.room == room]
            if len(clients) < 30 or (len(clients) < 50 and rng.random() < 0.5):
                client = new_client(room)
                await client.join(retry_for=10)
                if client.refusals:
                    refusals.append((room, client.refusals))
                joins += 1
            elif len(present) > 2:
                leaving = rng.choice(present)
                clients.remove(leaving)
                await leaving.leave()
                leaves += 1
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(new_client(room).join(retry_for=10) for room in rooms * 4))
        holders = {room: lease["node"] for room, lease in (await room_holders(redis)).items()}
        assert set(holders) == set(rooms)
        print(f"\nredis restart: {len(clients)} sessions in {len(rooms)} rooms on", end=" ")
        print(f"{len(set(holders.values()))} nodes: {holders}")
        assert len(set(holders.values())) >= 2

        stop = asyncio.Event()
        churning = asyncio.ensure_future(churn(stop))
        await asyncio.sleep(2)
        before_outage = {client: client.session_id for client in clients}

        # Redis dies.
        churned_before = joins, leaves
        killed = time.monotonic()
        await asyncio.to_thread(cluster.stop_redis)

        async def all_say_down() -> bool:
            for node in cluster.members:
                status, up = await readyz(cluster, node.name)
                assert status == 200  # still ready: HAProxy keeps routing its rooms here
                if up or await metric(node, "ghostless_directory_up") != 0:
                    return False
            return True

        down_after = await eventually(all_say_down, 5)
        assert await refused(cluster.url, "brand-new", "eve") == CloseCode.DIRECTORY_UNAVAILABLE
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - killed)))  # past the lease
        assert not churning.done()
        churned_during = joins - churned_before[0], leaves - churned_before[1]
        assert min(churned_during) > 0  # people came and went while Redis was away

        # Redis comes back, empty, on the same port.
        back = time.monotonic()
        await asyncio.to_thread(cluster.start_redis)

        async def all_say_up() -> bool:
            for node in cluster.members:
                _, up = await readyz(cluster, node.name)
                if not up or await metric(node, "ghostless_directory_up") != 1:
                    return False
            return True

        up_after = await eventually(all_say_up, 5)
        await asyncio.sleep(1.5)  # churning on across the reconcile
        stop.set()
        await churning
        assert refusals == [], refusals  # every room that lives takes newcomers
        for client, session_id in before_outage.items():  # the nodes kept their rooms
            if client in clients:
                assert client.connected and client.session_id == session_id

        async def consistent() -> bool:
            return not await directory_differences(cluster, redis, clients)

        try:
            consistent_after = await eventually(consistent, 5)
        except AssertionError:
            raise AssertionError(await directory_differences(cluster, redis, clients)) from None
        assert await refused(cluster.url, "brand-new", "eve") is None  # new rooms again
        print(
            f"redis restart: every node said so after {down_after:.2f} s (readyz 200,"
            f" directory down, ghostless_directory_up 0); {churned_during[0]} joins and"
            f" {churned_during[1]} leaves while Redis was away ({joins} and {leaves} in all),"
            f" up again {up_after:.2f} s after the restart,"
            f" directory consistent with the nodes {consistent_after:.2f} s after the churn"
            f" stopped ({len(clients)} sessions), {time.monotonic() - back:.2f} s after the"
            " restart"
        )

        # Everyone leaves: nothing is left anywhere.
        await asyncio.gather(*(client.leave() for client in clients))
        clients.clear()

        async def empty() -> bool:
            for node in cluster.members:
                stats = await node_json(node, "/debug/stats")
                if any(stats["registry"].values()) or stats["rooms"] or stats["connections"]:
                    return False
            return not [key async for key in redis.scan_iter("ghostless:*") if not _kept(key)]

        empty_after = await eventually(empty, 10)
        print(f"redis restart: all left, registries and directory empty after {empty_after:.2f} s")
    finally:
        await redis.aclose()


def _kept(key: str) -> bool:
    """Keys a cluster with no session keeps: the nodes' records, the epoch, the reaper."""
    parts = key.split(":")
    if key in ("ghostless:epoch", "ghostless:reaper", "ghostless:nodes"):
        return True
    return parts[1] == "node" and (len(parts) == 3 or parts[3] == "alive")


async def directory_differences(
    cluster: Cluster, redis: Redis, clients: list[LightClient]
) -> list[str]:
    """What the directory says that the nodes and the clients do not (empty: agreed)."""
    problems = []
    in_redis = await sessions(redis)
    expected = {(client.room, client.peer) for client in clients}
    listed = {(s["room"], s["peer"]) for s in in_redis.values()}
    if listed != expected:
        problems.append(f"sessions: extra {listed - expected}, missing {expected - listed}")
    if {client.session_id for client in clients} != set(in_redis):
        problems.append("session ids differ")
    holders = await room_holders(redis)
    open_rooms = await rooms_open(cluster)
    for room, nodes in open_rooms.items():
        if [holders.get(room, {}).get("node")] != nodes:
            problems.append(f"room {room} open on {nodes}, lease {holders.get(room)}")
    for room in set(holders) - set(open_rooms):
        problems.append(f"lease of room {room} that no node has open: {holders[room]}")
    for session in in_redis.values():
        if session["node"] != holders.get(session["room"], {}).get("node"):
            problems.append(f"session {session} not on its room's node")
        if session["state"] != "joined":
            problems.append(f"session {session} not joined")
    for node in cluster.members:
        stats = await node_json(node, "/debug/stats")
        key = f"ghostless:node:{node.name}"
        counts = {
            "node's sessions": stats["registry"]["sessions"],
            "sessions in redis": sum(s["node"] == node.name for s in in_redis.values()),
            "session index": await redis.scard(f"{key}:sessions"),
            "node's rooms": stats["rooms"],
            "leases": sum(lease["node"] == node.name for lease in holders.values()),
            "room index": await redis.scard(f"{key}:rooms"),
        }
        info = await hash_of(redis, key)
        sessions_counted = {counts["node's sessions"], counts["sessions in redis"]}
        sessions_counted |= {counts["session index"], int(info.get("sessions", -1))}
        rooms_counted = {counts["node's rooms"], counts["leases"], counts["room index"]}
        rooms_counted.add(int(info.get("rooms", -1)))
        if len(sessions_counted) > 1 or len(rooms_counted) > 1:
            problems.append(f"{node.name}: {counts}, node record {info}")
        if info.get("incarnation") != await redis.get(f"{key}:alive"):
            problems.append(f"{node.name}: not registered: {info}")
    return problems
