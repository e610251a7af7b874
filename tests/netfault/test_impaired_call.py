"""A call over a bad link for minutes: 5 % loss, 100 ms RTT, 20 ms jitter, 1 %
reordering on Alice's link (issue 12), her media watched by Bob on a clean one.

Alice's Chromium runs in a client namespace; her media goes through the
userspace relay (relay.py: 50 ms each way, +/- 20 ms jitter with the order
kept, 1 % of packets held back 30 ms so that later ones overtake them) and
nftables drops 5 % of every packet of her link, both ways (signalling too).
Bob's Chromium (root namespace) receives her camera and microphone, Alice
receives his.  Both pages run the browser client without the demo's UI, at
640x360 and 30 fps (Chromium's fake camera), so that two encoders and two
decoders fit on a 2-core machine.

What is measured, per 5 s window: frames decoded (getStats ``framesDecoded``)
and audio received and concealed at each receiver; over the whole run, NACKs,
retransmissions and PLIs at both ends; every ``peerQuality`` the room was told
and every sample the server's grader saw.  Printed with ``-s``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import Page

from signalling.liveness import SessionState
from signalling.quality import Quality, QualitySample
from signalling.server import Server

from . import chromium
from .conftest import BrowserFactory, ServerStarter
from .netns import ClientNetwork, media_port_range
from .relay import Impairment, UdpRelay

pytestmark = pytest.mark.slow  # minutes of a real call

ROOM = "lossy"
LOSS_PERCENT = 5
IMPAIRMENT = Impairment(delay=0.05, jitter=0.02, reorder=0.01, reorder_gap=0.03)
WINDOW = 5.0
Record = Callable[[str, object], None]


@dataclass
class Window:
    seconds: float
    video: dict[str, float]
    audio: dict[str, float]

    @property
    def fps(self) -> float:
        return self.video.get("framesDecoded", 0) / self.seconds

    @property
    def audio_packets_per_s(self) -> float:
        return self.audio.get("packetsReceived", 0) / self.seconds

    @property
    def concealed(self) -> float:
        """Share of the audio played out that was concealed (not silence)."""
        samples = self.audio.get("totalSamplesReceived", 0)
        loud = self.audio.get("concealedSamples", 0) - self.audio.get("silentConcealedSamples", 0)
        return loud / samples if samples else 1.0


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


@dataclass
class Direction:
    """What one receiver (``page``) got of ``sender``'s media."""

    page: Page
    sender: str
    windows: list[Window] = field(default_factory=list)
    start: dict[str, dict[str, float]] = field(default_factory=dict)
    end: dict[str, dict[str, float]] = field(default_factory=dict)
    _last: dict[str, dict[str, float]] = field(default_factory=dict)

    async def begin(self) -> None:
        self.start = self._last = await chromium.inbound(self.page, self.sender)

    async def window(self, seconds: float) -> None:
        now = await chromium.inbound(self.page, self.sender)
        video = delta(now["video"], self._last["video"])
        audio = delta(now["audio"], self._last["audio"])
        self.windows.append(Window(seconds, video, audio))
        self._last = self.end = now

    def total(self, kind: str, key: str) -> float:
        return self.end[kind].get(key, 0) - self.start[kind].get(key, 0)

    def summary(self) -> str:
        fps = [round(w.fps, 1) for w in self.windows]
        concealed = [w.concealed for w in self.windows]
        return (
            f"fps per {WINDOW:.0f} s: min {min(fps)}, median {statistics.median(fps)},"
            f" mean {statistics.mean(fps):.1f} {fps}; video NACKs sent"
            f" {self.total('video', 'nackCount'):.0f}, retransmissions received"
            f" {self.total('video', 'retransmittedPacketsReceived'):.0f}, PLIs sent"
            f" {self.total('video', 'pliCount'):.0f}, freezes"
            f" {self.total('video', 'freezeCount'):.0f}; audio packets/s min"
            f" {min(w.audio_packets_per_s for w in self.windows):.1f}, concealed max"
            f" {max(concealed):.1%} overall"
            f" {self.total('audio', 'concealedSamples') / max(1.0, self.total('audio', 'totalSamplesReceived')):.1%}"  # noqa: E501
        )


