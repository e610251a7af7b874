"""What the cluster tests share: light protoo clients that join through a load
balancer (no media), and looks at the directory in Redis and at the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError

from signalling.bot import FINAL_CODES
from signalling.cluster import Cluster, Node, free_port, http_get
from signalling.protoo_client import ProtooClient


class LightClient:
    """A participant with no media: it connects through ``url``, joins, pings
    as a browser app does, and joins again (a fresh session, wherever the load
    balancer sends it) when told to, retrying refusals 4421/4504 and lost
    connections with backoff and full jitter as the client library does."""

    def __init__(self, url: str, room: str, peer: str) -> None:
        self.url = f"{url.rstrip('/')}/?roomId={room}&peerId={peer}"
        self.room = room
        self.peer = peer
        self.client: ProtooClient | None = None
        self.session_id: str | None = None
        self.attempts = 0
        self.refusals: list[int | None] = []
        """Close codes of refused or lost attempts (None: no connection)."""
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed.done()

    async def join(
        self, *, retry_for: float = 15.0, backoff: tuple[float, float] = (0.1, 1.0)
    ) -> str:
        """Connect and join as a fresh session; the new session id."""
        await self.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        failures = 0
        while True:
            self.attempts += 1
            try:
                client = self.client = await ProtooClient.connect(self.url, open_timeout=5)
                answer = await client.request(
                    "join", {"displayName": self.peer, "device": {"name": "light"}}, timeout=5
                )
            except Exception:
                code = None
                if self.client is not None:
                    with contextlib.suppress(TimeoutError):
                        code, _ = await asyncio.wait_for(asyncio.shield(self.client.closed), 1)
                    await self.close()
                self.refusals.append(code)
                if code in FINAL_CODES:
                    raise
                if loop.time() >= deadline:
                    raise AssertionError(
                        f"{self.peer} of {self.room}: not joined, {code}"
                    ) from None
            else:
                self.session_id = str(answer["sessionId"])
                self._heartbeat = asyncio.ensure_future(self._ping(client))
                return self.session_id
            failures += 1
            base, ceiling = backoff
            wait = random.uniform(0, min(ceiling, base * 2 ** (failures - 1)))
            await asyncio.sleep(min(wait, max(0.0, deadline - loop.time())))

    async def _ping(self, client: ProtooClient) -> None:
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(5)
                await client.request("ping", timeout=5)

    async def wait_closed(self, timeout: float) -> tuple[int | None, str]:
        assert self.client is not None
        return await asyncio.wait_for(asyncio.shield(self.client.closed), timeout)

    async def leave(self) -> None:
        """As a well-behaved app: beforeDisconnect, then close 1000."""
        if self.connected:
            assert self.client is not None
            with contextlib.suppress(Exception):
                await self.client.notify("beforeDisconnect", {"reason": "leave"})
        await self.close()

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
            if not client.closed.done():
                client.abort()
            await client._wait_reader()


def free_udp_ports(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports free on 127.0.0.1 now: (first, last)."""
    for _ in range(200):
        low = free_port(socket.SOCK_DGRAM)
        probes = []
        try:
            for port in range(low, low + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return low, low + size - 1
    raise AssertionError(f"no {size} free UDP ports in a row")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until ``check()`` holds (polled), or AssertionError after ``timeout``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- the directory in Redis -----------------------------------------------------------------


def directory_client(cluster: Cluster) -> Redis:
    """A client of the cluster's Redis, to look at what the directory wrote
    (it reconnects across a restart of redis-server)."""
    return Redis.from_url(
        cluster.redis_url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=0.5), 5),
        retry_on_error=[ConnectionError],
    )


async def holder(redis: Redis, room: str) -> str | None:
    node = await redis.hget(f"ghostless:room:{room}", "node")
    return None if node is None else str(node)


async def hash_of(redis: Redis, key: str) -> dict[str, str]:
    return {str(field): str(value) for field, value in (await redis.hgetall(key)).items()}


async def room_holders(redis: Redis) -> dict[str, dict[str, str]]:
    """Every room lease in the directory: room id -> node, incarnation, epoch."""
    found = {}
    async for key in redis.scan_iter("ghostless:room:*"):
        if lease := await hash_of(redis, key):  # not released since the scan
            found[key.split(":", 2)[2]] = lease
    return found


async def sessions(redis: Redis) -> dict[str, dict[str, str]]:
    """Every session in the directory, by id."""
    found = {}
    async for key in redis.scan_iter("ghostless:session:*"):
        if session := await hash_of(redis, key):  # not removed since the scan
            found[key.rsplit(":", 1)[1]] = session
    return found


async def records_of(redis: Redis, node: str) -> list[str]:
    """Whatever the directory still says about ``node``."""
    left = [key async for key in redis.scan_iter(f"ghostless:node:{node}*")]
    if node in await redis.smembers("ghostless:nodes"):
        left.append("ghostless:nodes member")
    async for key in redis.scan_iter("ghostless:room:*"):
        if await redis.hget(key, "node") == node:
            left.append(key)
    left += [f"session {sid}" for sid, s in (await sessions(redis)).items() if s["node"] == node]
    return left


async def incarnation_records(
    redis: Redis, node: str, incarnation: str, session_ids: set[str]
) -> list[str]:
    """What the directory still says about one run of ``node`` (a restarted node
    has another incarnation): its node records, its room leases, ``session_ids``."""
    left = []
    info = f"ghostless:node:{node}"
    if await redis.hget(info, "incarnation") == incarnation:
        left.append(info)
    if await redis.get(f"{info}:alive") == incarnation:
        left.append(f"{info}:alive")
    for room, lease in (await room_holders(redis)).items():
        if lease.get("node") == node and lease.get("incarnation") == incarnation:
            left.append(f"room {room}")
    for session_id in session_ids:
        if await redis.exists(f"ghostless:session:{session_id}"):
            left.append(f"session {session_id}")
        if await redis.sismember(f"{info}:sessions", session_id):
            left.append(f"{info}:sessions has {session_id}")
    return left


# -- the nodes --------------------------------------------------------------------------------


async def node_json(node: Node, path: str) -> Any:
    """A JSON answer of a node's metrics listener (``/debug/stats``, ``/rooms``)."""
    status, body = await asyncio.to_thread(
        http_get, f"http://127.0.0.1:{node.metrics_port}{path}", 2.0
    )
    assert status == 200, (node.name, path, status)
    return orjson.loads(body)


async def rooms_open(cluster: Cluster) -> dict[str, list[str]]:
    """Room id -> the live nodes that have it open now (their ``/rooms``)."""
    found: dict[str, list[str]] = {}
    for node in cluster.members:
        if not node.alive:
            continue
        try:
            answer = await node_json(node, "/rooms")
        except (OSError, AssertionError):
            continue  # starting or just killed
        for room in answer["rooms"]:
            found.setdefault(room["roomId"], []).append(node.name)
    return found


async def metric(node: Node, name: str) -> float:
    _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{node.metrics_port}/metrics")
    line = next(line for line in body.decode().splitlines() if line.startswith(name + " "))
    return float(line.split()[1])
