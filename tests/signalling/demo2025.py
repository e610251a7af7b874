"""A pymediasoup participant that speaks the 2025 mediasoup-demo dialect.

Every message is written from ``server/src/signaling/protooMessages.ts`` and
in the order the 2025 app's ``RoomClient._joinRoom`` sends them: the URL the
app's ``getProtooUrl`` builds (``usePipeTransports`` always there),
``getRtcStatsUrl``, ``{routerRtpCapabilities}``, transports asked for by
``appData.direction`` and answered by ``transportId``, ``join``; then
``produce`` answered by ``{producerId}``, ``produceData`` by
``{dataProducerId}``, and the server's ``newConsumer`` / ``newDataConsumer``
read by ``consumerId`` / ``dataConsumerId``.  Pause, resume and close are
notifications, as the app sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiortc.mediastreams import MediaStreamTrack
from pymediasoup import AiortcHandler, Device
from pymediasoup.producer import Producer as ClientProducer
from pymediasoup.rtp_parameters import RtpCapabilities
from pymediasoup.sctp_parameters import SctpStreamParameters
from pymediasoup.transport import Transport

from signalling.protoo_client import ProtooClient


def _dump(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


class Demo2025:
    """One participant: send and recv transports, consumers counted by decoded frames."""

    def __init__(self, base_url: str, room_id: str, peer_id: str) -> None:
        self.url = f"{base_url}/?roomId={room_id}&peerId={peer_id}&usePipeTransports=false"
        self.peer_id = peer_id
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.client: ProtooClient | None = None
        self.version: str | None = None
        self.send_transport: Transport | None = None
        self.recv_transport: Transport | None = None
        self.peers: list[dict[str, Any]] = []
        self.offers: list[dict[str, Any]] = []
        self.data_offers: list[dict[str, Any]] = []
        self.consumers: dict[str, Any] = {}
        self.frames: dict[str, int] = {}
        self.messages: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def join(self) -> list[dict[str, Any]]:
        client = self.client = await ProtooClient.connect(self.url)
        client.on_request = self._on_request
        _, greeting = await client.next_notification("mediasoupVersion")
        self.version = greeting["version"]
        await client.request("getRtcStatsUrl")
        answer = await client.request("getRouterRtpCapabilities")
        await self.device.load(RtpCapabilities.model_validate(answer["routerRtpCapabilities"]))
        sctp = self.device.sctpCapabilities.model_dump()
        self.send_transport = await self._transport("producer", sctp)
        self.recv_transport = await self._transport("consumer", sctp)
        joined = await client.request(
            "join",
            {
                "displayName": self.peer_id,
                "device": {"flag": "aiortc", "name": "pymediasoup", "version": "1.5"},
                "rtpCapabilities": self.device.rtpCapabilities.model_dump(),
                "sctpCapabilities": sctp,
            },
        )
        self.peers = joined["peers"]
        return self.peers

    async def _transport(self, direction: str, sctp: dict[str, Any]) -> Transport:
        assert self.client is not None
        client = self.client
        info = await client.request(
            "createWebRtcTransport",
            {"forceTcp": False, "sctpCapabilities": sctp, "appData": {"direction": direction}},
        )
        options = {
            "id": info["transportId"],
            "iceParameters": info["iceParameters"],
            "iceCandidates": info["iceCandidates"],
            "dtlsParameters": {**info["dtlsParameters"], "role": "auto"},
            "sctpParameters": info["sctpParameters"],
            "iceServers": [],
        }
        transport = (
            self.device.createSendTransport(**options)
            if direction == "producer"
            else self.device.createRecvTransport(**options)
        )

        @transport.on("connect")  # type: ignore[untyped-decorator]
        async def on_connect(dtlsParameters: Any) -> None:
            await client.request(
                "connectWebRtcTransport",
                {"transportId": transport.id, "dtlsParameters": _dump(dtlsParameters)},
            )

        @transport.on("produce")  # type: ignore[untyped-decorator]
        async def on_produce(kind: str, rtpParameters: Any, appData: Any) -> str:
            answer = await client.request(
                "produce",
                {
                    "transportId": transport.id,
                    "kind": kind,
                    "rtpParameters": _dump(rtpParameters),
                    "appData": appData or {},
                },
            )
            return str(answer["producerId"])

        @transport.on("producedata")  # type: ignore[untyped-decorator]
        async def on_produce_data(
            sctpStreamParameters: Any, label: str, protocol: str | None, appData: Any
        ) -> str:
            answer = await client.request(
                "produceData",
                {
                    "transportId": transport.id,
                    "sctpStreamParameters": _dump(sctpStreamParameters),
                    "label": label or "",
                    "protocol": protocol or "",
                    "appData": appData or {},
                },
            )
            return str(answer["dataProducerId"])

        return transport

    async def produce(self, track: MediaStreamTrack, source: str) -> ClientProducer:
        assert self.send_transport is not None
        return await self.send_transport.produce(
            track=track, stopTracks=False, appData={"source": source}
        )

    async def produce_chat(self) -> Any:
        assert self.send_transport is not None
        return await self.send_transport.produceData(label="chat", appData={"channel": "chat"})

    async def _on_request(self, method: str, data: dict[str, Any]) -> Any:
        assert self.recv_transport is not None
        if method == "newConsumer":
            self.offers.append(data)
            consumer = await self.recv_transport.consume(
                id=data["consumerId"],
                producerId=data["producerId"],
                kind=data["kind"],
                rtpParameters=data["rtpParameters"],
                appData={**data["appData"], "peerId": data["peerId"]},
            )
            self.consumers[consumer.id] = consumer
            self.frames[consumer.id] = 0
            task = asyncio.ensure_future(self._count_frames(consumer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return {}
        if method == "newDataConsumer":
            self.data_offers.append(data)
            data_consumer = await self.recv_transport.consumeData(
                id=data["dataConsumerId"],
                dataProducerId=data["dataProducerId"],
                sctpStreamParameters=SctpStreamParameters.model_validate(
                    data["sctpStreamParameters"]
                ),
                label=data.get("label"),
                protocol=data.get("protocol"),
            )
            data_consumer.on("message", self.messages.append)
            return {}
        raise ValueError(f"unknown request {method}")

    async def _count_frames(self, consumer: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                await consumer.track.recv()
                self.frames[consumer.id] = self.frames.get(consumer.id, 0) + 1

    def frames_of(self, producer_id: str) -> int:
        return sum(
            self.frames.get(offer["consumerId"], 0)
            for offer in self.offers
            if offer["producerId"] == producer_id
        )

    async def wait_for_frames(self, producer_id: str, count: int, timeout: float = 20) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.frames_of(producer_id) >= count:
                return True
            await asyncio.sleep(0.05)
        return False

    async def notify(self, method: str, data: dict[str, Any]) -> None:
        assert self.client is not None
        await self.client.notify(method, data)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for transport in (self.send_transport, self.recv_transport):
            if transport is not None and not transport.closed:
                with contextlib.suppress(Exception):
                    await transport.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
