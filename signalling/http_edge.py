"""The HTTP side of the WebSocket port: requests that carry a body.

websockets parses handshake requests strictly: a request with a body (a
``sendBeacon`` with data, a ``POST /leave`` from curl) or with chunked
encoding is dropped without any response, so the client hangs until its own
timeout.  ``BodyTolerantConnection`` parses the request itself: a body up to
``max_body`` bytes is read and discarded (the routes take their arguments from
the query string), a larger one is answered ``413``, chunked encoding ``411``,
and anything malformed ``400``; then websockets' own frame parser takes over.
"""

from __future__ import annotations

import http
from collections.abc import Generator
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

MAX_BODY = 4096
"""Bodies the HTTP routes accept and discard (a beacon's payload is not used)."""


def _parse_request(protocol: ServerProtocol, max_body: int) -> Generator[None]:
    reader = protocol.reader
    try:
        request_line = yield from parse_line(reader.read_line)
        raw_method, raw_path, raw_protocol = request_line.split(b" ", 2)
        if raw_protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ValueError("unsupported protocol")
        method = raw_method.decode("ascii")
        path = raw_path.decode("ascii")
        headers = yield from parse_headers(reader.read_line)
        if "Transfer-Encoding" in headers:
            yield from _refuse(protocol, http.HTTPStatus.LENGTH_REQUIRED, "chunked bodies")
            return
        lengths = set(headers.get_all("Content-Length"))
        if len(lengths) > 1:
            raise ValueError("conflicting Content-Length headers")
        length = int(lengths.pop()) if lengths else 0
        if not 0 <= length <= max_body:
            yield from _refuse(protocol, http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body")
            return
        if length:
            yield from reader.read_exact(length)  # discarded
    except EOFError:
        # The peer closed before a whole request (Chromium drops its idle
        # preconnected sockets this way).  Hand over to websockets' discard(),
        # as its own parse() does: returning would end the parser generator,
        # and websockets' receive_eof() would then raise StopIteration and
        # leave the protocol short of CLOSED.
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    except Exception:  # any malformed request line or header: a plain 400
        yield from _refuse(protocol, http.HTTPStatus.BAD_REQUEST, "malformed request")
        return
    protocol.events.append(Request(path, headers, method, raw_protocol.decode("ascii")))
    yield from Protocol.parse(protocol)


def _refuse(protocol: ServerProtocol, status: http.HTTPStatus, what: str) -> Generator[None]:
    # send_response closes the write side and discards whatever follows.
    protocol.send_response(protocol.reject(status, f"{status.phrase}: {what}\n"))
    yield


class BodyTolerantConnection(ServerConnection):
    """A websockets ``ServerConnection`` whose handshake parser accepts small bodies."""

    max_body = MAX_BODY

    def __init__(self, protocol: ServerProtocol, server: Server, **kwargs: Any) -> None:
        super().__init__(protocol, server, **kwargs)
        # Nothing has been received yet: swap the request parser before it runs.
        protocol.parser = _parse_request(protocol, self.max_body)
        next(protocol.parser)
