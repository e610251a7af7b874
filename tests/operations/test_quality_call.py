"""Connection quality on a real call with loss injected.

Alice sends video and audio; Bob receives them through a UDP relay that, once
the call is flowing, drops 15 % of the datagrams in both directions (RTP,
RTCP, consent checks alike).  The server's view of each participant
(``WebRtcTransport`` link samples, read through monitors of our own) is
graded by ``QualityGrader`` with short test settings: Bob turns unstable or
poor within seconds, Alice, on a clean link, never leaves good.

This exercises the media side and the grader together; the server's own
wiring (``peerQuality``, the gauge) has tests of its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from media import LinkMonitor, LinkSample
from signalling.bot import Bot
from signalling.quality import Quality, QualityBoard, QualityPolicy, QualitySample
from signalling.server import Server
from tests.signalling.conftest import (  # noqa: F401  (fixtures, re-exported)
    ServerFactory,
    make_server,
)

LOSS = 0.15
POLICY = QualityPolicy(interval=0.5, recovery_hold=2.0)
ROOM = "quality"

Address = tuple[str, int]


class _Side(asyncio.DatagramProtocol):
    """One socket of the relay; hands what it reads to the relay."""

    def __init__(self, relay: LossyRelay, from_client: bool) -> None:
        self.relay = relay
        self.from_client = from_client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay.forward(data, addr, from_client=self.from_client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable after one side closed: that side is gone


@dataclass
class LossyRelay:
    """A UDP relay between one client and one server port that drops a share
    of datagrams each way (``loss``, 0 until the test turns it on).

    The client talks to the relay's front socket; the server sees the
    relay's back socket as the client (ICE-lite answers whoever checks).
    """

    target: Address
    rng: random.Random
    loss: float = 0.0
    front: asyncio.DatagramTransport | None = None
    back: asyncio.DatagramTransport | None = None
    client: Address | None = None
    forwarded: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    @classmethod
    async def open(cls, target: Address, seed: int) -> LossyRelay:
        loop = asyncio.get_running_loop()
        relay = cls(target, random.Random(seed))
        relay.front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay, True), local_addr=("127.0.0.1", 0)
        )
        relay.back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay, False), local_addr=("127.0.0.1", 0)
        )
        return relay

    @property
    def port(self) -> int:
        assert self.front is not None
        return int(self.front.get_extra_info("sockname")[1])

    def forward(self, data: bytes, addr: Address, *, from_client: bool) -> None:
        direction = "up" if from_client else "down"
        if from_client:
            self.client = addr
        if self.loss and self.rng.random() < self.loss:
            self.dropped[direction] += 1
            return
        self.forwarded[direction] += 1
        if from_client and self.back is not None:
            self.back.sendto(data, self.target)
        elif not from_client and self.front is not None and self.client is not None:
            self.front.sendto(data, self.client)

    def close(self) -> None:
        for side in (self.front, self.back):
            if side is not None:
                side.close()


class RelayedBot(Bot):
    """A bot whose receive transport goes through a ``LossyRelay``.

    The server's answer to ``createWebRtcTransport`` is rewritten for this
    bot only: its ICE candidates point at the relay, which forwards to the
    real media port.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relays: list[LossyRelay] = []

    async def _transport(self, *, producing: bool, sctp: dict[str, Any]) -> Any:
        client = self.client
        assert client is not None
        if producing:
            return await super()._transport(producing=producing, sctp=sctp)
        original = client.request

        async def request(method: str, data: Any = None, timeout: float = 10) -> Any:
            answer = await original(method, data, timeout)
            if method == "createWebRtcTransport":
                for candidate in answer["iceCandidates"]:
                    relay = await LossyRelay.open(
                        (candidate["ip"], candidate["port"]), seed=len(self.relays)
                    )
                    self.relays.append(relay)
                    candidate.update(ip="127.0.0.1", address="127.0.0.1", port=relay.port)
            return answer

        client.request = request  # type: ignore[method-assign]
        try:
            return await super()._transport(producing=producing, sctp=sctp)
        finally:
            del client.request  # later requests (connect) go straight through

    def set_loss(self, loss: float) -> None:
        for relay in self.relays:
            relay.loss = loss


@dataclass
class Call:
    server: Server
    alice: Bot
    bob: RelayedBot


@pytest.fixture
async def call(make_server: ServerFactory) -> AsyncIterator[Call]:  # noqa: F811
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    bob = RelayedBot(url, ROOM, "bob", video=False)
    alice = Bot(url, ROOM, "alice", video=True, audio=True)
    try:
        await bob.join()
        await alice.join()
        yield Call(server, alice, bob)
    finally:
        await alice.close()
        await bob.close()
        for relay in bob.relays:
            relay.close()


