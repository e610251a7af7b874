"""A pymediasoup participant that joins through the signalling server.

It speaks the same protoo methods as the mediasoup-demo browser app, so it
exercises the server exactly as a real client does.  Used by the health check
(``--media``), the end-to-end tests (as a separate process that can be killed
or frozen), and by hand: ``python -m signalling.bot ws://127.0.0.1:8765 ROOM``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from typing import Any

import orjson
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from pymediasoup import AiortcHandler, Device
from pymediasoup.rtp_parameters import RtpCapabilities
from pymediasoup.sctp_parameters import SctpStreamParameters
from pymediasoup.transport import Transport

from .protocol import CloseCode
from .protoo_client import ProtooClient

RETRY_CODES = frozenset({CloseCode.ROOM_ELSEWHERE, CloseCode.DIRECTORY_UNAVAILABLE})
"""Refusals that mean "try again shortly" (several nodes, docs/scaling.md): another
node holds the room (the load balancer will find it), or the room cannot be
registered now."""
FINAL_CODES = frozenset(
    {
        CloseCode.BAD_REQUEST,
        CloseCode.UNAUTHORIZED,
        CloseCode.ROOM_FULL,
        CloseCode.IDENTITY_IN_USE,
        CloseCode.SESSION_REPLACED,
    }
)
"""Close codes after which reconnecting would not help (as in the browser client)."""


class JoinFailed(Exception):
    """``join`` gave up: the last close code (None: no connection) and why."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"join failed: {code} {reason}")
        self.code = code
        self.reason = reason


