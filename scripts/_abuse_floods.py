"""The attacker side of ``scripts/bench_abuse.py``: one flood per process.

Run by the benchmark as ``python scripts/_abuse_floods.py NAME CONFIG_JSON``; it
prints JSON lines on stdout: ``{"event": "started", "t": ...}`` just before the
first byte goes to the server, then ``{"event": "result", ...}`` with what
happened to the attacker.  It floods for ``duration`` seconds, or until
SIGTERM, then exits; every socket it opened dies with it.

The WebSocket client here is deliberately minimal (RFC 6455 handshake, masked
frames out, frames parsed in) so that an attacker can do what a well-behaved
library never does: stop reading while it keeps writing, pipeline thousands of
requests, or hold thousands of sockets for a few KB each.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import math
import os
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - the C extension ships in the Linux wheels

    def _apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
        full = (mask * (len(data) // 4 + 1))[: len(data)]
        return bytes(a ^ b for a, b in zip(data, full, strict=True))


FLOODS = (
    "slow_reader",
    "broadcast_storm",
    "request_storm",
    "stun_storm",
    "port_grab",
    "connection_storm",
)

DEVICE = {"flag": "bench", "name": "bench_abuse", "version": "1"}


@dataclass(frozen=True)
class FloodConfig:
    host: str
    port: int
    source: str  # the attacker's loopback address
    legit_source: str  # where an innocent newcomer comes from
    duration: float
    rtc_min_port: int
    rtc_max_port: int
    requests: int = 60_000
    stun_rate: int = 20_000
    grab_connections: int = 110
    storm_connections: int = 3_000
    storm_concurrency: int = 200


# ---------------------------------------------------------------------------------------
# A minimal WebSocket + protoo client
# ---------------------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    n = len(payload)
    mask = random.randbytes(4)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + _apply_mask(payload, mask)


def request_frame(request_id: int, method: str, data: dict[str, Any]) -> bytes:
    body = {"request": True, "id": request_id, "method": method, "data": data}
    return client_frame(1, orjson.dumps(body))


def notification_frame(method: str, data: dict[str, Any]) -> bytes:
    return client_frame(1, orjson.dumps({"notification": True, "method": method, "data": data}))


def error_key(message: dict[str, Any]) -> str:
    """``"429 too many requests"``: an error response in a few words, for tallies."""
    reason = str(message.get("errorReason", ""))[:40]
    return f"{message.get('errorCode')} {reason}".strip()


class RawWs(asyncio.Protocol):
    """One client WebSocket speaking protoo, that may stop reading at any time.

    ``status`` is the HTTP status of the handshake (101 when upgraded);
    ``fate()`` says in a few words what became of the connection.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.port, self.path = host, port, path
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[int] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.status: int | None = None
        self.failure: str | None = None  # connect error, before any HTTP status
        self.close_code: int | None = None
        self.lost_reason: str | None = None
        self.texts = 0
        # Answers to pipelined requests (not to awaited ones): "ok" or an error key.
        self.answered: collections.Counter[str] = collections.Counter()
        self.progress = asyncio.Event()  # set on every response
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = random.randint(1, 1_000_000)
        self._buf = bytearray()
        self._writable = asyncio.Event()
        self._writable.set()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=256 * 1024)
        key = base64.b64encode(random.randbytes(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: protoo\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost_reason is None:
            self.lost_reason = type(exc).__name__ if exc is not None else "eof"
        self._writable.set()
        if not self.upgraded.done():
            self.upgraded.set_result(self.status or 0)
        if not self.gone.done():
            self.gone.set_result(None)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(self.fate()))
        self.progress.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self.status is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            line = bytes(buf[:end]).split(b"\r\n", 1)[0].split()
            self.status = int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
            del buf[: end + 4]
            self.upgraded.set_result(self.status)
            if self.status != 101:
                self.lost_reason = f"http {self.status}"
                self.abort()
                return
        self._frames()

    def _frames(self) -> None:
        buf = self._buf
        pos, n = 0, len(buf)
        out: list[bytes] = []
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                self.texts += 1
                self._text(bytes(buf[pos + header : end]))
            elif opcode == 9:  # the server's keepalive probe
                out.append(client_frame(0xA, bytes(buf[pos + header : end])))
            elif opcode == 8:
                payload = buf[pos + header : end]
                self.close_code = int.from_bytes(payload[:2], "big") if length >= 2 else 1005
                out.append(client_frame(8, bytes(payload[:2])))
                if self.transport is not None:
                    self.transport.write(b"".join(out))
                    self.transport.close()
                buf.clear()
                return
            pos = end
        del buf[:pos]
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _text(self, payload: bytes) -> None:
        if not payload.startswith(b'{"response":true'):
            return  # notifications and server requests: counted in ``texts`` only
        head = payload[:80]
        if b'"ok":true' in head and not self.pending:
            self.answered["ok"] += 1  # the storms' hot path: no JSON parsing
            self.progress.set()
            return
        message = orjson.loads(payload)
        future = self.pending.pop(message.get("id"), None)
        if future is not None:  # awaited by ``request``: not one of the pipelined ones
            if not future.done():
                future.set_result(message)
            return
        self.answered["ok" if message.get("ok") else error_key(message)] += 1
        self.progress.set()

    # -- use ------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.status == 101 and not self.gone.done() and self.close_code is None

    def fate(self) -> str:
        if self.failure is not None:
            return self.failure
        if self.close_code is not None:
            return f"close {self.close_code}"
        if self.status is not None and self.status != 101:
            return f"http {self.status}"
        if self.lost_reason == "ConnectionResetError":
            return "reset by the server"  # e.g. it closed while we were not reading
        if self.lost_reason is not None:
            return self.lost_reason
        return "open"

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.gone.done():
            self.transport.write(data)

    @property
    def can_write(self) -> bool:
        """False while the socket's send buffer is above its high-water mark."""
        return self._writable.is_set()

    async def writable(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writable.wait(), timeout)

    def send_request(self, method: str, data: dict[str, Any]) -> int:
        self.next_id += 1
        self.write(request_frame(self.next_id, method, data))
        return self.next_id

    async def request(self, method: str, data: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a request and wait for its response message (ok or not)."""
        request_id = self.send_request(method, data)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(request_id, None)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.gone.done():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.gone.done():
            self.transport.resume_reading()

    async def learn_fate(self, timeout: float) -> str:
        """Read what the server queued (bounded in time), to find its close frame if any."""
        self.resume_reading()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.gone), timeout)
        received = self.texts
        await asyncio.sleep(0.2)
        fate = self.fate()
        if fate == "open" and self.texts > received:
            return "open (its backlog still arriving)"
        return fate

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_ws(host: str, port: int, path: str, source: str, timeout: float = 5.0) -> RawWs:
    """Connect and upgrade; never raises: ``ws.fate()`` tells a failure."""
    ws = RawWs(host, port, path)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: ws, host, port, local_addr=(source, 0)), timeout
        )
        await asyncio.wait_for(asyncio.shield(ws.upgraded), timeout)
    except TimeoutError:
        ws.failure = "connect timeout" if ws.transport is None else "handshake timeout"
        ws.abort()
    except OSError as exc:
        ws.failure = type(exc).__name__
        ws.abort()
    return ws


def tally(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{key} x{count:,}" for key, count in counter.most_common()) or "none"


# ---------------------------------------------------------------------------------------
# The run: deadline, stop signal, report
# ---------------------------------------------------------------------------------------


@dataclass
class Run:
    config: FloodConfig
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    began: float = 0.0
    deadline: float = float("inf")

    def started(self) -> None:
        """The flood starts now: tell the benchmark, start the clock."""
        self.began = time.monotonic()
        self.deadline = self.began + self.config.duration
        emit({"event": "started", "t": self.began})

    @property
    def stopping(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    async def until_end(self) -> None:
        await self.sleep(math.inf)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but no later than the end of the flood."""
        left = min(seconds, self.deadline - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, left))

    def ws(self, room: str, peer: str, *, legit: bool = False) -> Awaitable[RawWs]:
        c = self.config
        source = c.legit_source if legit else c.source
        return open_ws(c.host, c.port, f"/?roomId={room}&peerId={peer}", source)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


async def join(ws: RawWs, name: str) -> str:
    """``join`` and wait for it: "ok", or what went wrong."""
    if not ws.open:
        return ws.fate()
    try:
        answer = await ws.request("join", {"displayName": name, "device": DEVICE}, timeout=5.0)
    except (TimeoutError, ConnectionError) as exc:
        return f"join: {exc or type(exc).__name__}"
    return "ok" if answer.get("ok") else f"join: {error_key(answer)}"


# ---------------------------------------------------------------------------------------
# The floods
# ---------------------------------------------------------------------------------------


async def slow_reader(run: Run) -> str:
    """Join, stop reading, and send ``ping`` notifications (each asks for a ``pong``).

    One connection (room ``abuse-slow``) joins, then pauses reading for good and
    writes ping notifications in batches of 256 as fast as the socket takes them
    until the end.  Afterwards it reads for up to 2 s to find a close frame.
    """
    frame = notification_frame("ping", {})
    per_write = 256
    batch = frame * per_write
    run.started()
    ws = await run.ws("abuse-slow", "slow")
    joined = await join(ws, "slow")
    if joined != "ok":
        return f"could not start: {joined}"
    ws.pause_reading()
    sent = 0
    lost_after: float | None = None
    while not run.stopping:
        if ws.gone.done():
            lost_after = time.monotonic() - run.began
            break
        if not ws.can_write:
            await ws.writable(0.2)
            continue
        ws.write(batch)
        sent += per_write
        await asyncio.sleep(0)
    elapsed = time.monotonic() - run.began
    fate = await ws.learn_fate(2.0)
    when = f" after {lost_after:.1f} s" if lost_after is not None else ""
    return (
        f"{sent:,} pings written ({sent / elapsed:,.0f}/s), {ws.texts:,} pongs read "
        f"afterwards; connection {fate}{when}"
    )


async def broadcast_storm(run: Run) -> str:
    """Rename as fast as the server answers, in a room of 3 joined peers that never read.

    Three listeners join room ``abuse-bcast`` and pause reading; a caller joins
    and keeps 128 ``changeDisplayName`` requests (64-character names) in flight
    until the end, so each answered rename queues a ``peerDisplayNameChanged``
    for every listener.  Afterwards the listeners read for up to 1.5 s.
    """
    window = 128
    pad = "x" * 48
    run.started()
    listeners = [await run.ws("abuse-bcast", f"listener{i}") for i in range(3)]
    for index, listener in enumerate(listeners):
        joined = await join(listener, f"listener{index}")
        if joined != "ok":
            return f"listener could not join: {joined}"
        listener.pause_reading()
    caller = await run.ws("abuse-bcast", "caller")
    joined = await join(caller, "caller")
    if joined != "ok":
        return f"caller could not join: {joined}"
    sent = 0
    while not run.stopping and caller.open:
        answered = sum(caller.answered.values())
        while sent - answered < window:
            sent += 1
            caller.send_request("changeDisplayName", {"displayName": f"n{sent:09d}{pad}"})
        caller.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(caller.progress.wait(), 0.2)
    elapsed = time.monotonic() - run.began
    answers = collections.Counter(caller.answered)
    answered = sum(answers.values())
    caller_fate = caller.fate()
    fates = await asyncio.gather(*(listener.learn_fate(1.5) for listener in listeners))
    return (
        f"{sent:,} renames sent, {answered:,} answered ({answered / elapsed:,.0f}/s: "
        f"{tally(answers)}); caller {caller_fate}; listeners: {tally(collections.Counter(fates))}"
    )


async def request_storm(run: Run) -> str:
    """``getRouterRtpCapabilities`` pipelined, all of them written without waiting.

    One connection (room ``abuse-requests``, never joined) writes ``requests``
    (60,000) requests in chunks of 500 as fast as the socket takes them, reading
    and counting the answers, until all are answered or the flood ends.
    """
    count = run.config.requests
    frames = [request_frame(i, "getRouterRtpCapabilities", {}) for i in range(1, count + 1)]
    chunk = 500
    run.started()
    ws = await run.ws("abuse-requests", "storm")
    if not ws.open:
        return f"could not connect: {ws.fate()}"
    written = 0
    all_written: float | None = None
    all_answered: float | None = None
    while not run.stopping and ws.open:
        if written < count:
            if not ws.can_write:
                await ws.writable(0.2)
                continue
            ws.write(b"".join(frames[written : written + chunk]))
            written = min(count, written + chunk)
            if written == count:
                all_written = time.monotonic() - run.began
            await asyncio.sleep(0)
            continue
        if sum(ws.answered.values()) >= count:
            all_answered = time.monotonic() - run.began
            break
        ws.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.progress.wait(), 0.2)
    answered = sum(ws.answered.values())
    sent_note = f" in {all_written:.1f} s" if all_written is not None else ""
    answered_note = f" in {all_answered:.1f} s" if all_answered is not None else ""
    fate = ws.fate()
    return (
        f"{written:,}/{count:,} written{sent_note}; {answered:,} answered{answered_note} "
        f"({tally(ws.answered)}); connection {fate}"
    )


