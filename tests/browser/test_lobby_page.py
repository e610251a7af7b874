"""The lobby page (/lobby) in real headless Chromium: live room occupancy.

Call pages join and leave a room while a lobby page watches its count move
within a second or so of each change, then the room disappear once empty.
A second room is filled by protoo clients (no media), one of them queued.
"""

from __future__ import annotations

import time
from typing import Any

from playwright.async_api import Browser, Page

from signalling.protoo_client import ProtooClient
from signalling.server import Server

from ..signalling.conftest import url
from .conftest import DOCS, ServerFactory, join, wait_until

LIVE = 1.5  # s: a lobby update is coalesced to 0.5 s, plus a 0.1 s tick and polling


async def open_lobby(browser: Browser, server: Server) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"http://127.0.0.1:{server.port}/lobby")
    await page.wait_for_selector("#lobby-state[data-state='live']", timeout=10000)
    await record_history(page)
    return page


async def record_history(page: Page) -> None:
    """``window.lobbyHistory``: [roomId, peers] each time a count shows (null: gone)."""
    await page.evaluate(
        """() => {
            window.lobbyHistory = [];
            let seen = new Map();
            const record = () => {
                const now = new Map([...document.querySelectorAll('#rooms li.room')]
                    .map((li) => [li.dataset.roomId, Number(li.dataset.peers)]));
                for (const [id, peers] of now) {
                    if (seen.get(id) !== peers) window.lobbyHistory.push([id, peers]);
                }
                for (const id of seen.keys()) {
                    if (!now.has(id)) window.lobbyHistory.push([id, null]);
                }
                seen = now;
            };
            record();
            new MutationObserver(record).observe(document.querySelector('#rooms'), {
                subtree: true, childList: true, attributes: true, attributeFilter: ['data-peers'],
            });
        }"""
    )


async def shown(page: Page, room: str) -> dict[str, Any] | None:
    """What the lobby shows of ``room`` (None: not listed)."""
    row: dict[str, Any] | None = await page.evaluate(
        """(room) => {
            const li = [...document.querySelectorAll('#rooms li.room')]
                .find((item) => item.dataset.roomId === room);
            return li ? {peers: Number(li.dataset.peers), queued: Number(li.dataset.queued),
                         count: li.querySelector('.count').textContent,
                         href: li.querySelector('a.join').getAttribute('href')} : null;
        }""",
        room,
    )
    return row


async def shows_peers(page: Page, room: str, peers: int | None) -> bool:
    row = await shown(page, room)
    return (row is None) if peers is None else (row is not None and row["peers"] == peers)


async def history(page: Page, room: str) -> list[int | None]:
    entries: list[list[Any]] = await page.evaluate("window.lobbyHistory")
    return [peers for room_id, peers in entries if room_id == room]


async def test_the_lobby_follows_a_room_filling_and_emptying_live(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(room_close_delay=0.3, max_peers_per_room=4, when_full="queue")
    lobby = await open_lobby(browser, server)
    assert await lobby.locator("#empty").is_visible()

    alice = await join(await browser.new_context(), server, "standup", "alice")
    assert await wait_until(lambda: shows_peers(lobby, "standup", 1), timeout=5) < LIVE
    bob = await join(await browser.new_context(), server, "standup", "bob")
    assert await wait_until(lambda: shows_peers(lobby, "standup", 2), timeout=5) < LIVE
    row = await shown(lobby, "standup")
    assert row is not None and row["count"] == "2 / 4" and row["href"] == "/?room=standup"

    # A second room, full, with somebody waiting: four protoo peers and one queued.
    clients = []
    for name in ("carol", "dave", "erin", "frank"):
        client = await ProtooClient.connect(url(server, room="design-review", peer=name))
        await client.request("join", {"displayName": name})
        clients.append(client)
    clients.append(await ProtooClient.connect(url(server, room="design-review", peer="grace")))
    await wait_until(lambda: _queued(lobby, "design-review", 1), timeout=5)
    await lobby.set_viewport_size({"width": 900, "height": 560})
    await lobby.wait_for_timeout(1000)  # let the highlight fade
    await lobby.screenshot(path=str(DOCS / "lobby.png"))

    started = time.monotonic()
    await bob.close()
    assert await wait_until(lambda: shows_peers(lobby, "standup", 1), timeout=5) < LIVE
    started = time.monotonic()
    await alice.close()
    await wait_until(lambda: shows_peers(lobby, "standup", None), timeout=5)
    assert time.monotonic() - started < 0.3 + LIVE  # the close delay, then one update
    # 0 -> 1 -> 2 -> 1 -> gone; a 0 may show between creation and the first
    # join, or between the last leave and the close: both within one interval.
    assert [p for p in await history(lobby, "standup") if p != 0] == [1, 2, 1, None]

    for client in clients:
        await client.close()
    await wait_until(lambda: shows_peers(lobby, "design-review", None), timeout=5)
    assert await lobby.locator("#empty").is_visible()


async def _queued(page: Page, room: str, queued: int) -> bool:
    row = await shown(page, room)
    return row is not None and row["queued"] == queued


async def test_the_lobby_reconnects_and_catches_up_with_what_it_missed(
    make_server: ServerFactory, browser: Browser
) -> None:
    server = await make_server(room_close_delay=0.3)
    first = await ProtooClient.connect(url(server, room="before", peer="alice"))
    await first.request("join", {"displayName": "alice"})
    lobby = await open_lobby(browser, server)
    await wait_until(lambda: shows_peers(lobby, "before", 1), timeout=5)

    # The socket drops (a proxy restart, say): the page notices and comes back.
    for viewer in list(server.lobby.viewers.values()):
        viewer.close(1012, "service restart")
    await lobby.wait_for_selector("#lobby-state[data-state='reconnecting']", timeout=5000)
    await first.close()
    second = await ProtooClient.connect(url(server, room="after", peer="bob"))
    await second.request("join", {"displayName": "bob"})

    await lobby.wait_for_selector("#lobby-state[data-state='live']", timeout=10000)
    await wait_until(lambda: shows_peers(lobby, "after", 1), timeout=5)
    await wait_until(lambda: shows_peers(lobby, "before", None), timeout=5)
    await second.close()


async def test_the_lobby_fits_a_phone_and_links_to_the_call_page(
    server: Server, browser: Browser
) -> None:
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await page.goto(f"http://127.0.0.1:{server.port}/lobby")
    await page.wait_for_selector("#lobby-state[data-state='live']", timeout=10000)
    client = await ProtooClient.connect(url(server, room="a-rather-long-room-name", peer="x"))
    await client.request("join", {"displayName": "x"})
    await wait_until(lambda: shows_peers(page, "a-rather-long-room-name", 1), timeout=5)
    overflow = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert not overflow, "the lobby scrolls sideways on a phone"

    await page.fill("#room-name", "retro")
    await page.click("#room-form button")
    await page.wait_for_url("**/?room=retro")
    assert await page.input_value("#room") == "retro"
    await client.close()
