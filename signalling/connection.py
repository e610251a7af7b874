"""One protoo WebSocket: sending messages, and requests the server makes to a client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .protocol import encode_notification, encode_request

logger = logging.getLogger(__name__)

_connection_ids = itertools.count(1)


class RequestFailed(Exception):
    """A request the server sent was answered with an error, timed out, or lost."""


class Connection:
    """Owns its background sends; ``close`` ends them."""

    __slots__ = ("_next_request_id", "_pending", "_tasks", "closing", "id", "ws")

    def __init__(self, ws: ServerConnection) -> None:
        self.id = next(_connection_ids)
        self.ws = ws
        self.closing = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_request_id = random.randint(1, 10_000_000)
        self._tasks: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<Connection {self.id}>"

    # -- sending ------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        """Send one protoo frame (JSON bytes, as a text frame)."""
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame, text=True)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def notify(self, method: str, data: Any) -> None:
        if not self.closing:
            self.spawn(self.send(encode_notification(method, data)))

    async def request(self, method: str, data: Any, timeout: float) -> Any:
        """Send a request and wait for its response (e.g. ``newConsumer``)."""
        if self.closing:
            raise RequestFailed("connection closing")
        self._next_request_id = request_id = self._next_request_id % 2**31 + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.send(encode_request(request_id, method, data))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise RequestFailed(f"{method} timed out") from None
        finally:
            self._pending.pop(request_id, None)

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
        """Close the socket with ``code`` (sent in the background) and fail pending requests."""
        if self.closing:
            return
        self.closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RequestFailed("connection closed"))
        self._pending.clear()
        self.spawn(self.ws.close(code, reason))

    async def wait_closed(self) -> None:
        """Wait for every background send of this connection to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def task_count(self) -> int:
        return len(self._tasks)