def _stun_header(length: int) -> bytes:
    # Binding request, magic cookie (RFC 5389 section 6), random transaction id.
    return struct.pack("!HHI", 0x0001, length, 0x2112A442) + random.randbytes(12)


def malformed_stun() -> bytes:
    """A Binding request whose PRIORITY (0x0024) is 2 bytes long instead of 4."""
    attribute = struct.pack("!HH", 0x0024, 2) + b"\x00\x01\x00\x00"
    return _stun_header(len(attribute)) + attribute


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answered_from: set[int] = set()
        self.received = 0

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received += 1
        self.answered_from.add(addr[1])

    def error_received(self, exc: Exception) -> None:
        pass


async def _scan(
    transport: asyncio.DatagramTransport, protocol: _Udp, host: str, ports: list[int]
) -> set[int]:
    """Ports that answer one well-formed (unauthenticated) Binding request."""
    protocol.answered_from = set()
    for port in ports:
        transport.sendto(_stun_header(0), (host, port))
    await asyncio.sleep(0.5)
    return set(protocol.answered_from)


async def stun_storm(run: Run) -> str:
    """Find the live media ports, then send them malformed STUN at ``stun_rate``/s.

    A scan sends one unauthenticated Binding request to each port of the media
    range: the ports that answer (400 Bad Request) are the live transports, here
    the healthy call's.  Then Binding requests whose PRIORITY attribute is 2
    bytes long (aioice's parser raises ``struct.error`` on them) go round-robin to
    those ports, paced in 5 ms slices; finally the live ports are scanned again.
    """
    c = run.config
    loop = asyncio.get_running_loop()
    packets = [malformed_stun() for _ in range(64)]
    transport, protocol = await loop.create_datagram_endpoint(
        _Udp, local_addr=(c.source, 0), family=socket.AF_INET
    )
    try:
        run.started()
        ports = list(range(c.rtc_min_port, c.rtc_max_port + 1))
        live = sorted(await _scan(transport, protocol, c.host, ports))
        if not live:
            return f"no live media port in {c.rtc_min_port}-{c.rtc_max_port}"
        targets = [(c.host, port) for port in live]
        tick = 0.005
        per_tick = max(1, round(c.stun_rate * tick))
        sent = 0
        next_tick = time.monotonic()
        while not run.stopping:
            for _ in range(per_tick):
                transport.sendto(packets[sent % 64], targets[sent % len(targets)])
                sent += 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        elapsed = time.monotonic() - run.began
        still = await _scan(transport, protocol, c.host, live)
    finally:
        transport.close()
    return (
        f"{len(live)} live media ports found; {sent:,} malformed datagrams sent "
        f"({sent / elapsed:,.0f}/s); afterwards {len(still)}/{len(live)} ports still answer STUN"
    )


