"""Connection: one protoo WebSocket, over real sockets on loopback (tests/signalling/sockets.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from signalling.connection import Connection, ProbedSocket, RequestFailed
from signalling.protocol import ErrorCode, encode_error, encode_notification, encode_response

from .conftest import eventually
from .sockets import CLOSE_TIMEOUT, ServerSide, Sockets, closed_with, listening


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    async with listening() as running:
        yield running


def overflows(conn: Connection) -> list[Connection]:
    """Every ``on_overflow`` call of ``conn``, recorded."""
    calls: list[Connection] = []
    conn.on_overflow = calls.append
    return calls


# -- sending ---------------------------------------------------------------------------------------


async def test_a_notification_goes_out_as_one_protoo_text_frame(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()

    side.conn.notify("peerClosed", {"peerId": "alice", "reason": "graceful"})

    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(frame, str)  # a text frame, as protoo-client expects
    assert orjson.loads(frame) == {
        "notification": True,
        "method": "peerClosed",
        "data": {"peerId": "alice", "reason": "graceful"},
    }


async def test_send_writes_the_frame_exactly_as_given_and_says_it_did(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()
    frame = encode_error(7, ErrorCode.NOT_FOUND, "producer not found")

    assert side.conn.send(frame) is True

    assert await asyncio.wait_for(ws.recv(), 5) == frame.decode()


async def test_frames_arrive_in_call_order_without_a_task_per_message(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()

    for index in range(200):
        side.conn.notify("tick", {"n": index})

    assert side.conn.task_count == 0
    received = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(200)]
    assert [message["data"]["n"] for message in received] == list(range(200))


async def test_nothing_more_is_sent_once_the_connection_is_closing(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()

    side.conn.close(4410, "replaced")
    side.conn.notify("late", {})

    assert side.conn.send(encode_notification("late", {})) is False
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)  # the close frame, and nothing before it
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4410, "replaced")


async def test_a_socket_the_client_closed_takes_no_more_frames(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()
    calls = overflows(side.conn)

    await ws.close()
    await asyncio.wait_for(side.ended.wait(), 5)

    assert side.conn.ws.protocol.state is State.CLOSED
    assert side.conn.send(encode_notification("late", {})) is False
    assert calls == []  # a closed socket is not a slow reader


# -- the outbound bound ----------------------------------------------------------------------------


async def test_a_frame_beyond_the_outbound_bound_is_refused_and_reported(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw(max_outbound_bytes=1000)
    calls = overflows(side.conn)

    big = encode_notification("big", {"blob": "x" * 1000})
    small = encode_notification("small", {})

    assert side.conn.send(big) is False
    assert calls == [side.conn]
    assert side.conn.send(small) is True
    assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["method"] == "small"


async def test_a_client_that_stops_reading_backs_up_to_the_bound_and_no_further(
    sockets: Sockets,
) -> None:
    limit = 256 * 1024
    side, client = await sockets.open(max_outbound_bytes=limit)
    conn = side.conn
    calls = overflows(conn)
    client.ws.transport.pause_reading()  # its kernel buffer fills, then ours backs up
    frame = encode_notification("chunk", {"blob": "x" * 32_000})

    sent = 0
    for _ in range(4000):  # at most ~128 MB: far beyond any loopback socket buffer
        backlog = conn.outbound_bytes
        if not conn.send(frame):
            break
        sent += 1
        await asyncio.sleep(0)  # let the kernel take what it will
    else:
        pytest.fail("the client never backed up")

    assert calls == [conn]
    assert backlog + len(frame) > limit  # refused only because it would pass the bound
    assert backlog <= limit
    assert conn.peak_outbound_bytes == backlog
    assert conn.outbound_bytes == backlog  # the refused frame was not written

    client.ws.transport.resume_reading()
    # Every frame accepted arrives (none refused does), and the backlog drains.
    await eventually(lambda: client.notifications.qsize() == sent, timeout=10)
    await eventually(lambda: conn.outbound_bytes == 0)
    assert len(calls) == 1


# -- requests to the client ------------------------------------------------------------------------


async def test_a_request_resolves_with_the_clients_response(sockets: Sockets) -> None:
    side, client = await sockets.open()
    asked: list[tuple[str, dict[str, Any]]] = []

    async def answer(method: str, data: dict[str, Any]) -> dict[str, Any]:
        asked.append((method, data))
        return {"accepted": data["id"]}

    client.on_request = answer

    result = await side.conn.request("newConsumer", {"id": "c1"}, timeout=5)

    assert result == {"accepted": "c1"}
    assert asked == [("newConsumer", {"id": "c1"})]


async def test_concurrent_requests_are_matched_by_id_not_by_arrival_order(
    sockets: Sockets,
) -> None:
    side, client = await sockets.open()

    async def answer(method: str, data: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(data["delay"])
        return {"echo": data["name"]}

    client.on_request = answer

    slow, fast = await asyncio.gather(
        side.conn.request("newConsumer", {"name": "slow", "delay": 0.3}, timeout=5),
        side.conn.request("newConsumer", {"name": "fast", "delay": 0.0}, timeout=5),
    )

    assert (slow, fast) == ({"echo": "slow"}, {"echo": "fast"})


async def test_an_error_response_fails_the_request_with_the_clients_reason(
    sockets: Sockets,
) -> None:
    side, client = await sockets.open()

    async def refuse(method: str, data: dict[str, Any]) -> None:
        raise ValueError("no decoder for this codec")

    client.on_request = refuse

    with pytest.raises(RequestFailed, match="no decoder for this codec"):
        await side.conn.request("newConsumer", {}, timeout=5)


async def test_an_unanswered_request_times_out_and_a_late_answer_changes_nothing(
    sockets: Sockets,
) -> None:
    side, ws = await sockets.open_raw()
    conn = side.conn

    asked = asyncio.ensure_future(conn.request("newConsumer", {"id": "c1"}, timeout=0.3))
    request = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert request["request"] is True and request["method"] == "newConsumer"
    assert conn.awaits(request["id"])
    started = time.monotonic()

    with pytest.raises(RequestFailed, match="newConsumer timed out"):
        await asyncio.wait_for(asyncio.shield(asked), 5)

    assert time.monotonic() - started < 1.0
    assert not conn.awaits(request["id"])
    await ws.send(encode_response(request["id"], {}).decode())
    late = await asyncio.wait_for(side.inbox.get(), 5)  # nobody waits: handed on, not matched
    assert late.id == request["id"]
    conn.response_received(request["id"], True, {}, None)  # directly, too: ignored


async def test_a_second_response_to_one_request_is_ignored(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()
    conn = side.conn
    asked = asyncio.ensure_future(conn.request("newDataConsumer", {}, timeout=5))
    request = orjson.loads(await asyncio.wait_for(ws.recv(), 5))

    await ws.send(encode_response(request["id"], {"first": True}).decode())
    assert await asyncio.wait_for(asked, 5) == {"first": True}
    # A duplicate arriving after the first one was matched neither raises nor counts.
    conn.response_received(request["id"], False, None, "duplicate")
    assert not conn.awaits(request["id"])


async def test_closing_fails_every_pending_request_at_once(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()
    conn = side.conn
    asked = [
        asyncio.ensure_future(conn.request("newConsumer", {"n": n}, timeout=30)) for n in range(3)
    ]
    ids = [orjson.loads(await asyncio.wait_for(ws.recv(), 5))["id"] for _ in range(3)]
    started = time.monotonic()

    conn.close(4411, "gone")

    outcomes = await asyncio.gather(*asked, return_exceptions=True)
    assert all(isinstance(o, RequestFailed) and "closed" in str(o) for o in outcomes), outcomes
    assert time.monotonic() - started < 1.0  # not the 30 s timeout
    assert not any(conn.awaits(request_id) for request_id in ids)


async def test_a_request_on_a_closing_connection_fails_without_sending(sockets: Sockets) -> None:
    side, ws = await sockets.open_raw()
    side.conn.close(1000, "bye")

    with pytest.raises(RequestFailed, match="closing"):
        await side.conn.request("newConsumer", {}, timeout=5)

    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)  # the close frame came, no request before it


async def test_a_request_that_cannot_be_written_fails_at_once(sockets: Sockets) -> None:
    side, _ = await sockets.open_raw(max_outbound_bytes=100)
    calls = overflows(side.conn)
    started = time.monotonic()

    with pytest.raises(RequestFailed):
        await side.conn.request("newConsumer", {"blob": "x" * 200}, timeout=5)

    assert time.monotonic() - started < 1.0
    assert calls == [side.conn]


# -- closing ---------------------------------------------------------------------------------------


async def test_close_is_idempotent_the_first_code_wins_and_one_task_does_it(
    sockets: Sockets,
) -> None:
    side, client = await sockets.open()
    conn = side.conn

    conn.close(4410, "replaced")
    conn.close(1000, "again")
    conn.close(4408, "and again")

    assert conn.closing and conn.task_count == 1
    assert await closed_with(client) == (4410, "replaced")
    await asyncio.wait_for(conn.wait_closed(), 5)
    assert conn.task_count == 0


async def test_a_client_that_never_answers_the_close_is_cut_off_within_the_close_timeout(
    sockets: Sockets,
) -> None:
    side, client = await sockets.open()
    client.ws.transport.pause_reading()  # it will never see our close frame
    started = time.monotonic()

    side.conn.close(4408, "timeout")
    await asyncio.wait_for(side.conn.wait_closed(), CLOSE_TIMEOUT + 3)

    assert time.monotonic() - started < CLOSE_TIMEOUT + 1.5
    assert side.conn.ws.protocol.state is State.CLOSED
    assert side.conn.task_count == 0


# -- keepalive probes ------------------------------------------------------------------------------


def answers(side: ServerSide) -> list[float]:
    """The send times ``on_probe_answered`` reports for ``side``'s socket."""
    ws = side.conn.ws
    assert isinstance(ws, ProbedSocket)
    times: list[float] = []
    ws.on_probe_answered = times.append
    return times


async def test_a_probe_is_answered_by_the_clients_own_pong_with_its_send_time(
    sockets: Sockets,
) -> None:
    side, _client = await sockets.open()  # websockets answers pings by itself
    times = answers(side)

    assert side.conn.probe(123.5) is True

    await eventually(lambda: times == [123.5])
    assert side.conn.task_count == 0
    assert not side.conn.ws.pending_pings  # no future kept per probe


async def test_websockets_own_pings_still_get_their_pongs(sockets: Sockets) -> None:
    side, _client = await sockets.open()
    times = answers(side)

    latency = await asyncio.wait_for(await side.conn.ws.ping(), 5)

    assert latency >= 0
    assert times == []


async def test_no_probe_goes_out_once_the_connection_is_closing(sockets: Sockets) -> None:
    side, _client = await sockets.open()
    times = answers(side)

    side.conn.close(4410, "replaced")

    assert side.conn.probe(1.0) is False
    await asyncio.sleep(0.2)
    assert times == []

