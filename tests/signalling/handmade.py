"""Media set up by hand over plain protoo clients: no ICE, no DTLS, no codecs.

A producer needs only ``produce`` with written ``rtpParameters``, and a
consumer only a joined peer with ``rtpCapabilities`` and a consuming
transport that answers ``newConsumer``: the server creates real media objects
for both, whose events the tests then emit (or whose packets they feed) by
hand.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from media import Consumer, Producer, WebRtcTransport
from media.rtp_parameters import AUDIO_LEVEL_URI
from signalling.protoo_client import ProtooClient
from signalling.rooms import Peer
from signalling.server import Server

SCTP_CAPABILITIES = {"numStreams": {"OS": 1024, "MIS": 1024}}
AUDIO_LEVEL_ID = 1  # the client's id of ssrc-audio-level
_ssrcs = itertools.count(5000)


def opus(ssrc: int | None = None) -> dict[str, Any]:
    return {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
        ],
        "encodings": [{"ssrc": ssrc if ssrc is not None else next(_ssrcs)}],
        "headerExtensions": [{"uri": AUDIO_LEVEL_URI, "id": AUDIO_LEVEL_ID}],
    }


def vp8(ssrc: int | None = None) -> dict[str, Any]:
    return {
        "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
        "encodings": [{"ssrc": ssrc if ssrc is not None else next(_ssrcs)}],
    }


class HandmadePeer:
    """A protoo client whose media is made by hand, in either dialect.

    It answers the server's ``newConsumer`` / ``newDataConsumer`` with success
    and keeps what they said.  ``ids`` reads the dialect's id names.
    """

    def __init__(self, client: ProtooClient, peer_id: str, dialect: str) -> None:
        self.client = client
        self.peer_id = peer_id
        self.dialect = dialect
        self.new_consumers: list[dict[str, Any]] = []
        self.new_data_consumers: list[dict[str, Any]] = []
        self.consumed = asyncio.Event()
        self.joined: dict[str, Any] = {}
        self.transports: dict[str, str] = {}
        client.on_request = self._answer

    async def _answer(self, method: str, data: dict[str, Any]) -> dict[str, Any]:
        if method == "newConsumer":
            self.new_consumers.append(data)
        elif method == "newDataConsumer":
            self.new_data_consumers.append(data)
        self.consumed.set()
        return {}

    @property
    def is_2025(self) -> bool:
        return self.dialect == "2025"

    async def transport(self, direction: str, *, sctp: bool = False) -> str:
        """Create a transport; its id (named per dialect in the answer)."""
        data: dict[str, Any] = (
            {"forceTcp": False, "appData": {"direction": direction}}
            if self.is_2025
            else {"producing": direction == "producer", "consuming": direction == "consumer"}
        )
        if sctp:
            data["sctpCapabilities"] = SCTP_CAPABILITIES
        answer = await self.client.request("createWebRtcTransport", data)
        transport_id = str(answer["transportId" if self.is_2025 else "id"])
        self.transports[direction] = transport_id
        return transport_id

    async def join(self, *, consume: bool = True, sctp: bool = False) -> dict[str, Any]:
        caps = await self.client.request("getRouterRtpCapabilities")
        if self.is_2025:
            caps = caps["routerRtpCapabilities"]
        if consume:
            await self.transport("consumer", sctp=sctp)
        data: dict[str, Any] = {
            "displayName": self.peer_id,
            "device": {"flag": "python", "name": "handmade"},
        }
        if consume:
            data["rtpCapabilities"] = caps
        if sctp:
            data["sctpCapabilities"] = SCTP_CAPABILITIES
        self.joined = await self.client.request("join", data)
        return self.joined

    async def produce(self, kind: str = "audio", **app_data: Any) -> str:
        transport_id = self.transports.get("producer") or await self.transport("producer")
        answer = await self.client.request(
            "produce",
            {
                "transportId": transport_id,
                "kind": kind,
                "rtpParameters": opus() if kind == "audio" else vp8(),
                "appData": app_data,
            },
        )
        return str(answer["producerId" if self.is_2025 else "id"])

    async def produce_data(self, label: str = "chat", stream_id: int = 0) -> str:
        transport_id = self.transports.get("producer") or await self.transport(
            "producer", sctp=True
        )
        answer = await self.client.request(
            "produceData",
            {
                "transportId": transport_id,
                "sctpStreamParameters": {"streamId": stream_id, "ordered": True},
                "label": label,
                "protocol": "",
                "appData": {"channel": label},
            },
        )
        return str(answer["dataProducerId" if self.is_2025 else "id"])

    async def call(self, method: str, data: dict[str, Any]) -> Any:
        """A call the 2025 dialect makes as a notification, the 2024 one as a request."""
        if self.is_2025:
            await self.client.notify(method, data)
            return None
        return await self.client.request(method, data)

    async def wait_consumers(self, count: int, timeout: float = 5.0) -> None:
        async def enough() -> None:
            while len(self.new_consumers) + len(self.new_data_consumers) < count:
                self.consumed.clear()
                await self.consumed.wait()

        await asyncio.wait_for(enough(), timeout)

    def consumer_id(self, index: int = -1) -> str:
        return str(self.new_consumers[index]["consumerId" if self.is_2025 else "id"])


PeerFactory = Callable[..., Awaitable[HandmadePeer]]

DIALECT_PARAMS = {"2024": {}, "2025": {"usePipeTransports": "false"}}


def server_peer(server: Server, peer_id: str, room: str = "room") -> Peer:
    return server.rooms[room].peers[peer_id]


def server_producer(server: Server, peer_id: str, producer_id: str) -> Producer:
    return server_peer(server, peer_id).producers[producer_id]


def server_consumer(server: Server, peer_id: str, consumer_id: str) -> Consumer:
    return server_peer(server, peer_id).consumers[consumer_id]


def server_transport(server: Server, peer_id: str, transport_id: str) -> WebRtcTransport:
    return server_peer(server, peer_id).transports[transport_id]


async def until_resumed(consumer: Consumer, timeout: float = 5.0) -> None:
    """The server resumes a consumer once its client said it has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while consumer.paused:
        assert loop.time() < deadline, "consumer never resumed"
        await asyncio.sleep(0.01)
