"""Real pymediasoup clients wired straight to the media layer, no signalling.

The server side of each call is the real ``media`` object, and the client is
pymediasoup on aiortc: ICE, DTLS, SRTP, SCTP and codecs all run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pylibsrtp
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import (
    RTCIceCandidate,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.rtp import is_rtcp
from pymediasoup import AiortcHandler, Device
from pymediasoup.consumer import Consumer as ClientConsumer
from pymediasoup.data_consumer import DataConsumer as ClientDataConsumer
from pymediasoup.data_producer import DataProducer as ClientDataProducer
from pymediasoup.producer import Producer as ClientProducer
from pymediasoup.rtp_parameters import RtpCapabilities
from pymediasoup.transport import Transport as ClientTransport

from media import Consumer, DataConsumer, DataProducer, Producer, Router, WebRtcTransport


def _dump(value: Any) -> Any:
    return value.model_dump() if hasattr(value, "model_dump") else value


def transport_options(transport: WebRtcTransport) -> dict[str, Any]:
    return {
        "id": transport.id,
        "iceParameters": transport.ice_parameters,
        "iceCandidates": transport.ice_candidates,
        "dtlsParameters": transport.dtls_parameters,
        "sctpParameters": transport.sctp_parameters,
        "iceServers": [],
    }


class Client:
    """One participant: a pymediasoup Device with a send and a recv transport."""

    def __init__(self, router: Router, *, consent_timeout: float | None = None) -> None:
        self.router = router
        self.consent_timeout = consent_timeout
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.send_transport: WebRtcTransport | None = None
        self.recv_transport: WebRtcTransport | None = None
        self.client_send: ClientTransport | None = None
        self.client_recv: ClientTransport | None = None
        self.data_producers: dict[str, DataProducer] = {}

    async def load(self) -> None:
        caps = RtpCapabilities.model_validate(self.router.rtp_capabilities)
        await self.device.load(caps)

    @property
    def rtp_capabilities(self) -> dict[str, Any]:
        caps: dict[str, Any] = self.device.rtpCapabilities.model_dump()
        return caps

    async def _server_transport(self) -> WebRtcTransport:
        return await self.router.create_webrtc_transport(
            enable_sctp=True, consent_timeout=self.consent_timeout
        )

    async def open_send_transport(self) -> WebRtcTransport:
        server = self.send_transport = await self._server_transport()
        client = self.client_send = self.device.createSendTransport(**transport_options(server))

        @client.on("connect")  # type: ignore[untyped-decorator]
        async def on_connect(dtlsParameters: Any) -> None:
            await server.connect(_dump(dtlsParameters))

        @client.on("produce")  # type: ignore[untyped-decorator]
        async def on_produce(kind: str, rtpParameters: Any, appData: Any) -> str:
            producer = await server.produce(kind=kind, rtp_parameters=_dump(rtpParameters))
            return producer.id

        @client.on("producedata")  # type: ignore[untyped-decorator]
        async def on_produce_data(
            sctpStreamParameters: Any, label: str, protocol: str | None, appData: Any
        ) -> str:
            data_producer = await server.produce_data(
                sctp_stream_parameters=_dump(sctpStreamParameters),
                label=label or "",
                protocol=protocol or "",
            )
            self.data_producers[data_producer.id] = data_producer
            return data_producer.id

        return server

    async def open_recv_transport(self) -> WebRtcTransport:
        server = self.recv_transport = await self._server_transport()
        client = self.client_recv = self.device.createRecvTransport(**transport_options(server))

        @client.on("connect")  # type: ignore[untyped-decorator]
        async def on_connect(dtlsParameters: Any) -> None:
            await server.connect(_dump(dtlsParameters))

        return server

    async def produce(self, track: MediaStreamTrack) -> tuple[ClientProducer, Producer]:
        assert self.client_send is not None and self.send_transport is not None
        client_producer = await self.client_send.produce(track=track, stopTracks=False)
        return client_producer, self.send_transport.producers[client_producer.id]

    async def consume(self, producer: Producer) -> tuple[ClientConsumer, Consumer]:
        """Create the consumer paused and resume it once the client has it,
        as mediasoup-demo does, so no packet arrives before the client knows
        the SSRC."""
        assert self.client_recv is not None and self.recv_transport is not None
        consumer = await self.recv_transport.consume(
            producer_id=producer.id, rtp_capabilities=self.rtp_capabilities, paused=True
        )
        client_consumer = await self.client_recv.consume(
            id=consumer.id,
            producerId=producer.id,
            kind=consumer.kind,
            rtpParameters=consumer.rtp_parameters,
        )
        await consumer.resume()
        return client_consumer, consumer

    async def produce_data(self, label: str) -> ClientDataProducer:
        assert self.client_send is not None
        return await self.client_send.produceData(label=label)

    async def consume_data(
        self, data_producer: DataProducer
    ) -> tuple[ClientDataConsumer, DataConsumer]:
        assert self.client_recv is not None and self.recv_transport is not None
        data_consumer = await self.recv_transport.consume_data(data_producer_id=data_producer.id)
        client_data_consumer = await self.client_recv.consumeData(
            id=data_consumer.id,
            dataProducerId=data_producer.id,
            sctpStreamParameters=data_consumer.sctp_stream_parameters,
            label=data_consumer.label,
            protocol=data_consumer.protocol,
        )
        return client_data_consumer, data_consumer

    async def close(self) -> None:
        """Close like a leaving app: pymediasoup sends BYE and close_notify."""
        for transport in (self.client_send, self.client_recv):
            if transport is not None and not transport.closed:
                await transport.close()

    async def send_from(self, client_transport: ClientTransport | None, data: bytes) -> None:
        """Send raw bytes to the server from the ICE address of one of our transports."""
        assert client_transport is not None
        pc = client_transport._handler._pc
        if pc.sctp is not None:
            dtls = pc.sctp.transport
        else:
            dtls = pc.getTransceivers()[0].sender.transport
        await dtls.transport._connection.send(data)

    def vanish(self) -> None:
        """Disappear without a word: the client's sockets close, nothing is sent."""
        for transport in (self.client_send, self.client_recv):
            if transport is None:
                continue
            pc = transport._handler._pc
            dtls_transports = {t.sender.transport for t in pc.getTransceivers()}
            if pc.sctp is not None:
                dtls_transports.add(pc.sctp.transport)
            for ice in {dtls.transport for dtls in dtls_transports}:
                connection = ice._connection
                for protocol in connection._protocols:
                    protocol.transport.close()
                connection._protocols.clear()