async def port_grab(run: Run) -> str:
    """Connections that never join, each asking for 4 transports (a UDP port each).

    ``grab_connections`` (110) connections to room ``abuse-grab`` each pipeline 4
    ``createWebRtcTransport`` requests: 440 ports wanted from a range of 400.
    Once answered, an innocent newcomer (from the healthy clients' address) asks
    for one transport; the attacker then holds everything until the end.
    """
    c = run.config
    sctp = {"numStreams": {"OS": 1024, "MIS": 1024}}
    run.started()
    conns = await asyncio.gather(
        *(run.ws("abuse-grab", f"grab{i}") for i in range(c.grab_connections))
    )
    opened = [ws for ws in conns if ws.open]
    asked = 0
    for ws in opened:
        for i in range(4):
            ws.send_request(
                "createWebRtcTransport",
                {"producing": i % 2 == 0, "consuming": i % 2 == 1, "sctpCapabilities": sctp},
            )
            asked += 1
    while (
        not run.stopping
        and any(ws.open for ws in opened)
        and sum(sum(ws.answered.values()) for ws in conns) < asked
    ):
        await asyncio.sleep(0.05)
    answers: collections.Counter[str] = collections.Counter()
    for ws in conns:
        answers.update(ws.answered)
    granted = answers.pop("ok", 0)
    newcomer = await run.ws("abuse-newcomer", "newcomer", legit=True)
    if newcomer.open:
        try:
            reply = await newcomer.request(
                "createWebRtcTransport",
                {"producing": True, "consuming": False, "sctpCapabilities": sctp},
                timeout=5.0,
            )
            probe = "granted" if reply.get("ok") else f"refused {error_key(reply)}"
        except (TimeoutError, ConnectionError) as exc:
            probe = f"no answer ({exc or type(exc).__name__})"
    else:
        probe = f"could not connect ({newcomer.fate()})"
    newcomer.abort()
    await run.until_end()
    fates = collections.Counter(ws.fate() for ws in conns)
    return (
        f"{len(opened)}/{len(conns)} connected; transports granted {granted}/{asked}, "
        f"refused: {tally(answers)}; newcomer's transport: {probe}; "
        f"attacker connections at the end: {tally(fates)}"
    )


