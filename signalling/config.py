"""Configuration: CLI flags, ``GHOSTLESS_*`` environment variables, defaults.

Precedence: flag > environment > default.  Everything is validated at start
and a bad value stops the process with one clear line (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .directory import LeaseTimings
from .liveness import LivenessPolicy, TakeoverPolicy
from .payloads import PeerLimits
from .quality import QualityPolicy
from .rate_limit import RateLimit, RatePolicy
from .tokens import TokenVerifier


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


_PEER_LIMITS = PeerLimits()


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9102
    rtc_listen_ip: str = "127.0.0.1"
    rtc_announced_address: str | None = None
    rtc_min_port: int = 40000
    rtc_max_port: int = 49999
    rtc_enable_tcp: bool = True
    """Passive ICE-TCP candidates besides UDP, so that clients whose network
    drops UDP can still connect (mediasoup's ``enableTcp``; clients that ask
    with ``forceTcp`` get TCP only).  TCP listeners take ports of the same range."""
    rtc_prefer_udp: bool = False
    rtc_prefer_tcp: bool = False
    """mediasoup's ``preferUdp``/``preferTcp``: which candidate gets the higher
    priority (UDP's unless TCP is preferred and UDP is not)."""
    rtc_max_tcp_connections: int = 8
    """ICE-TCP connections per transport; more are closed on arrival."""
    consent_timeout: float = 30.0
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    """Connection quality grading (``peerQuality``): thresholds and hysteresis."""
    room_close_delay: float = 20.0
    max_peers_per_room: int | None = None
    max_message_size: int = 128 * 1024
    request_timeout: float = 30.0
    token_secret: str | None = None
    """HS256 shared secret for the ``token`` URL parameter; with it (or ``token_jwks``)
    every connection must present a valid token, and its identity is the token's."""
    token_jwks: str | None = None
    """Path of a JWKS file (RFC 7517) of verification keys, selected by ``kid``."""
    token_leeway: float = 30.0
    token_max_lifetime: float = 86400.0
    token_audience: str | None = None
    token_issuer: str | None = None
    max_sessions: int | None = None
    """Sessions of the whole process (the capacity a queue waits for)."""
    when_full: str = "refuse"
    """A full server or room: refuse newcomers (4503/4403) or queue them."""
    queue_timeout: float = 300.0
    max_queue_length: int = 1000
    listed_rooms: tuple[str, ...] = ("*",)
    """Glob patterns of the rooms the lobby lists (``GET /rooms``, ``/lobby``)."""
    lobby_update_interval: float = 0.5
    """A room's changes reach lobby viewers at most once per interval."""
    max_connections: int | None = 16000
    """WebSocket connections of the whole process (each holds a file descriptor)."""
    max_connections_per_ip: int | None = 50
    ip_connection_rate: RateLimit = field(default_factory=lambda: RateLimit(10.0, 50.0))
    """New connections per client address: a sustained rate and a burst."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks (CIDR) of proxies whose X-Forwarded-For names the client address."""
    max_outbound_bytes: int = 1 << 20
    """Bytes a client may leave unread before its connection is closed (4413)."""
    message_rate: RateLimit = field(default_factory=lambda: RatePolicy().messages)
    broadcast_rate: RateLimit = field(default_factory=lambda: RatePolicy().broadcasts)
    heartbeat_rate: RateLimit = field(default_factory=lambda: RatePolicy().heartbeats)
    refusal_rate: RateLimit = field(default_factory=lambda: RatePolicy().strikes)
    # The per-peer limits default to PeerLimits' (one source of the numbers).
    max_display_name_length: int = _PEER_LIMITS.display_name_length
    max_device_bytes: int = _PEER_LIMITS.device_bytes
    max_app_data_bytes: int = _PEER_LIMITS.app_data_bytes
    max_transports_per_peer: int = _PEER_LIMITS.transports
    max_producers_per_peer: int = _PEER_LIMITS.producers
    max_data_producers_per_peer: int = _PEER_LIMITS.data_producers
    sctp_send_buffer_size: int = 262144
    """Bytes a data channel association may hold towards a client (mediasoup's
    ``sctpSendBufferSize``); data consumer messages beyond it are dropped."""
    max_queued_dtls_records: int = 1024
    """Per transport, DTLS datagrams waiting to be processed; more are dropped."""
    media_error_log_interval: float = 60.0
    """Per transport, at most one log line about malformed datagrams per interval."""
    consent_resync_window: float = 6.0
    """After a server stall, how long a client has to send an ICE consent check."""
    ready_max_port_use: float = 0.9
    """/readyz says not ready when this share of the media port pool is in use..."""
    ready_max_fd_use: float = 0.9
    """... or this share of the process's open-file limit."""
    open_files_relist_interval: float = 5.0
    """Kernels before Linux 6.2 can only count open files by listing them (a
    stall at thousands): at most one listing per this many seconds."""
    shutdown_timeout: float = 10.0
    reconnect_delay: float = 2.0
    """Told to clients in ``serverShutdown``: when to reconnect."""
    log_format: str = "text"
    log_level: str = "INFO"
    gc_freeze: bool = True
    """``gc.freeze()`` on every liveness tick, so collections never rescan old objects."""
    gc_collect_interval: float | None = 3600.0
    """With gc_freeze: a full collection this often, as insurance (see docs)."""
    tick_interval: float = 0.1
    """The liveness clock: ten small ticks a second rather than one big one, so
    that probing thousands of sessions never stalls the loop for long."""
    probe_chunk: int = 32
    """Keepalive pings sent per slice of a tick before yielding to the loop."""
    ws_close_timeout: float = 2.0
    """How long a closing WebSocket waits for the client's close frame."""
    ws_max_queue: int = 16
    """Incoming frames websockets buffers per connection before it stops reading."""
    listen_backlog: int = 4096
    """Connections the kernel queues for the WebSocket port before they are
    accepted (asyncio's default is 100): a reconnect storm (a node died, a
    balancer redispatches its rooms) beyond it has SYNs dropped, each retried
    after a second, and behind HAProxy's connect timeout that redispatches
    the connection to another node.  Capped by the kernel's somaxconn."""
    ws_write_high_water: int = 1 << 15
    """websockets' write buffer high-water mark: above it, its own sends (close
    frames, keepalive pings) wait for the client to read."""
    speech_interval: float | None = 0.8
    """How often a room says who speaks (mediasoup-demo's AudioLevelObserver
    interval; None: never)."""
    refusal_log_interval: float = 10.0
    """How often one kind of refusal (bad token, rate limit...) may be logged."""
    redis_url: str | None = None
    """The shared directory of several nodes (docs/scaling.md), e.g.
    ``redis://127.0.0.1:6379/0``; None: a single node with no Redis (LocalDirectory)."""
    redis_prefix: str = "ghostless"
    """Prefix of every key in Redis (several deployments may share one Redis)."""
    node_id: str | None = None
    """This node's name in the directory; None: ``hostname:port``.  Unique per process."""
    node_address: str | None = None
    """The address recorded for this node (operators, the lobby); None: ``host:port``."""
    lease_ttl: float = 3.0
    """The node's liveness lease in Redis: a node silent this long is dead, and its
    rooms free to take."""
    lease_renew_interval: float = 1.0
    """How often the node renews its lease (and writes its load)."""
    lease_stall_limit: float = 15.0
    """The lease is renewed from a thread of its own while the event loop has
    run within this many seconds (a busy loop keeps its rooms, a wedged one
    loses them)."""
    reaper_interval: float = 1.0
    """How often the elected cluster reaper removes what dead nodes left."""
    redis_timeout: float = 0.5
    """Longest wait for one Redis call (connect or answer)."""
    cluster_connections_per_ip: bool = True
    """With ``redis_url``: ``max_connections_per_ip`` counts a client address's
    connections on every node (one Redis call per accepted connection); while
    Redis is unreachable each node applies it alone.  False: per node only."""
    cluster_max_sessions: int | None = None
    """With ``redis_url``: sessions of the whole deployment (newcomers beyond it
    get 4503, or wait in the queue with ``when_full`` queue); not enforced while
    Redis is unreachable (``max_sessions`` is)."""
    cluster_queue_retry: float = 1.0
    """With ``cluster_max_sessions`` and ``when_full`` queue: a queue waiting for
    a slot of the cluster asks Redis again after this long even when no release
    message came (they are lossy); a heard release makes it ask at once."""
    cluster_release_delay: float = 0.1
    """Connections and sessions that end are taken off the cluster-wide counts
    in batches, at most this late (at once when a newcomer is being admitted)."""
    lobby_linger: float = 30.0
    """With ``redis_url``: how long a node keeps following the other nodes'
    listed rooms after its last lobby viewer left."""
    lobby_max_remote_rooms: int = 10000
    """With ``redis_url``: at most this many rooms of other nodes are kept for
    the lobby (memory bound; beyond it new ones are not listed here)."""

    @property
    def lease_timings(self) -> LeaseTimings:
        """The directory's lease timings (validated in ``validate``)."""
        return LeaseTimings(
            ttl=self.lease_ttl,
            renew_interval=self.lease_renew_interval,
            stall_limit=self.lease_stall_limit,
            reaper_interval=self.reaper_interval,
            timeout=self.redis_timeout,
        )

    @property
    def peer_limits(self) -> PeerLimits:
        """What one peer may hold and send: the ``max_*`` per-peer options, in
        PeerLimits' field order (display name, device, appData, transports,
        producers, data producers)."""
        return PeerLimits(
            self.max_display_name_length,
            self.max_device_bytes,
            self.max_app_data_bytes,
            self.max_transports_per_peer,
            self.max_producers_per_peer,
            self.max_data_producers_per_peer,
        )


@dataclass(frozen=True)
class _Option:
    name: str  # Config field, or "liveness.<field>"
    kind: str  # int, float, optional_float, optional_int, str, optional_str, bool, choice,
    # rate ("RATE/BURST"), list (comma separated)
    help: str
    choices: tuple[str, ...] = ()


OPTIONS: tuple[_Option, ...] = (
    _Option("host", "str", "address the WebSocket/HTTP server listens on"),
    _Option("port", "int", "WebSocket/HTTP port"),
    _Option("metrics_host", "str", "address of the Prometheus metrics server"),
    _Option("metrics_port", "optional_int", "Prometheus metrics port ('off' to disable)"),
    _Option("rtc_listen_ip", "str", "IP address the media UDP/TCP sockets bind to"),
    _Option("rtc_announced_address", "optional_str", "address announced in ICE candidates"),
    _Option("rtc_min_port", "int", "lowest media UDP port"),
    _Option("rtc_max_port", "int", "highest media UDP port"),
    _Option("rtc_enable_tcp", "bool", "also offer passive ICE-TCP candidates (UDP-blocked users)"),
    _Option("rtc_prefer_udp", "bool", "UDP candidates first even with --rtc-prefer-tcp"),
    _Option("rtc_prefer_tcp", "bool", "TCP candidates first (unless --rtc-prefer-udp)"),
    _Option("rtc_max_tcp_connections", "int", "ICE-TCP connections per media transport"),
    _Option("consent_timeout", "float", "ICE consent timeout in seconds (>= 10, RFC 7675)"),
    _Option("liveness.heartbeat_interval", "float", "app ping interval told to clients (s)"),
    _Option("liveness.grace_period", "float", "how long a lost session may resume (s)"),
    _Option(
        "liveness.silence_timeout", "optional_float", "end a session silent on every plane (s)"
    ),
    _Option("liveness.probe_after", "float", "without media: probe after this WS silence (s)"),
    _Option(
        "liveness.media_probe_after", "float", "with media: probe after this silence on all planes"
    ),
    _Option(
        "liveness.media_silence_timeout",
        "optional_float",
        "with media: end a session silent on every plane (s)",
    ),
    _Option("liveness.socket_probe_after", "float", "with media: probe after this WS silence (s)"),
    _Option("liveness.stale_after", "optional_float", "sweeper: no app message for this long (s)"),
    _Option("liveness.sweep_interval", "float", "how often the sweeper runs (s)"),
    _Option("liveness.inactivity_limit", "optional_float", "end idle sessions with no media (s)"),
    _Option("liveness.idle_after", "float", "activity level idle after this (s)"),
    _Option("liveness.background_after", "float", "activity level background after this (s)"),
    _Option("liveness.join_timeout", "optional_float", "close connections not joined by then (s)"),
    _Option("liveness.stall_tolerance", "float", "a tick this late is a server stall (s)"),
    _Option("liveness.stall_resync", "float", "after a stall, end nobody for this long (s)"),
    _Option(
        "liveness.takeover",
        "choice",
        "second connection with the same identity",
        tuple(p.value for p in TakeoverPolicy),
    ),
    _Option("quality.interval", "optional_float", "grade connection quality this often (s)"),
    _Option("quality.rtt_unstable_ms", "optional_float", "heartbeat/RTCP RTT: unstable at (ms)"),
    _Option("quality.rtt_poor_ms", "optional_float", "RTT: poor at (ms)"),
    _Option("quality.loss_unstable", "optional_float", "packet loss: unstable at (fraction)"),
    _Option("quality.loss_poor", "optional_float", "packet loss: poor at (fraction)"),
    _Option("quality.jitter_unstable_ms", "optional_float", "jitter: unstable at (ms)"),
    _Option("quality.jitter_poor_ms", "optional_float", "jitter: poor at (ms)"),
    _Option("quality.consent_gap_unstable", "optional_float", "ICE consent gap: unstable at (s)"),
    _Option("quality.consent_gap_poor", "optional_float", "ICE consent gap: poor at (s)"),
    _Option("quality.degrade_samples", "int", "bad samples in a row before a worse grade"),
    _Option("quality.smoothing", "float", "EWMA weight of a new sample, (0, 1]"),
    _Option("quality.recovery_margin", "float", "a better grade needs values this far under"),
    _Option("quality.recovery_hold", "float", "... for this long (s)"),
    _Option("quality.min_loss_packets", "int", "packets a loss figure must cover"),
    _Option("quality.forget_after", "optional_float", "an unknown signal resets after (s)"),
    _Option("room_close_delay", "float", "close a room this long after its last peer left (s)"),
    _Option("max_peers_per_room", "optional_int", "refuse peers beyond this ('off' = no limit)"),
    _Option("max_message_size", "int", "largest WebSocket message accepted (bytes)"),
    _Option("request_timeout", "float", "timeout of server-to-client requests (s)"),
    _Option(
        "token_secret",
        "optional_str",
        "HS256 secret: every connection must then present a valid 'token' (JWT)",
    ),
    _Option("token_jwks", "optional_str", "JWKS file of token verification keys (by kid)"),
    _Option("token_leeway", "float", "clock skew allowed on token exp/nbf/iat (s)"),
    _Option("token_max_lifetime", "float", "refuse tokens valid for longer than this (s)"),
    _Option("token_audience", "optional_str", "required 'aud' claim of tokens"),
    _Option("token_issuer", "optional_str", "required 'iss' claim of tokens"),
    _Option("max_sessions", "optional_int", "session capacity of the process ('off')"),
    _Option("when_full", "choice", "a full server or room", ("refuse", "queue")),
    _Option("queue_timeout", "float", "longest wait in the queue (s)"),
    _Option("max_queue_length", "int", "clients the queue holds"),
    _Option("listed_rooms", "list", "glob patterns of rooms the lobby lists ('' = none)"),
    _Option("lobby_update_interval", "float", "lobby updates per room at most this often (s)"),
    _Option("max_connections", "optional_int", "WebSocket connections of the process"),
    _Option("max_connections_per_ip", "optional_int", "concurrent connections per client IP"),
    _Option("ip_connection_rate", "rate", "new connections per client IP: RATE/BURST"),
    _Option("trusted_proxies", "list", "CIDRs whose X-Forwarded-For is believed"),
    _Option("max_outbound_bytes", "int", "unread bytes before a client is closed (4413)"),
    _Option("message_rate", "rate", "requests+notifications per connection: RATE/BURST"),
    _Option("broadcast_rate", "rate", "room-wide methods per connection: RATE/BURST"),
    _Option("heartbeat_rate", "rate", "ping/activity per connection: RATE/BURST"),
    _Option("refusal_rate", "rate", "429s per connection before it is closed: RATE/BURST"),
    _Option("max_display_name_length", "int", "longest displayName (characters)"),
    _Option("max_device_bytes", "int", "largest 'device' object in join (JSON bytes)"),
    _Option("max_app_data_bytes", "int", "largest 'appData' object (JSON bytes)"),
    _Option("max_transports_per_peer", "int", "WebRTC transports per peer"),
    _Option("max_producers_per_peer", "int", "producers per peer"),
    _Option("max_data_producers_per_peer", "int", "data producers per peer"),
    _Option("sctp_send_buffer_size", "int", "data channel bytes buffered per client"),
    _Option("max_queued_dtls_records", "int", "DTLS datagrams queued per transport"),
    _Option("media_error_log_interval", "float", "per transport, one bad-datagram log per (s)"),
    _Option("consent_resync_window", "float", "after a stall, time for a consent check (s)"),
    _Option("ready_max_port_use", "float", "/readyz fails above this media port pool use"),
    _Option("ready_max_fd_use", "float", "/readyz fails above this open-file use"),
    _Option(
        "open_files_relist_interval", "float", "list open files at most this often (s, Linux < 6.2)"
    ),
    _Option("shutdown_timeout", "float", "graceful shutdown bound (s)"),
    _Option("reconnect_delay", "float", "reconnect delay advertised in serverShutdown (s)"),
    _Option("log_format", "choice", "log format", ("text", "json")),
    _Option("log_level", "choice", "log level", ("DEBUG", "INFO", "WARNING", "ERROR")),
    _Option("gc_freeze", "bool", "gc.freeze() on every tick (no full-collection pauses)"),
    _Option("gc_collect_interval", "optional_float", "full GC this often with gc_freeze (s)"),
    _Option("tick_interval", "float", "liveness clock period (s)"),
    _Option("probe_chunk", "int", "keepalive pings per slice of a tick"),
    _Option("ws_close_timeout", "float", "wait for the client's close frame (s)"),
    _Option("ws_max_queue", "int", "incoming WebSocket frames buffered per connection"),
    _Option("listen_backlog", "int", "connections queued by the kernel before accept"),
    _Option("ws_write_high_water", "int", "WebSocket write buffer high-water mark (bytes)"),
    _Option("speech_interval", "optional_float", "how often rooms say who speaks (s)"),
    _Option("refusal_log_interval", "float", "at most one log line per refusal kind per (s)"),
    _Option("redis_url", "optional_str", "Redis of the shared directory ('off': single node)"),
    _Option("redis_prefix", "str", "prefix of the directory's keys in Redis"),
    _Option("node_id", "optional_str", "this node's id in the directory (default hostname:port)"),
    _Option("node_address", "optional_str", "address recorded for this node (default host:port)"),
    _Option("lease_ttl", "float", "node liveness lease in Redis (s)"),
    _Option("lease_renew_interval", "float", "renew the node's lease this often (s)"),
    _Option("lease_stall_limit", "float", "stop renewing after the loop stalled this long (s)"),
    _Option("reaper_interval", "float", "the cluster reaper runs this often (s)"),
    _Option("redis_timeout", "float", "longest wait for one Redis call (s)"),
    _Option(
        "cluster_connections_per_ip",
        "bool",
        "with --redis-url, --max-connections-per-ip counts every node's connections",
    ),
    _Option("cluster_max_sessions", "optional_int", "with --redis-url, sessions of all nodes"),
    _Option("cluster_release_delay", "float", "batch releases of cluster-wide counts (s)"),
    _Option(
        "cluster_queue_retry",
        "float",
        "queued for a cluster slot: ask Redis again at least this often (s)",
    ),
    _Option("lobby_linger", "float", "follow other nodes' rooms after the last viewer left (s)"),
    _Option("lobby_max_remote_rooms", "int", "other nodes' rooms kept for the lobby"),
)

_OFF = ("off", "none", "")


def _flag(option: _Option) -> str:
    return "--" + option.name.replace("liveness.", "").replace(".", "_").replace("_", "-")


def _env(option: _Option) -> str:
    return "GHOSTLESS_" + option.name.replace("liveness.", "").replace(".", "_").upper()


def _convert(option: _Option, raw: str, source: str) -> Any:
    value = raw.strip()
    try:
        if option.kind == "int":
            return int(value)
        if option.kind == "float":
            return float(value)
        if option.kind in ("optional_int", "optional_float"):
            if value.lower() in _OFF:
                return None
            return int(value) if option.kind == "optional_int" else float(value)
        if option.kind == "optional_str":
            return None if value.lower() in _OFF else value
        if option.kind == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if option.kind == "rate":
            rate, _, burst = value.partition("/")
            return RateLimit(float(rate), float(burst or rate))
        if option.kind == "list":
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if option.kind == "choice":
            match = next((c for c in option.choices if c.lower() == value.lower()), None)
            if match is None:
                raise ConfigError(f"{source}: {raw!r} is not one of {', '.join(option.choices)}")
            return match
        return value
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"{source}: {raw!r} is not a valid {option.kind.replace('_', ' ')}"
        ) from None


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build a validated ``Config``; raise ``ConfigError`` on any bad value."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m signalling",
        description="ghostless: WebRTC signalling server and SFU that never leaves a ghost.",
        epilog="Every flag can also be set as GHOSTLESS_<NAME> (e.g. GHOSTLESS_PORT=8765).",
    )
    for option in OPTIONS:
        parser.add_argument(_flag(option), dest=option.name, default=None, help=option.help)
    args = vars(parser.parse_args(argv))

    top: dict[str, Any] = {}
    liveness: dict[str, Any] = {}
    quality: dict[str, Any] = {}
    for option in OPTIONS:
        raw = args[option.name]
        source = _flag(option)
        if raw is None and _env(option) in environ:
            raw, source = environ[_env(option)], _env(option)
        if raw is None:
            continue
        value = _convert(option, raw, source)
        if option.name.startswith("liveness."):
            liveness[option.name.removeprefix("liveness.")] = value
        elif option.name.startswith("quality."):
            quality[option.name.removeprefix("quality.")] = value
        else:
            top[option.name] = value
    if "takeover" in liveness:
        liveness["takeover"] = TakeoverPolicy(liveness["takeover"])
    try:
        policy = LivenessPolicy(**liveness)
    except ValueError as exc:
        raise ConfigError(f"liveness: {exc}") from None
    try:
        grading = QualityPolicy(**quality)
    except ValueError as exc:
        raise ConfigError(f"quality: {exc}") from None
    config = Config(**top, liveness=policy, quality=grading)
    validate(config)
    return config


