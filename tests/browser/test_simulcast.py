"""Real Chromium sending three-layer simulcast (the client library's default, as
mediasoup-demo's), received by another page: layers, switches, continuity.

Generous bounds here (a shared 2-core machine); the measured times are
printed (``-s``) and quoted in docs/benchmarks.md, with what the server's
consumer saw (the receiver's REMB, its target layers).  At the top layer the
receiver must decode what the sender encodes, up to 20 fps (every temporal
layer forwarded: the sender's own frame rate drops when two encoders and two
decoders share the cores with other jobs), with no more than one step down
and back up of the temporal layer (docs/media.md, issue 8).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from playwright.async_api import Browser, Page

from signalling.server import Server

from .conftest import join, peer_status, remote_video, wait_until
from .test_call_page import hears

# The client library captures 1280x720 (mediasoup-demo's default): r0, r1, r2
# are 320, 640 and 1280 wide.
CAMERA_WIDTH = 1280
MIDDLE_WIDTH = 640
LOWEST_WIDTH = 320


async def video_consumer_of(server: Server, room: str, viewer: str, sender: str) -> Any:
    """The server's video consumer of ``sender``'s camera on ``viewer``'s transport."""
    peers = {p.display_name: p for p in server.rooms[room].peers.values()}
    producers = {p.id for p in peers[sender].producers.values() if p.kind == "video"}
    return next((c for c in peers[viewer].consumers.values() if c.producer_id in producers), None)


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


async def sender_encodings(page: Page) -> dict[str, dict[str, Any]]:
    """The page's webcam encodings by rid: width, frames encoded (a total), frames
    per second, quality limitation."""
    result: dict[str, dict[str, Any]] = await page.evaluate(
        """async () => {
            const out = {};
            const stats = await ghostless._producers.get('video').getStats();
            stats.forEach((s) => {
                if (s.type === 'outbound-rtp') {
                    out[s.rid || ''] = {width: s.frameWidth || 0, frames: s.framesEncoded || 0,
                                        fps: s.framesPerSecond || 0,
                                        limitation: s.qualityLimitationReason};
                }
            });
            return out;
        }"""
    )
    return result


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


