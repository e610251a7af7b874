"""Real Chromium sending three-layer simulcast (the client library's default, as
mediasoup-demo's), received by another page: layers, switches, continuity.

Generous bounds here (a shared 2-core machine); the measured times are
printed (``-s``) and quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from playwright.async_api import Browser, Page

from signalling.server import Server

from .conftest import join, peer_status, remote_video, wait_until
from .test_call_page import hears


async def video_consumer_of(server: Server, room: str, viewer: str, sender: str) -> Any:
    """The server's video consumer of ``sender``'s camera on ``viewer``'s transport."""
    peers = {p.display_name: p for p in server.rooms[room].peers.values()}
    producers = {p.id for p in peers[sender].producers.values() if p.kind == "video"}
    return next(
        (c for c in peers[viewer].consumers.values() if c.producer_id in producers), None
    )


async def inbound_video(page: Page) -> dict[str, Any]:
    """The receiving page's inbound-rtp video stats (packetsLost, frames...)."""
    stats: dict[str, Any] = await page.evaluate(
        """async () => {
            const report = await ghostless._recvTransport.getStats();
            let found = {packetsLost: 0, framesDecoded: 0, frameWidth: 0};
            report.forEach((s) => {
                if (s.type === 'inbound-rtp' && s.kind === 'video') found = s;
            });
            return {packetsLost: found.packetsLost || 0, framesDecoded: found.framesDecoded || 0,
                    frameWidth: found.frameWidth || 0};
        }"""
    )
    return stats


async def width_is(page: Page, name: str, width: int) -> bool:
    return int((await remote_video(page, name))["width"]) == width


async def frames_per_second(page: Page, name: str, seconds: float = 2.0) -> float:
    before = (await remote_video(page, name))["frames"]
    await asyncio.sleep(seconds)
    return float((await remote_video(page, name))["frames"] - before) / seconds


async def longest_freeze(page: Page, name: str, seconds: float) -> float:
    """Over ``seconds``, the longest time the decoded frame count stood still."""
    last_frames, last_change, longest = -1, time.monotonic(), 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames = (await remote_video(page, name))["frames"]
        now = time.monotonic()
        if frames != last_frames:
            last_frames, last_change = frames, now
        longest = max(longest, now - last_change)
        await asyncio.sleep(0.05)
    return longest


async def test_three_layer_simulcast_from_chromium_is_seen_at_once_and_keeps_its_frame_rate(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")

    await wait_until(lambda: video_consumer_of(server, "call", "bob", "alice"), timeout=10)
    created = time.monotonic()
    consumer = await video_consumer_of(server, "call", "bob", "alice")
    assert consumer.type == "simulcast"
    producer = consumer.producer
    assert producer.type == "simulcast" and [s.rid for s in producer.streams] == ["r0", "r1", "r2"]
    await wait_until(lambda: _decoded_some(bob, "alice"), timeout=10, step=0.02)
    first_frame = time.monotonic() - created
    print(f"first video frame {first_frame * 1000:.0f} ms after the consumer was created")
    assert first_frame < 3.0  # target 1.5 s

    await asyncio.sleep(1.0)  # past the first key frame's start-up
    fps = await frames_per_second(bob, "alice")
    print(f"{fps:.1f} fps at the receiver")
    assert fps >= 10  # target 20 fps; two Chromiums and the server share two cores here
    # The best layer the sender sends is forwarded (wider than the lowest).
    await wait_until(lambda: _wider_than(bob, "alice", 160), timeout=10)
    assert await hears(bob, "alice") and await hears(alice, "bob")
    assert (await inbound_video(bob))["packetsLost"] <= 5


async def test_a_receiver_picks_a_lower_layer_and_the_sender_can_drop_its_top_one(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: _wider_than(bob, "alice", 160), timeout=15)
    best = int((await remote_video(bob, "alice"))["width"])
    alice_id = (await peer_status(bob, "alice") or {})["id"]

    # The receiver asks for the lowest layer: decoded width changes, no freeze.
    freeze = asyncio.ensure_future(longest_freeze(bob, "alice", 3.0))
    started = time.monotonic()
    await bob.evaluate("(id) => ghostless.setPreferredQuality(id, 0)", alice_id)
    await wait_until(lambda: width_is(bob, "alice", 160), timeout=5)
    print(f"preferred layer 0: 160 wide after {time.monotonic() - started:.2f} s")
    assert time.monotonic() - started < 3.0  # target 1 s
    assert await freeze < 1.0, "the video froze across the switch"

    # Back to the best, then the sender stops every encoding above the lowest
    # (setParameters with active: false): receivers fall back to what is left.
    await bob.evaluate("(id) => ghostless.setPreferredQuality(id, null)", alice_id)
    await wait_until(lambda: width_is(bob, "alice", best), timeout=10)
    started = time.monotonic()
    await alice.evaluate("() => ghostless._producers.get('video').setMaxSpatialLayer(0)")
    await wait_until(lambda: width_is(bob, "alice", 160), timeout=5)
    print(f"upper encodings deactivated: 160 wide after {time.monotonic() - started:.2f} s")
    assert time.monotonic() - started < 3.0  # target 1 s

    # (Taking a re-activated encoding up again is covered with a RawClient
    # webcam in tests/media/test_simulcast_call.py: Chrome re-sends it only as
    # fast as its bandwidth estimate grows, which is not yet bounded here.)

    stats = await inbound_video(bob)
    print(f"packets lost at the receiver across all switches: {stats['packetsLost']}")
    assert stats["packetsLost"] <= 5
    await wait_until(lambda: alice.evaluate("ghostless.sendChat('still here')"), timeout=10)
    await bob.wait_for_selector("#messages li:has-text('alice: still here')", timeout=10000)
    assert await hears(bob, "alice")


async def _wider_than(page: Page, name: str, width: int) -> bool:
    return int((await remote_video(page, name))["width"]) > width


async def _decoded_some(page: Page, name: str) -> bool:
    return int((await remote_video(page, name))["frames"]) > 0
