"""Admission: join timeout, joined-peer room limits, per-address and global limits, readiness."""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from signalling.protoo_client import ProtooClient, ProtooError
from signalling.rate_limit import RateLimit
from signalling.server import Server

from .conftest import ServerFactory, eventually, url


async def http(server: Server, request: bytes, port: int | None = None) -> tuple[int, bytes]:
    """One raw HTTP/1.1 exchange; the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port or server.port)
    writer.write(request)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def media_objects(server: Server) -> dict[str, int]:
    return server.worker.resource_counts()  # type: ignore[no-any-return]


async def test_a_connection_that_never_joins_is_closed_and_its_transports_freed(
    make_server: ServerFactory,
) -> None:
    server = await make_server(join_timeout=1.0)
    idle = await ProtooClient.connect(url(server, peer="idle"))
    for _ in range(2):
        await idle.request("createWebRtcTransport", {"producing": True})
    assert media_objects(server)["transports"] == 2

    code, _ = await asyncio.wait_for(idle.closed, 5)

    assert code == 4408
    assert media_objects(server)["transports"] == 0
    assert len(server.registry) == 0


async def test_idle_connections_do_not_fill_a_room(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=2)
    idle = [await ProtooClient.connect(url(server, peer=f"idle{i}")) for i in range(2)]

    alice = await ProtooClient.connect(url(server, peer="alice"))
    bob = await ProtooClient.connect(url(server, peer="bob"))
    await alice.request("join", {})
    await bob.request("join", {})

    late = await ProtooClient.connect(url(server, peer="late"))
    code, _ = await asyncio.wait_for(late.closed, 5)
    assert code == 4403
    with pytest.raises(ProtooError) as refused:
        await idle[0].request("join", {})
    assert refused.value.code == 403
    assert (await asyncio.wait_for(idle[0].closed, 5))[0] == 4403
    for client in (*idle, alice, bob):
        if not client.closed.done():
            await client.close()


async def test_connections_per_address_are_limited(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_ip=3)
    kept = [await ProtooClient.connect(url(server, peer=f"p{i}")) for i in range(3)]

    extra = await ProtooClient.connect(url(server, peer="extra"))

    assert (await asyncio.wait_for(extra.closed, 5))[0] == 4429
    await kept[0].close()
    await eventually(lambda: server.connections_by_ip.get("127.0.0.1") == 2)
    again = await ProtooClient.connect(url(server, peer="again"))
    assert not again.closed.done()
    for client in (*kept[1:], again):
        await client.close()
    await eventually(lambda: server.connections_by_ip == {})


async def test_new_connections_per_address_are_rate_limited(make_server: ServerFactory) -> None:
    server = await make_server(ip_connection_rate=RateLimit(1.0, 5.0))
    clients = [await ProtooClient.connect(url(server, peer=f"p{i}")) for i in range(5)]

    with pytest.raises(InvalidStatus) as refused:
        await ProtooClient.connect(url(server, peer="p5"))

    assert refused.value.response.status_code == 429
    assert refused.value.response.headers["Retry-After"] == "1"
    for client in clients:
        await client.close()


async def test_the_process_connection_capacity_answers_503(make_server: ServerFactory) -> None:
    server = await make_server(max_connections=2)
    clients = [await ProtooClient.connect(url(server, peer=f"p{i}")) for i in range(2)]

    with pytest.raises(InvalidStatus) as refused:
        await ProtooClient.connect(url(server, peer="p2"))

    assert refused.value.response.status_code == 503
    for client in clients:
        await client.close()


async def test_one_address_cannot_take_the_whole_port_pool(make_server: ServerFactory) -> None:
    # 12 ports; one attacker address may hold 2 connections x 4 transports.
    low = _free_port_block(12)
    server = await make_server(
        rtc_min_port=low, rtc_max_port=low + 11, max_connections_per_ip=2, ready_max_port_use=0.5
    )
    grabbed = 0
    attackers = []
    for i in range(10):
        attacker = await ProtooClient.connect(url(server, peer=f"grab{i}"))
        attackers.append(attacker)
        for _ in range(4):
            try:
                await attacker.request("createWebRtcTransport", {"producing": True})
                grabbed += 1
            except Exception:  # 403 past 4 transports, or closed (4429) past 2 connections
                break
    assert grabbed == 8
    # The pool is past the readiness threshold: a load balancer sends no new room
    # (404: HAProxy's disable-on-404 keeps routing the rooms held here).
    status, body = await http(server, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404 and b"media ports 8/12" in body
    # A real user from another address still gets its transports.
    user = await ProtooClient.connect(
        url(server, peer="user"), local_addr=("127.0.0.2", 0)
    )
    for producing in (True, False):
        await user.request("createWebRtcTransport", {"producing": producing})
    await user.close()
    for attacker in attackers:
        if not attacker.closed.done():
            await attacker.close()
    await eventually(lambda: server.worker.port_usage()[0] == 0)
    status, _ = await http(server, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200


async def test_an_exhausted_port_pool_is_reported_without_internals(
    make_server: ServerFactory,
) -> None:
    low = _free_port_block(1)
    server = await make_server(rtc_min_port=low, rtc_max_port=low)
    first = await ProtooClient.connect(url(server, peer="first"))
    await first.request("createWebRtcTransport", {"producing": True})
    second = await ProtooClient.connect(url(server, peer="second"))

    with pytest.raises(ProtooError) as unavailable:
        await second.request("createWebRtcTransport", {"producing": True})

    assert unavailable.value.code == 503
    assert str(low) not in unavailable.value.reason
    for client in (first, second):
        await client.close()


async def test_limits_on_what_a_peer_sends_and_holds(make_server: ServerFactory) -> None:
    server = await make_server(max_transports_per_peer=2)
    client = await ProtooClient.connect(url(server, peer="alice"))
    with pytest.raises(ProtooError) as too_big:
        await client.request("join", {"device": {"name": "x" * 2000}})
    assert too_big.value.code == 400 and "device" in too_big.value.reason
    with pytest.raises(ProtooError) as too_long:
        await client.request("join", {"displayName": "x" * 129})
    assert too_long.value.code == 400
    await client.request("join", {"displayName": "x" * 128, "device": {"name": "ok"}})
    for _ in range(2):
        await client.request("createWebRtcTransport", {"producing": True})
    with pytest.raises(ProtooError) as too_many:
        await client.request("createWebRtcTransport", {"producing": True})
    assert too_many.value.code == 403
    with pytest.raises(ProtooError) as rename:
        await client.request("changeDisplayName", {"displayName": "y" * 500})
    assert rename.value.code == 400
    await client.close()


async def test_errors_echo_only_a_short_printable_prefix(server: Server) -> None:
    client = await ProtooClient.connect(url(server, peer="alice"))
    method = "\x00évil" + "x" * 5000

    with pytest.raises(ProtooError) as unknown:
        await client.request(method, {})

    assert unknown.value.code == 405
    assert len(unknown.value.reason) < 80
    assert "\x00" not in unknown.value.reason and "é" not in unknown.value.reason
    await client.close()


async def test_a_request_storm_gets_429s_then_a_close(make_server: ServerFactory) -> None:
    server = await make_server()
    healthy = await ProtooClient.connect(url(server, room="other", peer="healthy"))
    attacker = await ProtooClient.connect(url(server, peer="mallory"))
    frames = [
        orjson.dumps(
            {"request": True, "id": i, "method": "getRouterRtpCapabilities", "data": {}}
        )
        for i in range(2000)
    ]

    for frame in frames:
        try:
            await attacker.ws.send(frame, text=True)
        except Exception:
            break

    code, _ = await asyncio.wait_for(attacker.closed, 10)
    assert code == 4429
    assert (await healthy.request("ping", {}))["serverTime"] > 0
    await healthy.close()


def _free_port_block(size: int) -> int:
    """A run of ``size`` free UDP ports on 127.0.0.1 (above the ephemeral range)."""
    for base in range(31000, 32700, 37):
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise AssertionError("no free block of UDP ports")


async def test_app_data_and_producers_per_peer_are_bounded(make_server: ServerFactory) -> None:
    from signalling.bot import Bot

    server = await make_server(max_producers_per_peer=1)
    client = await ProtooClient.connect(url(server, peer="mallory"))
    await client.request("join", {})
    transport = await client.request("createWebRtcTransport", {"producing": True})
    with pytest.raises(ProtooError) as too_big:
        await client.request(
            "produce",
            {
                "transportId": transport["id"],
                "kind": "video",
                "rtpParameters": {},
                "appData": {"blob": "x" * 100_000},
            },
        )
    assert too_big.value.code == 400 and "appData" in too_big.value.reason
    await client.close()

    bot = Bot(f"ws://127.0.0.1:{server.port}", "room", "alice", video=True, audio=True)
    try:
        with pytest.raises(Exception, match="too many producers"):
            await bot.join()  # video is produced, audio is refused
        assert server.worker.resource_counts()["producers"] == 1
    finally:
        await bot.close()
