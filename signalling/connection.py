"""One protoo WebSocket: sending messages, and requests the server makes to a client."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from .http_edge import BodyTolerantConnection
from .protocol import encode_notification, encode_request
from .rate_limit import MessageLimiter

logger = logging.getLogger(__name__)

_connection_ids = itertools.count(1)

# A keepalive probe's payload: a tag, and the loop time it was sent at.
_PROBE = struct.Struct("!4sd")
_PROBE_TAG = b"gkap"


class ProbedSocket(BodyTolerantConnection):
    """websockets' server connection, with our keepalive probes answered cheaply.

    websockets' ``ping()`` takes the send lock, draws a random payload and keeps
    a future per ping until its pong; at tens of thousands of sessions that is
    most of what keepalive costs.  Our probes (``Connection.probe``) carry their
    send time instead (RFC 6455 section 5.5.3: the pong echoes the ping's
    payload), so the pong alone says who answered and the round-trip time.
    Other pongs go to websockets as usual.  A client could forge such a pong:
    that proves it is alive all the same, and fakes only its own RTT sample.
    """

    on_probe_answered: Callable[[float], None] | None = None
    """Called with the probe's send time (loop clock) when its pong arrives."""

    def acknowledge_pings(self, data: bytes) -> None:
        if len(data) == _PROBE.size and data.startswith(_PROBE_TAG):
            answered = self.on_probe_answered
            if answered is not None:
                answered(_PROBE.unpack(data)[1])
            return
        super().acknowledge_pings(data)


class RequestFailed(Exception):
    """A request the server sent was answered with an error, timed out, or lost."""


class Connection:
    """One protoo WebSocket with a bounded outbound buffer and no task per message.

    Frames are written straight into the socket's transport, in call order
    (websockets' sans-I/O protocol frames them; nothing is awaited), so a
    notification to a thousand peers costs a thousand buffer appends, not a
    thousand tasks.  What a client does not read accumulates in that transport
    buffer; once it passes ``max_outbound_bytes`` the connection is closed with
    ``4413`` and the session is handled as if its socket was lost (it may
    resume).  ``close`` owns the one background task a connection may have.
    """

    __slots__ = (
        "_next_request_id",
        "_pending",
        "_tasks",
        "close_code",
        "closing",
        "id",
        "limiter",
        "max_outbound_bytes",
        "on_overflow",
        "peak_outbound_bytes",
        "remote",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        *,
        max_outbound_bytes: int,
        limiter: MessageLimiter,
        remote: str = "",
    ) -> None:
        self.id = next(_connection_ids)
        self.ws = ws
        self.remote = remote
        self.closing = False
        self.close_code: int | None = None
        self.max_outbound_bytes = max_outbound_bytes
        self.peak_outbound_bytes = 0
        self.limiter = limiter
        self.on_overflow: Callable[[Connection], None] = lambda conn: None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_request_id = random.randint(1, 10_000_000)
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<Connection {self.id}>"

    # -- sending ------------------------------------------------------------------

    @property
    def outbound_bytes(self) -> int:
        """Bytes written but not yet taken by the kernel (the client's backlog)."""
        transport = self.ws.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def send(self, frame: bytes) -> bool:
        """Queue one protoo frame (JSON bytes, as a text frame); False if it was not."""
        if self.closing:
            return False
        ws = self.ws
        if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return False
        backlog = ws.transport.get_write_buffer_size()
        if backlog + len(frame) > self.max_outbound_bytes:
            self.peak_outbound_bytes = max(self.peak_outbound_bytes, backlog)
            self.on_overflow(self)
            return False
        ws.protocol.send_text(frame)
        ws.send_data()
        return True

    def probe(self, now: float) -> bool:
        """Send a keepalive ping stamped with ``now``; False if it was not sent.

        Written straight into the transport like any frame (control frames may
        go between others); its pong reaches ``ProbedSocket.on_probe_answered``.
        """
        ws = self.ws
        if self.closing or ws.protocol.state is not State.OPEN or ws.transport.is_closing():
            return False
        ws.protocol.send_ping(_PROBE.pack(_PROBE_TAG, now))
        ws.send_data()
        return True

    def notify(self, method: str, data: Any) -> None:
        if not self.closing:
            self.send(encode_notification(method, data))

    async def request(self, method: str, data: Any, timeout: float) -> Any:
        """Send a request and wait for its response (e.g. ``newConsumer``)."""
        if self.closing:
            raise RequestFailed("connection closing")
        self._next_request_id = request_id = self._next_request_id % 2**31 + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            if not self.send(encode_request(request_id, method, data)):
                raise RequestFailed("connection closing")
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestFailed(f"{method} timed out") from None
        finally:
            self._pending.pop(request_id, None)

    def awaits(self, request_id: int) -> bool:
        """Is a request of ours waiting for this response id?"""
        return request_id in self._pending

    def response_received(self, request_id: int, ok: bool, data: Any, reason: str | None) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # late, duplicate or unknown: nothing waits for it
        if ok:
            future.set_result(data)
        else:
            future.set_exception(RequestFailed(reason or "rejected by the client"))

    # -- closing ------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (in the background) and fail pending requests.

        The close handshake is bounded by websockets' ``close_timeout``; a
        client that does not read gets its TCP connection aborted then.
        """
        if self.closing:
            return
        self.closing = True
        self.close_code = code  # what the server chose, even if the frame never leaves
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RequestFailed("connection closed"))
        self._pending.clear()
        task = asyncio.ensure_future(self._close_within(code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_within(self, code: int, reason: str) -> None:
        # websockets bounds the wait for the peer's close frame, but not the
        # wait for buffer space to write ours: a client that never reads would
        # hold the socket forever.  Abort after the close timeout either way.
        ws = self.ws
        try:
            await asyncio.wait_for(ws.close(code, reason), (ws.close_timeout or 0) + 1.0)
        except (TimeoutError, OSError, ConnectionError):
            ws.transport.abort()

    async def wait_closed(self) -> None:
        """Wait for the close handshake started by ``close`` to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def task_count(self) -> int:
        return len(self._tasks)