class Grading:
    """What a server would do every ``POLICY.interval``: sample each
    participant's transports and grade them (here with monitors of its own)."""

    def __init__(self, server: Server, peers: list[str]) -> None:
        room = server.rooms[ROOM]
        self.monitors = {
            peer: [LinkMonitor(t) for t in room.peers[peer].transports.values()] for peer in peers
        }
        self.board: QualityBoard[str] = QualityBoard(POLICY)
        self.changes: dict[str, list[Quality]] = {peer: [] for peer in peers}
        self.links: dict[str, list[LinkSample]] = {peer: [] for peer in peers}

    def tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for peer, monitors in self.monitors.items():
            links = [monitor.sample(now) for monitor in monitors]
            self.links[peer].extend(links)
            change = self.board.observe(peer, QualitySample.from_links(links, rtt_ms=None), now)
            if change is not None:
                self.changes[peer].append(change)

    async def run(self, seconds: float) -> None:
        assert POLICY.interval is not None
        for _ in range(round(seconds / POLICY.interval)):
            await asyncio.sleep(POLICY.interval)
            self.tick()

    async def run_until(self, peer: str, grades: set[Quality], timeout: float) -> float:
        """Tick until ``peer``'s grade is one of ``grades``; how long it took."""
        assert POLICY.interval is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        while self.board.grade(peer) not in grades:
            assert loop.time() - started < timeout, f"{peer} still {self.board.grade(peer)}"
            await asyncio.sleep(POLICY.interval)
            self.tick()
        return loop.time() - started

    def downlink_loss(self, peer: str, since: int) -> float:
        """Loss over every receiver report since link sample ``since``."""
        reported = [s for s in self.links[peer][since:] if s.downlink_loss is not None]
        packets = sum(s.downlink_packets for s in reported)
        assert packets > 0, f"no receiver report from {peer}"
        return sum((s.downlink_loss or 0.0) * s.downlink_packets for s in reported) / packets


@pytest.mark.slow
async def test_a_lossy_receiver_is_graded_down_and_the_healthy_sender_stays_good(
    call: Call,
) -> None:
    assert await call.bob.wait_for_frames(10, timeout=20), "Bob decoded no video from Alice"
    grading = Grading(call.server, ["alice", "bob"])

    # Through the relay, lossless: nobody is graded down.
    await grading.run(3.0)
    assert grading.changes == {"alice": [], "bob": []}
    healthy = grading.links["bob"]
    assert any(s.downlink_loss == 0.0 for s in healthy), "no receiver report reached the server"

    call.bob.set_loss(LOSS)
    lossy_from = len(grading.links["bob"])
    took = await grading.run_until("bob", {Quality.UNSTABLE, Quality.POOR}, timeout=10.0)
    await grading.run(2.0)  # more reports, for the loss figure below

    grader = grading.board.get("bob")
    assert grader is not None and grader.levels()["loss"] is not Quality.GOOD
    # What Bob's receiver reports said, RTX repairs of video included (~12 % seen).
    assert grading.downlink_loss("bob", lossy_from) > 0.05
    assert took < 10.0
    assert call.bob.relays[0].dropped["down"] > 0
    # No false alarm: Alice's link never left good, and her samples say why.
    assert grading.changes["alice"] == [] and grading.board.grade("alice") is Quality.GOOD
    assert any(s.uplink_loss == 0.0 and s.uplink_packets > 0 for s in grading.links["alice"])


@pytest.mark.slow
async def test_the_room_is_told_when_a_peer_turns_poor_and_the_gauge_counts_it(
    make_server: ServerFactory,  # noqa: F811
) -> None:
    server = await make_server(quality_interval=0.5, quality_recovery_hold=2.0)
    url = f"ws://127.0.0.1:{server.port}"
    bob = RelayedBot(url, ROOM, "bob", video=False)
    alice = Bot(url, ROOM, "alice", video=True, audio=True)
    try:
        await bob.join()
        await alice.join()
        assert await bob.wait_for_frames(10, timeout=20)
        assert alice.client is not None and server.quality is not None
        await asyncio.sleep(2.0)
        assert server.quality.counts_by_grade()[Quality.GOOD] == 2  # no false alarm

        bob.set_loss(LOSS)

        while True:
            _, data = await alice.client.next_notification("peerQuality", timeout=10)
            assert data["peerId"] == "bob", "alice's clean link was graded down"
            if data["quality"] in ("unstable", "poor"):
                break
        assert "loss" in data["reasons"]
        counts = server.quality.counts_by_grade()
        assert (
            counts[Quality.GOOD] == 1
            and counts[Quality.GOOD]
            + sum(n for grade, n in counts.items() if grade is not Quality.GOOD)
            == 2
        )
        room = server.rooms[ROOM]
        assert room.peers["bob"].quality == data["quality"]
    finally:
        await alice.close()
        await bob.close()
        for relay in bob.relays:
            relay.close()
