"""Worker: the process-wide media settings, certificate and routers.

mediasoup runs a C++ worker process; here the "worker" is in-process, but it
keeps the same role: it owns the routers, the DTLS certificate every
transport presents (one per worker, as mediasoup does), and the port range of
the transports' UDP sockets and ICE-TCP listeners.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .aiortc_bridge import RTCCertificate
from .datagram_errors import new_error_counts
from .errors import InvalidStateError
from .events import EventEmitter
from .ports import PortAllocator, PortRange
from .router import Router
from .rtp_parameters import DEFAULT_MEDIA_CODECS, Json
from .webrtc_transport import MIN_CONSENT_TIMEOUT, TransportSettings


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    listen_ip: str = "127.0.0.1"
    """Address the UDP sockets bind to (a concrete address: replies must come
    from the address the client sent to)."""
    announced_address: str | None = None
    """Address put in ICE candidates, when clients reach us through NAT."""
    port_range: PortRange = field(default_factory=PortRange)
    consent_timeout: float = 30.0
    """RFC 7675 consent lifetime; mediasoup's default, never below 10 s."""
    key_frame_request_interval: float = 0.2
    """At most one PLI per producer per interval; later requests are deferred."""
    sctp_send_buffer_size: int = 262144
    """mediasoup's ``sctpSendBufferSize`` default for every transport: bytes an SCTP
    association may hold towards a client; data consumer messages beyond it are
    dropped (a receiver that stops reading cannot grow server memory)."""
    error_log_interval: float = 60.0
    """Per transport, at most one log line about malformed datagrams per interval."""
    stall_tolerance: float | None = 1.0
    """A consent timer firing this late means the server stalled, not the client."""
    consent_resync_window: float = 6.0
    """After a server stall, how long a client has to send a consent check."""
    max_queued_dtls_records: int = 1024
    """Per transport, DTLS datagrams waiting to be processed; more are dropped."""
    stream_inactivity_timeout: float = 0.5
    """A video encoding silent this long is inactive (simulcast consumers fall back)."""
    encoding_stop_timeout: float = 0.25
    """A simulcast encoding silent this long while a lower one sends is inactive
    (the sender turned it off; 0: wait for ``stream_inactivity_timeout``)."""
    audio_stream_inactivity_timeout: float = 2.0
    """The same for audio (Opus DTX sends a packet every 400 ms in silence)."""
    initial_incoming_bitrate: int = 1_000_000
    """The first REMB a sending client gets, before anything is measured (0: measure first)."""
    max_incoming_bitrate: int = 0
    """Cap on every transport's REMB (``transport.set_max_incoming_bitrate``; 0: none)."""
    initial_outgoing_bitrate: int = 600_000
    """mediasoup's ``initialAvailableOutgoingBitrate``: a receiving client's estimate
    until its REMB or receiver reports arrive."""
    enable_tcp: bool = True
    """Whether transports also get a passive ICE-TCP candidate unless told
    otherwise (``create_webrtc_transport(enable_tcp=...)``).  On, unlike
    mediasoup's ``enableTcp`` default: a server people join from anywhere needs
    it, or a network that drops UDP (corporate, hotel, some mobile) leaves them
    with no media at all; mediasoup-demo turns it on too.  UDP keeps the higher
    priority, so a client that can use UDP does; the cost is a listening socket
    per transport."""
    prefer_udp: bool = False
    prefer_tcp: bool = False
    """mediasoup's ``preferUdp``/``preferTcp`` defaults: the candidate order
    (UDP first unless TCP is preferred and UDP is not)."""
    max_tcp_connections: int = 8
    """Per transport, ICE-TCP connections open at a time; more are closed on arrival."""
    tcp_stun_timeout: float = 5.0
    """An ICE-TCP connection silent (no authenticated STUN binding request) this
    long is closed."""
    tcp_write_limit: int = 262144
    """Per ICE-TCP connection, bytes waiting to be sent above which media is dropped."""

    def __post_init__(self) -> None:
        if self.consent_timeout < MIN_CONSENT_TIMEOUT:
            raise ValueError(f"consent_timeout must be at least {MIN_CONSENT_TIMEOUT} s")
        if self.key_frame_request_interval < 0:
            raise ValueError("key_frame_request_interval must not be negative")
        self.transport_settings()  # the same checks as every transport's

    def transport_settings(self, **overrides: Any) -> TransportSettings:
        """A transport's settings: these defaults, with per-transport ``overrides``."""
        values: dict[str, Any] = {
            "consent_timeout": self.consent_timeout,
            "key_frame_request_interval": self.key_frame_request_interval,
            "sctp_send_buffer_size": self.sctp_send_buffer_size,
            "error_log_interval": self.error_log_interval,
            "stall_tolerance": self.stall_tolerance,
            "consent_resync_window": self.consent_resync_window,
            "max_queued_dtls_records": self.max_queued_dtls_records,
            "stream_inactivity_timeout": self.stream_inactivity_timeout,
            "encoding_stop_timeout": self.encoding_stop_timeout,
            "audio_stream_inactivity_timeout": self.audio_stream_inactivity_timeout,
            "initial_incoming_bitrate": self.initial_incoming_bitrate,
            "max_incoming_bitrate": self.max_incoming_bitrate,
            "initial_outgoing_bitrate": self.initial_outgoing_bitrate,
            "max_tcp_connections": self.max_tcp_connections,
            "tcp_stun_timeout": self.tcp_stun_timeout,
            "tcp_write_limit": self.tcp_write_limit,
        }
        values.update(overrides)
        return TransportSettings(**values)


