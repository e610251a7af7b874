"""A small asyncio protoo client (the Python side of protoo-client).

Used by the health check, the benchmarks, the pymediasoup bot and the tests.
Server requests (``newConsumer``...) go to ``on_request``; notifications are
queued in ``notifications`` and passed to ``on_notification``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


class ProtooError(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ProtooClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(random.randint(1, 1_000_000))
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.notifications: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.on_request: RequestHandler | None = None
        self.on_notification: Callable[[str, dict[str, Any]], None] | None = None
        self.closed: asyncio.Future[tuple[int | None, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._handlers: set[asyncio.Task[Any]] = set()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, url: str, *, open_timeout: float = 10, **kwargs: Any) -> ProtooClient:
        ws = await connect(
            url,
            subprotocols=["protoo"],  # type: ignore[list-item]
            open_timeout=open_timeout,
            compression=None,
            ping_interval=None,
            **kwargs,
        )
        return cls(ws)

    async def request(self, method: str, data: Any = None, timeout: float = 10) -> Any:
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.ws.send(
                orjson.dumps(
                    {
                        "request": True,
                        "id": request_id,
                        "method": method,
                        "data": data if data is not None else {},
                    }
                ),
                text=True,
            )
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # a failed send leaves it unread: nobody else will read it

    async def notify(self, method: str, data: Any = None) -> None:
        await self.ws.send(
            orjson.dumps(
                {"notification": True, "method": method, "data": data if data is not None else {}}
            ),
            text=True,
        )

    async def next_notification(
        self, method: str | None = None, timeout: float = 10
    ) -> tuple[str, dict[str, Any]]:
        """The next notification (of ``method``, skipping others)."""

        async def wait() -> tuple[str, dict[str, Any]]:
            while True:
                item = await self.notifications.get()
                if method is None or item[0] == method:
                    return item

        return await asyncio.wait_for(wait(), timeout)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = orjson.loads(raw)
                if message.get("response"):
                    future = self._pending.get(message.get("id"))
                    if future is not None and not future.done():
                        if message.get("ok"):
                            future.set_result(message.get("data"))
                        else:
                            future.set_exception(
                                ProtooError(
                                    message.get("errorCode"), message.get("errorReason", "")
                                )
                            )
                elif message.get("request"):
                    task = asyncio.ensure_future(self._answer(message))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
                elif message.get("notification"):
                    item = (message["method"], message.get("data") or {})
                    self.notifications.put_nowait(item)
                    if self.on_notification is not None:
                        self.on_notification(*item)
        except ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ProtooError(None, "connection closed"))
            if not self.closed.done():
                self.closed.set_result((self.ws.close_code, self.ws.close_reason or ""))

    async def _answer(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        try:
            if self.on_request is None:
                raise ProtooError(500, "no request handler")
            data = await self.on_request(message["method"], message.get("data") or {})
            reply = {"response": True, "id": request_id, "ok": True, "data": data or {}}
        except Exception as exc:
            reply = {
                "response": True,
                "id": request_id,
                "ok": False,
                "errorCode": 500,
                "errorReason": str(exc),
            }
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(orjson.dumps(reply), text=True)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.ws.close(code, reason)
        await self._wait_reader()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a lost socket)."""
        self.ws.transport.abort()

    async def _wait_reader(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        for task in list(self._handlers):
            task.cancel()