class RawClient:
    """A client with real ICE and DTLS-SRTP (aiortc) but no RTP stack of its own.

    It connects to a server transport as a browser would (full ICE,
    controlling; DTLS), then sends exactly what the test builds: RTP and RTCP
    protected with its own SRTP keys, or any bytes from its own address.  No
    sender of aiortc's shares its SRTP streams, so nothing it sends can
    collide with media the client would send by itself.
    """

    def __init__(self) -> None:
        self.gatherer = RTCIceGatherer(iceServers=[])
        # A full-ICE agent facing an ICE-lite server is always controlling.
        self.gatherer._connection.ice_controlling = True
        self.ice = RTCIceTransport(self.gatherer)
        self.dtls = RTCDtlsTransport(self.ice, [RTCCertificate.generateCertificate()])

    async def connect(
        self, server: WebRtcTransport, *, fingerprints: list[dict[str, str]] | None = None
    ) -> None:
        """Connect as a browser would; ``fingerprints``: tell the server these
        instead of our certificate's (a DTLS failure to provoke)."""
        await self.gatherer.gather()
        candidate = server.ice_candidates[0]
        await self.ice.addRemoteCandidate(
            RTCIceCandidate(
                component=1,
                foundation=candidate["foundation"],
                ip=candidate["ip"],
                port=candidate["port"],
                priority=candidate["priority"],
                protocol="udp",
                type="host",
            )
        )
        await self.ice.addRemoteCandidate(None)
        local = self.dtls.getLocalParameters()
        # The controlling side's DTLS is the server (aiortc's "auto"), so ours is the client.
        if fingerprints is None:
            fingerprints = [
                {"algorithm": f.algorithm, "value": f.value} for f in local.fingerprints
            ]
        await server.connect({"role": "server", "fingerprints": fingerprints})
        params = server.ice_parameters
        await self.ice.start(
            RTCIceParameters(
                usernameFragment=params["usernameFragment"],
                password=params["password"],
                iceLite=True,
            )
        )
        await self.dtls.start(
            RTCDtlsParameters(
                fingerprints=[
                    RTCDtlsFingerprint(algorithm=f["algorithm"], value=f["value"])
                    for f in server.dtls_parameters["fingerprints"]
                ]
            )
        )

    @property
    def address(self) -> tuple[str, int]:
        """The client's ICE address: where its datagrams come from."""
        pair = next(iter(self.ice._connection._nominated.values()))
        host, port = pair.local_candidate.host, pair.local_candidate.port
        return str(host), int(port)

    async def send_srtp(self, packet: bytes) -> None:
        """Protect RTP or RTCP (by RFC 5761 payload type) with our keys and send it."""
        await self.dtls._send_rtp(packet)

    def protect(self, packet: bytes) -> bytes | None:
        """SRTP/SRTCP-protect ``packet``; None if libsrtp refuses to (a malformed header)."""
        session = self.dtls._tx_srtp
        try:
            if is_rtcp(packet):
                protected: bytes = session.protect_rtcp(packet)
            else:
                protected = session.protect(packet)
        except pylibsrtp.Error:
            return None
        return protected

    async def send_datagram(self, data: bytes) -> None:
        """Send bytes as they are, from the client's own address."""
        await self.ice._connection.send(data)

    async def close(self) -> None:
        await self.dtls.stop()
        await self.ice.stop()


async def count_frames(track: MediaStreamTrack, wanted: int, timeout: float) -> list[Any]:
    """Decode frames from a consumer track until ``wanted`` arrive."""
    frames: list[Any] = []

    async def read() -> None:
        while len(frames) < wanted:
            frames.append(await track.recv())

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return frames


async def join(router: Router, clients: list[Client], *, send: bool, recv: bool) -> Client:
    """A loaded client with the transports asked for, closed by the ``clients`` fixture."""
    client = Client(router, consent_timeout=10.0)
    clients.append(client)
    await client.load()
    if send:
        await client.open_send_transport()
    if recv:
        await client.open_recv_transport()
    return client
