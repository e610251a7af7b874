"""SessionHandler: what a joined session's frames do, over real WebSocket connections."""

from __future__ import annotations

import asyncio
import time

import pytest

from signalling.protoo_client import ProtooError
from signalling.server import Server

from .conftest import ClientFactory


async def test_ping_as_a_request_returns_the_server_time(connect: ClientFactory) -> None:
    client = await connect()
    before = time.time() * 1000
    answer = await client.request("ping", {"rtt": 3.2})
    assert before - 1000 <= answer["serverTime"] <= time.time() * 1000 + 1000


async def test_ping_as_a_notification_is_answered_by_a_pong(connect: ClientFactory) -> None:
    client = await connect()
    await client.notify("ping")
    _, data = await client.next_notification("pong")
    assert "serverTime" in data


@pytest.mark.parametrize(
    ("method", "data", "code"),
    [
        ("fly", {}, 405),
        ("join", {"displayName": 42}, 409),  # already joined comes first
        ("produce", {"transportId": 7}, 400),
        ("produce", {"transportId": "nope", "kind": "video", "rtpParameters": {}}, 404),
        ("connectWebRtcTransport", {"transportId": "nope", "dtlsParameters": {}}, 404),
        ("closeProducer", {"producerId": "nope"}, 404),
        ("resumeConsumer", {}, 400),
        ("changeDisplayName", {"displayName": "x" * 1000}, 400),
    ],
)
async def test_bad_requests_get_a_clear_error_and_the_session_goes_on(
    connect: ClientFactory, method: str, data: dict[str, object], code: int
) -> None:
    client = await connect()
    with pytest.raises(ProtooError) as error:
        await client.request(method, data)
    assert error.value.code == code
    assert "Traceback" not in error.value.reason and "/" not in error.value.reason
    assert "serverTime" in await client.request("ping")


async def test_requests_that_need_join_are_refused_before_it(connect: ClientFactory) -> None:
    client = await connect(join=False)
    with pytest.raises(ProtooError) as error:
        await client.request("produce", {"transportId": "x", "kind": "audio", "rtpParameters": {}})
    assert error.value.code == 412


async def test_another_peers_transport_is_not_found(connect: ClientFactory) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    transport = await alice.request("createWebRtcTransport", {"producing": True})
    with pytest.raises(ProtooError) as error:
        await bob.request("restartIce", {"transportId": transport["id"]})
    assert error.value.code == 404
    assert (await alice.request("restartIce", {"transportId": transport["id"]}))["usernameFragment"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", 1007),
        ("[1, 2, 3]", 1007),
        ('{"hello": "world"}', 1002),
        ('{"request": true, "method": "join"}', 1002),
        (b"\x00\x01binary", 1003),
        ("x" * 200_000, 1009),
    ],
)
async def test_protocol_violations_close_with_a_documented_code_and_spare_others(
    server: Server, connect: ClientFactory, frame: str | bytes, code: int
) -> None:
    bystander = await connect("bystander")
    offender = await connect("offender")
    await offender.ws.send(frame)
    close_code, _ = await asyncio.wait_for(offender.closed, 5)
    assert close_code == code
    assert "serverTime" in await bystander.request("ping")
    _, data = await bystander.next_notification("peerClosed")
    assert data == {"peerId": "offender", "reason": "error"}


async def test_before_disconnect_ends_the_session_at_once(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.notify("beforeDisconnect", {"reason": "leave button"})
    _, data = await bob.next_notification("peerClosed")
    assert data == {"peerId": "alice", "reason": "graceful"}
    code, _ = await asyncio.wait_for(alice.closed, 5)
    assert code == 1000
    assert len(server.registry) == 1
