"""Rooms and peers: the mediasoup-demo ``Room.js`` semantics, on the media layer.

A ``Room`` holds one media ``Router`` and the peers of its sessions.  A
``Peer`` is the media side of one session: its transports, producers,
consumers and data channels, and the tasks that create consumers for it.
Request handlers take the peer and the request's data, decoded once by
``Room.handle`` into the struct of its method (``signalling.payloads``), and
return the response data; client mistakes raise ``RequestError``.

Handlers and notifications speak the canonical (2024) shapes; each peer's
``dialect`` (``signalling.dialect``) renders what it is sent.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Generic, TypeVar

import media
from media.api import (
    AudioLevelObserver,
    Consumer,
    DataConsumer,
    DataProducer,
    Producer,
    Router,
    WebRtcTransport,
)
from media.audio_level_observer import Volume
from media.events import EventEmitter

from .connection import Connection, RequestFailed
from .dialect import DIALECT_2024, DOMINANT_SPEAKER, DOWNLINK_BWE, SPEAKING_PEERS, Dialect
from .liveness import Session
from .payloads import (
    ChangeDisplayNameRequest,
    ConnectWebRtcTransportRequest,
    ConsumerRequest,
    CreateWebRtcTransportRequest,
    DataConsumerRequest,
    DataProducerRequest,
    EmptyRequest,
    JoinRequest,
    ProduceDataRequest,
    ProduceRequest,
    ProducerRequest,
    SetConsumerPreferredLayersRequest,
    SetConsumerPriorityRequest,
    TransportRequest,
    decode_request,
)
from .payloads import PeerLimits as PeerLimits
from .payloads import RequestError as RequestError
from .protocol import ErrorCode

logger = logging.getLogger(__name__)

Json = dict[str, Any]


class RoomFull(RequestError):
    """``join`` in a room whose joined peers reached its limit: refused, then closed (4403)."""

    def __init__(self) -> None:
        super().__init__(ErrorCode.FORBIDDEN, "room is full")


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str, limit: int = 32) -> str:
    """A short, printable prefix of client-supplied text, safe to echo back or log."""
    cut = _UNPRINTABLE.sub("?", text[:limit])
    return cut + "..." if len(text) > limit else cut


def consumer_score(consumer: Consumer) -> Json:
    """mediasoup's ``ConsumerScore`` ``{score, producerScore, producerScores}``.

    A consumer that keeps its score in that shape is asked; the simple
    consumer keeps one number (0..10), as its producer does (or a list of
    ``{encodingIdx, ssrc, rid, score}``, one per encoding).
    """
    score = getattr(consumer, "score", 10)
    if isinstance(score, dict):
        return score
    producer = getattr(consumer, "producer", None)
    producer_score = getattr(producer, "score", score)
    if isinstance(producer_score, list):
        scores = [e.get("score", 0) for e in producer_score if isinstance(e, dict)]
    else:
        scores = [producer_score]
    return {
        "score": score,
        "producerScore": max(scores, default=0),
        "producerScores": scores,
    }


def _layers_changed(consumer_id: str, layers: Any) -> Json:
    """mediasoup-demo's ``consumerLayersChanged``: nulls when nothing is forwarded."""
    layers = layers if isinstance(layers, dict) else {}
    return {
        "consumerId": consumer_id,
        "spatialLayer": layers.get("spatialLayer"),
        "temporalLayer": layers.get("temporalLayer"),
    }


def _downlink_bwe(peer: Peer, trace: Any) -> None:
    """A transport's ``bwe`` trace towards the client becomes ``downlinkBwe`` (Room.js)."""
    if not isinstance(trace, dict) or trace.get("type") != "bwe":
        return
    if trace.get("direction") != "out":
        return
    info = trace.get("info")
    info = info if isinstance(info, dict) else {}
    peer.notify(
        DOWNLINK_BWE,
        {
            "desiredBitrate": info.get("desiredBitrate"),
            "effectiveDesiredBitrate": info.get("effectiveDesiredBitrate"),
            "availableBitrate": info.get("availableBitrate"),
        },
    )