class LayerLog:
    """What the server's consumer did, for the printout: every ``layerschange``
    (current layers) and, every 0.25 s, the receiver's REMB (the downlink
    estimate) and the consumer's target layers."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.started = time.monotonic()
        self.changes: list[tuple[float, Any]] = []
        self.samples: list[tuple[float, int | None, Any]] = []
        consumer.on("layerschange", self._changed)
        self._task = asyncio.ensure_future(self._sample())

    def _changed(self, layers: Any) -> None:
        self.changes.append((time.monotonic() - self.started, layers))

    async def _sample(self) -> None:
        downlink = self.consumer._transport._downlink
        while not self.consumer.closed:
            layers = self.consumer.target_layers or {}
            target = (layers.get("spatialLayer"), layers.get("temporalLayer"))
            self.samples.append((time.monotonic() - self.started, downlink.remb, target))
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        self._task.cancel()

    def now(self) -> float:
        return time.monotonic() - self.started

    def temporal_changes(self, since: float) -> int:
        """Changes of the current temporal layer alone (the flips), since ``since``."""
        flips = 0
        previous: Any = None
        for at, layers in self.changes:
            layers = layers or {}
            current = (layers.get("spatialLayer"), layers.get("temporalLayer"))
            if at >= since and previous is not None and previous[0] == current[0]:
                flips += previous[1] != current[1]
            previous = current
        return flips

    def summary(self) -> str:
        rembs = [remb for _, remb, _ in self.samples if remb is not None]
        first = next((t for t, remb, _ in self.samples if remb is not None), None)
        shown: list[str] = []
        last: Any = None
        for t, remb, target in self.samples:
            if (remb, target) != last:
                last = (remb, target)
                shown.append(f"{t:.1f}s:{(remb or 0) // 1000}k/{target[0]}{target[1]}")
        return (
            f"first REMB after {first if first is None else round(first, 1)} s;"
            f" REMB min {min(rembs, default=0) // 1000}k max {max(rembs, default=0) // 1000}k;"
            f" {len(self.changes)} layer changes; REMB/target: {' '.join(shown)}"
        )


async def test_three_layer_simulcast_from_chromium_is_seen_at_once_and_keeps_its_frame_rate(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")

    await wait_until(lambda: video_consumer_of(server, "call", "bob", "alice"), timeout=10)
    created = time.monotonic()
    consumer = await video_consumer_of(server, "call", "bob", "alice")
    assert consumer.type == "simulcast"
    log = LayerLog(consumer)
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
    # Chrome sends its top encoding once its estimate allows (it probes at
    # start-up; the server's transport-cc feedback answers), and the receiver
    # gets it: the camera's width.
    try:
        await wait_until(lambda: width_is(bob, "alice", CAMERA_WIDTH), timeout=30)
        top = time.monotonic() - created
        print(f"top layer ({CAMERA_WIDTH} wide) {top:.1f} s after the consumer was created")
        assert top < 25.0  # target 15 s on loopback

        # The frame rate at the top layer: every temporal layer forwarded, so
        # the receiver decodes what the sender encodes (at most 30 fps; less
        # when two encoders and two decoders share the cores with other jobs).
        since = log.now()
        sent_before = await sender_encodings(alice)
        fps_top = await frames_per_second(bob, "alice", seconds=10.0)
        sent_after = await sender_encodings(alice)
        encoded = max(
            (sent_after[rid]["frames"] - sent_before.get(rid, {}).get("frames", 0)) / 10.0
            for rid in sent_after
        )
        flips = log.temporal_changes(since)
        print(
            f"{fps_top:.1f} fps at the receiver over 10 s at the top layer; the sender"
            f" encoded {encoded:.1f} fps; {flips} temporal layer flips meanwhile;"
            f" sender now: {sent_after}"
        )
        assert fps_top >= min(20.0, 0.8 * encoded), (fps_top, encoded)
        # Down and back up once at most (before the fix: ~50 flips a minute).
        assert flips <= 4, log.summary()
    finally:
        print(f"consumer: {log.summary()}")
        log.stop()
    assert await hears(bob, "alice") and await hears(alice, "bob")
    assert (await inbound_video(bob))["packetsLost"] <= 5


async def test_a_receiver_picks_a_lower_layer_and_the_sender_can_drop_its_top_one(
    server: Server, browser: Browser
) -> None:
    alice = await join(await browser.new_context(), server, "call", "alice")
    bob = await join(await browser.new_context(), server, "call", "bob")
    await wait_until(lambda: width_is(bob, "alice", CAMERA_WIDTH), timeout=30)
    alice_id = (await peer_status(bob, "alice") or {})["id"]

    # The receiver asks for the lowest layer: decoded width changes, no freeze.
    freeze = asyncio.ensure_future(longest_freeze(bob, "alice", 3.0))
    started = time.monotonic()
    await bob.evaluate("(id) => ghostless.setPreferredQuality(id, 0)", alice_id)
    await wait_until(lambda: width_is(bob, "alice", LOWEST_WIDTH), timeout=5)
    print(f"preferred layer 0: {LOWEST_WIDTH} wide after {time.monotonic() - started:.2f} s")
    assert time.monotonic() - started < 3.0  # target 1 s
    assert await freeze < 1.0, "the video froze across the switch"

    # Back to the best, then the sender deactivates its top encoding
    # (setParameters, active: false): receivers fall back to the next one...
    await bob.evaluate("(id) => ghostless.setPreferredQuality(id, null)", alice_id)
    await wait_until(lambda: width_is(bob, "alice", CAMERA_WIDTH), timeout=10)
    freeze = asyncio.ensure_future(longest_freeze(bob, "alice", 3.0))
    started = time.monotonic()
    await set_top_encoding_active(alice, False)
    await wait_until(lambda: width_is(bob, "alice", MIDDLE_WIDTH), timeout=5)
    fell_back = time.monotonic() - started
    print(f"top encoding deactivated: {MIDDLE_WIDTH} wide after {fell_back:.2f} s")
    assert time.monotonic() - started < 3.0  # target 1 s
    assert await freeze < 1.0, "the video froze when the top encoding stopped"

    # ... and take it up again when it comes back.
    started = time.monotonic()
    await set_top_encoding_active(alice, True)
    await wait_until(lambda: width_is(bob, "alice", CAMERA_WIDTH), timeout=15)
    back = time.monotonic() - started
    print(f"top encoding re-activated: {CAMERA_WIDTH} wide after {back:.2f} s")

    stats = await inbound_video(bob)
    print(f"packets lost at the receiver across all switches: {stats['packetsLost']}")
    assert stats["packetsLost"] <= 5
    await wait_until(lambda: alice.evaluate("ghostless.sendChat('still here')"), timeout=10)
    await bob.wait_for_selector("#messages li:has-text('alice: still here')", timeout=10000)
    assert await hears(bob, "alice")


async def set_top_encoding_active(page: Page, active: bool) -> None:
    """RTCRtpSender.setParameters on the webcam's top encoding, as an app (or Chrome) does."""
    await page.evaluate(
        """async (active) => {
            const sender = ghostless._producers.get('video').rtpSender;
            const parameters = sender.getParameters();
            parameters.encodings[parameters.encodings.length - 1].active = active;
            await sender.setParameters(parameters);
        }""",
        active,
    )


async def _decoded_some(page: Page, name: str) -> bool:
    return int((await remote_video(page, name))["frames"]) > 0
