"""The server over real WebSocket connections on loopback."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect as ws_connect

from signalling.protoo_client import ProtooClient
from signalling.server import Server
from signalling.tokens import make_token

from .conftest import ClientFactory, ServerFactory, eventually, url


def http(
    server: Server, path: str, *, method: str = "GET", port: int | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port or server.port}{path}",
        method=method,
        data=b"" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def fetch(server: Server, path: str, **kwargs: object) -> tuple[int, bytes]:
    return await asyncio.to_thread(http, server, path, **kwargs)  # type: ignore[arg-type]


# -- joining and pinging ---------------------------------------------------------------


async def test_a_client_joins_and_learns_the_peers_and_its_tokens(connect: ClientFactory) -> None:
    alice = await connect("alice")
    bob = await connect("bob")

    assert alice.join_data["peers"] == []  # type: ignore[attr-defined]
    joined = bob.join_data  # type: ignore[attr-defined]
    assert [p["id"] for p in joined["peers"]] == ["alice"]
    assert joined["heartbeatInterval"] == 30.0
    assert joined["resumeToken"] and joined["leaveToken"] and joined["sessionId"]
    _, data = await alice.next_notification("newPeer")
    assert data["id"] == "bob" and data["displayName"] == "bob"


async def test_router_capabilities_are_available_before_join(connect: ClientFactory) -> None:
    client = await connect(join=False)
    caps = await client.request("getRouterRtpCapabilities")
    assert {c["mimeType"] for c in caps["codecs"]} >= {"audio/opus", "video/VP8"}


async def test_a_connection_without_room_or_peer_is_closed_with_4400(server: Server) -> None:
    async with ws_connect(f"ws://127.0.0.1:{server.port}/?roomId=r", subprotocols=["protoo"]) as ws:  # type: ignore[list-item]
        await ws.wait_closed()
        assert ws.close_code == 4400


# -- leaving -------------------------------------------------------------------------------


async def test_a_close_frame_1001_is_a_graceful_leave(connect: ClientFactory) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    await alice.close(1001)
    _, data = await bob.next_notification("peerClosed")
    assert data == {"peerId": "alice", "reason": "graceful"}


async def test_the_leave_beacon_ends_the_session(server: Server, connect: ClientFactory) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    token = alice.join_data["leaveToken"]  # type: ignore[attr-defined]
    status, _ = await fetch(server, f"/leave?token={token}", method="POST")
    assert status == 204
    _, data = await bob.next_notification("peerClosed")
    assert data == {"peerId": "alice", "reason": "beacon"}
    assert (await fetch(server, f"/leave?token={token}", method="POST"))[0] == 404
    assert (await fetch(server, "/leave?token=forged", method="POST"))[0] == 404


# -- losing the socket, resuming -----------------------------------------------------------


async def test_a_lost_socket_makes_the_peer_reconnecting_then_gone_after_the_grace(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    alice.abort()
    _, data = await bob.next_notification("peerReconnecting")
    assert data == {"peerId": "alice"}
    lost = time.monotonic()
    _, data = await bob.next_notification("peerClosed", timeout=5)
    assert data == {"peerId": "alice", "reason": "socket_lost"}
    assert 0.9 <= time.monotonic() - lost < 3.5  # grace_period is 1 s in tests


async def test_a_peer_resumes_within_the_grace_with_its_resume_token(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    transport = await alice.request("createWebRtcTransport", {"producing": True})
    token = alice.join_data["resumeToken"]  # type: ignore[attr-defined]
    alice.abort()
    await bob.next_notification("peerReconnecting")

    again = await connect("alice", join=False, resumeToken=token)
    _, resumed = await again.next_notification("sessionResumed")
    assert resumed["joined"] is True and resumed["resumeToken"] != token
    _, data = await bob.next_notification("peerResumed")
    assert data == {"peerId": "alice"}
    # The media survived the gap: the transport is still there.
    assert (await again.request("restartIce", {"transportId": transport["id"]}))["password"]
    await asyncio.sleep(1.5)  # past the grace period: nothing happens
    assert bob.notifications.empty()
    assert len(server.registry) == 2


async def test_a_wrong_resume_token_is_told_session_expired_and_displaces_nobody(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    alice.abort()
    await bob.next_notification("peerReconnecting")

    again = await connect("alice", join=False, resumeToken="not-the-token")

    method, _ = await again.next_notification("sessionExpired")
    assert method == "sessionExpired"
    code, _ = await asyncio.wait_for(again.closed, 5)
    assert code == 4411
    assert server.registry.by_peer[("room", "alice")].state.value == "reconnecting"
    # Without the token, the same identity may take its session over.
    fresh = await connect("alice")
    _, data = await bob.next_notification("peerClosed")
    assert data == {"peerId": "alice", "reason": "replaced"}
    _, data = await bob.next_notification("newPeer")
    assert data["id"] == "alice"
    assert fresh.join_data["peers"][0]["id"] == "bob"  # type: ignore[attr-defined]


# -- multi-tab -------------------------------------------------------------------------------


async def test_a_second_tab_takes_the_session_over(server: Server, connect: ClientFactory) -> None:
    first = await connect("alice-tab1", userId="alice")
    bob = await connect("bob")
    await first.request("createWebRtcTransport", {"producing": True})
    second = await connect("alice-tab2", userId="alice")

    _, replaced = await first.next_notification("sessionReplaced")
    assert replaced["reason"]
    code, _ = await asyncio.wait_for(first.closed, 5)
    assert code == 4410
    _, closed = await bob.next_notification("peerClosed")
    assert closed == {"peerId": "alice-tab1", "reason": "replaced"}
    _, new = await bob.next_notification("newPeer")
    assert new["id"] == "alice-tab2"
    assert [s.peer_id for s in server.registry.by_id.values() if s.user_id == "alice"] == [
        "alice-tab2"
    ]
    assert server.worker.resource_counts()["transports"] == 0
    assert "serverTime" in await second.request("ping")


async def test_the_reject_policy_refuses_the_second_tab(make_server: ServerFactory) -> None:
    server = await make_server(takeover="reject")
    first = await ProtooClient.connect(url(server, peer="tab1", userId="alice"))
    await first.request("join", {})
    second = await ProtooClient.connect(url(server, peer="tab2", userId="alice"))
    code, _ = await asyncio.wait_for(second.closed, 5)
    assert code == 4409
    assert "serverTime" in await first.request("ping")
    await first.close()


async def test_two_tabs_racing_leave_exactly_one_session(server: Server) -> None:
    clients = await asyncio.gather(
        *(ProtooClient.connect(url(server, peer=f"tab{i}", userId="alice")) for i in range(5))
    )
    await asyncio.gather(*(c.request("join", {}) for c in clients), return_exceptions=True)
    await eventually(lambda: sum(not c.closed.done() for c in clients) == 1)
    assert len(server.registry) == 1
    assert len(server.connections) == 1
    for client in clients:
        if not client.closed.done():
            await client.close()


async def test_a_full_room_refuses_newcomers(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=2)
    a = await ProtooClient.connect(url(server, peer="a"))
    b = await ProtooClient.connect(url(server, peer="b"))
    for client in (a, b):
        await client.request("join", {})
    c = await ProtooClient.connect(url(server, peer="c"))
    code, _ = await asyncio.wait_for(c.closed, 5)
    assert code == 4403
    for client in (a, b):
        await client.close()


async def test_with_a_token_secret_the_identity_is_the_token_subject(
    make_server: ServerFactory,
) -> None:
    server = await make_server(token_secret="s" * 32)
    bad = await ProtooClient.connect(url(server, peer="x", token="forged.token.value"))
    assert (await asyncio.wait_for(bad.closed, 5))[0] == 4401
    token = make_token("carol", "s" * 32)
    first = await ProtooClient.connect(url(server, peer="p1", token=token, userId="mallory"))
    await first.request("join", {})
    second = await ProtooClient.connect(url(server, peer="p2", token=token))
    assert (await asyncio.wait_for(first.closed, 5))[0] == 4410  # same subject: takeover
    assert [s.user_id for s in server.registry.by_id.values()] == ["carol"]
    await second.close()


# -- silent loss and stale sessions -----------------------------------------------------------


@pytest.mark.slow
async def test_a_frozen_client_is_ended_by_the_keepalive(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    bob = await connect("bob")
    alice.ws.transport.pause_reading()  # frozen: pings go unanswered, nothing is sent
    frozen = time.monotonic()
    _, data = await bob.next_notification("peerClosed", timeout=8)
    assert data == {"peerId": "alice", "reason": "keepalive_timeout"}
    assert 2.5 <= time.monotonic() - frozen <= 5.5  # silence_timeout is 3 s in tests
    assert "serverTime" in await bob.request("ping")


@pytest.mark.slow
async def test_the_sweeper_ends_a_session_that_only_answers_keepalives(
    make_server: ServerFactory,
) -> None:
    server = await make_server(stale_after=2.0, sweep_interval=1.0)
    idle = await ProtooClient.connect(url(server, peer="idle"))
    await idle.request("join", {})
    watcher = await ProtooClient.connect(url(server, peer="watcher"))
    await watcher.request("join", {})

    async def keep_talking() -> None:
        while True:
            await watcher.request("ping")
            await asyncio.sleep(0.3)

    talker = asyncio.ensure_future(keep_talking())
    try:
        _, data = await watcher.next_notification("peerClosed", timeout=8)
    finally:
        talker.cancel()
    assert data == {"peerId": "idle", "reason": "stale_sweep"}
    assert (await asyncio.wait_for(idle.closed, 5))[0] == 4408
    assert len(server.registry) == 1
    await watcher.close()


# -- operations ---------------------------------------------------------------------------------


async def test_health_and_readiness_endpoints(server: Server) -> None:
    status, body = await fetch(server, "/healthz")
    assert status == 200 and b'"ok"' in body
    status, body = await fetch(server, "/readyz")
    assert status == 200
    assert (await fetch(server, "/nowhere"))[0] == 404


async def test_debug_stats_show_every_registry(server: Server, connect: ClientFactory) -> None:
    await connect("alice")
    status, body = await fetch(server, "/debug/stats", port=server.metrics_port)
    assert status == 200
    assert b'"sessions":1' in body and b'"transports":0' in body


async def test_prometheus_scrapes_session_and_media_metrics(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    await alice.request("createWebRtcTransport", {"producing": True})
    await alice.request("ping")
    port = server.metrics_port
    assert port is not None
    status, body = await fetch(server, "/metrics", port=port)
    text = body.decode()
    assert status == 200
    assert 'ghostless_sessions{state="joined"} 1.0' in text
    assert 'ghostless_media_objects{kind="transports"} 1.0' in text
    assert 'ghostless_requests_total{method="ping",outcome="ok"} 1.0' in text
    await alice.notify("beforeDisconnect")
    await asyncio.wait_for(alice.closed, 5)
    text = (await fetch(server, "/metrics", port=port))[1].decode()
    assert 'ghostless_sessions_ended_total{reason="graceful"} 1.0' in text
    assert 'ghostless_media_objects{kind="transports"} 0.0' in text


async def test_shutdown_tells_everyone_and_closes_with_1001(make_server: ServerFactory) -> None:
    server = await make_server()
    client = await ProtooClient.connect(url(server, peer="a"))
    await client.request("join", {})
    await client.request("createWebRtcTransport", {"producing": True})
    started = time.monotonic()
    await server.shutdown()
    assert time.monotonic() - started < server.config.shutdown_timeout + 1
    _, data = await client.next_notification("serverShutdown")
    assert data["reconnectDelay"] == 2000
    assert (await asyncio.wait_for(client.closed, 5))[0] == 1001
    assert server.worker.closed and server.rooms == {}
