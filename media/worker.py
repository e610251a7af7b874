"""Worker: the process-wide media settings, certificate and routers.

mediasoup runs a C++ worker process; here the "worker" is in-process, but it
keeps the same role: it owns the routers, the DTLS certificate every
transport presents (one per worker, as mediasoup does), and the UDP port range.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .aiortc_bridge import RTCCertificate
from .errors import InvalidStateError
from .events import EventEmitter
from .ports import PortAllocator, PortRange
from .router import Router
from .rtp_parameters import DEFAULT_MEDIA_CODECS, Json
from .webrtc_transport import MIN_CONSENT_TIMEOUT


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

    def __post_init__(self) -> None:
        if self.consent_timeout < MIN_CONSENT_TIMEOUT:
            raise ValueError(f"consent_timeout must be at least {MIN_CONSENT_TIMEOUT} s")
        if self.key_frame_request_interval < 0:
            raise ValueError("key_frame_request_interval must not be negative")


class Worker(EventEmitter):
    """mediasoup ``Worker``: observer ``newrouter``, ``close``."""

    def __init__(self, settings: WorkerSettings | None = None) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.settings = settings or WorkerSettings()
        self.observer = EventEmitter()
        self.closed = False
        self.routers: dict[str, Router] = {}
        self.certificate = RTCCertificate.generateCertificate()
        self.port_allocator = PortAllocator(self.settings.listen_ip, self.settings.port_range)

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
