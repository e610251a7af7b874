"""The HTTP side of the WebSocket port: methods, bodies, and what is public."""

from __future__ import annotations

import asyncio
import logging

import pytest

from signalling.server import Server

from .conftest import ClientFactory, eventually
from .test_admission import http


async def test_leave_answers_get_with_405_and_changes_nothing(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    token = alice.join_data["leaveToken"]  # type: ignore[attr-defined]

    status, _ = await http(server, f"GET /leave?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    assert status == 405
    assert len(server.registry) == 1


async def test_leave_with_a_body_is_answered_and_ends_the_session(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    token = alice.join_data["leaveToken"]  # type: ignore[attr-defined]
    body = b'{"reason":"pagehide"}'

    status, _ = await http(
        server,
        f"POST /leave?token={token} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body,
    )

    assert status == 204
    await eventually(lambda: len(server.registry) == 0)


async def test_a_chunked_body_gets_411_not_silence(server: Server) -> None:
    status, _ = await http(
        server,
        b"POST /leave?token=x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    assert status == 411


async def test_a_large_body_gets_413(server: Server) -> None:
    status, _ = await http(
        server, b"POST /leave?token=x HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    )
    assert status == 413


async def test_a_malformed_request_gets_400(server: Server) -> None:
    status, _ = await http(server, b"POST /leave?token=x HTTP/1.1\r\nBroken header line\r\n\r\n")
    assert status == 400


async def test_debug_stats_are_only_on_the_metrics_listener(server: Server) -> None:
    status, _ = await http(server, b"GET /debug/stats HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404

    status, body = await http(
        server, b"GET /debug/stats HTTP/1.1\r\nHost: x\r\n\r\n", port=server.metrics_port
    )
    assert status == 200 and b'"registry"' in body


async def test_a_socket_closed_before_a_whole_request_is_closed_quietly(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # Chromium opens sockets speculatively and closes the idle ones unused.
    for sent in (b"", b"GET /lea"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(sent)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    await eventually(lambda: len(server._ws_server.connections) == 0)  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