async def connection_storm(run: Run) -> str:
    """As many sockets as the server takes (bounded), each kept alive with a ping every 2 s.

    Up to ``storm_connections`` (3,000) WebSocket connections to room
    ``abuse-conns``, ``storm_concurrency`` (200) handshakes at a time, none joins;
    each upgraded one sends a ``ping`` request every 2 s and answers keepalive
    probes until the end.
    """
    c = run.config
    gate = asyncio.Semaphore(c.storm_concurrency)
    conns: list[RawWs] = []
    refused: collections.Counter[str] = collections.Counter()
    peak = 0
    last_upgrade = 0.0

    async def one(index: int) -> None:
        nonlocal last_upgrade
        async with gate:
            if run.stopping:
                return
            ws = await run.ws("abuse-conns", f"c{index}")
        if not ws.open:
            refused[ws.fate()] += 1
            return
        conns.append(ws)
        last_upgrade = time.monotonic() - run.began
        await run.sleep(random.uniform(0, 2))
        while not run.stopping and ws.open:
            ws.send_request("ping", {})
            await run.sleep(2.0)

    async def count_open() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sum(1 for ws in conns if ws.open))
            await asyncio.sleep(0.1)

    counter = asyncio.ensure_future(count_open())
    run.started()
    opening = asyncio.gather(*(one(i) for i in range(c.storm_connections)))
    await run.until_end()
    open_at_end = sum(1 for ws in conns if ws.open)
    await opening  # the handshakes in flight at the end (each bounded by its timeout)
    counter.cancel()
    closed = collections.Counter(ws.fate() for ws in conns if not ws.open)
    pings = sum(ws.answered["ok"] for ws in conns)
    for ws in conns:
        ws.abort()
    return (
        f"{len(conns):,}/{c.storm_connections:,} upgraded (the last at {last_upgrade:.1f} s; "
        f"peak {peak:,} open, {open_at_end:,} at the end, {pings:,} pings answered); "
        f"refused: {tally(refused)}; closed by the server: {tally(closed)}"
    )


