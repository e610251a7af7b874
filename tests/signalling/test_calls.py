"""End to end: pymediasoup participants join through the server and exchange video.

Bob (in this process) decodes Alice's video; Alice then leaves gracefully, is
killed (SIGKILL), is frozen (SIGSTOP), or opens a second connection.  Each
time Bob is told the right reason, and a real Prometheus-format scrape shows
Alice's transports, producers and consumers gone within the configured bound.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator

import pytest

from signalling.bot import Bot
from signalling.server import Server

from .conftest import ServerFactory


def scrape(server: Server) -> dict[str, float]:
    """Read the media gauges the way Prometheus does: GET /metrics, text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ghostless_media_objects{") or line.startswith(
            "ghostless_sessions_ended_total{"
        ):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def media_gauges(server: Server) -> dict[str, float]:
    values = await asyncio.to_thread(scrape, server)
    return {
        kind: values[f'ghostless_media_objects{{kind="{kind}"}}']
        for kind in ("transports", "producers", "consumers", "data_producers", "data_consumers")
    }


@pytest.fixture
async def call_server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def bots() -> AsyncIterator[list[Bot]]:
    made: list[Bot] = []
    yield made
    for bot in made:
        await bot.close()


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def bob_watching(server: Server, bots: list[Bot]) -> Bot:
    bob = Bot(ws_url(server), "call", "bob", video=False, chat=False)
    bots.append(bob)
    await bob.join()
    return bob


class BotProcess:
    """Alice in her own process, so she can be killed or frozen for real."""

    def __init__(self, server: Server, peer: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "signalling.bot",
                ws_url(server),
                "call",
                "--peer",
                peer,
                "--loopback",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )

    async def wait_joined(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 30)
        assert b'"joined"' in line, line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
async def processes() -> AsyncIterator[list[BotProcess]]:
    made: list[BotProcess] = []
    yield made
    for process in made:
        process.stop()


async def alice_process_seen_by_bob(
    server: Server, bots: list[Bot], processes: list[BotProcess]
) -> tuple[Bot, BotProcess]:
    """Bob (here) decoding video from Alice (in her own process)."""
    bob = await bob_watching(server, bots)
    alice = BotProcess(server, "alice")
    processes.append(alice)
    await alice.wait_joined()
    assert await bob.wait_for_frames(10, timeout=30)
    return bob, alice


async def alice_in_process(server: Server, bots: list[Bot], peer: str = "alice", **kw: str) -> Bot:
    alice = Bot(ws_url(server), "call", peer, chat=True, user_id=kw.get("user"))
    bots.append(alice)
    await alice.join()
    return alice


async def expect_alice_gone(server: Server, bob: Bot, reason: str, bound: float) -> float:
    assert bob.client is not None
    started = time.monotonic()
    _, data = await bob.client.next_notification("peerClosed", timeout=bound)
    elapsed = time.monotonic() - started
    assert data["reason"] == reason
    # Only Bob's two transports (and his nothing-else) remain.
    gauges = await media_gauges(server)
    assert gauges == {
        "transports": 2.0,
        "producers": 0.0,
        "consumers": 0.0,
        "data_producers": 0.0,
        "data_consumers": 0.0,
    }
    return elapsed


async def test_bob_decodes_alice_and_sees_her_leave_gracefully(
    call_server: Server, bots: list[Bot]
) -> None:
    bob = await bob_watching(call_server, bots)
    alice = await alice_in_process(call_server, bots)
    assert await bob.wait_for_frames(30, timeout=20), "Bob decoded no video from Alice"
    assert (await media_gauges(call_server))["consumers"] >= 1

    await alice.leave()
    elapsed = await expect_alice_gone(call_server, bob, "graceful", bound=5)
    assert elapsed < 5


