"""Real WebSocket connections on loopback, without the ``Server`` around them.

``Sockets`` listens on 127.0.0.1 with the server's WebSocket settings; each
``open()`` connects one client and hands back both ends: the server side
wrapped in a real ``signalling.connection.Connection`` (as ``Server`` wraps
it) and the client.  The server side reads what the client sends as the
server does: responses to the connection's own requests go to
``Connection.response_received``, everything else waits in ``inbox``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from signalling.connection import Connection, ProbedSocket
from signalling.protocol import Kind, Message, ProtocolViolation, decode
from signalling.protoo_client import ProtooClient
from signalling.rate_limit import MessageLimiter, RatePolicy

CLOSE_TIMEOUT = 0.5
"""websockets' close handshake bound on the server side (the server uses 2 s)."""


@dataclass
class ServerSide:
    """The server's end of one socket."""

    conn: Connection
    inbox: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the server's handler for this socket has returned."""


class Sockets:
    def __init__(self) -> None:
        self._server: WsServer | None = None
        self._waiting: collections.deque[tuple[int, asyncio.Future[ServerSide]]] = (
            collections.deque()
        )
        self._clients: list[ProtooClient | ClientConnection] = []
        self._sides: list[ServerSide] = []

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["protoo"],  # type: ignore[list-item]
            compression=None,
            max_queue=16,
            write_limit=2**15,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=CLOSE_TIMEOUT,
            create_connection=ProbedSocket,
        )

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def open(self, *, max_outbound_bytes: int = 1 << 20) -> tuple[ServerSide, ProtooClient]:
        """A protoo client and the server side of its socket."""
        accepted = self._expect(max_outbound_bytes)
        client = await ProtooClient.connect(self.url)
        self._clients.append(client)
        return await asyncio.wait_for(accepted, 5), client

    async def open_raw(
        self, *, max_outbound_bytes: int = 1 << 20
    ) -> tuple[ServerSide, ClientConnection]:
        """A bare websockets client (it reads only when asked) and the server side."""
        accepted = self._expect(max_outbound_bytes)
        ws = await ws_connect(
            self.url,
            subprotocols=["protoo"],  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
        )
        self._clients.append(ws)
        return await asyncio.wait_for(accepted, 5), ws

    def _expect(self, max_outbound_bytes: int) -> asyncio.Future[ServerSide]:
        accepted: asyncio.Future[ServerSide] = asyncio.get_running_loop().create_future()
        self._waiting.append((max_outbound_bytes, accepted))
        return accepted

    async def _handle(self, ws: ServerConnection) -> None:
        max_outbound_bytes, accepted = self._waiting.popleft()
        loop = asyncio.get_running_loop()
        conn = Connection(
            ws,
            max_outbound_bytes=max_outbound_bytes,
            limiter=MessageLimiter(RatePolicy(), loop.time()),
            remote="127.0.0.1",
        )
        side = ServerSide(conn)
        self._sides.append(side)
        accepted.set_result(side)
        try:
            async for raw in ws:
                try:
                    message = decode(raw)
                except ProtocolViolation:
                    continue
                if message.kind is Kind.RESPONSE and conn.awaits(message.id):
                    conn.response_received(
                        message.id, message.ok, message.data, message.error_reason
                    )
                else:
                    side.inbox.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            # As the server does: our own close frame (with its code) goes out
            # before websockets' default 1000 when the handler returns.
            await conn.wait_closed()
            side.ended.set()

    async def close(self) -> None:
        for client in self._clients:
            ws = client.ws if isinstance(client, ProtooClient) else client
            ws.transport.abort()
            if isinstance(client, ProtooClient):
                await client._wait_reader()
            else:
                await ws.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for side in self._sides:
            await side.conn.wait_closed()


@contextlib.asynccontextmanager
async def listening() -> AsyncIterator[Sockets]:
    sockets = Sockets()
    await sockets.start()
    try:
        yield sockets
    finally:
        await sockets.close()


async def closed_with(client: ProtooClient, timeout: float = 5.0) -> tuple[int | None, str]:
    """The close code and reason the client was sent."""
    return await asyncio.wait_for(asyncio.shield(client.closed), timeout)


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    """What is in ``queue`` now (taken out)."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