class Worker(EventEmitter):
    """mediasoup ``Worker``: observer ``newrouter``, ``close``.

    ``datagram_errors`` counts, since the worker started, the inbound datagrams
    its transports dropped because they did not parse or decrypt, by kind:
    ``stun``, ``dtls``, ``srtp``, ``rtp``, ``rtcp``, ``sctp``, and ``internal``
    (an unexpected exception, i.e. a bug, contained by the datagram backstop).
    Every key is present from the start; metrics read it at scrape time.
    See ``media.datagram_errors.ERROR_KINDS`` for what each kind covers.
    """

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.settings = settings or WorkerSettings()
        self.observer = EventEmitter()
        self.closed = False
        self.routers: dict[str, Router] = {}
        self.certificate = RTCCertificate.generateCertificate()
        self.port_allocator = PortAllocator(self.settings.listen_ip, self.settings.port_range)
        self.datagram_errors: dict[str, int] = new_error_counts()

    def port_usage(self) -> tuple[int, int]:
        """(media ports this worker holds, ports in its pool).

        The pool is the configured ``port_range``; with ``0..0`` the kernel
        picks any ephemeral port and the pool size is reported as 0 (no fixed
        pool: compute no ratio).  Ports of the range held by other processes
        are not counted in use, yet are not available either.
        """
        return self.port_allocator.in_use(), self.port_allocator.pool_size

    async def create_router(
        self, media_codecs: list[Json] | None = None, app_data: dict[str, Any] | None = None
    ) -> Router:
        if self.closed:
            raise InvalidStateError("worker closed")
        router = Router(
            worker=self, media_codecs=media_codecs or DEFAULT_MEDIA_CODECS, app_data=app_data
        )
        self.routers[router.id] = router
        self.observer.emit("newrouter", router)
        return router

    def router_closed(self, router: Router) -> None:
        self.routers.pop(router.id, None)

    def resource_counts(self) -> dict[str, int]:
        """Every registry's size: what a leak test and the metrics read."""
        counts = {
            "routers": len(self.routers),
            "transports": 0,
            "producers": 0,
            "consumers": 0,
            "data_producers": 0,
            "data_consumers": 0,
        }
        for router in self.routers.values():
            counts["transports"] += len(router.transports)
            for transport in router.transports.values():
                counts["producers"] += len(transport.producers)
                counts["consumers"] += len(transport.consumers)
                counts["data_producers"] += len(transport.data_producers)
                counts["data_consumers"] += len(transport.data_consumers)
        return counts

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        routers, self.routers = self.routers, {}
        for router in list(routers.values()):
            router.worker_closed()
        self.observer.emit("close")
        self.release_listeners()