@dataclass
class ImpairedCall:
    alice_id: str
    bob_id: str
    to_bob: Direction
    to_alice: Direction
    quality: list[dict[str, Any]]
    samples: list[tuple[str, float, QualitySample, Quality | None]]
    liveness: list[dict[str, Any]]
    alice_states: list[dict[str, Any]]
    session_kept: bool
    dropped: float
    relay: UdpRelay
    pairs: dict[str, Any]
    alice_sent: dict[str, Any]
    seconds: float

    def grades(self, peer_id: str) -> list[tuple[str, list[str]]]:
        return [
            (entry["data"]["quality"], entry["data"]["reasons"])
            for entry in self.quality
            if entry["data"]["peerId"] == peer_id
        ]

    def sample_summary(self, peer_id: str) -> str:
        mine = [sample for peer, _, sample, _ in self.samples if peer == peer_id]

        def spread(values: list[float | None], scale: float = 1.0, unit: str = "") -> str:
            known = [v * scale for v in values if v is not None]
            if not known:
                return "unknown"
            return f"median {statistics.median(known):.1f}{unit} max {max(known):.1f}{unit}"

        return (
            f"uplink loss {spread([s.uplink_loss for s in mine], 100, ' %')},"
            f" downlink loss {spread([s.downlink_loss for s in mine], 100, ' %')},"
            f" jitter {spread([s.jitter_ms for s in mine], unit=' ms')},"
            f" RTT {spread([s.rtt_ms for s in mine], unit=' ms')},"
            f" consent gap {spread([s.consent_gap for s in mine], unit=' s')}"
        )


async def impaired_call(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    monkeypatch: pytest.MonkeyPatch,
    *,
    seconds: float,
    simulcast: bool,
) -> ImpairedCall:
    low, high = media_port_range()
    server = await netfault_server(network, rtc_min_port=low, rtc_max_port=high)
    relay = await network.start_relay(range(low, high + 1), up=IMPAIRMENT, down=IMPAIRMENT, seed=12)
    # Every sample the quality grader sees, with the grade it gave.
    board = server.quality
    assert board is not None
    observe = board.observe
    samples: list[tuple[str, float, QualitySample, Quality | None]] = []

    def recording(key: tuple[str, str], sample: QualitySample, now: float) -> Quality | None:
        change = observe(key, sample, now)
        samples.append((key[1], now, sample, change))
        return change

    monkeypatch.setattr(board, "observe", recording)

    camera = "fps=30"
    bob = await chromium.join_client(
        await browsers(server, None, fake_device=camera), server, ROOM, "bob", simulcast=simulcast
    )
    alice = await chromium.join_client(
        await browsers(server, network, fake_device=camera),
        server,
        ROOM,
        "alice",
        simulcast=simulcast,
    )
    alice_id = (await chromium.client_info(alice))["peerId"]
    bob_id = (await chromium.client_info(bob))["peerId"]
    await chromium.frames_resume(bob, "alice", timeout=40, frames=30)
    await chromium.frames_resume(alice, "bob", timeout=40, frames=30)
    session = server.registry.by_peer[(ROOM, alice_id)]

    to_bob, to_alice = Direction(bob, "alice"), Direction(alice, "bob")
    sent_before = await chromium.outbound(alice)
    started_wall = chromium.wall()
    network.set_loss(LOSS_PERCENT)
    started = last = time.monotonic()
    await to_bob.begin()
    await to_alice.begin()
    while last - started < seconds - 0.5:
        await asyncio.sleep(max(0.0, last + WINDOW - time.monotonic()))
        now = time.monotonic()
        await to_bob.window(now - last)
        await to_alice.window(now - last)
        last = now
    counters = network.counters()
    sent_after = await chromium.outbound(alice)
    network.set_loss(0)

    seen = counters["egress:seen"]["packets"] + counters["ingress:seen"]["packets"]
    lost = counters["egress:loss"]["packets"] + counters["ingress:loss"]["packets"]
    return ImpairedCall(
        alice_id=alice_id,
        bob_id=bob_id,
        to_bob=to_bob,
        to_alice=to_alice,
        quality=await chromium.notifications(bob, ["peerQuality"]),
        samples=samples,
        liveness=[
            entry
            for entry in await chromium.notifications(
                bob, ["peerClosed", "peerReconnecting"], after=started_wall
            )
            if entry["data"]["peerId"] == alice_id
        ],
        alice_states=await chromium.states(alice, after=started_wall),
        session_kept=(
            server.registry.by_peer.get((ROOM, alice_id)) is session
            and session.state is SessionState.JOINED
        ),
        dropped=lost / seen,
        relay=relay,
        pairs=await chromium.selected_pairs(alice),
        alice_sent={
            "video": delta(sent_after["video"], sent_before["video"]),
            "limitations": sent_after["limitations"],
        },
        seconds=last - started,
    )


