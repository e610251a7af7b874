"""The demo call page in front of a full room or server, in real headless Chromium.

With ``--when-full queue`` a newcomer waits with a banner telling its place,
and gets in by itself when a seat frees; waiting too long ends the wait
visibly.  With the server full and no queue (4503) the page keeps retrying.
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Browser, BrowserContext, Page

from signalling.protoo_client import ProtooClient
from signalling.server import Server

from ..signalling.conftest import url
from .conftest import ServerFactory, join, page_url, wait_until


async def open_call(context: BrowserContext, server: Server, room: str, name: str) -> Page:
    """A call page that asked to join (it may not get in)."""
    page = await context.new_page()
    await page.goto(page_url(server, room, name))
    await page.wait_for_function("window.ghostless !== undefined", timeout=10000)
    return page


async def state(page: Page) -> str:
    value: str = await page.evaluate("window.ghostless.state")
    return value


async def banner(page: Page) -> str:
    text: str = await page.locator("#queue-banner").inner_text()
    return " ".join(text.split())


async def sends_video(server: Server, room: str, name: str) -> bool:
    """Whether the SFU receives ``name``'s camera: its video producer's packets grow."""

    def packets() -> int:
        return sum(
            producer.packet_count
            for peer in server.rooms[room].peers.values()
            if peer.display_name == name and not peer.closed
            for producer in peer.producers.values()
            if producer.kind == "video"
        )

    first = packets()
    await asyncio.sleep(0.5)
    return packets() > first > 0


async def own_video_plays(page: Page) -> bool:
    playing: bool = await page.evaluate(
        """() => {
            const video = document.querySelector(`.tile[data-peer-id="${ghostless.peerId}"] video`);
            return Boolean(video && video.videoWidth > 0 && !video.paused);
        }"""
    )
    return playing


async def test_a_newcomer_to_a_full_room_waits_in_the_queue_and_gets_in(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue")
    alice = await join(await browser.new_context(), server, "solo", "alice")

    bob = await open_call(await browser.new_context(), server, "solo", "bob")
    await wait_until(lambda: bob.locator("#queue-banner").is_visible(), timeout=10)
    assert await state(bob) == "queued"
    assert await bob.evaluate("ghostless.queue") == {"position": 1, "length": 1}
    assert "Waiting in the queue: position 1 of 1" in await banner(bob)
    assert await bob.locator("#state").inner_text() == "queued"
    # Queued means no session: the SFU holds nothing for Bob yet.
    assert [p.display_name for p in server.rooms["solo"].peers.values()] == ["alice"]

    await alice.close()
    await bob.wait_for_function("window.ghostless.state === 'joined'", timeout=10000)
    assert await bob.locator("#queue-banner").is_hidden()
    await wait_until(lambda: own_video_plays(bob), timeout=10)
    await wait_until(lambda: sends_video(server, "solo", "bob"), timeout=20)


async def test_the_banner_follows_the_place_as_the_queue_moves(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue")
    alice = await join(await browser.new_context(), server, "solo", "alice")
    ahead = await ProtooClient.connect(url(server, room="solo", peer="ahead"))
    _, data = await ahead.next_notification("queuePosition")
    assert data == {"position": 1, "length": 1}

    bob = await open_call(await browser.new_context(), server, "solo", "bob")
    await wait_until(lambda: bob.locator("#queue-banner").is_visible(), timeout=10)
    assert "position 2 of 2" in await banner(bob)
    events = await bob.evaluate(
        """() => { window.queueEvents = [];
                   ghostless.addEventListener('queue', (e) => queueEvents.push(e.detail)); }"""
    )
    assert events is None

    await ahead.close()  # the one ahead gives up: Bob moves up
    await wait_until(lambda: _contains(bob, "position 1 of"), timeout=5)
    await alice.close()
    await bob.wait_for_function("window.ghostless.state === 'joined'", timeout=10000)
    seen = await bob.evaluate("queueEvents")
    assert seen[0]["position"] == 1 and not seen[0]["admitted"]
    assert seen[-1]["admitted"] is True and seen[-1]["waited"] >= 0


async def _contains(page: Page, text: str) -> bool:
    return text in await banner(page)


async def test_waiting_past_the_queue_timeout_ends_the_wait_and_frees_the_camera(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue", queue_timeout=1.0)
    await join(await browser.new_context(), server, "solo", "alice")

    bob = await open_call(await browser.new_context(), server, "solo", "bob")
    await wait_until(lambda: bob.locator("#queue-banner").is_visible(), timeout=10)
    await bob.wait_for_function("window.ghostless.state === 'closed'", timeout=5000)
    assert await bob.evaluate("ghostless.closeReason") == "queue_timeout"
    assert "No seat came free in time" in await banner(bob)
    assert await bob.locator("#queue-retry").is_visible()
    released = await bob.evaluate(
        "ghostless.localStream.getTracks().every((t) => t.readyState === 'ended')"
    )
    assert released, "a page that gave up waiting still holds the camera"
    await asyncio.sleep(1.0)
    assert await state(bob) == "closed"  # final: it does not come back by itself

    await bob.click("#queue-retry")  # tries again: back in the queue
    await wait_until(lambda: _contains(bob, "position 1 of 1"), timeout=5)
    assert await state(bob) == "queued"


async def test_a_full_server_without_a_queue_is_retried_until_a_seat_frees(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(max_sessions=1)
    alice = await join(await browser.new_context(), server, "one", "alice")

    bob = await open_call(await browser.new_context(), server, "two", "bob")
    await bob.wait_for_function(
        "ghostless.state === 'reconnecting' && ghostless.closeReason === 'server_full'",
        timeout=10000,
    )
    assert await bob.locator("#banner").inner_text() == "The server is full, trying again…"
    await asyncio.sleep(1.5)
    assert await state(bob) in ("reconnecting", "connecting")  # 4503 is not final

    await alice.close()
    await bob.wait_for_function("window.ghostless.state === 'joined'", timeout=15000)
    assert await bob.locator("#banner").is_hidden()