def validate(config: Config) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for name in ("port", "rtc_min_port", "rtc_max_port"):
        value = getattr(config, name)
        check(0 <= value <= 65535, f"{name} must be 0..65535, not {value}")
    check(
        config.metrics_port is None or 0 <= config.metrics_port <= 65535,
        "metrics_port must be 0..65535 or off",
    )
    check(
        (config.rtc_min_port == 0) == (config.rtc_max_port == 0)
        and config.rtc_min_port <= config.rtc_max_port,
        "rtc_min_port..rtc_max_port must be a range within 1..65535 (or 0..0)",
    )
    try:
        ip = ipaddress.ip_address(config.rtc_listen_ip)
    except ValueError:
        raise ConfigError(
            f"rtc_listen_ip must be an IP address, not {config.rtc_listen_ip!r}"
        ) from None
    check(
        not ip.is_unspecified or config.rtc_announced_address is not None,
        "rtc_listen_ip 0.0.0.0/:: needs rtc_announced_address (replies must come from it)",
    )
    check(config.consent_timeout >= 10, "consent_timeout must be at least 10 s (RFC 7675)")
    check(config.room_close_delay >= 0, "room_close_delay must not be negative")
    check(0 < config.tick_interval <= 1, "tick_interval must be in (0, 1] s")
    check(config.probe_chunk >= 1, "probe_chunk must be at least 1")
    check(config.ws_close_timeout > 0, "ws_close_timeout must be positive")
    check(config.ws_max_queue >= 1, "ws_max_queue must be at least 1")
    check(config.listen_backlog >= 1, "listen_backlog must be at least 1")
    check(config.ws_write_high_water >= 1024, "ws_write_high_water must be at least 1024")
    check(
        config.speech_interval is None or config.speech_interval > 0,
        "speech_interval must be positive",
    )
    check(config.refusal_log_interval >= 0, "refusal_log_interval must not be negative")
    check(
        config.max_peers_per_room is None or config.max_peers_per_room >= 1,
        "max_peers_per_room must be at least 1",
    )
    check(config.max_message_size >= 1024, "max_message_size must be at least 1024 bytes")
    check(config.request_timeout > 0, "request_timeout must be positive")
    for name in (
        "max_sessions",
        "max_queue_length",
        "max_connections",
        "max_connections_per_ip",
        "max_display_name_length",
        "max_device_bytes",
        "max_app_data_bytes",
        "max_transports_per_peer",
        "max_producers_per_peer",
        "max_data_producers_per_peer",
        "rtc_max_tcp_connections",
        "cluster_max_sessions",
        "lobby_max_remote_rooms",
    ):
        value = getattr(config, name)
        check(value is None or value >= 1, f"{name} must be at least 1")
    check(config.max_outbound_bytes >= 65536, "max_outbound_bytes must be at least 65536")
    check(config.sctp_send_buffer_size >= 1024, "sctp_send_buffer_size must be at least 1024")
    check(config.max_queued_dtls_records >= 1, "max_queued_dtls_records must be at least 1")
    check(config.media_error_log_interval >= 0, "media_error_log_interval must not be negative")
    check(config.consent_resync_window > 0, "consent_resync_window must be positive")
    check(config.token_leeway >= 0, "token_leeway must not be negative")
    check(config.queue_timeout > 0, "queue_timeout must be positive")
    check(config.lobby_update_interval > 0, "lobby_update_interval must be positive")
    check(config.token_max_lifetime > 0, "token_max_lifetime must be positive")
    check(config.open_files_relist_interval > 0, "open_files_relist_interval must be positive")
    for name in ("ready_max_port_use", "ready_max_fd_use"):
        check(0 < getattr(config, name) <= 1, f"{name} must be within (0, 1]")
    try:
        token_verifier(config)
    except ValueError as exc:
        raise ConfigError(f"token_secret/token_jwks: {exc}") from None
    for network in config.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"trusted_proxies: {network!r} is not a network") from None
    check(config.shutdown_timeout > 0, "shutdown_timeout must be positive")
    try:
        config.lease_timings  # noqa: B018 (validates)
    except ValueError as exc:
        raise ConfigError(f"directory: {exc}") from None
    check(
        config.redis_url is None
        or config.redis_url.startswith(("redis://", "rediss://", "unix://")),
        "redis_url must be redis://, rediss:// or unix://",
    )
    check(bool(config.redis_prefix) and ":" not in config.redis_prefix, "redis_prefix: no ':'")
    check(config.node_id is None or "/" not in config.node_id, "node_id must not contain '/'")
    check(0 <= config.cluster_release_delay <= 5, "cluster_release_delay must be within 0..5 s")
    check(0.05 <= config.cluster_queue_retry <= 60, "cluster_queue_retry must be within 0.05..60 s")
    check(config.lobby_linger >= 0, "lobby_linger must not be negative")
    check(config.reconnect_delay >= 0, "reconnect_delay must not be negative")
    check(
        config.gc_collect_interval is None or config.gc_collect_interval >= 60,
        "gc_collect_interval must be at least 60 s (or off)",
    )


