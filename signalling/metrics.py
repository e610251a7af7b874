"""Prometheus metrics, fed by observer events and read from the registries.

Business code never imports prometheus-client nor calls into this module: the
media objects are counted through their ``observer`` emitters (as mediasoup's
observer API intends), sessions through the lifecycle's, the edge's events
(requests, refusals, stalls...) through the server's, and the gauges are
computed at scrape time, on the event loop's thread, from what ``Observed``
names.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .liveness import ActivityLevel, EndReason, SessionState
from .process_stats import OpenFiles, ProcessCollector

if TYPE_CHECKING:
    from media.api import Router, WebRtcTransport, Worker
    from media.events import EventEmitter

    from .admission_queue import AdmissionQueue
    from .connection import Connection
    from .lifecycle import SessionLifecycle
    from .liveness import Session, SessionRegistry
    from .lobby import Lobby
    from .quality import QualityBoard
    from .rooms import Room


class Observed(Protocol):
    """What metrics read and listen to (the server provides it)."""

    loop: asyncio.AbstractEventLoop
    registry: SessionRegistry
    lifecycle: SessionLifecycle
    worker: Worker
    observer: EventEmitter
    loop_lag: float
    connections_by_ip: dict[str, int]
    queue: AdmissionQueue
    quality: QualityBoard[tuple[str, str]] | None
    lobby: Lobby
    open_files: OpenFiles

    @property
    def rooms(self) -> dict[str, Room]: ...

    @property
    def connections(self) -> dict[int, Connection]: ...


REFUSAL_REASONS = (
    "unauthorized",
    "bad_request",
    "room_full",
    "server_full",
    "queue_full",
    "identity_in_use",
    "peer_id_in_use",
    "resume_token_invalid",
    "connections_per_ip",
    "connection_rate",
    "capacity",
    "rate_limited",
    "slow_reader",
    "no_free_port",
    "room_elsewhere",
    "directory_unavailable",
    "cluster_connections_per_ip",
    "cluster_full",
)
"""Every ``reason`` of ``ghostless_refusals_total`` (docs/operations.md)."""

MEDIA_KINDS = (
    "routers",
    "transports",
    "producers",
    "consumers",
    "data_producers",
    "data_consumers",
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DETECTION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 30)


class _SessionCollector(Collector):
    def __init__(self, server: Observed) -> None:
        self._server = server

    def collect(self) -> Any:
        server = self._server
        registry = server.registry
        by_state = GaugeMetricFamily("ghostless_sessions", "Sessions by state", labels=["state"])
        for state, count in registry.count_by_state().items():
            if state is not SessionState.CLOSED:
                by_state.add_metric([state.value], count)
        yield by_state
        now = server.loop.time()
        levels = dict.fromkeys(ActivityLevel, 0)
        for session in registry.by_id.values():
            levels[registry.activity_level(session, now)] += 1
        by_level = GaugeMetricFamily(
            "ghostless_sessions_by_activity", "Sessions by activity level", labels=["level"]
        )
        for level, count in levels.items():
            by_level.add_metric([level.value], count)
        yield by_level
        yield GaugeMetricFamily(
            "ghostless_connections", "Open WebSocket connections", value=len(server.connections)
        )
        yield GaugeMetricFamily("ghostless_rooms", "Open rooms", value=len(server.rooms))
        yield GaugeMetricFamily(
            "ghostless_peers",
            "Joined peers",
            value=sum(len(room.joined_peers()) for room in server.rooms.values()),
        )
        yield GaugeMetricFamily(
            "ghostless_event_loop_lag_seconds",
            "Lateness of the liveness tick (every 0.1 s)",
            value=server.loop_lag,
        )
        in_use, total = server.worker.port_usage()
        yield GaugeMetricFamily(
            "ghostless_rtc_ports_in_use",
            "Media ports of the pool in use (the fuller of UDP and TCP)",
            value=in_use,
        )
        yield GaugeMetricFamily(
            "ghostless_rtc_ports", "Media UDP ports in the pool (0: any port)", value=total
        )
        errors = CounterMetricFamily(
            "ghostless_datagram_errors",
            "Malformed or undecryptable datagrams dropped by the media plane, by kind",
            labels=["kind"],
        )
        for kind, count in sorted(server.worker.datagram_errors.items()):
            errors.add_metric([kind], count)
        yield errors
        yield GaugeMetricFamily(
            "ghostless_client_addresses",
            "Client IP addresses with open connections",
            value=len(server.connections_by_ip),
        )
        yield GaugeMetricFamily(
            "ghostless_queue_length", "Clients waiting in the queue", value=len(server.queue)
        )
        if server.quality is not None:
            graded = GaugeMetricFamily(
                "ghostless_peers_by_quality",
                "Joined peers by connection quality grade",
                labels=["quality"],
            )
            for grade, count in server.quality.counts_by_grade().items():
                graded.add_metric([grade.value], count)
            yield graded
        directory = server.lifecycle.directory
        yield GaugeMetricFamily(
            "ghostless_directory_up",
            "1 when new rooms can be registered in the directory (Redis reachable, lease held)",
            value=1 if directory.up else 0,
        )
        yield GaugeMetricFamily(
            "ghostless_directory_rooms_held",
            "Rooms whose lease this node holds in the directory",
            value=len(server.rooms),
        )
        yield GaugeMetricFamily(
            "ghostless_lobby_viewers",
            "Room-list viewers subscribed to the lobby",
            value=len(server.lobby.viewers),
        )
        # Media that no open session owns: a ghost in the making (should stay 0).
        owned = sum(
            len(peer.transports) for room in server.rooms.values() for peer in room.peers.values()
        )
        yield GaugeMetricFamily(
            "ghostless_orphaned_transports",
            "WebRTC transports that no open session owns",
            value=max(0, server.worker.resource_counts()["transports"] - owned),
        )


class Metrics:
    def __init__(self, server: Observed) -> None:
        # Prometheus's "registry": here ``collectors``, as ``registry`` is the sessions'.
        self.collectors = CollectorRegistry(auto_describe=True)
        collectors = self.collectors
        self._loop = server.loop
        collectors.register(_SessionCollector(server))
        # process_open_fds, process_max_fds, process_resident_memory_bytes...
        collectors.register(ProcessCollector(server.open_files))
        self.media = Gauge(
            "ghostless_media_objects", "Open media objects", ["kind"], registry=collectors
        )
        self._media = {kind: self.media.labels(kind) for kind in MEDIA_KINDS}
        self.ended = Counter(
            "ghostless_sessions_ended", "Sessions ended, by reason", ["reason"], registry=collectors
        )
        self._ended = {reason: self.ended.labels(reason.value) for reason in EndReason}
        self.resumed = Counter(
            "ghostless_sessions_resumed",
            "Sessions resumed within the grace period",
            registry=collectors,
        )
        self.requests = Counter(
            "ghostless_requests",
            "protoo requests, by method and outcome",
            ["method", "outcome"],
            registry=collectors,
        )
        self.request_duration = Histogram(
            "ghostless_request_duration_seconds",
            "protoo request handling time",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=collectors,
        )
        self.protocol_violations = Counter(
            "ghostless_protocol_violations",
            "Connections closed for protocol violations",
            registry=collectors,
        )
        self.ping_rtt = Histogram(
            "ghostless_ping_rtt_seconds",
            "Ping round-trip time",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=collectors,
        )
        self.ping_rtt_client = self.ping_rtt.labels("client")
        self.ping_rtt_probe = self.ping_rtt.labels("probe")
        self.sweep_duration = Histogram(
            "ghostless_sweep_duration_seconds",
            "Duration of one stale-session sweep",
            buckets=LATENCY_BUCKETS,
            registry=collectors,
        )
        self.detection_to_cleanup = Histogram(
            "ghostless_detection_to_cleanup_seconds",
            "From detecting that a participant is gone to its media being released",
            ["reason"],
            buckets=DETECTION_BUCKETS,
            registry=collectors,
        )
        self.refusals = Counter(
            "ghostless_refusals",
            "Connections and requests refused by a limit or a check, by reason",
            ["reason"],
            registry=collectors,
        )
        self._refusals: dict[str, Any] = {}
        self.rate_limited_messages = Counter(
            "ghostless_rate_limited_messages",
            "Messages refused by a per-connection rate limit, by kind",
            ["kind"],
            registry=collectors,
        )
        self._rate_limited: dict[str, Any] = {}
        self.queue_wait = Histogram(
            "ghostless_queue_wait_seconds",
            "Time spent in the waiting queue, by how it ended",
            ["outcome"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=collectors,
        )
        for outcome in ("admitted", "timeout", "left"):
            self.queue_wait.labels(outcome)
        self.stalls = Counter(
            "ghostless_event_loop_stalls",
            "Times the event loop stalled past stall_tolerance (deadlines were resynchronised)",
            registry=collectors,
        )
        self._request_children: dict[tuple[str, str], Any] = {}
        self._duration_children: dict[str, Any] = {}
        server.worker.observer.on("newrouter", self._new_router)
        self._listen(server)
        self._create_series()

    def _listen(self, server: Observed) -> None:
        lifecycle = server.lifecycle.observer
        lifecycle.on("sessionresumed", lambda _: self.resumed.inc())
        lifecycle.on("sessionended", self._session_ended)
        edge = server.observer
        edge.on("refused", self.refused)
        edge.on(
            "queuewait", lambda outcome, seconds: self.queue_wait.labels(outcome).observe(seconds)
        )
        edge.on("protocolviolation", self.protocol_violations.inc)
        edge.on("ratelimited", self.rate_limited)
        edge.on("request", self.observe_request)
        edge.on("clientrtt", self.ping_rtt_client.observe)
        edge.on("proberrtt", self.ping_rtt_probe.observe)
        edge.on("stall", self.stalls.inc)
        edge.on("sweep", self.sweep_duration.observe)

    def _create_series(self) -> None:
        """Create every labelled series at start, at zero.

        A series that first appears with the value 1 shows no increase to
        ``rate()`` and ``increase()``: the first failure or refusal would be
        invisible to the alerts."""
        from .rooms import Room  # the request methods (no import cycle at module level)

        for method in (*Room.HANDLERS, "ping", "beforeDisconnect", "unknown"):
            for outcome in ("ok", "error", "failed"):
                self.observe_request_series(method, outcome)
            if method != "ping":
                self._duration_children[method] = self.request_duration.labels(method)
        for reason in EndReason:
            self.detection_to_cleanup.labels(reason.value)
        for refusal in REFUSAL_REASONS:
            self.refused_series(refusal)
        for kind in ("request", "notification", "response"):
            self._rate_limited[kind] = self.rate_limited_messages.labels(kind)

    def observe_request_series(self, method: str, outcome: str) -> Any:
        key = (method, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(method, outcome)
        return child

    def refused_series(self, reason: str) -> Any:
        child = self._refusals.get(reason)
        if child is None:
            child = self._refusals[reason] = self.refusals.labels(reason)
        return child

    # -- media objects, through observer events ----------------------------------------

    def _count(self, kind: str, observer: Any) -> None:
        gauge = self._media[kind]
        gauge.inc()
        observer.on("close", gauge.dec)

    def _new_router(self, router: Router) -> None:
        self._count("routers", router.observer)
        router.observer.on("newtransport", self._new_transport)

    def _new_transport(self, transport: WebRtcTransport) -> None:
        self._count("transports", transport.observer)
        observer = transport.observer
        observer.on("newproducer", lambda p: self._count("producers", p.observer))
        observer.on("newconsumer", lambda c: self._count("consumers", c.observer))
        observer.on("newdataproducer", lambda d: self._count("data_producers", d.observer))
        observer.on("newdataconsumer", lambda d: self._count("data_consumers", d.observer))

    # -- sessions and requests --------------------------------------------------------------

    def _session_ended(
        self, session: Session, reason: EndReason, detected_at: float | None = None
    ) -> None:
        self._ended[reason].inc()
        if detected_at is not None:
            self.detection_to_cleanup.labels(reason.value).observe(
                max(0.0, self._loop.time() - detected_at)
            )

    def refused(self, reason: str) -> None:
        self.refused_series(reason).inc()

    def rate_limited(self, kind: str) -> None:
        child = self._rate_limited.get(kind)
        if child is None:
            child = self._rate_limited[kind] = self.rate_limited_messages.labels(kind)
        child.inc()

    def observe_request(self, method: str, outcome: str, duration: float) -> None:
        self.observe_request_series(method, outcome).inc()
        if method == "ping":
            return  # the hot path: counted, not timed
        timer = self._duration_children.get(method)
        if timer is None:
            timer = self._duration_children[method] = self.request_duration.labels(method)
        timer.observe(duration)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.collectors), CONTENT_TYPE_LATEST
