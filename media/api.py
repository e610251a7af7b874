"""The media API the signalling layer is written against, as ``typing.Protocol``s.

``signalling/`` never names this package's classes in its types: it takes a
``Worker`` from outside and reaches everything else through it, so a second
implementation (a process per core, a C++ mediasoup worker behind a pipe, a
fake in a test) plugs in by having these members.  They are mediasoup's
(``node/src/*.ts``: ``observer`` events, ``close()``, ``appData``...) plus the
liveness additions mediasoup lacks, typed:

* ``WebRtcTransport`` emits ``ended`` with a ``TransportEndReason`` when the
  client went away by itself (DTLS close_notify or BYE, ICE consent expiry,
  DTLS failure), and exposes ``last_activity``: the loop time of the last
  authenticated packet, read by the liveness tick.
* ``Consumer.producer_paused_state`` (mediasoup's ``producerPaused``).
* ``WebRtcTransport.link_sample(now)``: the link's loss, jitter, RTT and
  consent gaps since the last call, for connection quality grading.
* ``Worker.resource_counts()``, ``port_usage()`` and ``datagram_errors``, for
  readiness and metrics.

Events (``on``) and observer events are as in mediasoup; payloads are this
package's (``media.link.LinkSample`` and the like).  ``tests/media/test_api.py``
checks that the embedded SFU implements every protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .link import LinkSample
from .webrtc_transport import TransportEndReason

Json = dict[str, Any]


class Emitter(Protocol):
    def on(self, event: str, listener: Callable[..., Any]) -> Callable[..., Any]: ...

    def off(self, event: str, listener: Callable[..., Any]) -> None: ...


class Producer(Emitter, Protocol):
    id: str
    kind: str
    closed: bool
    app_data: dict[str, Any]

    @property
    def observer(self) -> Emitter: ...

    def close(self) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def get_stats(self) -> list[Json]: ...


class Consumer(Emitter, Protocol):
    id: str
    kind: str
    closed: bool
    producer_id: str

    @property
    def observer(self) -> Emitter: ...

    @property
    def type(self) -> str: ...

    @property
    def rtp_parameters(self) -> Json: ...

    @property
    def producer_paused_state(self) -> bool: ...

    def close(self) -> None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def request_key_frame(self) -> None: ...

    async def get_stats(self) -> list[Json]: ...


class DataProducer(Emitter, Protocol):
    id: str
    closed: bool
    app_data: dict[str, Any]

    @property
    def observer(self) -> Emitter: ...

    def close(self) -> None: ...

    async def get_stats(self) -> list[Json]: ...


class DataConsumer(Emitter, Protocol):
    id: str
    closed: bool
    data_producer_id: str
    label: str
    protocol: str

    @property
    def observer(self) -> Emitter: ...

    @property
    def sctp_stream_parameters(self) -> Json: ...

    def close(self) -> None: ...

    async def get_stats(self) -> list[Json]: ...


class WebRtcTransport(Emitter, Protocol):
    id: str
    closed: bool
    app_data: dict[str, Any]

    @property
    def observer(self) -> Emitter: ...

    end_reason: TransportEndReason | None
    last_activity: float
    """Loop time of the last authenticated packet (liveness reads it every tick)."""

    @property
    def ice_parameters(self) -> Json: ...

    @property
    def ice_candidates(self) -> list[Json]: ...

    @property
    def ice_selected_tuple(self) -> Json | None:
        """mediasoup's ``iceSelectedTuple`` (``protocol``: udp or tcp)."""
        ...

    @property
    def dtls_parameters(self) -> Json: ...

    @property
    def sctp_parameters(self) -> Json | None: ...

    # What it owns (mediasoup's tree): the one place they are kept.
    @property
    def producers(self) -> Mapping[str, Producer]: ...

    @property
    def consumers(self) -> Mapping[str, Consumer]: ...

    @property
    def data_producers(self) -> Mapping[str, DataProducer]: ...

    @property
    def data_consumers(self) -> Mapping[str, DataConsumer]: ...

    def link_sample(self, now: float) -> LinkSample:
        """Loss, jitter, RTT and consent gaps since the last sample (quality grading)."""
        ...

    async def connect(self, dtls_parameters: Any) -> None: ...

    async def restart_ice(self) -> Json: ...

    async def produce(
        self,
        *,
        kind: str,
        rtp_parameters: Json,
        paused: bool = False,
        app_data: dict[str, Any] | None = None,
    ) -> Producer: ...

    async def consume(
        self, *, producer_id: str, rtp_capabilities: Json, paused: bool = False
    ) -> Consumer: ...

    async def produce_data(
        self,
        *,
        sctp_stream_parameters: Json,
        label: str = "",
        protocol: str = "",
        app_data: dict[str, Any] | None = None,
    ) -> DataProducer: ...

    async def consume_data(self, *, data_producer_id: str) -> DataConsumer: ...

    async def get_stats(self) -> list[Json]: ...

    def close(self) -> None: ...


class AudioLevelObserver(Emitter, Protocol):
    """mediasoup's: ``volumes`` (a list of (producer, dBov), loudest first) and ``silence``."""

    async def add_producer(self, producer_id: str) -> None: ...


class Router(Protocol):
    id: str
    closed: bool

    @property
    def observer(self) -> Emitter: ...

    @property
    def rtp_capabilities(self) -> Json: ...

    def can_consume(self, producer_id: str, rtp_capabilities: Any) -> bool: ...

    async def create_webrtc_transport(
        self,
        *,
        enable_sctp: bool = False,
        num_sctp_streams: tuple[int, int] = (1024, 1024),
        app_data: dict[str, Any] | None = None,
        enable_udp: bool = True,
        enable_tcp: bool | None = None,
    ) -> WebRtcTransport: ...

    async def create_audio_level_observer(
        self, *, max_entries: int = 1, threshold: int = -80, interval: float = 1.0
    ) -> AudioLevelObserver: ...

    def close(self) -> None: ...


class Worker(Protocol):
    closed: bool

    @property
    def observer(self) -> Emitter: ...

    async def create_router(self, *, app_data: dict[str, Any] | None = None) -> Router: ...

    def resource_counts(self) -> dict[str, int]: ...

    def port_usage(self) -> tuple[int, int]: ...

    @property
    def datagram_errors(self) -> dict[str, int]: ...

    def close(self) -> None: ...