@pytest.mark.slow
async def test_alice_killed_is_reported_socket_lost_after_the_grace(
    call_server: Server, bots: list[Bot], processes: list[BotProcess]
) -> None:
    bob, alice = await alice_process_seen_by_bob(call_server, bots, processes)
    assert bob.client is not None

    alice.process.send_signal(signal.SIGKILL)
    _, data = await bob.client.next_notification("peerReconnecting", timeout=5)
    assert data == {"peerId": "alice"}
    # grace_period is 1 s in tests
    await expect_alice_gone(call_server, bob, "socket_lost", bound=1 + 4)


@pytest.mark.slow
async def test_alice_frozen_is_reported_by_the_keepalive(
    call_server: Server, bots: list[Bot], processes: list[BotProcess]
) -> None:
    bob, alice = await alice_process_seen_by_bob(call_server, bots, processes)

    alice.process.send_signal(signal.SIGSTOP)
    # silence_timeout is 3 s in tests: nothing on any plane (WebSocket, ICE, RTP).
    elapsed = await expect_alice_gone(call_server, bob, "keepalive_timeout", bound=3 + 4)
    assert elapsed >= 2.0


async def test_a_second_connection_of_alice_takes_over_cleanly(
    call_server: Server, bots: list[Bot]
) -> None:
    bob = await bob_watching(call_server, bots)
    first = await alice_in_process(call_server, bots, "alice-laptop", user="alice")
    assert await bob.wait_for_frames(10, timeout=20)
    assert bob.client is not None and first.client is not None

    second = await alice_in_process(call_server, bots, "alice-phone", user="alice")

    _, replaced = await first.client.next_notification("sessionReplaced", timeout=5)
    assert replaced
    _, closed = await bob.client.next_notification("peerClosed", timeout=5)
    assert closed == {"peerId": "alice-laptop", "reason": "replaced"}
    _, new = await bob.client.next_notification("newPeer", timeout=5)
    assert new["id"] == "alice-phone"
    frames = bob.decoded_frames()
    assert await bob.wait_for_frames(frames + 10, timeout=20), "no video from the new tab"
    assert second.client is not None and not second.client.closed.done()
    sessions = [s for s in call_server.registry.by_id.values() if s.user_id == "alice"]
    assert [s.peer_id for s in sessions] == ["alice-phone"]
    gauges = await media_gauges(call_server)
    assert gauges["transports"] == 4.0  # Bob's two and the new tab's two
    assert gauges["producers"] == 1.0


async def test_closing_only_the_media_is_a_graceful_leave(
    call_server: Server, bots: list[Bot]
) -> None:
    """The DTLS close_notify of the client's transports is enough, even with the socket open."""
    bob = await bob_watching(call_server, bots)
    alice = await alice_in_process(call_server, bots)
    assert await bob.wait_for_frames(5, timeout=20)
    assert alice.send_transport is not None and alice.client is not None

    await alice.send_transport.close()  # close_notify, no protoo message

    await expect_alice_gone(call_server, bob, "graceful", bound=5)
    code, _ = await asyncio.wait_for(alice.client.closed, 5)
    assert code == 1000


@pytest.mark.slow
async def test_a_dead_websocket_with_live_media_is_treated_as_a_lost_socket(
    call_server: Server, bots: list[Bot]
) -> None:
    bob = await bob_watching(call_server, bots)
    alice = await alice_in_process(call_server, bots)
    assert await bob.wait_for_frames(5, timeout=20)
    assert alice.client is not None and bob.client is not None

    alice.client.ws.transport.pause_reading()  # the socket is dead; RTP keeps flowing
    started = time.monotonic()
    _, data = await bob.client.next_notification("peerReconnecting", timeout=3 + 4)
    assert data == {"peerId": "alice"}
    # probe after 2 s, pong timeout at 3 s: the media did not hide the dead socket
    assert 1.5 <= time.monotonic() - started <= 6
    await expect_alice_gone(call_server, bob, "socket_lost", bound=1 + 4)
    alice.client.abort()  # no close handshake to wait for on a dead socket
