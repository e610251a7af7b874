"""The ghostless signalling server: the edge in front of the session lifecycle.

``Server`` is what uvicorn's is to an ASGI app: configuration, the listeners
(WebSocket, HTTP, metrics), accepting a connection and dispatching its
messages, the liveness clock and a staged shutdown.  Who is where, and the one
teardown path every session ends through, are ``signalling.lifecycle``'s; the
media come from the ``media.api.Worker`` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

import media
from media.events import EventEmitter

from . import dialect as dialects
from .admission import AdmissionLedger
from .admission import Request as ClusterRequest
from .admission import Verdict as ClusterVerdict
from .admission_queue import AdmissionQueue, ClusterSlots, Ticket
from .config import Config, token_verifier
from .connection import Connection, ProbedSocket
from .directory import HOLDER_HEADER, ClaimOutcome, Directory, RoomRefused
from .lifecycle import SessionLifecycle
from .liveness import (
    AdmissionOutcome,
    End,
    EndReason,
    Probe,
    Refusal,
    Session,
    SessionRegistry,
    SocketDead,
)
from .lobby import Lobby
from .logs import LogThrottle, log_session
from .metrics import Metrics
from .process_stats import OpenFiles
from .protocol import (
    CloseCode,
    ErrorCode,
    Kind,
    ProtocolViolation,
    decode,
    encode_error,
    encode_response,
)
from .quality import QualityBoard, QualitySample
from .rate_limit import KeyedRateLimiter, MessageLimiter, RatePolicy, Verdict
from .rooms import Peer, Room
from .rounds import SpreadRound
from .session_handler import SessionHandler

if TYPE_CHECKING:
    from media.api import Worker
from .tokens import InvalidToken

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,128}$")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/ghostless.js": ("ghostless.js", "text/javascript; charset=utf-8"),
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/lobby": ("lobby.html", "text/html; charset=utf-8"),
    "/lobby.js": ("lobby.js", "text/javascript; charset=utf-8"),
}

REFUSAL_CLOSE: dict[Refusal, tuple[CloseCode, str]] = {
    Refusal.IDENTITY_IN_USE: (CloseCode.IDENTITY_IN_USE, "this identity is already connected"),
    Refusal.PEER_ID_IN_USE: (CloseCode.IDENTITY_IN_USE, "this peerId belongs to another user"),
    Refusal.RESUME_TOKEN_INVALID: (CloseCode.SESSION_CLOSED, "resume token not valid"),
}

PROTOCOL_ERROR_CODES = frozenset(
    {
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.INVALID_PAYLOAD,
        CloseCode.MESSAGE_TOO_BIG,
    }
)


class QueueTimeout(Exception):
    """A queued client waited ``queue_timeout`` without a free seat."""


def embedded_worker(config: Config) -> media.Worker:
    """The embedded SFU, set up from the configuration (the default ``Worker``)."""
    return media.Worker(
        media.WorkerSettings(
            listen_ip=config.rtc_listen_ip,
            announced_address=config.rtc_announced_address,
            port_range=media.PortRange(config.rtc_min_port, config.rtc_max_port),
            consent_timeout=config.consent_timeout,
            sctp_send_buffer_size=config.sctp_send_buffer_size,
            max_queued_dtls_records=config.max_queued_dtls_records,
            error_log_interval=config.media_error_log_interval,
            stall_tolerance=config.liveness.stall_tolerance,
            consent_resync_window=config.consent_resync_window,
            enable_tcp=config.rtc_enable_tcp,
            prefer_udp=config.rtc_prefer_udp,
            prefer_tcp=config.rtc_prefer_tcp,
            max_tcp_connections=config.rtc_max_tcp_connections,
        )
    )


class Server:
    def __init__(
        self, config: Config, *, worker: Worker | None = None, directory: Directory | None = None
    ) -> None:
        """``worker``: the media to use (``media.api.Worker``); by default the
        embedded SFU, set up from ``config``.  The server closes it on shutdown.
        ``directory``: which node holds which room; by default a ``RedisDirectory``
        with ``--redis-url``, else the single-node ``LocalDirectory``."""
        self.config = config
        self._given_directory = directory
        self.loop = asyncio.get_running_loop()
        self.worker: Worker = worker if worker is not None else embedded_worker(config)
        self.registry = SessionRegistry(
            config.liveness, media_activity=_media_activity, tick_interval=config.tick_interval
        )
        self.verifier = token_verifier(config)
        self.rate_policy = RatePolicy(
            messages=config.message_rate,
            broadcasts=config.broadcast_rate,
            heartbeats=config.heartbeat_rate,
            strikes=config.refusal_rate,
        )
        self.peer_limits = config.peer_limits
        self._trusted_proxies = tuple(
            ipaddress.ip_network(network, strict=False) for network in config.trusted_proxies
        )
        self._ip_connection_rate = KeyedRateLimiter(config.ip_connection_rate)
        self.connections_by_ip: dict[str, int] = {}
        self._refusal_log = LogThrottle(config.refusal_log_interval)
        self.lifecycle = SessionLifecycle(
            config,
            worker=self.worker,
            registry=self.registry,
            peer_limits=self.peer_limits,
            directory=directory,
        )
        self.queue = AdmissionQueue(
            max_length=config.max_queue_length, timeout=config.queue_timeout
        )
        self._queued: dict[
            Ticket, tuple[asyncio.Future[None], Connection, list[ClusterRequest]]
        ] = {}
        """Each queued connection: its admission, and what it holds of the
        cluster-wide counts (a cluster slot is added there when it is admitted)."""
        self._queue_wakeup = False
        self.open_files = OpenFiles(relist_interval=config.open_files_relist_interval)
        self.cluster_slots: ClusterSlots[ClusterRequest] = ClusterSlots(config.cluster_queue_retry)
        """When the queue asks the cluster for session slots (--cluster-max-sessions)."""
        self._slot_call: asyncio.Task[None] | None = None
        self.lobby = Lobby(config.listed_rooms, self.room_summary, lambda: self.rooms.keys())
        self.quality: QualityBoard[tuple[str, str]] | None = (
            QualityBoard(config.quality) if config.quality.interval is not None else None
        )
        self.accepting = False
        self.loop_lag = 0.0
        self._ws_server: WsServer | None = None
        self._metrics_server: WsServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._probe_tasks: set[asyncio.Task[None]] = set()
        self._grading: SpreadRound[str] | None = None
        """Set by the ticker: the ids of the rooms whose peers are graded over each
        quality interval."""
        self._stopped = asyncio.Event()
        self._shutting_down = False
        self._static = {
            route: ((STATIC_DIR / name).read_bytes(), content_type)
            for route, (name, content_type) in STATIC_FILES.items()
            if (STATIC_DIR / name).exists()
        }
        self.observer = EventEmitter()
        """What happens at the edge, for metrics to count: ``refused`` (kind),
        ``queuewait`` (outcome, seconds), ``protocolviolation``, ``ratelimited``
        (message kind), ``request`` (method, outcome, seconds), ``clientrtt`` and
        ``proberrtt`` (seconds), ``stall``, ``sweep`` (seconds).  Sessions and
        rooms announce theirs on ``lifecycle.observer``."""
        self.session_handler = SessionHandler(
            lifecycle=self.lifecycle,
            observer=self.observer,
            refuse=self._refuse,
            shutting_down=lambda: self._shutting_down,
            loop=self.loop,
        )
        self.metrics = Metrics(self)
        observer = self.lifecycle.observer
        observer.on("roomchanged", self.lobby.changed)
        observer.on("seatfreed", self._seat_freed)
        if self.quality is not None:
            board = self.quality
            observer.on("sessionjoined", lambda s: board.add((s.room_id, s.peer_id)))
            observer.on("sessionended", lambda s, *_: board.remove((s.room_id, s.peer_id)))

    @property
    def rooms(self) -> dict[str, Room]:
        return self.lifecycle.rooms

    @property
    def connections(self) -> dict[int, Connection]:
        """Connections that drive a session."""
        return self.lifecycle.connections

    @property
    def directory(self) -> Directory:
        return self.lifecycle.directory

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self._ws_server = await serve(
            self._handle,
            config.host,
            config.port,
            subprotocols=["protoo"],  # type: ignore[list-item]
            process_request=self._http,
            process_response=self._handshake_response,
            compression=None,  # small JSON: permessage-deflate would triple memory
            max_size=config.max_message_size,
            max_queue=config.ws_max_queue,
            write_limit=config.ws_write_high_water,
            ping_interval=None,  # keepalive probes are sent only to silent sessions
            ping_timeout=None,
            close_timeout=config.ws_close_timeout,
            server_header="ghostless",
            create_connection=ProbedSocket,
            backlog=config.listen_backlog,
        )
        if config.metrics_port is not None:
            self._metrics_server = await serve(
                self._handle_metrics_ws,
                config.metrics_host,
                config.metrics_port,
                process_request=self._http_metrics,
                compression=None,
            )
        if self._given_directory is None and config.redis_url is not None:
            from .redis_directory import RedisDirectory  # redis is needed only here

            self.lifecycle.directory = RedisDirectory(
                config.redis_url,
                node_id=config.node_id or f"{socket.gethostname()}:{self.port}",
                address=config.node_address or f"{config.host}:{self.port}",
                timings=config.lease_timings,
                prefix=config.redis_prefix,
                admission=AdmissionLedger(
                    count_connections=config.cluster_connections_per_ip,
                    max_connections_per_ip=config.max_connections_per_ip,
                    max_sessions=config.cluster_max_sessions,
                    release_delay=config.cluster_release_delay,
                ),
                lobby_linger=config.lobby_linger,
                lobby_max_rooms=config.lobby_max_remote_rooms,
            )
        self.directory.attach_lobby(self.lobby)
        await self.directory.start(self.lifecycle)
        self._ticker = asyncio.ensure_future(self._tick_forever())
        self.accepting = True
        logger.info("listening on ws://%s:%d", config.host, self.port)
        if self.verifier is None and not _is_loopback(config.host):
            logger.warning(
                "no token secret or JWKS configured: anyone who reaches %s:%d may join any room"
                " under any name (see docs/security.md)",
                config.host,
                self.port,
            )

    @property
    def port(self) -> int:
        assert self._ws_server is not None
        return int(next(iter(self._ws_server.sockets)).getsockname()[1])

    @property
    def metrics_port(self) -> int | None:
        if self._metrics_server is None:
            return None
        return int(next(iter(self._metrics_server.sockets)).getsockname()[1])

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stop accepting, tell everyone, close sockets (1001) and media, within a bound."""
        if self._shutting_down:
            await self._stopped.wait()
            return
        self._shutting_down = True
        self.accepting = False
        started = time.monotonic()
        logger.info("shutting down: %d sessions", len(self.registry))
        if self._ws_server is not None:
            self._ws_server.close(close_connections=False)
        for admitted, conn, _ in list(self._queued.values()):
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            admitted.cancel()
        self.directory.follow_releases(None)
        if self._slot_call is not None:
            self._slot_call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slot_call
        for spare in self.cluster_slots.surplus():
            self.directory.release(spare)
        for viewer in list(self.lobby.viewers.values()):
            viewer.close(CloseCode.GOING_AWAY, "server shutting down")
        for index, session in enumerate(list(self.registry.by_id.values())):
            self.lifecycle.end(session, EndReason.SHUTDOWN)
            if index % 500 == 499:
                await asyncio.sleep(0)  # let the goodbyes go out while we work
        # Drain: the rooms are free to move now, while the clients wait to reconnect.
        await self.directory.withdraw()
        remaining = self.config.shutdown_timeout - (time.monotonic() - started)
        if self._ws_server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ws_server.wait_closed(), max(0.1, remaining))
        for conn in list(self.connections.values()):
            conn.ws.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._probe_tasks):
            task.cancel()
        if self._probe_tasks:
            await asyncio.gather(*self._probe_tasks, return_exceptions=True)
        await self.lifecycle.close()
        await self.directory.close()
        self.worker.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.wait_closed()
        logger.info("shut down in %.2f s", time.monotonic() - started)
        self._stopped.set()

    # -- connections ------------------------------------------------------------------

    def _refuse(self, kind: str, detail: str = "") -> None:
        """Count a refused connection and log it, once per interval per kind."""
        self.observer.emit("refused", kind)
        suppressed = self._refusal_log.allow(kind, self.loop.time())
        if suppressed is not None:
            logger.info(
                "refused (%s)%s%s",
                kind,
                f": {detail}" if detail else "",
                f" [{suppressed} more since the last line]" if suppressed else "",
            )

    def client_address(self, ws: ServerConnection, request: Request | None) -> str:
        """The client's IP: the peer address, or X-Forwarded-For from a trusted proxy."""
        peer = ws.remote_address
        address = str(peer[0]) if peer else ""
        if request is None or not self._trusted_proxies or not address:
            return address
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if not any(ip in network for network in self._trusted_proxies):
            return address
        forwarded = request.headers.get("X-Forwarded-For", "")
        last_hop = forwarded.rsplit(",", 1)[-1].strip()
        try:
            return str(ipaddress.ip_address(last_hop))
        except ValueError:
            return address

    async def _handle(self, ws: ServerConnection) -> None:
        address = self.client_address(ws, ws.request)
        count = self.connections_by_ip.get(address, 0)
        self.connections_by_ip[address] = count + 1
        try:
            limit = self.config.max_connections_per_ip
            if limit is not None and count >= limit:
                self._refuse("connections_per_ip", address)
                await ws.close(CloseCode.RATE_LIMITED, "too many connections from this address")
                return
            if ws.request is not None and urlsplit(ws.request.path).path == "/lobby":
                await self._serve_lobby(ws, address)
            else:
                await self._admit(ws, address)
        finally:
            remaining = self.connections_by_ip[address] - 1
            if remaining:
                self.connections_by_ip[address] = remaining
            else:
                del self.connections_by_ip[address]

    async def _admit(self, ws: ServerConnection, address: str) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)

        def param(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        room_id, peer_id = param("roomId"), param("peerId")
        if room_id is None or peer_id is None or not _ID.match(room_id) or not _ID.match(peer_id):
            self._refuse("bad_request")
            await ws.close(CloseCode.BAD_REQUEST, "roomId and peerId are required")
            return
        try:
            dialect = dialects.select(query)  # docs/protocol.md, "Two dialects"
        except ValueError:
            self._refuse("bad_request")
            await ws.close(CloseCode.BAD_REQUEST, "unknown dialect")
            return
        if self.verifier is not None:
            # With keys configured, identity comes only from a verified token:
            # a userId in the URL is ignored, a missing token is refused.
            token = param("token")
            try:
                if token is None:
                    raise InvalidToken("no token")
                identity = self.verifier.verify(token, room_id=room_id)
            except InvalidToken as exc:
                self._refuse("unauthorized", str(exc))
                await ws.close(CloseCode.UNAUTHORIZED, "valid token required")
                return
            user_id = identity.subject
            verified_name = identity.name
        else:
            verified_name = None
            user_id = param("userId") or peer_id
            if not _ID.match(user_id):
                self._refuse("bad_request")
                await ws.close(CloseCode.BAD_REQUEST, "invalid userId")
                return
        if not self.accepting:
            await ws.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        conn = self._connection(ws, address)
        held: list[ClusterRequest] = []  # its share of the cluster-wide counts
        try:
            await self._seat(conn, held, room_id, user_id, peer_id, param, dialect, verified_name)
        finally:
            for request in held:
                self.directory.release(request)

    async def _seat(
        self,
        conn: Connection,
        held: list[ClusterRequest],
        room_id: str,
        user_id: str,
        peer_id: str,
        param: Callable[[str], str | None],
        dialect: dialects.Dialect,
        verified_name: str | None,
    ) -> None:
        """Admit an identified connection: capacity, the waiting queue, the
        cluster-wide counts, the room (claimed in the directory), the registry."""
        address = conn.remote
        # A takeover or resume keeps the seat its identity already holds.
        seated = self.lifecycle.seated(room_id, user_id, peer_id)
        queueing = self.config.when_full == "queue" and not seated
        from_queue = False
        if not seated:
            full = self.lifecycle.full(room_id)
            if queueing and (full is not None or len(self.queue)):
                if not await self._queue_for_seat(conn, held, address, room_id):
                    return
                from_queue = True
            elif full is not None:
                self._refuse(full)
                code = CloseCode.ROOM_FULL if full == "room_full" else CloseCode.SERVER_FULL
                conn.close(code, "room is full" if full == "room_full" else "server is full")
                await conn.wait_closed()
                return
        try:
            if not any(request.session for request in held):  # (a slot from the queue)
                # One Redis call (at most) for the connection and its session slot.
                counted = await self._counted(
                    conn,
                    held,
                    None if held else address,
                    session=not seated,
                    queue_if_full=queueing and not from_queue,
                )
                if counted is None:
                    # The cluster has its sessions: wait in the queue for a slot
                    # to free on any node (docs/scaling.md).
                    self.cluster_slots.refused(self.loop.time())
                    from_queue = await self._queue_for_seat(conn, held, address, room_id)
                    if not from_queue:
                        return
                elif not counted:
                    return
            room = await self.lifecycle.room(room_id)
        except RoomRefused as refused:
            # Another node holds the room, or it cannot be registered now: the
            # client retries (through the load balancer, which finds the holder).
            elsewhere = refused.claim.outcome is ClaimOutcome.ELSEWHERE
            self._refuse("room_elsewhere" if elsewhere else "directory_unavailable", room_id)
            if elsewhere:
                conn.close(CloseCode.ROOM_ELSEWHERE, "room is served by another node")
            else:
                conn.close(CloseCode.DIRECTORY_UNAVAILABLE, "room cannot be registered now")
            await conn.wait_closed()
            return
        finally:
            if from_queue:
                self.lifecycle.seat_taken(room_id)
        now = self.loop.time()
        resume_token = param("resumeToken")
        admission = self.registry.admit(
            room_id=room_id,
            user_id=user_id,
            peer_id=peer_id,
            connection_id=conn.id,
            resume_token=resume_token,
            now=now,
        )
        for request in held:  # the registry counts its session from now on
            self.directory.settle(request)
        if admission.outcome is AdmissionOutcome.REJECTED or admission.session is None:
            refusal = admission.refusal or Refusal.IDENTITY_IN_USE
            self._refuse(refusal.value)
            log_session("session_rejected", room_id=room_id, peer_id=peer_id, reason=refusal)
            if refusal is Refusal.RESUME_TOKEN_INVALID:
                conn.notify("sessionExpired", {})
            code, text = REFUSAL_CLOSE[refusal]
            conn.close(code, text)
            await conn.wait_closed()
            return
        session = admission.session
        if admission.outcome is AdmissionOutcome.REPLACED and admission.previous is not None:
            self.lifecycle.end(admission.previous, EndReason.REPLACED, detected_at=now)
        if resume_token is not None and admission.outcome is not AdmissionOutcome.RESUMED:
            # The grace period is over: the client must join as a fresh session.
            conn.notify("sessionExpired", {})
        if admission.outcome is AdmissionOutcome.RESUMED:
            peer = self.lifecycle.resume(
                session, conn, admission.previous_connection_id, admission.was_reconnecting
            )
        else:
            peer = self.lifecycle.attach(
                session, room, conn, display_name=verified_name or param("displayName")
            )
        peer.dialect = dialect
        try:
            await self.session_handler.serve(conn, session, peer)
        finally:
            self._connection_lost(session, conn)
            # Let our own close frame (with its code) go out before websockets'
            # default 1000 when the handler returns.
            await conn.wait_closed()

    async def _counted(
        self,
        conn: Connection,
        held: list[ClusterRequest],
        address: str | None,
        *,
        session: bool,
        queue_if_full: bool = False,
    ) -> bool | None:
        """Count the connection (``address``) and/or a session slot in the
        cluster-wide limits; False when refused (the connection is closed with
        the codes of the local limits: 4429, 4503); None when only the cluster's
        session capacity refused it and ``queue_if_full``: nothing was counted
        or closed, the caller queues it."""
        request = await self.directory.admit(address, session=session)
        held.append(request)
        if request.verdict is ClusterVerdict.CONNECTIONS_PER_IP:
            self._refuse("cluster_connections_per_ip", conn.remote)
            conn.close(CloseCode.RATE_LIMITED, "too many connections from this address")
        elif request.verdict is ClusterVerdict.FULL:
            if queue_if_full:
                return None
            self._refuse("cluster_full")
            conn.close(CloseCode.SERVER_FULL, "server is full")
        else:
            return True
        await conn.wait_closed()
        return False

    async def _serve_lobby(self, ws: ServerConnection, address: str) -> None:
        """A room-list viewer: the listed rooms, then their changes (coalesced)."""
        conn = self._connection(ws, address)
        held: list[ClusterRequest] = []
        try:
            if await self._counted(conn, held, address, session=False):
                await self.lobby.prepare()  # with several nodes: theirs too
                await self._view_lobby(conn)
        finally:
            for request in held:
                self.directory.release(request)

    async def _view_lobby(self, conn: Connection) -> None:
        ws = conn.ws
        self.lobby.add(conn)
        try:
            async for raw in ws:
                try:
                    message = decode(raw)
                except ProtocolViolation as violation:
                    conn.close(violation.code, violation.reason)
                    break
                verdict = conn.limiter.check(message.method, self.loop.time())
                if verdict is Verdict.CLOSE:
                    conn.close(CloseCode.RATE_LIMITED, "rate limited")
                    break
                if message.kind is not Kind.REQUEST:
                    continue
                if verdict is Verdict.REFUSE:
                    conn.send(encode_error(message.id, ErrorCode.TOO_MANY_REQUESTS, "slow down"))
                elif message.method == "ping":
                    conn.send(encode_response(message.id, self.session_handler.pong(message.data)))
                elif message.method == "getRooms":
                    conn.send(encode_response(message.id, self.rooms_summary(listed_only=True)))
                else:
                    conn.send(encode_error(message.id, ErrorCode.UNKNOWN_METHOD, "unknown method"))
        except ConnectionClosed:
            pass
        finally:
            self.lobby.remove(conn)
            await conn.wait_closed()

    def _connection(self, ws: ServerConnection, address: str) -> Connection:
        conn = Connection(
            ws,
            max_outbound_bytes=self.config.max_outbound_bytes,
            limiter=MessageLimiter(self.rate_policy, self.loop.time()),
            remote=address,
        )
        conn.on_overflow = self._outbound_overflow
        return conn

    # -- capacity and the waiting queue ---------------------------------------------

    async def _queue_for_seat(
        self, conn: Connection, held: list[ClusterRequest], address: str, room_id: str
    ) -> bool:
        """Count the connection (while it waits it holds nothing else), then hold
        it in the queue: True when admitted (with a cluster slot in ``held``
        when the cluster counts sessions)."""
        if not await self._counted(conn, held, address, session=False):
            return False
        if not await self._wait_in_queue(conn, room_id, held):
            await conn.wait_closed()
            return False
        return True

    async def _wait_in_queue(
        self, conn: Connection, room_id: str, held: list[ClusterRequest]
    ) -> bool:
        """Hold ``conn`` in the queue until a seat is free: True when admitted.

        While queued the client has a WebSocket and nothing else: pings are
        answered, other requests get 503 "queued", and ``queuePosition``
        tells it where it stands.  Leaving, timing out or a full queue ends it.
        """
        now = self.loop.time()
        ticket = self.queue.enqueue(room_id, now)
        if ticket is None:
            self._refuse("queue_full")
            conn.close(CloseCode.SERVER_FULL, "the waiting queue is full")
            return False
        admitted: asyncio.Future[None] = self.loop.create_future()
        self._queued[ticket] = (admitted, conn, held)
        self.lobby.changed(room_id)
        self._wake_queue()
        outcome = "left"
        ws = conn.ws
        try:
            while not admitted.done():
                receiving: asyncio.Future[Any] = asyncio.ensure_future(ws.recv())
                await asyncio.wait((receiving, admitted), return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()  # websockets: a cancelled recv() loses nothing
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await receiving
                    break
                if not self._answer_while_queued(conn, receiving.result()):
                    return False
            admitted.result()  # raises QueueTimeout or CancelledError
            outcome = "admitted"
            conn.notify("queueAdmitted", {"waited": round(self.loop.time() - now, 3)})
            return True
        except QueueTimeout:
            outcome = "timeout"
            conn.close(CloseCode.SESSION_TIMEOUT, "queue_timeout")
            return False
        except (ConnectionClosed, asyncio.CancelledError):
            return False
        finally:
            self._queued.pop(ticket, None)
            if not ticket.admitted:
                self.queue.remove(ticket)
                self._wake_queue()  # positions moved
            elif outcome != "admitted":
                # Admitted as it went away: the seat held for it, and its slot of
                # the cluster, are free again (for the next ticket at once).
                self.lifecycle.seat_taken(room_id)
                for slot in [request for request in held if request.session]:
                    held.remove(slot)
                    self.directory.release(slot)
                self._seat_freed()
            self.observer.emit("queuewait", outcome, self.loop.time() - now)
            self.lobby.changed(room_id)

    def _answer_while_queued(self, conn: Connection, raw: str | bytes) -> bool:
        """One message from a queued client; False when it must go (closed)."""
        try:
            message = decode(raw)
        except ProtocolViolation as violation:
            conn.close(violation.code, violation.reason)
            return False
        verdict = conn.limiter.check(message.method, self.loop.time())
        if verdict is Verdict.CLOSE:
            self._refuse("rate_limited", conn.remote)
            conn.close(CloseCode.RATE_LIMITED, "rate limited")
            return False
        if message.kind is not Kind.REQUEST:
            return True
        if verdict is Verdict.REFUSE:
            conn.send(encode_error(message.id, ErrorCode.TOO_MANY_REQUESTS, "slow down"))
        elif message.method == "ping":
            conn.send(encode_response(message.id, self.session_handler.pong(message.data)))
        else:
            conn.send(encode_error(message.id, ErrorCode.UNAVAILABLE, "queued"))
        return True

    def _wake_queue(self) -> None:
        """Admit what can be admitted, soon (coalesced: one pass per loop iteration)."""
        slots = self.cluster_slots
        if (self.queue or slots.slots or slots.waiting) and not self._queue_wakeup:
            self._queue_wakeup = True
            self.loop.call_soon(self._drain_queue)

    def _seat_freed(self) -> None:
        """A session ended here (or a seat held for one is free: a seat of its
        room, a session slot of the node and one of the cluster), or another
        node gave session slots of the cluster back (its release message)."""
        self.cluster_slots.slot_freed()
        self._wake_queue()

    def _drain_queue(self) -> None:
        self._queue_wakeup = False
        if self._shutting_down:
            return  # every queued connection is being closed
        lifecycle, slots, directory = self.lifecycle, self.cluster_slots, self.directory
        free = lifecycle.free_sessions()
        if directory.counts_sessions:
            # Each ticket also needs a session slot of the cluster: ask for as
            # many as the node's own limits would admit, in one call, when one
            # is worth making (ClusterSlots), and admit as many as were granted.
            wanted = self.queue.admissible(room_seats=lifecycle.free_seats, free_sessions=free)
            count = slots.ask(self.loop.time(), wanted)
            if count:
                self._slot_call = asyncio.ensure_future(self._ask_cluster(count))
            free = len(slots.slots) if free is None else min(free, len(slots.slots))
        for ticket in self.queue.admit(room_seats=lifecycle.free_seats, free_sessions=free):
            admitted, _, held = self._queued[ticket]
            if slots.slots:
                held.append(slots.take())  # released with the connection, settled on joining
            lifecycle.hold_seat(ticket.room_id)
            admitted.set_result(None)
        for spare in slots.surplus():  # their tickets left meanwhile
            directory.release(spare)
        if not self.queue:
            slots.idle()
        directory.follow_releases(self._seat_freed if slots.waiting else None)
        self._tell_positions()

    async def _ask_cluster(self, count: int) -> None:
        """One call for ``count`` session slots of the cluster; the queue then
        admits as many tickets as were granted."""
        slots = self.cluster_slots
        try:
            requests = await self.directory.admit_sessions(count)
        except asyncio.CancelledError:
            slots.failed()
            raise
        except Exception:
            logger.exception("asking the cluster for session slots failed")
            slots.failed()
            return
        granted = [request for request in requests if request.admitted]
        slots.answered(granted, len(requests) - len(granted))
        self._wake_queue()

    def _tell_positions(self) -> None:
        free = self.lifecycle.free_sessions()
        server_full = (free is not None and free <= 0) or self.cluster_slots.waiting
        length = len(self.queue)
        for ticket, position in self.queue.moved(server_full=server_full):
            _, conn, _ = self._queued[ticket]
            conn.notify("queuePosition", {"position": position, "length": length})

    def _expire_queue(self, now: float) -> None:
        for ticket in self.queue.expired(now):
            admitted, _, _ = self._queued[ticket]
            if not admitted.done():
                admitted.set_exception(QueueTimeout())

    def room_summary(self, room_id: str) -> dict[str, Any] | None:
        """What the lobby shows of a room (None: the room is closed)."""
        room = self.rooms.get(room_id)
        if room is None or room.closed:
            return None
        return {
            "roomId": room_id,
            "peers": len(room.joined_peers()),
            "capacity": self.config.max_peers_per_room,
            "queued": self.queue.waiting_for(room_id),
            "listed": self.lobby.listed(room_id),
        }

    def rooms_summary(self, *, listed_only: bool) -> dict[str, Any]:
        """The rooms (listed only: what the lobby lists, every node's with several
        nodes; else every room of this node) and this node's load."""
        if listed_only:
            rooms = self.lobby.listing()
        else:
            summaries = (self.room_summary(room_id) for room_id in sorted(self.rooms))
            rooms = [summary for summary in summaries if summary is not None]
        return {
            "rooms": rooms,
            "sessions": len(self.registry),
            "capacity": self.config.max_sessions,
            "queued": len(self.queue),
        }

    def _outbound_overflow(self, conn: Connection) -> None:
        """The client stopped reading: close (4413); its session may resume."""
        self._refuse("slow_reader", conn.remote)
        conn.close(CloseCode.SLOW_READER, "outbound buffer full: the client is not reading")

    def _connection_lost(self, session: Session, conn: Connection) -> None:
        ws = conn.ws
        close_sent = ws.protocol.close_sent
        if close_sent is not None and close_sent.code in PROTOCOL_ERROR_CODES and session.open:
            # websockets itself closed it (e.g. 1009 for an oversized message).
            self.lifecycle.connections.pop(conn.id, None)
            if session.connection_id == conn.id:
                self.observer.emit("protocolviolation")
                self.lifecycle.end(session, EndReason.ERROR, detected_at=self.loop.time())
            return
        close_rcvd = ws.protocol.close_rcvd
        clean = close_rcvd is not None and close_rcvd.code in (1000, 1001)
        # A slow reader's close frame may never leave: what we chose is on ``conn``.
        slow = conn.close_code == CloseCode.SLOW_READER
        lost_for = EndReason.SLOW_READER if slow else EndReason.SOCKET_LOST
        self.lifecycle.connection_lost(session, conn, clean=clean, lost_for=lost_for)

    # -- timers -------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        """Feed the clock to the liveness machine: tick every 0.1 s, sweep on its cadence."""
        policy = self.config.liveness
        period = min(self.config.tick_interval, policy.sweep_interval)
        next_sweep = self.loop.time() + policy.sweep_interval
        gc_interval = self.config.gc_collect_interval
        next_full_collection = self.loop.time() + (gc_interval or 0.0)
        next_lobby_flush = self.loop.time()
        next_queue_check = self.loop.time()
        quality_interval = self.config.quality.interval
        if quality_interval is not None:
            self._grading = SpreadRound(
                quality_interval, period, first_at=self.loop.time() + quality_interval
            )
        expected = self.loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, expected - self.loop.time()))
            now = self.loop.time()
            self.loop_lag = max(0.0, now - expected)
            expected += period
            if expected < now:  # fell behind (a stall): do not try to catch up
                expected = now + period
            if self.loop_lag >= policy.stall_tolerance:
                # The server lost this time, not the clients: read what they
                # sent meanwhile before judging anyone.
                self.registry.stalled(now)
                self.observer.emit("stall")
                logger.warning(
                    "event loop stalled for %.1f s: no session is ended for the next %.1f s",
                    self.loop_lag,
                    policy.stall_resync,
                )
            try:
                if now >= next_lobby_flush:
                    next_lobby_flush = now + self.config.lobby_update_interval
                    self.lobby.flush()
                self._grade_quality(now)
                if self.cluster_slots.due(now):
                    self._wake_queue()  # the backstop of the release messages
                if now >= next_queue_check:
                    next_queue_check = now + 1.0
                    self._expire_queue(now)
                    self._ip_connection_rate.prune(now)
                self._apply(self.registry.tick(now), now)
                if now >= next_sweep - 0.001:
                    next_sweep = max(next_sweep + policy.sweep_interval, now)
                    started = time.perf_counter()
                    stale = self.registry.sweep(now)
                    self.observer.emit("sweep", time.perf_counter() - started)
                    self._apply(stale, now)
                if self.config.gc_freeze:
                    if gc_interval is not None and now >= next_full_collection:
                        # Rare insurance against cyclic garbage among frozen objects.
                        next_full_collection = now + gc_interval
                        gc.unfreeze()
                        gc.collect()
                    # O(1): everything alive now leaves the collector's reach, so
                    # collections only ever scan what the last second created.
                    gc.freeze()
            except Exception:
                logger.exception("liveness tick failed")

    def _grade_quality(self, now: float) -> None:
        """Grade the joined peers of this tick's share of the rooms (``SpreadRound``:
        each room once per quality interval, without a stall); a grade that
        changes is told to the peer's room."""
        board, round_ = self.quality, self._grading
        if board is None or round_ is None:
            return
        rooms = self.rooms
        share = round_.take(now, rooms.keys)  # ids: a room that closes is freed at once
        if not self.registry.judging(now):
            return  # after a stall, gaps and jitter are the server's own doing
        for room_id in share:
            room = rooms.get(room_id)
            if room is None:
                continue  # closed since the round started
            for peer in room.joined_peers():
                key = (room_id, peer.id)
                links = [t.link_sample(now) for t in peer.transports.values()]
                sample = QualitySample.from_links(links, rtt_ms=peer.reported_rtt_ms)
                peer.reported_rtt_ms = None  # each report counts once
                change = board.observe(key, sample, now)
                if change is None:
                    continue
                grader = board.get(key)
                reasons = list(grader.reasons) if grader is not None else []
                peer.quality = change.value
                room.broadcast(
                    "peerQuality",
                    {"peerId": peer.id, "quality": change.value, "reasons": reasons},
                )
                log_session("session_quality", peer.session, quality=change.value, why=reasons)

    def _apply(self, decisions: list[Probe | SocketDead | End] | list[End], now: float) -> None:
        probes: list[Session] = []
        for decision in decisions:
            if isinstance(decision, Probe):
                probes.append(decision.session)
            elif isinstance(decision, SocketDead):
                self._drop_socket(decision.session)
            else:
                self.lifecycle.end(decision.session, decision.reason, detected_at=now)
        if probes:
            task = asyncio.ensure_future(self._send_probes(probes))
            self._probe_tasks.add(task)
            task.add_done_callback(self._probe_tasks.discard)

    def _drop_socket(self, session: Session) -> None:
        """The WebSocket is dead but media flows: lose the socket, keep the session."""
        conn = self.connections.get(session.connection_id) if session.connection_id else None
        if conn is not None:
            logger.info("dead WebSocket of %s/%s dropped", session.room_id, session.peer_id)
            conn.ws.transport.abort()  # the handler then sees a lost socket

    async def _send_probes(self, sessions: list[Session]) -> None:
        """Keepalive pings for one tick, in one task, in small chunks.

        No task, timer or future per probe: each pong reaches ``SessionHandler.probe_answered``
        through the socket (``ProbedSocket``), which records what was heard.
        """
        chunk = self.config.probe_chunk
        pause = min(self.config.tick_interval / 2 / (len(sessions) / chunk + 1), 0.01)
        for index, session in enumerate(sessions):
            if index and index % chunk == 0:
                await asyncio.sleep(pause)
            conn = self.connections.get(session.connection_id) if session.connection_id else None
            if conn is None or conn.closing or not session.open:
                continue
            if conn.outbound_bytes >= self.config.ws_write_high_water:
                # websockets would wait for the client to read before sending
                # the ping (holding up every probe behind it); a client that
                # is not reading is heard from, or closed as a slow reader.
                continue
            conn.probe(self.loop.time())

    # -- HTTP ------------------------------------------------------------------------------

    def _http(
        self, ws: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        path = urlsplit(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return self._upgrade_allowed(ws, request)
        route = path.path
        if route == "/healthz":
            return _json(ws, 200, {"status": "ok", "loopLag": round(self.loop_lag, 4)})
        if route == "/readyz":
            lost, full = self.readiness()
            problems = lost + full
            answer: dict[str, Any] = (
                {"status": "not ready", "problems": problems} if problems else {"status": "ready"}
            )
            # A node whose directory is down still serves its rooms (it stays
            # ready): it says so here and refuses new rooms (4504).
            answer["directory"] = self.directory.status()
            # 404 (HAProxy's http-check disable-on-404): no new rooms, but keep
            # routing the rooms held here; 503: this node is to lose them.
            return _json(ws, 503 if lost else 404 if full else 200, answer)
        if route == "/rooms":
            return self._public_rooms(ws)
        if route == "/leave":
            if request.method != "POST":
                response = _json(ws, 405, {"error": "use POST"})
                response.headers["Allow"] = "POST"
                return response
            token = (parse_qs(path.query).get("token") or [""])[0]
            if token and self.lifecycle.leave_with_token(token):
                return ws.respond(204, "")
            return _json(ws, 404, {"error": "no such session"})
        static = self._static.get(route)
        if static is not None:
            body, content_type = static
            response = ws.respond(200, "")
            response.headers = Headers(
                [
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-cache"),
                    ("X-Content-Type-Options", "nosniff"),
                ]
            )
            response.body = body
            return response
        return _json(ws, 404, {"error": "not found"})

    async def _public_rooms(self, ws: ServerConnection) -> Response:
        """``GET /rooms``: the listed rooms (with several nodes, every node's)."""
        await self.lobby.prepare()
        return _json(ws, 200, self.rooms_summary(listed_only=True))

    def _handshake_response(
        self, ws: ServerConnection, request: Request, response: Response
    ) -> Awaitable[None] | None:
        """A WebSocket accepted for a room that is not open here: when another live
        node holds it, the 101 names that node (``X-Ghostless-Holder``), so HAProxy
        keeps (or repairs) the room's stick entry; the session is refused 4421
        after the handshake all the same (the claim decides)."""
        if response.status_code != 101:
            return None
        values = parse_qs(urlsplit(request.path).query).get("roomId")
        room_id = values[0] if values else None
        if room_id is None or room_id in self.rooms or not _ID.match(room_id):
            return None
        return self._name_holder(room_id, response)

    async def _name_holder(self, room_id: str, response: Response) -> None:
        holder = await self.directory.holder(room_id)
        if holder is not None:
            response.headers[HOLDER_HEADER] = holder

    def _upgrade_allowed(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse a WebSocket handshake before it costs more than this answer."""
        if not self.accepting:
            return _json(ws, 503, {"error": "shutting down"})
        limit = self.config.max_connections
        ws_server = self._ws_server
        if limit is not None and ws_server is not None and len(ws_server.connections) >= limit:
            self._refuse("capacity")
            response = _json(ws, 503, {"error": "server at capacity"})
            response.headers["Retry-After"] = "5"
            return response
        address = self.client_address(ws, request)
        if not self._ip_connection_rate.take(address, self.loop.time()):
            self._refuse("connection_rate", address)
            response = _json(ws, 429, {"error": "too many new connections"})
            response.headers["Retry-After"] = "1"
            return response
        return None

    def readiness(self) -> tuple[list[str], list[str]]:
        """Why a load balancer should send nothing here, not even the rooms this
        node holds (draining, or a directory that has not registered the node:
        it holds no room), and why it should send no new room here (out of
        media ports or open files, while the rooms held here stay reachable)."""
        lost = []
        if not self.accepting or self.worker.closed:
            lost.append("not accepting")
        directory = self.directory.status()
        if directory.get("conflict") or directory.get("lease") == "unregistered":
            lost.append("not registered in the directory")
        full = []
        in_use, total = self.worker.port_usage()
        if total and in_use >= total * self.config.ready_max_port_use:
            full.append(f"media ports {in_use}/{total} in use")
        open_fds, max_fds = self.open_files.count(), self.open_files.limit()
        if max_fds and open_fds >= max_fds * self.config.ready_max_fd_use:
            full.append(f"open files {open_fds}/{max_fds}")
        return lost, full

    def debug_stats(self) -> dict[str, Any]:
        return {
            "registry": self.registry.index_sizes(),
            "sessionsByState": {s.value: n for s, n in self.registry.count_by_state().items()},
            "rooms": len(self.rooms),
            "roomPeers": sum(len(r.peers) for r in self.rooms.values()),
            "connections": len(self.connections),
            "queued": len(self.queue),
            "queuedConnections": len(self._queued),
            "clusterQueue": {
                "waiting": self.cluster_slots.waiting,
                "asking": self.cluster_slots.in_flight,
                "slots": len(self.cluster_slots.slots),
                "attempts": self.cluster_slots.attempts,
            },
            "admitting": self.lifecycle.admitting,
            "cancelledTasks": self.lifecycle.pending_tasks,
            "probeTasks": len(self._probe_tasks),
            "lobbyViewers": len(self.lobby.viewers),
            "connectionTasks": sum(c.task_count for c in self.connections.values()),
            "peerTasks": sum(len(p.tasks) for r in self.rooms.values() for p in r.peers.values()),
            "media": self.worker.resource_counts(),
            "loopLag": self.loop_lag,
            "directory": self.directory.status(),
        }

    def _http_metrics(self, ws: ServerConnection, request: Request) -> Response | None:
        route = urlsplit(request.path).path
        if route == "/debug/stats":  # internals: on the operators' listener only
            return _json(ws, 200, self.debug_stats())
        if route == "/rooms":  # operators see unlisted rooms too
            return _json(ws, 200, self.rooms_summary(listed_only=False))
        if route != "/metrics":
            return _json(ws, 404, {"error": "not found"})
        body, content_type = self.metrics.render()
        response = ws.respond(200, "")
        response.headers = Headers([("Content-Type", content_type)])
        response.body = body
        response.headers["Content-Length"] = str(len(body))
        return response

    async def _handle_metrics_ws(self, ws: ServerConnection) -> None:
        await ws.close(CloseCode.BAD_REQUEST, "metrics are served over plain HTTP")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _media_activity(session: Session) -> float | None:
    peer = session.data
    return peer.media_activity() if isinstance(peer, Peer) else None


def _json(ws: ServerConnection, status: int, payload: Any) -> Response:
    import orjson

    body = orjson.dumps(payload)
    response = ws.respond(status, "")
    response.headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    response.body = body
    return response
