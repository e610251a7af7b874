"""The demo call page in real headless Chromium: the browser half of liveness.

Two participants in a room decode each other's video, hear each other's
audio and chat; then one closes the page, has its whole browser killed, goes
offline (briefly, or for longer than the grace period) or opens a second tab.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from playwright.async_api import Browser, BrowserContext, Page

from signalling.server import Server

from ..signalling.test_calls import media_gauges
from .conftest import (
    DOCS,
    ChromiumProcess,
    audio_level,
    join,
    peer_status,
    video_flows,
    wait_until,
)


async def hears(page: Page, name: str) -> bool:
    # The fake microphone beeps: sample the level for a while.
    for _ in range(40):
        if await audio_level(page, name) > 0.01:
            return True
        await asyncio.sleep(0.05)
    return False


async def media_of_peer(server: Server, peer_id: str) -> int:
    return sum(
        len(peer.transports)
        for room in server.rooms.values()
        for peer in room.peers.values()
        if peer.id == peer_id
    )


async def status_history(page: Page) -> list[list[str]]:
    history: list[list[str]] = await page.evaluate("window.peerHistory")
    return history


async def record_peer_history(page: Page) -> None:
    await page.evaluate(
        """() => {
            window.peerHistory = [];
            window.ghostless.addEventListener('peers', () => {
                for (const peer of window.ghostless.peers.values()) {
                    const name = peer.displayName;
                    const last = window.peerHistory.filter((h) => h[0] === name).pop();
                    if (!last || last[1] !== peer.status) {
                        window.peerHistory.push([name, peer.status]);
                    }
                }
            });
        }"""
    )


async def test_two_pages_see_hear_and_chat_with_each_other(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")

    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    await wait_until(lambda: video_flows(alice, "bob"), timeout=20)
    assert await hears(bob, "alice") and await hears(alice, "bob")

    await wait_until(lambda: alice.evaluate("window.ghostless.sendChat('hello bob')"), timeout=10)
    await bob.wait_for_selector("#messages li:has-text('alice: hello bob')", timeout=10000)

    await bob.set_viewport_size({"width": 1100, "height": 620})
    await bob.screenshot(path=str(DOCS / "screenshot.png"))


async def test_closing_a_page_shows_it_left_at_once_and_frees_its_media(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    alice_id = (await peer_status(bob, "alice") or {})["id"]

    await alice.close()
    elapsed = await wait_until(lambda: _status_is(bob, "alice", "left"), timeout=5)
    assert elapsed < 1.0 + 0.5  # 1 s target, plus polling
    status = await peer_status(bob, "alice")
    assert status is not None and status["reason"] in ("graceful", "beacon")
    assert (
        await bob.locator(
            f'#participants li[data-peer-id="{alice_id}"][data-status="left"]'
        ).count()
        == 1
    )
    assert await media_of_peer(server, alice_id) == 0
    # What Prometheus sees: only Bob's own two transports and two producers remain.
    gauges = await media_gauges(server)
    assert gauges["transports"] == 2 and gauges["producers"] == 2 and gauges["consumers"] == 0


async def _status_is(page: Page, name: str, status: str) -> bool:
    current = await peer_status(page, name)
    return current is not None and current["status"] == status


async def test_killing_the_whole_browser_is_noticed_within_the_grace_period(
    server: Server,
    browser: Browser,
    separate_browser: Callable[[], Awaitable[tuple[ChromiumProcess, Browser]]],
) -> None:
    bob = await join(await browser.new_context(), server, "call", "bob")
    process, other = await separate_browser()
    alice = await join(other.contexts[0], server, "call", "alice")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    alice_id = (await peer_status(bob, "alice") or {})["id"]
    assert alice is not None

    process.kill()
    elapsed = await wait_until(lambda: _status_is(bob, "alice", "left"), timeout=20)
    grace = server.config.liveness.grace_period
    assert elapsed <= grace + 1.0 + 1.0  # grace + 1 s target, plus polling and ticks
    assert (await peer_status(bob, "alice") or {})["reason"] == "socket_lost"
    assert await media_of_peer(server, alice_id) == 0
    assert not [s for s in server.registry.by_id.values() if s.peer_id == alice_id]


async def alice_seen_by_bob(server: Server, browser: Browser) -> tuple[BrowserContext, Page, Page]:
    """Alice (in her own context, to take offline) and Bob, who sees her video."""
    alice_context = await browser.new_context()
    alice = await join(alice_context, server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    return alice_context, alice, bob


def alice_sessions(server: Server) -> list[str]:
    return [s.id for s in server.registry.by_id.values() if s.display_name == "alice"]


async def test_a_short_offline_spell_resumes_the_same_session(
    server: Server, browser: Browser
) -> None:
    alice_context, alice, bob = await alice_seen_by_bob(server, browser)
    await record_peer_history(bob)
    session_before = alice_sessions(server)

    await alice_context.set_offline(True)
    # Either the page's close (code 4000, on its `offline` event) reaches the
    # server at once, or Chromium's emulation drops it and the unanswered
    # keepalive probe finds the dead socket (probe 4 s + 2 s in these tests).
    await wait_until(lambda: _status_is(bob, "alice", "reconnecting"), timeout=10)
    assert await alice.evaluate("window.ghostless.state") == "reconnecting"
    await asyncio.sleep(1.0)  # well inside the 6 s grace period
    await alice_context.set_offline(False)

    await alice.wait_for_function("window.ghostless.state === 'joined'", timeout=10000)
    await wait_until(lambda: _status_is(bob, "alice", "connected"), timeout=5)
    await wait_until(lambda: video_flows(bob, "alice"), timeout=10)
    # Bob saw her reconnecting, then back, and never leaving.
    assert await status_history(bob) == [["alice", "reconnecting"], ["alice", "connected"]]
    session_after = alice_sessions(server)
    assert session_after == session_before  # resumed, not a new session


async def test_a_long_offline_spell_leaves_and_comes_back_as_a_new_session(
    server: Server, browser: Browser
) -> None:
    alice_context, alice, bob = await alice_seen_by_bob(server, browser)
    session_before = alice_sessions(server)

    await alice_context.set_offline(True)
    await wait_until(lambda: _status_is(bob, "alice", "left"), timeout=6 + 6 + 8)
    assert (await peer_status(bob, "alice") or {})["reason"] == "socket_lost"
    await alice_context.set_offline(False)

    await alice.wait_for_function("window.ghostless.state === 'joined'", timeout=15000)
    await wait_until(lambda: _status_is(bob, "alice", "connected"), timeout=10)
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    session_after = alice_sessions(server)
    assert len(session_after) == 1 and session_after != session_before


async def test_a_second_tab_takes_over_and_use_here_takes_it_back(
    server: Server, browser: Browser
) -> None:
    context = await browser.new_context()  # one profile: the same identity in both tabs
    first = await join(context, server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    user = await first.evaluate("window.ghostless.userId")

    second = await join(context, server, "call", "alice")
    elapsed = await wait_until(lambda: first.locator("#replaced").is_visible(), timeout=5)
    assert elapsed < 1.0 + 0.5
    released = await first.evaluate(
        "window.ghostless.localStream.getTracks().every((t) => t.readyState === 'ended')"
    )
    assert released, "the first tab still holds the camera"
    assert [s.user_id for s in server.registry.by_id.values()].count(user) == 1
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)

    await first.click("#use-here")
    await first.wait_for_function("window.ghostless.state === 'joined'", timeout=15000)
    await wait_until(lambda: second.locator("#replaced").is_visible(), timeout=5)
    assert [s.user_id for s in server.registry.by_id.values()].count(user) == 1
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