def _dump(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


class Bot:
    def __init__(
        self,
        url: str,
        room_id: str,
        peer_id: str,
        *,
        display_name: str = "bot",
        user_id: str | None = None,
        video: bool = True,
        audio: bool = False,
        chat: bool = False,
        heartbeat: bool = True,
    ) -> None:
        query = f"roomId={room_id}&peerId={peer_id}"
        if user_id is not None:
            query += f"&userId={user_id}"
        self.url = f"{url.rstrip('/')}/?{query}"
        self.room_id = room_id
        self.peer_id = peer_id
        self.display_name = display_name
        self.want_video, self.want_audio, self.want_chat = video, audio, chat
        self.heartbeat = heartbeat
        self.client: ProtooClient | None = None
        self.attempts = 0
        """Connections ``join`` opened (refused ones included)."""
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.send_transport: Transport | None = None
        self.recv_transport: Transport | None = None
        self.join_data: dict[str, Any] = {}
        self.consumers: dict[str, Any] = {}
        self.frames: dict[str, int] = {}  # consumer id -> decoded frames
        self.producer_ids: list[str] = []
        self.chat_channel: Any = None
        self.messages: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(
        self,
        *,
        retry_for: float = 30.0,
        retry_lost: bool = False,
        backoff: tuple[float, float] = (0.2, 2.0),
    ) -> dict[str, Any]:
        """Connect and join, as a fresh session.  A refusal with a retry code
        (4421 room elsewhere, 4504 directory unavailable) is retried with
        exponential backoff and full jitter for up to ``retry_for`` seconds; with
        ``retry_lost``, so is a connection that fails or closes for any other
        reason but a final one (a node that died, a load balancer with no node
        up yet).  Raises ``JoinFailed`` when it gives up."""
        if self.client is not None:
            await self._reset()  # joined before: this is a fresh session
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        base, ceiling = backoff
        failures = 0
        while True:
            self.attempts += 1
            try:
                return await self._join_once()
            except Exception as exc:
                client = self.client
                code, reason = (
                    client.closed.result()
                    if client is not None and client.closed.done()
                    else (None, repr(exc))
                )
                retry = code in RETRY_CODES or (
                    retry_lost and (code is None or code not in FINAL_CODES)
                )
                if not retry:
                    raise  # not ours to retry: as it failed (the bot is left as it is)
                await self._reset()
                if loop.time() >= deadline:
                    raise JoinFailed(code, reason) from exc
            failures += 1
            wait = random.uniform(0, min(ceiling, base * 2 ** (failures - 1)))
            await asyncio.sleep(min(wait, max(0.0, deadline - loop.time())))

    async def _reset(self) -> None:
        """Forget a failed attempt: its connection, transports and device."""
        await self.close()
        self.client = None
        self.send_transport = self.recv_transport = None
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.join_data, self.consumers, self.frames = {}, {}, {}
        self.producer_ids, self.messages, self.chat_channel = [], [], None

    async def _join_once(self) -> dict[str, Any]:
        client = self.client = await ProtooClient.connect(self.url)
        client.on_request = self._on_request
        caps = await client.request("getRouterRtpCapabilities")
        await self.device.load(RtpCapabilities.model_validate(caps))
        sctp = self.device.sctpCapabilities.model_dump()
        self.send_transport = await self._transport(producing=True, sctp=sctp)
        self.recv_transport = await self._transport(producing=False, sctp=sctp)
        self.join_data = await client.request(
            "join",
            {
                "displayName": self.display_name,
                "device": {"flag": "python", "name": "pymediasoup", "version": "1.5"},
                "rtpCapabilities": self.device.rtpCapabilities.model_dump(),
                "sctpCapabilities": sctp,
            },
        )
        tracks: list[MediaStreamTrack] = []
        if self.want_video:
            tracks.append(VideoStreamTrack())
        if self.want_audio:
            tracks.append(AudioStreamTrack())
        for track in tracks:
            producer = await self.send_transport.produce(track=track, stopTracks=False)
            self.producer_ids.append(producer.id)
        if self.want_chat:
            self.chat_channel = await self.send_transport.produceData(label="chat")
        if self.heartbeat:
            self._spawn(self._heartbeat(float(self.join_data.get("heartbeatInterval", 30))))
        return self.join_data

    async def _transport(self, *, producing: bool, sctp: dict[str, Any]) -> Transport:
        assert self.client is not None
        client = self.client
        info = await client.request(
            "createWebRtcTransport",
            {"producing": producing, "consuming": not producing, "sctpCapabilities": sctp},
        )
        options = {
            "id": info["id"],
            "iceParameters": info["iceParameters"],
            "iceCandidates": info["iceCandidates"],
            "dtlsParameters": info["dtlsParameters"],
            "sctpParameters": info["sctpParameters"],
            "iceServers": [],
        }
        transport = (
            self.device.createSendTransport(**options)
            if producing
            else self.device.createRecvTransport(**options)
        )

        @transport.on("connect")  # type: ignore[untyped-decorator]
        async def on_connect(dtlsParameters: Any) -> None:
            await client.request(
                "connectWebRtcTransport",
                {"transportId": transport.id, "dtlsParameters": _dump(dtlsParameters)},
            )

        if producing:

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
                return str(answer["id"])

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
                return str(answer["id"])

        return transport

    async def _on_request(self, method: str, data: dict[str, Any]) -> Any:
        assert self.recv_transport is not None
        if method == "newConsumer":
            consumer = await self.recv_transport.consume(
                id=data["id"],
                producerId=data["producerId"],
                kind=data["kind"],
                rtpParameters=data["rtpParameters"],
            )
            self.consumers[consumer.id] = consumer
            self.frames[consumer.id] = 0
            self._spawn(self._count_frames(consumer))
            return {}
        if method == "newDataConsumer":
            data_consumer = await self.recv_transport.consumeData(
                id=data["id"],
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

    async def _heartbeat(self, interval: float) -> None:
        assert self.client is not None
        rtt: float | None = None
        while True:
            await asyncio.sleep(interval)
            started = time.perf_counter()
            try:
                await self.client.request("ping", {"rtt": rtt} if rtt is not None else {})
            except Exception:
                return
            rtt = (time.perf_counter() - started) * 1000

    def decoded_frames(self) -> int:
        return sum(self.frames.values())

    async def wait_for_frames(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.decoded_frames() >= count:
                return True
            await asyncio.sleep(0.05)
        return False

    async def leave(self) -> None:
        """Leave as a well-behaved app: beforeDisconnect, close media, close 1000."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.notify("beforeDisconnect", {"reason": "leave"})
        await self.close()

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


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="A pymediasoup participant for ghostless")
    parser.add_argument("url", help="ws://host:port")
    parser.add_argument("room")
    parser.add_argument("--peer", default=f"bot-{int(time.time() * 1000) % 100000}")
    parser.add_argument("--user")
    parser.add_argument("--audio", action="store_true")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--no-heartbeat", action="store_true")
    parser.add_argument("--loopback", action="store_true", help="gather ICE on 127.0.0.1")
    parser.add_argument(
        "--reconnect", action="store_true", help="join again (fresh session) when the node is lost"
    )
    parser.add_argument("--retry-for", type=float, default=30.0, help="give up joining after (s)")
    args = parser.parse_args(argv)
    if args.loopback:
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    bot = Bot(
        args.url,
        args.room,
        args.peer,
        user_id=args.user,
        video=not args.no_video,
        audio=args.audio,
        heartbeat=not args.no_heartbeat,
    )
    while True:
        joined = await bot.join(retry_for=args.retry_for, retry_lost=args.reconnect)
        print(orjson.dumps({"event": "joined", "peers": len(joined["peers"])}).decode(), flush=True)
        assert bot.client is not None
        while not bot.client.closed.done():
            await asyncio.wait([bot.client.closed], timeout=0.5)
            print(
                orjson.dumps(
                    {
                        "event": "status",
                        "frames": bot.decoded_frames(),
                        "consumers": len(bot.consumers),
                    }
                ).decode(),
                flush=True,
            )
        code, reason = bot.client.closed.result()
        print(
            orjson.dumps({"event": "closed", "code": code, "reason": reason}).decode(), flush=True
        )
        if not args.reconnect or code in FINAL_CODES:
            return
        await bot._reset()  # a fresh session, wherever the load balancer sends it


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(_main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