_TOKEN_OPTIONS = ("leeway", "max_lifetime", "audience", "issuer")


def token_verifier(config: Config) -> TokenVerifier | None:
    """The verifier of connection tokens, or None when the server is open."""
    # The token_* options, by TokenVerifier.from_options' parameter names.
    options = {name: getattr(config, f"token_{name}") for name in _TOKEN_OPTIONS}
    secret, jwks_file = config.token_secret, config.token_jwks
    return TokenVerifier.from_options(secret=secret, jwks_file=jwks_file, **options)


def replace(config: Config, **changes: Any) -> Config:
    """A copy with ``changes`` (``liveness`` fields may be given flat, ``quality``
    fields flat with a ``quality_`` prefix), validated."""
    live = {k: changes.pop(k) for k in list(changes) if k in LivenessPolicy.__dataclass_fields__}
    if live:
        try:
            changes["liveness"] = dataclasses.replace(config.liveness, **live)
        except ValueError as exc:
            raise ConfigError(f"liveness: {exc}") from None
    graded = {
        k.removeprefix("quality_"): changes.pop(k)
        for k in list(changes)
        if k.startswith("quality_")
        and k.removeprefix("quality_") in QualityPolicy.__dataclass_fields__
    }
    if graded:
        try:
            changes["quality"] = dataclasses.replace(config.quality, **graded)
        except ValueError as exc:
            raise ConfigError(f"quality: {exc}") from None
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new
