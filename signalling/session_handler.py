"""What a joined session's messages do: requests, notifications, heartbeats.

The server accepts a connection and admits its session; from then on every
frame the client sends goes through ``SessionHandler.serve``: decoded once,
rate limited, then a heartbeat is answered at once, a request runs through its
room (in the client's dialect) and is answered, a notification is carried out.
A session's end decided here (``beforeDisconnect``, a protocol violation, a
rate limit) goes to the lifecycle, the one teardown path; what happened is
emitted on the server's observer for metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

import media
from media.events import EventEmitter

from . import protocol
from .connection import Connection, ProbedSocket
from .lifecycle import SessionLifecycle
from .liveness import EndReason, Session, SessionRegistry
from .protocol import CloseCode, ErrorCode, Kind, ProtocolViolation, decode
from .rate_limit import Verdict
from .rooms import Peer, RequestError, Room, RoomFull, printable

logger = logging.getLogger(__name__)


class CallFailed(Exception):
    """A client call ended in an error: what to answer, and the metric outcome."""

    def __init__(self, code: ErrorCode, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.outcome = outcome


def _known(method: str) -> str:
    """The metrics label of a method: unknown names collapse into one."""
    return method if method in Room.HANDLERS or method == "beforeDisconnect" else "unknown"


class SessionHandler:
    """Serves the messages of joined sessions (one instance per server)."""

    def __init__(
        self,
        *,
        lifecycle: SessionLifecycle,
        observer: EventEmitter,
        refuse: Callable[..., None],
        shutting_down: Callable[[], bool],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.lifecycle = lifecycle
        self.registry: SessionRegistry = lifecycle.registry
        self.observer = observer
        self._refuse = refuse
        self._shutting_down = shutting_down
        self.loop = loop

    async def serve(self, conn: Connection, session: Session, peer: Peer) -> None:
        registry = self.registry
        observer = self.observer
        loop_time = self.loop.time
        limiter = conn.limiter
        if isinstance(conn.ws, ProbedSocket):
            conn.ws.on_probe_answered = functools.partial(self.probe_answered, session)
        for method, data in peer.dialect.greetings():
            conn.notify(method, data)
        try:
            async for raw in conn.ws:
                try:
                    message = decode(raw)
                except ProtocolViolation as violation:
                    observer.emit("protocolviolation")
                    logger.info(
                        "protocol violation by %s/%s: %s",
                        session.room_id,
                        session.peer_id,
                        violation.reason,
                    )
                    self.lifecycle.end(session, EndReason.ERROR, close_code=violation.code)
                    return
                if not session.open or conn.closing:
                    return
                now = loop_time()
                registry.seen(session, now)
                if message.kind is Kind.RESPONSE and conn.awaits(message.id):
                    # Answers to our own requests (newConsumer...) are bounded by
                    # what we asked: never rate limited.
                    conn.response_received(
                        message.id, message.ok, message.data, message.error_reason
                    )
                    continue
                verdict = limiter.check(message.method, now)
                if verdict is not Verdict.ALLOW:
                    observer.emit("ratelimited", message.kind.value)
                    if verdict is Verdict.CLOSE:
                        self._refuse("rate_limited", f"{session.room_id}/{session.peer_id}")
                        self.lifecycle.end(session, EndReason.RATE_LIMITED, detected_at=now)
                        return
                    if message.kind is Kind.REQUEST:
                        slow_down = ErrorCode.TOO_MANY_REQUESTS
                        conn.send(protocol.encode_error(message.id, slow_down, "slow down"))
                    continue
                if message.kind is Kind.REQUEST:
                    if message.method == "ping":
                        pong = self.pong(message.data, peer)
                        conn.send(protocol.encode_response(message.id, pong))
                        observer.emit("request", "ping", "ok", 0.0)
                        continue
                    await self._request(
                        conn, session, peer, message.method, message.id, message.data
                    )
                elif message.kind is Kind.NOTIFICATION:
                    if message.method in peer.dialect.commands:
                        await self._command(session, peer, message.method, message.data)
                    else:
                        self._notification(conn, session, peer, message.method, message.data)
                # (A response nobody waits for is dropped: late, duplicate or forged.)
        except ConnectionClosed:
            pass

    def pong(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        """Answer a heartbeat; the RTT the client reports feeds metrics and quality."""
        rtt = data.get("rtt") if isinstance(data, dict) else None
        if isinstance(rtt, (int, float)) and not isinstance(rtt, bool) and 0 <= rtt < 60_000:
            self.observer.emit("clientrtt", rtt / 1000)
            if peer is not None:
                peer.reported_rtt_ms = float(rtt)
        return {"serverTime": time.time() * 1000}

    async def _request(
        self,
        conn: Connection,
        session: Session,
        peer: Peer,
        method: str,
        request_id: int,
        data: dict[str, Any],
    ) -> None:
        started = time.perf_counter()
        if method == "beforeDisconnect" and isinstance(data, dict):
            conn.send(protocol.encode_response(request_id, {}))
            self.lifecycle.end(session, EndReason.GRACEFUL, detected_at=self.loop.time())
            return
        try:
            result = await self._call(session, peer, method, data)
        except RoomFull as exc:
            self.observer.emit("request", method, "error", time.perf_counter() - started)
            conn.send(protocol.encode_error(request_id, exc.code, exc.reason))
            self._refuse("room_full")
            self.lifecycle.end(session, EndReason.REJECTED, close_code=CloseCode.ROOM_FULL)
            return
        except CallFailed as failure:
            outcome = failure.outcome
            frame = protocol.encode_error(request_id, failure.code, failure.reason)
        else:
            outcome = "ok"
            frame = protocol.encode_response(request_id, peer.dialect.response(method, result))
        self.observer.emit("request", _known(method), outcome, time.perf_counter() - started)
        conn.send(frame)

    async def _command(self, session: Session, peer: Peer, method: str, data: Any) -> None:
        """A call the 2025 dialect makes as a notification (``pauseProducer``...).

        The same handler runs as for the request; nothing is answered, so a
        failure is only logged (mediasoup-demo ignores unknown ids there too).
        """
        started = time.perf_counter()
        outcome = "ok"
        try:
            await self._call(session, peer, method, data)
        except CallFailed as failure:
            outcome = failure.outcome
            logger.debug(
                "%s notification of %s/%s failed: %s",
                method,
                session.room_id,
                session.peer_id,
                failure.reason,
            )
        self.observer.emit("request", _known(method), outcome, time.perf_counter() - started)

    async def _call(self, session: Session, peer: Peer, method: str, data: Any) -> Any:
        """Run one client call through its room, in canonical shapes.

        Returns the handler's result; raises ``RoomFull``, or ``CallFailed``
        with the error to report (exception text reaches the client only from
        our own RequestError/MediaError messages, cut short).
        """
        try:
            if not isinstance(data, dict):
                raise RequestError(ErrorCode.BAD_REQUEST, "data must be an object")
            if self._shutting_down():
                raise RequestError(ErrorCode.UNAVAILABLE, "server shutting down")
            try:
                data = peer.dialect.request(method, data)
            except ValueError as exc:
                raise RequestError(ErrorCode.BAD_REQUEST, printable(str(exc), 200)) from None
            result = await peer.room.handle(peer, method, data)
            if method == "join":
                self.lifecycle.joined(session)
            return result
        except RoomFull:
            raise
        except RequestError as exc:
            raise CallFailed(exc.code, exc.reason, "error") from None
        except media.NoFreePortError:
            self._refuse("no_free_port")
            raise CallFailed(ErrorCode.UNAVAILABLE, "no media port available", "error") from None
        except media.MediaError as exc:
            code = (
                ErrorCode.NOT_FOUND
                if isinstance(exc, media.InvalidStateError)
                else ErrorCode.BAD_REQUEST
            )
            raise CallFailed(code, printable(str(exc), 200), "error") from None
        except Exception:
            logger.exception("request %s of %s/%s failed", method, session.room_id, session.peer_id)
            raise CallFailed(ErrorCode.INTERNAL, "internal error", "failed") from None

    def _notification(
        self, conn: Connection, session: Session, peer: Peer, method: str, data: Any
    ) -> None:
        if not isinstance(data, dict):
            data = {}
        if method == "ping":
            conn.notify("pong", self.pong(data, peer))
        elif method == "beforeDisconnect":
            self.lifecycle.end(session, EndReason.GRACEFUL, detected_at=self.loop.time())
        elif method == "activity":
            kind = data.get("type")
            hidden = {"hidden": True, "visible": False}.get(str(data.get("visibility")))
            if kind in ("interaction", "visibility"):
                self.registry.interacted(session, self.loop.time(), hidden=hidden)
        else:
            logger.debug("ignored notification %r", method[:64])

    def probe_answered(self, session: Session, sent_at: float) -> None:
        """A keepalive probe's pong (``ProbedSocket``): the session was heard."""
        if not session.open:
            return
        now = self.loop.time()
        self.registry.heard(session, now)
        rtt = now - sent_at
        if 0.0 <= rtt <= 60.0:  # (a forged pong's time is not a sample)
            self.observer.emit("proberrtt", rtt)
