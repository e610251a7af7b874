"""Connection quality badges on the demo call page, in real headless Chromium.

Everybody starts "good"; a ``peerQuality`` notification (sent here through the
in-process server's room, as the grader does) turns a participant's badge
amber or red, on every page of the room, with the reasons in the tooltip.
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, Page

from signalling.server import Server

from .conftest import DOCS, join, peer_status, video_flows, wait_until


async def badges(page: Page, peer_id: str) -> dict[str, Any]:
    """The quality badge of ``peer_id``'s tile and participant entry on ``page``."""
    found: dict[str, Any] = await page.evaluate(
        """(peerId) => {
            const read = (element) => element && {quality: element.dataset.quality,
                                                   title: element.title,
                                                   text: element.textContent};
            return {
                tile: read(document.querySelector(`.tile[data-peer-id="${peerId}"] .quality`)),
                list: read(document.querySelector(
                    `#participants li[data-peer-id="${peerId}"] .quality`)),
            };
        }""",
        peer_id,
    )
    return found


async def badges_show(page: Page, peer_id: str, quality: str) -> bool:
    found = await badges(page, peer_id)
    return all(b is not None and b["quality"] == quality for b in found.values())


def grade(server: Server, room: str, peer_id: str, quality: str, reasons: list[str]) -> None:
    server.rooms[room].broadcast(
        "peerQuality", {"peerId": peer_id, "quality": quality, "reasons": reasons}
    )


async def test_every_participant_starts_with_a_good_badge(server: Server, browser: Browser) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    await wait_until(lambda: video_flows(alice, "bob"), timeout=20)
    alice_id = await alice.evaluate("window.ghostless.peerId")
    bob_id = await bob.evaluate("window.ghostless.peerId")

    for page in (alice, bob):
        for peer_id in (alice_id, bob_id):  # the other's tile and one's own
            found = await badges(page, peer_id)
            assert found["tile"] is not None and found["list"] is not None
            assert found["tile"]["quality"] == found["list"]["quality"] == "good"
            assert found["tile"]["title"] == "Connection good"
            assert found["tile"]["text"] == ""  # a green dot, no words


async def test_a_poor_grade_turns_the_badge_red_on_every_page(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: video_flows(bob, "alice"), timeout=20)
    alice_id = (await peer_status(bob, "alice") or {})["id"]

    grade(server, "call", alice_id, "poor", ["rtt", "loss"])
    await wait_until(lambda: badges_show(bob, alice_id, "poor"), timeout=3)
    found = await badges(bob, alice_id)
    for badge in found.values():
        assert badge["title"] == "Connection poor: high latency, packet loss"
    assert found["tile"]["text"] == "poor"
    peer = await bob.evaluate(f"({{...window.ghostless.peers.get('{alice_id}')}})")
    assert peer["quality"] == "poor" and peer["qualityReasons"] == ["rtt", "loss"]
    # Alice is told about herself too: her own tile and entry turn red.
    await wait_until(lambda: badges_show(alice, alice_id, "poor"), timeout=3)
    assert await alice.evaluate("[ghostless.quality, ghostless.qualityReasons]") == [
        "poor",
        ["rtt", "loss"],
    ]

    await bob.set_viewport_size({"width": 1100, "height": 620})
    await bob.screenshot(path=str(DOCS / "quality.png"))

    grade(server, "call", alice_id, "unstable", ["jitter"])
    await wait_until(lambda: badges_show(bob, alice_id, "unstable"), timeout=3)
    assert (await badges(bob, alice_id))["tile"]["title"] == "Connection unstable: jitter"
    grade(server, "call", alice_id, "good", [])
    await wait_until(lambda: badges_show(bob, alice_id, "good"), timeout=3)
    await wait_until(lambda: badges_show(alice, alice_id, "good"), timeout=3)
