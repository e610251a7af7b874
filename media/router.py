"""Router: one room's media, owning its transports and indexing its producers."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from .audio_level_observer import AudioLevelObserver
from .data_producer import DataProducer
from .errors import InvalidParametersError, InvalidStateError
from .events import EventEmitter
from .producer import Producer
from .rtp_parameters import Json, can_consume, generate_router_rtp_capabilities
from .webrtc_transport import TransportSettings, WebRtcTransport, create_webrtc_transport

if TYPE_CHECKING:
    from .worker import Worker


class Router(EventEmitter):
    """mediasoup ``Router``: events ``workerclose``; observer ``close``,
    ``newtransport``, ``newrtpobserver``.

    The router owns its transports (id-keyed); producers and data producers
    are owned by their transports and only indexed here, so that any transport
    of the room can consume them by id.
    """

    def __init__(
        self, *, worker: Worker, media_codecs: list[Json], app_data: dict[str, Any] | None
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.rtp_capabilities = generate_router_rtp_capabilities(media_codecs)
        self.transports: dict[str, WebRtcTransport] = {}
        self.rtp_observers: dict[str, AudioLevelObserver] = {}
        self._producers: dict[str, Producer] = {}
        self._data_producers: dict[str, DataProducer] = {}
        self._worker = worker

    def __repr__(self) -> str:
        return f"<Router {self.id}{' closed' if self.closed else ''}>"

    async def create_webrtc_transport(
        self,
        *,
        enable_sctp: bool = False,
        num_sctp_streams: tuple[int, int] = (1024, 1024),
        max_sctp_message_size: int = 262144,
        sctp_send_buffer_size: int | None = None,
        consent_timeout: float | None = None,
        initial_available_outgoing_bitrate: int | None = None,
        app_data: dict[str, Any] | None = None,
        enable_udp: bool = True,
        enable_tcp: bool | None = None,
        prefer_udp: bool | None = None,
        prefer_tcp: bool | None = None,
    ) -> WebRtcTransport:
        """A transport bound to the worker's listen IP and port range.

        Unset options take the worker's settings (``WorkerSettings``).
        ``initial_available_outgoing_bitrate`` is mediasoup's option of that
        name: the downlink estimate before the client's feedback (bits/s).

        ``enable_udp``, ``enable_tcp``, ``prefer_udp`` and ``prefer_tcp`` (the
        last three default to the worker's settings) are mediasoup's: a UDP
        host candidate, a passive ICE-TCP one, or both, UDP's the higher
        priority unless TCP is preferred and UDP is not.  At least one protocol
        must be enabled.
        """
        if self.closed:
            raise InvalidStateError("router closed")
        defaults = self._worker.settings
        if enable_tcp is None:
            enable_tcp = defaults.enable_tcp
        if prefer_udp is None:
            prefer_udp = defaults.prefer_udp
        if prefer_tcp is None:
            prefer_tcp = defaults.prefer_tcp
        for name, flag in (
            ("enable_udp", enable_udp),
            ("enable_tcp", enable_tcp),
            ("prefer_udp", prefer_udp),
            ("prefer_tcp", prefer_tcp),
        ):
            if not isinstance(flag, bool):
                raise InvalidParametersError(f"{name} must be a boolean")
        if not enable_udp and not enable_tcp:
            raise InvalidParametersError("at least one of enable_udp and enable_tcp must be true")
        worker = self._worker
        overrides: dict[str, Any] = {
            "enable_sctp": enable_sctp,
            "num_sctp_streams": num_sctp_streams,
            "max_sctp_message_size": max_sctp_message_size,
        }
        if consent_timeout is not None:
            overrides["consent_timeout"] = consent_timeout
        if sctp_send_buffer_size is not None:
            overrides["sctp_send_buffer_size"] = sctp_send_buffer_size
        if initial_available_outgoing_bitrate is not None:
            overrides["initial_outgoing_bitrate"] = initial_available_outgoing_bitrate
        settings: TransportSettings = worker.settings.transport_settings(**overrides)
        transport = await create_webrtc_transport(
            router=self,
            allocator=worker.port_allocator,
            announced_address=worker.settings.announced_address,
            certificate=worker.certificate,
            settings=settings,
            app_data=app_data,
            worker_errors=worker.datagram_errors,
            enable_udp=enable_udp,
            enable_tcp=enable_tcp,
            prefer_udp=prefer_udp,
            prefer_tcp=prefer_tcp,
        )
        if self.closed:  # closed while the socket was being bound
            transport.router_closed()
            raise InvalidStateError("router closed")
        self.transports[transport.id] = transport
        self.observer.emit("newtransport", transport)
        return transport

    async def create_audio_level_observer(
        self,
        *,
        max_entries: int = 1,
        threshold: int = -80,
        interval: float = 1.0,
        app_data: dict[str, Any] | None = None,
    ) -> AudioLevelObserver:
        """Who speaks, from the producers' audio levels (mediasoup's defaults;
        ``interval`` in seconds)."""
        if self.closed:
            raise InvalidStateError("router closed")
        observer = AudioLevelObserver(
            router=self,
            max_entries=max_entries,
            threshold=threshold,
            interval=interval,
            app_data=app_data,
        )
        self.rtp_observers[observer.id] = observer
        self.observer.emit("newrtpobserver", observer)
        return observer

    def can_consume(self, producer_id: str, rtp_capabilities: Any) -> bool:
        producer = self._producers.get(producer_id)
        return producer is not None and can_consume(
            producer.consumable_rtp_parameters, rtp_capabilities
        )

    # -- indexes kept by the transports -------------------------------------------

    def get_producer(self, producer_id: str) -> Producer | None:
        return self._producers.get(producer_id)

    def add_producer(self, producer: Producer) -> None:
        self._producers[producer.id] = producer

    def remove_producer(self, producer: Producer) -> None:
        self._producers.pop(producer.id, None)

    def get_data_producer(self, data_producer_id: str) -> DataProducer | None:
        return self._data_producers.get(data_producer_id)

    def add_data_producer(self, data_producer: DataProducer) -> None:
        self._data_producers[data_producer.id] = data_producer

    def remove_data_producer(self, data_producer: DataProducer) -> None:
        self._data_producers.pop(data_producer.id, None)

    def transport_closed(self, transport: WebRtcTransport) -> None:
        self.transports.pop(transport.id, None)

    def rtp_observer_closed(self, rtp_observer: AudioLevelObserver) -> None:
        self.rtp_observers.pop(rtp_observer.id, None)

    @property
    def producer_count(self) -> int:
        return len(self._producers)

    @property
    def data_producer_count(self) -> int:
        return len(self._data_producers)

    # -- close ------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self._close()
        self._worker.router_closed(self)
        self.release_listeners()

    def worker_closed(self) -> None:
        if self.closed:
            return
        self._close()
        self.emit("workerclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        transports, self.transports = self.transports, {}
        for transport in list(transports.values()):
            transport.router_closed()
        rtp_observers, self.rtp_observers = self.rtp_observers, {}
        for rtp_observer in list(rtp_observers.values()):
            rtp_observer.router_closed()
        self._producers.clear()
        self._data_producers.clear()
        self.observer.emit("close")
