"""Hostile and malformed messages (hypothesis): errors, never a crash or a leak.

The server runs in its own thread and event loop; a healthy peer pings it the
whole time, and its round trips must stay fast while the fuzzer hammers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from signalling.config import replace
from signalling.rate_limit import RateLimit
from signalling.rooms import Room
from signalling.server import Server

from .conftest import TEST_CONFIG

DOCUMENTED_CLOSE_CODES = {1000, 1002, 1003, 1007, 1009, 1011, 4400, 4408, 4409, 4410, 4411}
METHODS = [*Room.HANDLERS, "beforeDisconnect", "ping", "", "x" * 300, "__init__", "constructor"]
FIELDS = [
    "transportId",
    "producerId",
    "consumerId",
    "dataProducerId",
    "kind",
    "rtpParameters",
    "dtlsParameters",
    "sctpStreamParameters",
    "sctpCapabilities",
    "rtpCapabilities",
    "displayName",
    "device",
    "appData",
    "producing",
    "consuming",
    "label",
    "protocol",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
request_data = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)
requests = st.builds(
    lambda i, m, d: {"request": True, "id": i, "method": m, "data": d},
    st.integers(0, 2**53),
    st.sampled_from(METHODS),
    request_data,
)
notifications = st.builds(
    lambda m, d: {"notification": True, "method": m, "data": d},
    st.sampled_from(["ping", "activity", "whatever", "pong", ""]),
    request_data,
)
hostile_objects = st.dictionaries(
    st.sampled_from(["request", "response", "notification", "id", "method", "data", "ok"]),
    json_values,
    max_size=6,
)
frames = st.one_of(
    requests.map(json.dumps),
    notifications.map(json.dumps),
    hostile_objects.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=64),
    st.just("[" * 20_000),
    st.just('{"request":true,"id":1,"method":"join","data":' + "[" * 10_000 + "]" * 10_000 + "}"),
)


class ServerThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.server: Server | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            # The healthy peer pings 20 times a second: above the default heartbeat rate.
            self.server = Server(
                replace(
                    TEST_CONFIG, max_message_size=64 * 1024, heartbeat_rate=RateLimit(50, 100)
                )
            )
            await self.server.start()

        self.loop.run_until_complete(start())
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            # A loop left open leaks its self-pipe sockets: ResourceWarnings that
            # surface (as errors) in whichever later test happens to collect them.
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        assert self.server is not None
        self.call(self.server.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server_thread() -> Iterator[ServerThread]:
    running = ServerThread()
    yield running
    running.stop()


def open_client(port: int, peer: str) -> ClientConnection:
    return connect(
        f"ws://127.0.0.1:{port}/?roomId=fuzz&peerId={peer}",
        subprotocols=["protoo"],  # type: ignore[list-item]
        compression=None,
        open_timeout=10,
        max_size=None,
    )


class HealthyPeer(threading.Thread):
    """Joins, then pings every 50 ms and records the round trips (the fuzz server allows it)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.joined = threading.Event()
        self.rtts: list[float] = []
        self.failures = 0
        self.running = True

    def run(self) -> None:
        with open_client(self.port, "healthy") as ws:
            ws.send(json.dumps({"request": True, "id": 1, "method": "join", "data": {}}))
            ws.recv(10)
            self.joined.set()
            request_id = 2
            while self.running:
                started = time.perf_counter()
                try:
                    ws.send(json.dumps({"request": True, "id": request_id, "method": "ping"}))
                    while True:
                        reply = json.loads(ws.recv(5))
                        if reply.get("response") and reply.get("id") == request_id:
                            break
                    self.rtts.append(time.perf_counter() - started)
                except Exception:
                    self.failures += 1
                    return
                request_id += 1
                time.sleep(0.05)


_peer_ids = iter(range(10**9))


def exchange(ws: ClientConnection, frame: str | bytes) -> None:
    """Send one frame; a well-formed request must get a well-formed answer."""
    ws.send(frame)
    try:
        message = json.loads(frame) if isinstance(frame, str) else None
    except (ValueError, RecursionError):
        message = None
    if not (
        isinstance(message, dict)
        and message.get("request") is True
        and isinstance(message.get("id"), int)
        and isinstance(message.get("method"), str)
        and message["method"]
        and 0 <= message["id"] <= 2**53
        and len(frame) < 64 * 1024
    ):
        return
    while True:
        reply = json.loads(ws.recv(10))
        if reply.get("response") and reply.get("id") == message["id"]:
            break
    if reply.get("ok"):
        assert isinstance(reply.get("data"), (dict, list))
    else:
        assert isinstance(reply.get("errorCode"), int) and 400 <= reply["errorCode"] <= 503
        reason = reply.get("errorReason")
        assert isinstance(reason, str) and "Traceback" not in reason and ".py" not in reason


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(frames, min_size=1, max_size=6), join_first=st.booleans())
def test_hostile_messages_get_errors_and_the_server_stays_up(
    server_thread: ServerThread, sequence: list[str | bytes], join_first: bool
) -> None:
    server = server_thread.server
    assert server is not None
    with open_client(server.port, f"fuzz{next(_peer_ids)}") as ws:
        try:
            if join_first:
                exchange(ws, json.dumps({"request": True, "id": 1, "method": "join", "data": {}}))
            for frame in sequence:
                exchange(ws, frame)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            assert code in DOCUMENTED_CLOSE_CODES, code


def test_a_healthy_peer_keeps_its_latency_while_the_fuzzer_runs(
    server_thread: ServerThread,
) -> None:
    server = server_thread.server
    assert server is not None
    healthy = HealthyPeer(server.port)
    healthy.start()
    assert healthy.joined.wait(10)
    time.sleep(1.0)
    baseline = list(healthy.rtts)
    # Run the fuzzer again, in this thread, while the healthy peer pings.
    test_hostile_messages_get_errors_and_the_server_stays_up(server_thread)  # type: ignore[call-arg]
    healthy.running = False
    healthy.join(10)
    during = healthy.rtts[len(baseline) :]
    assert healthy.failures == 0, "the healthy peer lost its connection"
    assert len(during) > 10
    # Generous bounds (a noisy 2-core machine); scripts/bench_signalling.py has tight numbers.
    assert statistics.median(during) < 0.05, statistics.median(during)
    assert sorted(during)[int(len(during) * 0.95)] < 0.25
    failed = {
        k: c._value.get() for k, c in server.metrics._request_children.items() if k[1] == "failed"
    }
    assert not any(failed.values()), f"requests failed with internal errors: {failed}"
    assert server_thread.call(_health(server))


async def _health(server: Server) -> bool:
    return server.accepting and not server.worker.closed