FLOOD_FUNCTIONS: dict[str, Callable[[Run], Awaitable[str]]] = {
    "slow_reader": slow_reader,
    "broadcast_storm": broadcast_storm,
    "request_storm": request_storm,
    "stun_storm": stun_storm,
    "port_grab": port_grab,
    "connection_storm": connection_storm,
}
assert tuple(FLOOD_FUNCTIONS) == FLOODS


async def _main(name: str, config: FloodConfig) -> None:
    run = Run(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, run.stop.set)
    try:
        outcome = await FLOOD_FUNCTIONS[name](run)
        # Every window lasts the whole duration, also when the attacker was done
        # (or thrown out) earlier: recovery is part of what is measured.
        await run.until_end()
    except Exception as exc:  # a benchmark reports, it does not crash
        outcome = f"attacker failed: {exc!r}"
    if run.stop.is_set():
        outcome += " (stopped early by the benchmark)"
    emit({"event": "result", "t_end": time.monotonic(), "outcome": outcome})


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in FLOODS:
        sys.exit(f"usage: {os.path.basename(__file__)} {{{','.join(FLOODS)}}} CONFIG_JSON")
    config = FloodConfig(**orjson.loads(argv[1]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(_main(argv[0], config))
    else:
        uvloop.run(_main(argv[0], config))


if __name__ == "__main__":
    main(sys.argv[1:])