async def _enable_bwe_trace(transport: WebRtcTransport) -> None:
    """``transport.enableTraceEvent(['bwe'])``, where the transport has it."""
    enable = getattr(transport, "enable_trace_event", None)
    if enable is None:
        return
    try:
        result = enable(["bwe"])
        if inspect.isawaitable(result):
            await result
    except Exception as exc:  # an optional report: the transport works without it
        logger.warning("bwe trace not enabled on transport %s: %r", transport.id, exc)


T = TypeVar("T")


class _OwnedByTransports(Generic[T]):
    """A read-only ``Peer`` attribute: one kind of child of all its transports,
    merged into a fresh dict (the transports stay the only owners)."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __get__(self, peer: Peer, owner: type | None = None) -> dict[str, T]:
        maps: Iterable[Mapping[str, T]] = (
            getattr(transport, self._attribute) for transport in peer.transports.values()
        )
        return {key: value for mapping in maps for key, value in mapping.items()}


class Peer:
    """The media state of one session, owned by it; ``close`` releases all of it.

    It owns its transports; producers, consumers and data channels are owned
    by those (mediasoup's tree) and read through them, never copied.
    """

    def __init__(self, session: Session, room: Room) -> None:
        self.session = session
        self.room = room
        self.connection: Connection | None = None
        self.joined = False
        self.closed = False
        self.device: Json | None = None
        self.rtp_capabilities: Json | None = None
        self.sctp_capabilities: Json | None = None
        self.transports: dict[str, WebRtcTransport] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reported_rtt_ms: float | None = None
        """The heartbeat RTT the client last reported (consumed by quality grading)."""
        self.quality = "good"
        self.dialect: Dialect = DIALECT_2024
        """How this peer's connection words what it is sent (set per connection)."""

    @property
    def id(self) -> str:
        return self.session.peer_id

    # What its transports own, read through them (never copied).
    producers = _OwnedByTransports[Producer]("producers")
    consumers = _OwnedByTransports[Consumer]("consumers")
    data_producers = _OwnedByTransports[DataProducer]("data_producers")
    data_consumers = _OwnedByTransports[DataConsumer]("data_consumers")

    @property
    def display_name(self) -> str:
        return self.session.display_name

    def info(self) -> Json:
        return {
            "id": self.id,
            "displayName": self.display_name,
            "device": self.device or {},
            "quality": self.quality,
        }

    def notify(self, method: str, data: Any) -> None:
        """Send a canonical notification, in this peer's dialect (if it has it)."""
        if self.connection is None:
            return
        worded = self.dialect.notification(method, data)
        if worded is not None:
            self.connection.notify(*worded)

    async def request(self, method: str, data: Json, timeout: float) -> Any:
        if self.connection is None:
            raise RequestFailed("peer is reconnecting")
        return await self.connection.request(
            method, self.dialect.server_request(method, data), timeout
        )

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """A task owned by this peer: cancelled when the peer closes."""
        if self.closed:
            coroutine.close()
            return
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def media_activity(self) -> float | None:
        """When anything was last received on this peer's transports (loop time)."""
        if not self.transports:
            return None
        return max(t.last_activity for t in self.transports.values())

    def consuming_transport(self) -> WebRtcTransport | None:
        return next((t for t in self.transports.values() if t.app_data.get("consuming")), None)

    def close(self) -> list[asyncio.Task[Any]]:
        """Close every transport (cascading to producers/consumers) and cancel
        every task; returns the tasks, for the owner to await."""
        if self.closed:
            return []
        self.closed = True
        for transport in list(self.transports.values()):
            transport.close()
        self.transports.clear()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return tasks


SPEECH_INTERVAL = 0.8
"""How often the room says who speaks (mediasoup-demo's AudioLevelObserver interval)."""


class Room:
    """One call: a router and the peers of its sessions."""

    def __init__(
        self,
        room_id: str,
        router: Router,
        *,
        request_timeout: float,
        heartbeat_interval: float,
        limits: PeerLimits | None = None,
        max_peers: int | None = None,
        hold_seats: bool = False,
        speech_interval: float | None = SPEECH_INTERVAL,
    ) -> None:
        """``hold_seats``: a seat is taken from the moment a session is admitted
        (the waiting queue's semantics), not at ``join``.  ``speech_interval``:
        how often ``activeSpeaker`` may be sent (None: never)."""
        self.id = room_id
        self.router = router
        self.observer = EventEmitter()
        """``transportended`` (peer, media ``TransportEndReason``): a transport
        of one of its peers ended by itself (its client went away)."""
        self.peers: dict[str, Peer] = {}
        self.request_timeout = request_timeout
        self.heartbeat_interval = heartbeat_interval
        self.limits = limits or PeerLimits()
        self.max_peers = max_peers
        self.hold_seats = hold_seats
        self.close_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.speech_interval = speech_interval
        self.speakers: AudioLevelObserver | None = None
        """Made with the first audio producer; it closes with the router."""
        self._speakers_made = asyncio.Lock()
        self._loudest: str | None = None

    def __repr__(self) -> str:
        return f"<Room {self.id} peers={len(self.peers)}>"

    def occupancy(self) -> int:
        """Seats taken: joined peers, or every open session when seats are held from admission.

        Connections that never joined do not take a seat unless seats are held
        (then the join timeout frees them)."""
        if self.hold_seats:
            return sum(1 for p in self.peers.values() if not p.closed)
        return sum(1 for p in self.peers.values() if p.joined and not p.closed)

    def full(self) -> bool:
        return self.max_peers is not None and self.occupancy() >= self.max_peers

    def joined_peers(self, exclude: Peer | None = None) -> list[Peer]:
        return [p for p in self.peers.values() if p.joined and p is not exclude and not p.closed]

    def broadcast(self, method: str, data: Any, exclude: Peer | None = None) -> None:
        for peer in self.joined_peers(exclude):
            peer.notify(method, data)

    def remove(self, peer: Peer) -> list[asyncio.Task[Any]]:
        """``peer``'s session ended: close its media and give up its seat."""
        tasks = peer.close()
        if self.peers.get(peer.id) is peer:
            del self.peers[peer.id]
        return tasks

    def close(self) -> list[asyncio.Task[Any]]:
        """Close the router and whatever peers are left; returns their cancelled tasks."""
        if self.closed:
            return []
        self.closed = True
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        tasks = [task for peer in list(self.peers.values()) for task in peer.close()]
        self.peers.clear()
        self.router.close()
        self.speakers = None
        self.observer.release_listeners()
        return tasks

    # -- requests ---------------------------------------------------------------------

    async def handle(self, peer: Peer, method: str, data: Any) -> Any:
        """Run one request: its method, whether the peer may call it, then its data.

        The data is decoded here, once, into the struct of its method
        (``signalling.payloads``); malformed data is a 400 before any handler
        runs.  What refuses the call whatever its data (an unknown method, no
        join yet, a second join, a full room) is checked first.
        """
        handler = self.HANDLERS.get(method)
        if handler is None:
            raise RequestError(ErrorCode.UNKNOWN_METHOD, f"unknown method {printable(method)!r}")
        needs_join = method not in self.BEFORE_JOIN
        if needs_join and not peer.joined:
            raise RequestError(ErrorCode.NOT_JOINED, f"{method} needs join first")
        if method == "join":
            self._admit(peer)
        request = decode_request(method, data, self.limits)
        return await handler(self, peer, request)

    def _admit(self, peer: Peer) -> None:
        """Whether ``peer`` may join (checked before its ``join`` data is read)."""
        if peer.joined:
            raise RequestError(ErrorCode.CONFLICT, "already joined")
        if not self.hold_seats and self.full():
            raise RoomFull()

    async def get_router_rtp_capabilities(self, peer: Peer, request: EmptyRequest) -> Any:
        return self.router.rtp_capabilities

    async def join(self, peer: Peer, request: JoinRequest) -> Json:
        """(``handle`` has admitted the peer: not joined yet, and a seat is free.)"""
        if request.display_name is not None:
            peer.session.display_name = request.display_name
        peer.device = request.device
        peer.rtp_capabilities = request.rtp_capabilities
        peer.sctp_capabilities = request.sctp_capabilities
        others = self.joined_peers(exclude=peer)
        peer.joined = True
        for other in others:
            for producer in other.producers.values():
                peer.spawn(self.create_consumer(peer, other, producer))
            for data_producer in other.data_producers.values():
                peer.spawn(self.create_data_consumer(peer, other, data_producer))
        self.broadcast("newPeer", peer.info(), exclude=peer)
        return {
            "peers": [other.info() for other in others],
            "heartbeatInterval": self.heartbeat_interval,
            "resumeToken": peer.session.resume_token,
            "leaveToken": peer.session.leave_token,
            "sessionId": peer.session.id,
            "serverTime": time.time() * 1000,
        }

    async def create_webrtc_transport(
        self, peer: Peer, request: CreateWebRtcTransportRequest
    ) -> Json:
        if len(peer.transports) >= self.limits.transports:
            raise RequestError(ErrorCode.FORBIDDEN, "too many transports for one peer")
        # mediasoup-demo's Room.js: forceTcp means TCP candidates only; otherwise
        # the worker's defaults (UDP, and passive TCP unless switched off).
        transport = await self.router.create_webrtc_transport(
            enable_sctp=request.sctp_capabilities is not None,
            num_sctp_streams=request.num_sctp_streams,
            app_data={"producing": request.producing, "consuming": request.consuming},
            enable_udp=not request.force_tcp,
            enable_tcp=True if request.force_tcp else None,
        )
        if peer.closed:  # the session ended while the socket was being bound
            transport.close()
            raise RequestError(ErrorCode.NOT_FOUND, "session closed")
        peer.transports[transport.id] = transport

        def ended(reason: media.TransportEndReason) -> None:
            peer.transports.pop(transport.id, None)
            self.observer.emit("transportended", peer, reason)

        transport.on("ended", ended)
        transport.observer.on("close", lambda: peer.transports.pop(transport.id, None))
        transport.on("trace", lambda trace: _downlink_bwe(peer, trace))
        await _enable_bwe_trace(transport)
        return {
            "id": transport.id,
            "iceParameters": transport.ice_parameters,
            "iceCandidates": transport.ice_candidates,
            "dtlsParameters": transport.dtls_parameters,
            "sctpParameters": transport.sctp_parameters,
        }

    @staticmethod
    def _owned(registry: dict[str, Any], owned_id: str, what: str) -> Any:
        """This peer's ``what`` named ``owned_id``; another peer's is "not found" too."""
        owned = registry.get(owned_id)
        if owned is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"{what} not found")
        return owned

    def _transport(self, peer: Peer, request: TransportRequest) -> WebRtcTransport:
        transport: WebRtcTransport = self._owned(peer.transports, request.transport_id, "transport")
        return transport

    def _producer(self, peer: Peer, request: ProducerRequest) -> Producer:
        producer: Producer = self._owned(peer.producers, request.producer_id, "producer")
        return producer

    def _consumer(self, peer: Peer, request: ConsumerRequest) -> Consumer:
        consumer: Consumer = self._owned(peer.consumers, request.consumer_id, "consumer")
        return consumer

    async def connect_webrtc_transport(
        self, peer: Peer, request: ConnectWebRtcTransportRequest
    ) -> None:
        await self._transport(peer, request).connect(request.dtls_parameters)

    async def restart_ice(self, peer: Peer, request: TransportRequest) -> Json:
        return await self._transport(peer, request).restart_ice()

    async def produce(self, peer: Peer, request: ProduceRequest) -> Json:
        transport = self._transport(peer, request)
        if len(peer.producers) >= self.limits.producers:
            raise RequestError(ErrorCode.FORBIDDEN, "too many producers for one peer")
        producer = await transport.produce(
            kind=request.kind,
            rtp_parameters=request.rtp_parameters,
            app_data={**(request.app_data or {}), "peerId": peer.id},
        )
        adopted = self._adopt(peer, producer, self.create_consumer)
        producer.on(
            "score",
            lambda score: peer.notify("producerScore", {"producerId": producer.id, "score": score}),
        )
        if producer.kind == "audio":
            await self._hear(producer)
        return adopted

    def _adopt(
        self,
        peer: Peer,
        owned: Producer | DataProducer,
        offer: Callable[[Peer, Peer, Any], Coroutine[Any, Any, None]],
    ) -> Json:
        """A new (data) producer of ``peer`` (its transport owns it): offered
        to every other joined peer."""
        if peer.closed:  # the session ended while the media layer was busy
            owned.close()
            raise RequestError(ErrorCode.NOT_FOUND, "session closed")
        for other in self.joined_peers(exclude=peer):
            other.spawn(offer(other, peer, owned))
        return {"id": owned.id}

    async def close_producer(self, peer: Peer, request: ProducerRequest) -> None:
        self._producer(peer, request).close()

    async def pause_producer(self, peer: Peer, request: ProducerRequest) -> None:
        await self._producer(peer, request).pause()

    async def resume_producer(self, peer: Peer, request: ProducerRequest) -> None:
        await self._producer(peer, request).resume()

    async def pause_consumer(self, peer: Peer, request: ConsumerRequest) -> None:
        await self._consumer(peer, request).pause()

    async def resume_consumer(self, peer: Peer, request: ConsumerRequest) -> None:
        await self._consumer(peer, request).resume()

    async def request_consumer_key_frame(self, peer: Peer, request: ConsumerRequest) -> None:
        await self._consumer(peer, request).request_key_frame()

    async def set_consumer_preferred_layers(
        self, peer: Peer, request: SetConsumerPreferredLayersRequest
    ) -> None:
        consumer = self._consumer(peer, request)
        # A simple consumer forwards its one stream: there is nothing to prefer
        # (mediasoup's SimpleConsumer ignores the request too).
        setter = getattr(consumer, "set_preferred_layers", None)
        if setter is not None:
            layers: Json = {"spatialLayer": request.spatial_layer}
            if request.temporal_layer is not None:
                layers["temporalLayer"] = request.temporal_layer
            await setter(layers)

    async def set_consumer_priority(self, peer: Peer, request: SetConsumerPriorityRequest) -> None:
        consumer = self._consumer(peer, request)
        setter = getattr(consumer, "set_priority", None)
        if setter is not None:
            await setter(request.priority)

    async def get_rtc_stats_url(self, peer: Peer, request: EmptyRequest) -> Json:
        return {}  # no rtcstats server: the 2025 app then does without

    async def produce_data(self, peer: Peer, request: ProduceDataRequest) -> Json:
        transport = self._transport(peer, request)
        if len(peer.data_producers) >= self.limits.data_producers:
            raise RequestError(ErrorCode.FORBIDDEN, "too many data producers for one peer")
        data_producer = await transport.produce_data(
            sctp_stream_parameters=request.sctp_stream_parameters,
            label=request.label or "",
            protocol=request.protocol or "",
            app_data={**(request.app_data or {}), "peerId": peer.id},
        )
        return self._adopt(peer, data_producer, self.create_data_consumer)

    async def change_display_name(self, peer: Peer, request: ChangeDisplayNameRequest) -> None:
        old = peer.session.display_name
        peer.session.display_name = request.display_name
        self.broadcast(
            "peerDisplayNameChanged",
            {"peerId": peer.id, "displayName": request.display_name, "oldDisplayName": old},
            exclude=peer,
        )

    async def get_transport_stats(self, peer: Peer, request: TransportRequest) -> Any:
        return await self._transport(peer, request).get_stats()

    async def get_producer_stats(self, peer: Peer, request: ProducerRequest) -> Any:
        return await self._producer(peer, request).get_stats()

    async def get_consumer_stats(self, peer: Peer, request: ConsumerRequest) -> Any:
        return await self._consumer(peer, request).get_stats()

    async def get_data_producer_stats(self, peer: Peer, request: DataProducerRequest) -> Any:
        owned = self._owned(peer.data_producers, request.data_producer_id, "dataProducer")
        return await owned.get_stats()

    async def get_data_consumer_stats(self, peer: Peer, request: DataConsumerRequest) -> Any:
        owned = self._owned(peer.data_consumers, request.data_consumer_id, "dataConsumer")
        return await owned.get_stats()

    HANDLERS: dict[str, Callable[[Room, Peer, Any], Awaitable[Any]]] = {
        "getRouterRtpCapabilities": get_router_rtp_capabilities,
        "join": join,
        "createWebRtcTransport": create_webrtc_transport,
        "connectWebRtcTransport": connect_webrtc_transport,
        "restartIce": restart_ice,
        "produce": produce,
        "closeProducer": close_producer,
        "pauseProducer": pause_producer,
        "resumeProducer": resume_producer,
        "pauseConsumer": pause_consumer,
        "resumeConsumer": resume_consumer,
        "setConsumerPreferredLayers": set_consumer_preferred_layers,
        "setConsumerPriority": set_consumer_priority,
        "requestConsumerKeyFrame": request_consumer_key_frame,
        "produceData": produce_data,
        "changeDisplayName": change_display_name,
        "getTransportStats": get_transport_stats,
        "getProducerStats": get_producer_stats,
        "getConsumerStats": get_consumer_stats,
        "getDataProducerStats": get_data_producer_stats,
        "getDataConsumerStats": get_data_consumer_stats,
        "getRtcStatsUrl": get_rtc_stats_url,
    }
    BEFORE_JOIN = frozenset(
        {
            "getRtcStatsUrl",
            "getRouterRtpCapabilities",
            "join",
            "createWebRtcTransport",
            "connectWebRtcTransport",
            "restartIce",
            "getTransportStats",
        }
    )

    # -- consumers (mediasoup-demo: created paused, resumed once the client has them) ---

    async def create_consumer(
        self, consumer_peer: Peer, producer_peer: Peer, producer: Producer
    ) -> None:
        caps = consumer_peer.rtp_capabilities
        if caps is None or producer.closed or not self.router.can_consume(producer.id, caps):
            return
        transport = consumer_peer.consuming_transport()
        if transport is None:
            return
        try:
            consumer = await transport.consume(
                producer_id=producer.id, rtp_capabilities=caps, paused=True
            )
        except media.MediaError as exc:
            logger.debug("consume failed for %s: %s", consumer_peer.id, exc)
            return
        consumer.on(
            "producerclose",
            lambda: consumer_peer.notify("consumerClosed", {"consumerId": consumer.id}),
        )
        consumer.on(
            "producerpause",
            lambda: consumer_peer.notify("consumerPaused", {"consumerId": consumer.id}),
        )
        consumer.on(
            "producerresume",
            lambda: consumer_peer.notify("consumerResumed", {"consumerId": consumer.id}),
        )
        consumer.on(
            "score",
            lambda score: consumer_peer.notify(
                "consumerScore", {"consumerId": consumer.id, "score": score}
            ),
        )
        consumer.on(
            "layerschange",
            lambda layers: consumer_peer.notify(
                "consumerLayersChanged", _layers_changed(consumer.id, layers)
            ),
        )
        offer = {
            "producerId": producer.id,
            "kind": consumer.kind,
            "rtpParameters": consumer.rtp_parameters,
            "type": consumer.type,
            "producerPaused": consumer.producer_paused_state,
            "consumerScore": consumer_score(consumer),
        }
        sender = (producer_peer, transport, producer.app_data)
        if not await self._offer(consumer_peer, "newConsumer", consumer, sender, offer):
            return
        if not consumer.closed:
            await consumer.resume()
            consumer_peer.notify(
                "consumerScore", {"consumerId": consumer.id, "score": consumer_score(consumer)}
            )

    async def create_data_consumer(
        self, consumer_peer: Peer, producer_peer: Peer, data_producer: DataProducer
    ) -> None:
        if consumer_peer.sctp_capabilities is None or data_producer.closed:
            return
        transport = consumer_peer.consuming_transport()
        if transport is None:
            return
        try:
            data_consumer = await transport.consume_data(data_producer_id=data_producer.id)
        except media.MediaError as exc:
            logger.debug("consumeData failed for %s: %s", consumer_peer.id, exc)
            return
        data_consumer.on(
            "dataproducerclose",
            lambda: consumer_peer.notify(
                "dataConsumerClosed", {"dataConsumerId": data_consumer.id}
            ),
        )
        offer = {
            "dataProducerId": data_producer.id,
            "sctpStreamParameters": data_consumer.sctp_stream_parameters,
            "label": data_consumer.label,
            "protocol": data_consumer.protocol,
        }
        sender = (producer_peer, transport, data_producer.app_data)
        await self._offer(consumer_peer, "newDataConsumer", data_consumer, sender, offer)

    async def _offer(
        self,
        consumer_peer: Peer,
        method: str,
        consumer: Consumer | DataConsumer,
        sender: tuple[Peer, WebRtcTransport, Json],
        offer: Json,
    ) -> bool:
        """Ask the client to take a new (data) consumer; if it refuses or does not
        answer, the consumer is closed (mediasoup-demo).  The fields every offer
        carries are added here: who produced it, the consuming transport and the
        producer's appData.  The dialect rewords the request on the way out."""
        producer_peer, transport, app_data = sender
        offer["peerId"] = producer_peer.id
        offer["id"] = consumer.id
        offer["appData"] = app_data
        offer["transportId"] = transport.id
        try:
            await consumer_peer.request(method, offer, self.request_timeout)
        except RequestFailed as exc:
            logger.debug("%s not accepted by %s: %s", method, consumer_peer.id, exc)
            consumer.close()
            return False
        return True

    def sync_consumers(self, peer: Peer) -> None:
        """After a resume: consume what was produced while the peer was away."""
        consumed = {c.producer_id for c in peer.consumers.values()}
        data_consumed = {d.data_producer_id for d in peer.data_consumers.values()}
        for other in self.joined_peers(exclude=peer):
            for producer in other.producers.values():
                if producer.id not in consumed:
                    peer.spawn(self.create_consumer(peer, other, producer))
            for data_producer in other.data_producers.values():
                if data_producer.id not in data_consumed:
                    peer.spawn(self.create_data_consumer(peer, other, data_producer))

    # -- who speaks (mediasoup-demo: an AudioLevelObserver per room) ------------------

    async def _hear(self, producer: Producer) -> None:
        """Let the room's audio level observer hear an audio producer."""
        if self.speech_interval is None:
            return
        async with self._speakers_made:
            if self.speakers is None and not self.router.closed:
                speakers = await self.router.create_audio_level_observer(
                    max_entries=10, threshold=-80, interval=self.speech_interval
                )
                speakers.on("volumes", self._speaking)
                speakers.on("silence", self._silent)
                self.speakers = speakers
        if self.speakers is None or producer.closed:
            return
        try:
            await self.speakers.add_producer(producer.id)
        except media.MediaError as exc:
            logger.debug("producer %s not heard: %s", producer.id, exc)

    def _speaking(self, volumes: list[Volume]) -> None:
        """Every interval while someone speaks: the loudest first.

        The 2024 ``activeSpeaker`` names the loudest each time (Room.js);
        2025 clients get everyone's volume (``speakingPeers``) and hear of the
        loudest only when it changes (their ``activeSpeaker``).
        """
        peer_volumes: list[Json] = [
            {"peerId": v.producer.app_data.get("peerId"), "volume": v.volume} for v in volumes
        ]
        self.broadcast("activeSpeaker", peer_volumes[0])
        self.broadcast(SPEAKING_PEERS, {"peerVolumes": peer_volumes})
        loudest: str | None = peer_volumes[0]["peerId"]
        if loudest != self._loudest:
            self._loudest = loudest
            self.broadcast(DOMINANT_SPEAKER, {"peerId": loudest})

    def _silent(self) -> None:
        self._loudest = None
        self.broadcast(SPEAKING_PEERS, {"peerVolumes": []})
        self.broadcast("activeSpeaker", {"peerId": None})