def report(call: ImpairedCall, label: str) -> None:
    stats = call.relay.stats
    print(
        f"\n{label}, {call.seconds:.0f} s: nftables dropped {call.dropped:.1%} of"
        f" {LOSS_PERCENT} %; relay up {stats['up']}, down {stats['down']}; selected pairs"
        f" {call.pairs}"
    )
    print(f"  Bob <- Alice (her uplink impaired): {call.to_bob.summary()}")
    print(f"  Alice <- Bob (her downlink impaired): {call.to_alice.summary()}")
    print(
        f"  Alice's sender: {call.alice_sent['video']} (per encoding: rid, limitation,"
        f" width, fps: {call.alice_sent['limitations']})"
    )
    print(f"  liveness about Alice: {call.liveness}; her client: {call.alice_states}")
    print(f"  grades: Alice {call.grades(call.alice_id)}, Bob {call.grades(call.bob_id)}")
    print(f"  grader's samples of Alice: {call.sample_summary(call.alice_id)}")
    print(f"  grader's samples of Bob: {call.sample_summary(call.bob_id)}")


def check(call: ImpairedCall, seconds: float) -> None:
    """Issue 12's targets for a call over this link."""
    fps = [window.fps for window in call.to_bob.windows]
    # The impairment was there: the loss, and media through the relay.
    assert 0.035 <= call.dropped <= 0.065
    for pair in call.pairs.values():
        assert pair is not None and (pair["local"], pair["remote"]) == ("udp", "udp"), call.pairs
    assert call.relay.stats["up"].reordered > 0 and call.relay.stats["down"].reordered > 0

    # Video keeps at least 20 fps at the receiver: the mean and 9 windows in
    # 10 (a 2-core machine has its moments), and never a freeze below 10 fps.
    assert len(fps) >= seconds / WINDOW - 2
    assert statistics.mean(fps) >= 20.0, fps
    assert sum(f >= 20.0 for f in fps) >= 0.9 * len(fps), fps
    assert min(fps) >= 10.0, fps
    # ... because losses were repaired: NACKs went out, retransmissions came back.
    assert call.to_bob.total("video", "nackCount") > 0
    assert call.to_bob.total("video", "retransmittedPacketsReceived") > 0
    assert call.alice_sent["video"].get("retransmittedPacketsSent", 0) > 0
    # Audio continuous: packets every window (20 ms ptime: 50/s, less the
    # loss), and little of it concealed.
    for window in call.to_bob.windows:
        assert window.audio_packets_per_s >= 40.0, call.to_bob.summary()
        assert window.concealed <= 0.15, call.to_bob.summary()
    # The downlink (the SFU's own retransmissions) carries Bob's video too.
    assert statistics.mean(w.fps for w in call.to_alice.windows) >= 20.0

    # No liveness end, no reconnection, the same session throughout.
    assert call.liveness == []
    assert call.alice_states == []
    assert call.session_kept
    # No false alarm about Alice: 5 % loss and 20 ms jitter are "unstable" at
    # worst (thresholds 3 %/10 % loss, 30/80 ms jitter), never "poor".
    assert "poor" not in [grade for grade, _ in call.grades(call.alice_id)]
    # ... and none about Bob, whose link is clean: what Alice's link lost
    # before the server is not his downlink's loss.
    assert all(grade == "good" for grade, _ in call.grades(call.bob_id)), call.grades(call.bob_id)


