"""The session lifecycle: who is where, and the one way out.

``SessionLifecycle`` owns what ties a session to the rest of the process: its
``Peer`` (the media side), the ``Room`` it sits in, the ``Connection`` that
drives it, room creation and the delayed close of empty rooms, the seats that
admissions from the queue hold, and the single teardown, :meth:`end`.  The
liveness bookkeeping stays in the sans-I/O ``SessionRegistry``; this is the
asyncio side that carries out what it decides.

It is the seam a shared directory plugs into (several nodes, docs/scaling.md):
every change of who is where goes through here, and is announced on
``observer``:

``sessionstarted`` (session), ``sessionjoined`` (session), ``sessionresumed``
(session), ``sessionreconnecting`` (session), ``sessionended`` (session,
reason, detected_at), ``roomchanged`` (room id: created, closed, or its
occupancy moved), ``seatfreed`` ().

Business code emits; metrics, the lobby, quality grading and the waiting
queue listen (``Server`` wires them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from media import TransportEndReason
from media.events import EventEmitter

from .connection import Connection
from .directory import ClaimOutcome, Directory, LocalDirectory, RoomRefused
from .liveness import EndReason, Session, SessionRegistry, SessionState
from .logs import log_session
from .protocol import CloseCode
from .rooms import Peer, PeerLimits, Room

if TYPE_CHECKING:
    from media.api import Worker

    from .config import Config

logger = logging.getLogger(__name__)

CLOSE_CODES: dict[EndReason, CloseCode] = {
    EndReason.GRACEFUL: CloseCode.NORMAL,
    EndReason.BEACON: CloseCode.SESSION_CLOSED,
    EndReason.SOCKET_LOST: CloseCode.SESSION_CLOSED,
    EndReason.KEEPALIVE_TIMEOUT: CloseCode.SESSION_TIMEOUT,
    EndReason.CONSENT_EXPIRED: CloseCode.SESSION_CLOSED,
    EndReason.STALE_SWEEP: CloseCode.SESSION_TIMEOUT,
    EndReason.INACTIVE: CloseCode.SESSION_TIMEOUT,
    EndReason.REPLACED: CloseCode.SESSION_REPLACED,
    EndReason.REJECTED: CloseCode.IDENTITY_IN_USE,
    EndReason.SHUTDOWN: CloseCode.GOING_AWAY,
    EndReason.ERROR: CloseCode.INTERNAL_ERROR,
    EndReason.JOIN_TIMEOUT: CloseCode.SESSION_TIMEOUT,
    EndReason.DTLS_FAILED: CloseCode.MEDIA_FAILED,
    EndReason.RATE_LIMITED: CloseCode.RATE_LIMITED,
    EndReason.SLOW_READER: CloseCode.SLOW_READER,
    EndReason.ROOM_MOVED: CloseCode.ROOM_ELSEWHERE,
}
"""The WebSocket close code that tells a client why its session ended (docs/protocol.md)."""

SESSION_END_FOR_TRANSPORT: dict[TransportEndReason, EndReason] = {
    TransportEndReason.DTLS_CLOSED: EndReason.GRACEFUL,
    TransportEndReason.CONSENT_EXPIRED: EndReason.CONSENT_EXPIRED,
    TransportEndReason.DTLS_FAILED: EndReason.DTLS_FAILED,
}
"""Where media meets signalling: a transport that ended by itself (the client
went away) ends its session, for this reason.  Transports closed by us
(``closed_by_app``, ``router_closed``) end nothing."""


class SessionLifecycle:
    """Sessions <-> peers <-> rooms, room close timers, seats held for admissions."""

    def __init__(
        self,
        config: Config,
        *,
        worker: Worker,
        registry: SessionRegistry,
        peer_limits: PeerLimits,
        directory: Directory | None = None,
    ) -> None:
        self.config = config
        self.directory: Directory = directory if directory is not None else LocalDirectory()
        """Which node holds which room (docs/scaling.md): asked before a room is
        created, told when it closes; it follows the sessions through ``observer``."""
        self.worker = worker
        self.registry = registry
        self.peer_limits = peer_limits
        self.observer = EventEmitter()
        self.rooms: dict[str, Room] = {}
        self.connections: dict[int, Connection] = {}
        """Connections that drive a session (queued and lobby ones are not here)."""
        self._room_creations: dict[str, asyncio.Future[Room]] = {}
        self._admitting_by_room: dict[str, int] = {}
        self._cancelled: set[asyncio.Task[Any]] = set()
        """Tasks of ended sessions, cancelled and not yet finished: awaited by ``close``."""
        self._loop = asyncio.get_running_loop()

    # -- rooms ------------------------------------------------------------------------

    async def room(self, room_id: str) -> Room:
        """The open room ``room_id``, created (once, however many ask at once) if need be."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        creation = self._room_creations.get(room_id)
        if creation is None:
            creation = asyncio.ensure_future(self._create_room(room_id))
            self._room_creations[room_id] = creation
            creation.add_done_callback(lambda _: self._room_creations.pop(room_id, None))
        return await asyncio.shield(creation)

    async def _create_room(self, room_id: str) -> Room:
        claim = await self.directory.claim_room(room_id)
        if claim.outcome is not ClaimOutcome.GRANTED:
            raise RoomRefused(room_id, claim)
        try:
            router = await self.worker.create_router(app_data={"roomId": room_id})
        except BaseException:
            self.directory.room_closed(room_id)
            raise
        config = self.config
        room = Room(
            room_id,
            router,
            request_timeout=config.request_timeout,
            heartbeat_interval=config.liveness.heartbeat_interval,
            limits=self.peer_limits,
            max_peers=config.max_peers_per_room,
            hold_seats=config.when_full == "queue",
            speech_interval=config.speech_interval,
        )
        room.observer.on("transportended", self._transport_ended)
        self.rooms[room_id] = room
        self.observer.emit("roomchanged", room_id)
        logger.info("room %s created", room_id)
        return room

    def _schedule_room_close(self, room: Room) -> None:
        if room.peers or room.closed or room.close_timer is not None:
            return
        room.close_timer = self._loop.call_later(
            self.config.room_close_delay, self._close_room_if_empty, room
        )

    def _close_room_if_empty(self, room: Room) -> None:
        room.close_timer = None
        if not room.peers:
            self.close_room(room)

    def close_room(self, room: Room) -> None:
        self._forget(room.close())
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            self.directory.room_closed(room.id)
            self.observer.emit("roomchanged", room.id)
            logger.info("room %s closed", room.id)

    def room_lost(self, room_id: str) -> None:
        """The directory says another node holds ``room_id`` now: end its sessions
        here (``room_moved``, close code 4421: their clients reconnect and reach
        the holder) and close it, so that the room never lives on two nodes."""
        room = self.rooms.get(room_id)
        if room is None:
            return
        now = self._loop.time()
        for peer in list(room.peers.values()):
            self.end(peer.session, EndReason.ROOM_MOVED, detected_at=now)
        self.close_room(room)

    # -- seats: capacity and admissions from the queue ------------------------------------

    def free_seats(self, room_id: str) -> int:
        """Seats a newcomer may take in ``room_id`` now (admissions in flight count)."""
        limit = self.config.max_peers_per_room
        if limit is None:
            return 1 << 30
        room = self.rooms.get(room_id)
        taken = room.occupancy() if room is not None else 0
        return limit - taken - self._admitting_by_room.get(room_id, 0)

    def free_sessions(self) -> int | None:
        limit = self.config.max_sessions
        if limit is None:
            return None
        return limit - len(self.registry) - sum(self._admitting_by_room.values())

    def full(self, room_id: str) -> str | None:
        """Why a newcomer to ``room_id`` cannot be admitted now ("server_full", "room_full")."""
        free = self.free_sessions()
        if free is not None and free <= 0:
            return "server_full"
        if self.free_seats(room_id) <= 0:
            return "room_full"
        return None

    def hold_seat(self, room_id: str) -> None:
        """An admission from the queue is on its way: keep a seat for it."""
        self._admitting_by_room[room_id] = self._admitting_by_room.get(room_id, 0) + 1

    def seat_taken(self, room_id: str) -> None:
        """An admission from the queue has reached the registry (or given up)."""
        count = self._admitting_by_room.get(room_id, 0)
        if count > 1:
            self._admitting_by_room[room_id] = count - 1
        elif count == 1:
            del self._admitting_by_room[room_id]

    @property
    def admitting(self) -> int:
        """Seats held for admissions from the queue on their way in."""
        return sum(self._admitting_by_room.values())

    def seated(self, room_id: str, user_id: str, peer_id: str) -> bool:
        """Whether a takeover or resume would keep a seat this identity already holds."""
        registry = self.registry
        return (room_id, user_id) in registry.by_identity or (room_id, peer_id) in registry.by_peer

    # -- attach and detach ----------------------------------------------------------------

    def attach(
        self, session: Session, room: Room, conn: Connection, display_name: str | None
    ) -> Peer:
        """A new session: its peer takes its place in ``room``, driven by ``conn``."""
        peer = Peer(session, room)
        if display_name is not None:
            session.display_name = display_name[: self.config.max_display_name_length]
        peer.connection = conn
        session.data = peer
        room.peers[peer.id] = peer
        self.connections[conn.id] = conn
        if room.close_timer is not None:
            room.close_timer.cancel()
            room.close_timer = None
        self.observer.emit("roomchanged", room.id)
        self.observer.emit("sessionstarted", session)
        log_session("session_started", session)
        return peer

    def joined(self, session: Session) -> None:
        """The session's peer has joined its room (the ``join`` request succeeded)."""
        self.registry.joined(session, self._loop.time())
        self.observer.emit("sessionjoined", session)
        self.observer.emit("roomchanged", session.room_id)
        log_session("session_joined", session)

    def resume(
        self, session: Session, conn: Connection, previous: int | None, was_reconnecting: bool
    ) -> Peer:
        """``conn`` drives ``session`` from now on; the connection it replaces is closed."""
        peer: Peer = session.data
        self.connections[conn.id] = conn
        old = self.connections.pop(previous, None) if previous is not None else None
        if old is not None:
            old.close(CloseCode.SESSION_REPLACED, "resumed on another connection")
        peer.connection = conn
        conn.notify(
            "sessionResumed",
            {
                "resumeToken": session.resume_token,
                "heartbeatInterval": self.config.liveness.heartbeat_interval,
                "joined": peer.joined,
            },
        )
        if was_reconnecting and peer.joined:
            peer.room.broadcast("peerResumed", {"peerId": peer.id}, exclude=peer)
        peer.room.sync_consumers(peer)
        self.observer.emit("sessionresumed", session)
        log_session("session_resumed", session)
        return peer

    def connection_lost(
        self,
        session: Session,
        conn: Connection,
        *,
        clean: bool,
        lost_for: EndReason = EndReason.SOCKET_LOST,
    ) -> None:
        """The socket of ``conn`` closed: end the session, or hold it for a resume
        (and end it for ``lost_for`` if none comes)."""
        self.connections.pop(conn.id, None)
        now = self._loop.time()
        end = self.registry.connection_lost(session, conn.id, now, clean=clean, lost_for=lost_for)
        if end is not None:
            self.end(end.session, end.reason, detected_at=now)
        elif session.state is SessionState.RECONNECTING and session.connection_id is None:
            peer: Peer = session.data
            if peer.connection is conn:
                peer.connection = None
                peer.room.broadcast("peerReconnecting", {"peerId": peer.id}, exclude=peer)
                self.observer.emit("sessionreconnecting", session)
                log_session("session_reconnecting", session)

    # -- ending: the one teardown path -----------------------------------------------------

    def end(
        self,
        session: Session,
        reason: EndReason,
        *,
        detected_at: float | None = None,
        close_code: int | None = None,
    ) -> None:
        """End ``session`` for ``reason``: the peers are told once (``peerClosed``),
        its media close (transports cascade), its connection closes with the
        code that says why, its seat and every registry entry are freed.

        Idempotent: a session already torn down is left alone.  A session the
        registry already closed (taken over: ``admit`` ends it as ``replaced``)
        is still torn down here, once.
        """
        self.registry.end(session, reason)
        peer = session.data
        if not isinstance(peer, Peer) or peer.closed:
            return
        room = peer.room
        conn = peer.connection
        peer.connection = None
        if peer.joined and reason is not EndReason.SHUTDOWN:
            # (On shutdown everyone is told serverShutdown instead.)
            room.broadcast("peerClosed", {"peerId": peer.id, "reason": reason.value}, exclude=peer)
        self._forget(room.remove(peer))
        session.data = None  # no Session <-> Peer cycle survives (gc.freeze friendly)
        if conn is not None:
            if reason is EndReason.REPLACED:
                conn.notify("sessionReplaced", {"reason": "another connection took over"})
            elif reason is EndReason.SHUTDOWN:
                conn.notify(
                    "serverShutdown", {"reconnectDelay": int(self.config.reconnect_delay * 1000)}
                )
            self.connections.pop(conn.id, None)
            conn.close(close_code or CLOSE_CODES[reason], reason.value)
        self._schedule_room_close(room)
        self.observer.emit("roomchanged", room.id)
        self.observer.emit("sessionended", session, reason, detected_at)
        self.observer.emit("seatfreed")
        log_session("session_ended", session, reason=reason.value)

    def _transport_ended(self, peer: Peer, transport_reason: TransportEndReason) -> None:
        reason = SESSION_END_FOR_TRANSPORT.get(transport_reason)
        if reason is not None and not peer.closed:
            self.end(peer.session, reason, detected_at=self._loop.time())

    def leave_with_token(self, token: str) -> bool:
        """``POST /leave``: the beacon a page sends on ``pagehide``."""
        session = self.registry.by_leave_token.get(token)
        if session is None:
            return False
        self.end(session, EndReason.BEACON, detected_at=self._loop.time())
        return True

    def _forget(self, tasks: list[asyncio.Task[Any]]) -> None:
        for task in tasks:
            if not task.done():
                self._cancelled.add(task)
                task.add_done_callback(self._cancelled.discard)

    @property
    def pending_tasks(self) -> int:
        """Cancelled tasks of ended sessions still unwinding (0 once ``close`` returns)."""
        return len(self._cancelled)

    async def close(self) -> None:
        """Shutdown, after every session has ended: close the rooms, await every task."""
        creations = list(self._room_creations.values())
        for future in creations:
            future.cancel()
        for room in list(self.rooms.values()):
            self.close_room(room)
        waiting: list[asyncio.Future[Any]] = [*creations, *self._cancelled]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)
