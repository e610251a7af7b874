"""The passive ICE-TCP side of a WebRtcTransport: one listener, a few connections.

Browsers behind a network that drops UDP reach the transport's passive TCP
candidate (RFC 6544) and send everything framed (``media.ice_tcp``).  Each
accepted connection is a path of its own: its frames go to the transport's
demultiplexer with the ``TcpConnection`` object in place of a UDP address, and
the ICE-lite agent may select it like a UDP address.  A connection object is
only ever equal to itself, never to an ``(ip, port)`` tuple, so a TCP path and
a UDP address cannot be confused.

Anyone can connect, so everything is bounded (docs/security.md):

- at most ``max_connections`` at a time; more are closed as they arrive;
- a connection must send an authenticated STUN binding request first
  (frames of at most ``ice_tcp.UNVALIDATED_MAX_FRAME`` bytes until then), and
  within ``stun_timeout`` seconds: otherwise it is closed;
- the read buffer holds at most one incomplete frame (at most 65537 bytes);
- the write buffer: media is dropped above ``write_limit`` bytes waiting to be
  sent, anything else above twice that (the client does not read: TCP's own
  flow control pushed back), so nothing grows without bound;
- every connection and the listening socket close with the transport (the
  connections are aborted: a client that does not read cannot hold them open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import cast

from .ice_lite import Address
from .ice_tcp import MAX_FRAME_SIZE, UNVALIDATED_MAX_FRAME, FrameDecoder, FramingError

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!H")


class TcpConnection(asyncio.Protocol):
    """One accepted ICE-TCP connection: a path, compared by identity."""

    def __init__(self, listener: TcpListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(UNVALIDATED_MAX_FRAME)
        self._timer: asyncio.TimerHandle | None = None
        self.remote_address: Address = ("", 0)
        self.validated = False
        """True once an authenticated STUN binding request arrived on it."""
        self.closed = False
        self.frames_dropped = 0
        """Frames not sent because the write buffer was over its limit."""

    def __repr__(self) -> str:
        ip, port = self.remote_address
        return f"<TcpConnection {ip}:{port}{' validated' if self.validated else ''}>"

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are no subclass of asyncio.Transport: no isinstance.)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote_address = (str(peer[0]), int(peer[1]))
        if not self._listener.admit(self):
            self.closed = True
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Media packets are small and latency-bound: no Nagle delay.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timer = asyncio.get_running_loop().call_later(
            self._listener.stun_timeout, self._stun_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            self._listener.on_error(self, str(exc))
            self.close()
            return
        if self._decoder.empty:
            empty, self._decoder.empty = self._decoder.empty, 0
            for _ in range(empty):
                self._listener.on_error(self, "zero-length frame")
            if not self.validated:  # not the binding request it owes first
                self.close()
                return
        on_frame = self._listener.on_frame
        for payload in frames:
            if self.closed:
                return
            on_frame(payload, self)

    def eof_received(self) -> bool:
        return False  # half-closed by the client: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._shut()
        self._listener.lost(self)

    # -- used by the transport ------------------------------------------------------

    def validate(self) -> None:
        """Its first authenticated binding request arrived: a real ICE path now."""
        if self.validated:
            return
        self.validated = True
        self._decoder.max_frame = MAX_FRAME_SIZE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self, data: bytes) -> None:
        """Send a control packet (STUN, DTLS, RTCP) framed, unless far behind."""
        self._write(data, self._listener.write_limit * 2)

    def send_media(self, data: bytes) -> None:
        """Send an SRTP packet framed, unless ``write_limit`` bytes already wait."""
        self._write(data, self._listener.write_limit)

    def _write(self, data: bytes, limit: int) -> None:
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > limit or len(data) > MAX_FRAME_SIZE:
            self.frames_dropped += 1
            self._listener.frames_dropped += 1
            return
        transport.write(_HEADER.pack(len(data)) + data)

    def close(self) -> None:
        """Abort it at once: unsent data is dropped, the descriptor freed."""
        if self.closed:
            return
        self._shut()
        if self._transport is not None:
            self._transport.abort()

    def _shut(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stun_timeout(self) -> None:
        self._timer = None
        if not self.validated and not self.closed:
            self._listener.on_error(self, "no authenticated STUN binding request in time")
            self.close()


class TcpListener:
    """The listening socket of one transport and the connections it accepted.

    Its owner sets ``on_frame(payload, connection)``, which gets every frame,
    and with ``set_callbacks`` ``on_lost(connection)``, told when a connection
    is gone (closed by either side), and ``on_error(connection, detail)``,
    told about each framing violation (before that, all are ignored).
    """

    def __init__(self, *, max_connections: int, stun_timeout: float, write_limit: int) -> None:
        self.max_connections = max_connections
        self.stun_timeout = stun_timeout
        self.write_limit = write_limit
        self.on_frame: Callable[[bytes, TcpConnection], None] = _ignore_frame
        self._on_lost: Callable[[TcpConnection], None] = _ignore_lost
        self._on_error: Callable[[TcpConnection, str], None] = _ignore_error
        self.connections: set[TcpConnection] = set()
        self.refused = 0
        """Connections closed on arrival because ``max_connections`` were open."""
        self.frames_dropped = 0
        """Frames its connections did not send: their write buffer was over the limit."""
        self.port = 0
        self.closed = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        """Listen on ``sock`` (bound, not yet listening); it is closed on failure."""
        loop = asyncio.get_running_loop()
        self.port = sock.getsockname()[1]
        try:
            self._server = await loop.create_server(
                lambda: TcpConnection(self), sock=sock, backlog=max(8, self.max_connections)
            )
        except BaseException:
            sock.close()
            raise
        if self.closed:  # closed while starting
            self._server.close()

    def set_callbacks(
        self,
        *,
        on_lost: Callable[[TcpConnection], None],
        on_error: Callable[[TcpConnection, str], None],
    ) -> None:
        self._on_lost = on_lost
        self._on_error = on_error

    def admit(self, connection: TcpConnection) -> bool:
        if self.closed or len(self.connections) >= self.max_connections:
            self.refused += 1
            return False
        self.connections.add(connection)
        return True

    def lost(self, connection: TcpConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self._on_lost(connection)

    def on_error(self, connection: TcpConnection, detail: str) -> None:
        self._on_error(connection, detail)

    def close(self) -> None:
        """Stop listening (the port is free at once) and abort every connection."""
        if self.closed:
            return
        self.closed = True
        if self._server is not None:
            self._server.close()
        connections, self.connections = self.connections, set()
        for connection in connections:
            connection.close()
        # Nothing reports back from here on.
        self.on_frame = _ignore_frame
        self._on_lost = _ignore_lost
        self._on_error = _ignore_error


def _ignore_frame(payload: bytes, connection: TcpConnection) -> None:
    return None


def _ignore_lost(connection: TcpConnection) -> None:
    return None


def _ignore_error(connection: TcpConnection, detail: str) -> None:
    return None


__all__ = ["TcpConnection", "TcpListener"]