@pytest.mark.timeout(420)
async def test_5_percent_loss_100ms_rtt_jitter_reordering_for_3_minutes(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Record,
) -> None:
    seconds = 180.0
    call = await impaired_call(
        network, netfault_server, browsers, monkeypatch, seconds=seconds, simulcast=False
    )
    report(call, "5 % loss, 100 ms RTT, 20 ms jitter, 1 % reordering (single encoding)")
    fps = [window.fps for window in call.to_bob.windows]
    record_property("impaired_fps_min", round(min(fps), 1))
    record_property("impaired_fps_mean", round(statistics.mean(fps), 1))
    record_property("impaired_grades_alice", call.grades(call.alice_id))
    check(call, seconds)


class DownlinkLog:
    """Every 0.5 s, each peer's video consumer as the server sees it: the client's
    REMB, the downlink estimate, the loss it reports, the consumer's target layers."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, Any, int, Any, Any]]] = {}
        self.server: Server | None = None
        self._task: asyncio.Future[None] | None = None

    def start(self, server: Server) -> None:
        self.server = server
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        started = time.monotonic()
        while True:
            assert self.server is not None
            room = self.server.rooms.get(ROOM)
            for peer in room.peers.values() if room is not None else ():
                consumer: Any  # the media layer's, with its transport and layers
                for consumer in peer.consumers.values():
                    if consumer.kind != "video" or consumer.closed:
                        continue
                    downlink = consumer._transport._downlink
                    target = consumer.target_layers or {}
                    self.samples.setdefault(peer.display_name, []).append(
                        (
                            time.monotonic() - started,
                            downlink.remb,
                            downlink.bitrate,
                            downlink.loss,
                            (target.get("spatialLayer"), target.get("temporalLayer")),
                        )
                    )
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def summary(self, name: str) -> str:
        """The samples where the REMB, the estimate or the target changed."""
        shown: list[str] = []
        last: Any = None
        for t, remb, bitrate, loss, layers in self.samples.get(name, []):
            if (remb, bitrate, layers) == last:
                continue
            last = (remb, bitrate, layers)
            shown.append(
                f"{t:.1f}s:{(remb or 0) // 1000}k/{bitrate // 1000}k"
                f"/{'-' if loss is None else round(loss * 100)}%/{layers[0]}{layers[1]}"
            )
        return " ".join(shown)


async def test_the_same_link_with_simulcast(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client's default, three encodings.  Alice's Chrome, receiving over
    # her jittery downlink, reads the jitter as congestion: its REMB has been
    # seen as low as 68 kbit/s, where a spatial-major choice gave her Bob's r1
    # at its base layer (7-15 fps for 30 s, 2026-11-29); the consumer now keeps
    # the frame rate and lowers the resolution (docs/media.md).  Her Chrome
    # (5 % loss, 100 ms RTT on her uplink) also turns an encoding off now and
    # then; the consumer falls back once it has been silent for
    # the encoding stop timeout (0.25 s) while a lower one sends, plus a key
    # frame of that one across her link.  60 s: the check's 9 windows in 10
    # then allow one 5 s window of a busy 2-core machine (a CI run had one at
    # 17 fps in both directions at once, which 30 s, all 6 windows, did not).
    seconds = 60.0
    log = DownlinkLog()

    async def logged_server(*args: Any, **kwargs: Any) -> Server:
        server = await netfault_server(*args, **kwargs)
        log.start(server)
        return server

    try:
        call = await impaired_call(
            network, logged_server, browsers, monkeypatch, seconds=seconds, simulcast=True
        )
    finally:
        log.stop()
    report(call, "the same link, simulcast")
    layers = await chromium.notifications(call.to_bob.page, ["consumerLayersChanged"])
    print(f"  Bob's consumer layers changed {len(layers)} times: {layers[-6:]}")
    for name in ("bob", "alice"):
        print(f"  {name}'s downlink (REMB/estimate/loss/target): {log.summary(name)}")
    check(call, seconds)
