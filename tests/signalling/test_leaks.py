"""300 random joins, produces, consumes, leaves, kills and takeovers leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import random
from typing import Any

from signalling.protoo_client import ProtooClient
from signalling.server import Server

from ..media.resources import ProcessResources
from .conftest import ServerFactory, eventually, url

VIDEO = {
    "mid": "0",
    "codecs": [
        {
            "mimeType": "video/VP8",
            "clockRate": 90000,
            "payloadType": 97,
            "parameters": {},
            "rtcpFeedback": [{"type": "nack", "parameter": ""}],
        },
    ],
    "headerExtensions": [],
    "encodings": [{"ssrc": 1234}],
    "rtcp": {"cname": "leak"},
}


class Participant:
    def __init__(self, server: Server, room: str, peer: str, user: str) -> None:
        self.server, self.room, self.peer, self.user = server, room, peer, user
        self.client: ProtooClient | None = None
        self.resume_token: str | None = None

    async def join(self, *, resume: bool = False) -> None:
        params: dict[str, str] = {"userId": self.user}
        if resume and self.resume_token:
            params["resumeToken"] = self.resume_token
        self.client = await ProtooClient.connect(url(self.server, self.room, self.peer, **params))
        self.client.on_request = self.on_request
        if resume:
            return
        caps = await self.client.request("getRouterRtpCapabilities")
        consuming = await self.client.request(
            "createWebRtcTransport",
            {"consuming": True, "sctpCapabilities": {"numStreams": {"OS": 16, "MIS": 16}}},
        )
        assert consuming["id"]
        joined = await self.client.request(
            "join",
            {"rtpCapabilities": caps, "sctpCapabilities": {"numStreams": {"OS": 16, "MIS": 16}}},
        )
        self.resume_token = joined["resumeToken"]

    async def on_request(self, method: str, data: dict[str, Any]) -> Any:
        return {}

    async def produce(self) -> None:
        assert self.client is not None
        sending = await self.client.request(
            "createWebRtcTransport",
            {"producing": True, "sctpCapabilities": {"numStreams": {"OS": 16, "MIS": 16}}},
        )
        params = dict(VIDEO, encodings=[{"ssrc": random.randint(1, 2**31)}])
        await self.client.request(
            "produce", {"transportId": sending["id"], "kind": "video", "rtpParameters": params}
        )
        await self.client.request(
            "produceData",
            {
                "transportId": sending["id"],
                "sctpStreamParameters": {"streamId": 1},
                "label": "chat",
            },
        )

    async def finish(self, how: str) -> None:
        client = self.client
        assert client is not None
        if how == "leave":
            await client.notify("beforeDisconnect")
        elif how == "close":
            await client.close(1000)
        elif how == "kill":
            client.abort()
        elif how == "takeover":
            other = Participant(self.server, self.room, self.peer + "-tab2", self.user)
            await other.join()
            await asyncio.sleep(0.01)
            await other.finish(random.choice(["leave", "kill"]))
        elif how == "resume":
            client.abort()
            await asyncio.sleep(0.02)
            await self.join(resume=True)
            await self.finish("leave")
            return
        await client._wait_reader() if how == "kill" else await asyncio.wait_for(client.closed, 5)


async def one_cycle(server: Server, index: int, rng: random.Random) -> None:
    room = f"room{rng.randrange(4)}"
    people = [
        Participant(server, room, f"p{index}-{i}", f"u{index}-{i}")
        for i in range(rng.randint(1, 3))
    ]
    for person in people:
        await person.join()
        if rng.random() < 0.6:
            await person.produce()
    await asyncio.sleep(rng.random() * 0.05)
    await asyncio.gather(
        *(p.finish(rng.choice(["leave", "close", "kill", "takeover", "resume"])) for p in people)
    )


async def test_300_random_cycles_end_with_every_gauge_at_zero(make_server: ServerFactory) -> None:
    server = await make_server(grace_period=0.2, room_close_delay=0.1)
    rng = random.Random(42)
    await one_cycle(server, -1, rng)  # warm up
    await eventually(lambda: not server.rooms and not server.registry.by_id, timeout=10)
    gc.collect()
    await asyncio.sleep(0.2)
    before = ProcessResources.now()

    for batch in range(30):
        await asyncio.gather(*(one_cycle(server, batch * 10 + i, rng) for i in range(10)))

    await eventually(lambda: not server.registry.by_id and not server.rooms, timeout=15)
    await eventually(lambda: not server.connections, timeout=5)
    await asyncio.sleep(0.3)
    stats = server.debug_stats()
    assert stats["registry"] == {
        "sessions": 0,
        "identities": 0,
        "peers": 0,
        "leave_tokens": 0,
        "heard_index": 0,
        "seen_index": 0,
        "interaction_index": 0,
        "joining_index": 0,
        "grace_heap": stats["registry"]["grace_heap"],
    }
    server.registry.tick(server.loop.time() + 60)  # lazily dropped grace entries go too
    assert server.registry.index_sizes()["grace_heap"] == 0
    assert stats["media"] == dict.fromkeys(
        ("routers", "transports", "producers", "consumers", "data_producers", "data_consumers"), 0
    )
    assert stats["connections"] == 0 and stats["rooms"] == 0
    gauges = {kind: child._value.get() for kind, child in server.metrics._media.items()}
    assert gauges == dict.fromkeys(gauges, 0.0)
    ended = {r: c._value.get() for r, c in server.metrics._ended.items()}
    assert sum(ended.values()) >= 300
    gc.collect()
    after = ProcessResources.now()
    assert after.file_descriptors == before.file_descriptors
    assert after.udp_sockets == before.udp_sockets
    assert after.tasks == before.tasks


def live_server_objects() -> dict[str, int]:
    """Server-side session and media objects still alive (without collecting)."""
    import media
    from signalling.connection import Connection
    from signalling.liveness import Session
    from signalling.rooms import Peer, Room

    kinds = (
        Session,
        Peer,
        Room,
        Connection,
        media.Router,
        media.WebRtcTransport,
        media.Producer,
        media.Consumer,
        media.DataProducer,
        media.DataConsumer,
    )
    counts = {kind.__name__: 0 for kind in kinds}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, kinds):
                counts[type(obj).__name__] += 1
        except ReferenceError:
            continue
    return counts


async def test_teardown_frees_everything_by_reference_counting_alone(
    make_server: ServerFactory,
) -> None:
    """No reference cycle survives a teardown, so gc.freeze() cannot turn one into a leak."""
    server = await make_server(grace_period=0.2, room_close_delay=0.1)
    rng = random.Random(7)
    await one_cycle(server, -1, rng)
    await eventually(lambda: not server.rooms and not server.registry.by_id, timeout=10)
    gc.collect()
    before = live_server_objects()
    gc.disable()
    try:
        for index in range(20):
            await one_cycle(server, index, rng)
        await eventually(lambda: not server.registry.by_id and not server.rooms, timeout=15)
        await asyncio.sleep(0.3)
        after = live_server_objects()
        assert all(after[kind] <= before[kind] for kind in after), (before, after)
    finally:
        gc.enable()
