"""Fuzzing the live UDP ports of a call: the media plane never raises, and the call goes on.

A real call runs through the SFU (pymediasoup/aiortc clients: alice sends VP8, bob
decodes it), next to a ``RawClient`` transport whose SRTP keys the test holds.
Hypothesis draws a corpus of malformed datagrams -- STUN with attributes of the
wrong size, DTLS records that do not frame, SRTP/SRTCP garbage, RTP and RTCP with
inconsistent headers -- which is then fired for a few seconds:

- from a plain UDP socket, at every server port;
- from the clients' own ICE addresses (the selected tuple: the only source whose
  DTLS and SRTP the server reads at all);
- SRTP-protected with the raw client's keys, so the RTP and RTCP parsers behind
  decryption see them too.

While it runs, bob must keep decoding at least ~80 % of the frame rate measured
just before; nothing may reach asyncio's exception handler; every error counter
the attack can reach must move (and ``internal`` must not: that would be a bug);
afterwards every socket, file descriptor and task is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import struct
from collections.abc import Callable

import pytest
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import is_rtcp
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from media import Worker, WorkerSettings
from tests.media.clients import Client, RawClient
from tests.media.resources import ProcessResources
from tests.media.test_leaks import video_parameters

RAW_SSRC = 0x2222
RAW_RTX_SSRC = RAW_SSRC + 1
BASELINE = 2.0  # seconds of frame rate measured before the attack
ATTACK = 4.0  # seconds of attack
TICK = 0.01  # one burst every 10 ms
COOKIE = 0x2112A442

# -- the corpus ------------------------------------------------------------------------

STUN_ATTRIBUTES = [0x0001, 0x0006, 0x0008, 0x0009, 0x0020, 0x0024, 0x0025, 0x8028, 0x8029, 0x802A]


@st.composite
def stun_datagrams(draw: st.DrawFn) -> bytes:
    """A STUN header (so parsing goes past framing) and attributes of random sizes."""
    body = b""
    for _ in range(draw(st.integers(0, 5))):
        value = draw(st.binary(max_size=24))
        declared = max(0, len(value) + draw(st.integers(-3, 3)))
        attr_type = draw(st.sampled_from(STUN_ATTRIBUTES) | st.integers(0, 0xFFFF))
        body += struct.pack("!HH", attr_type, declared) + value + bytes(-len(value) % 4)
    method = draw(st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111]) | st.integers(0, 0x3FFF))
    length = len(body) + draw(st.sampled_from([0, 0, 0, -4, 4]))
    txid = draw(st.binary(min_size=12, max_size=12))
    return struct.pack("!HHI", method, max(0, length), COOKIE) + txid + body


@st.composite
def dtls_datagrams(draw: st.DrawFn) -> bytes:
    """DTLS-range datagrams: records with plausible or broken framing."""
    if draw(st.booleans()):
        return bytes([draw(st.integers(20, 63))]) + draw(st.binary(max_size=80))
    data = b""
    for _ in range(draw(st.integers(1, 3))):
        body = draw(st.binary(max_size=60))
        length = max(0, len(body) + draw(st.sampled_from([0, 0, -1, 1, 200])))
        data += (
            bytes([draw(st.integers(20, 26))])
            + draw(st.sampled_from([b"\xfe\xfd", b"\xfe\xff", b"\x03\x03"]))
            + draw(st.binary(min_size=8, max_size=8))
            + struct.pack("!H", length)
            + body
        )
    return data


@st.composite
def srtp_datagrams(draw: st.DrawFn) -> bytes:
    """SRTP/SRTCP-range garbage: fails authentication, or is too short to try."""
    first = draw(st.integers(128, 191))
    second = draw(st.sampled_from([96, 97, 200, 201, 205, 206]) | st.integers(0, 255))
    return bytes([first, second]) + draw(st.binary(max_size=120))


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    """RTP for the raw client's stream whose header does not necessarily hold together."""
    csrcs = draw(st.integers(0, 15))
    extension = draw(st.booleans())
    padding = draw(st.booleans())
    first = 0x80 | csrcs | (0x10 if extension else 0) | (0x20 if padding else 0)
    # Mostly the stream's own SSRCs and payload types, so the packets get past
    # the forwarding table to the producer (the sequence number is set when sent).
    pt = draw(st.sampled_from([97, 98]) | st.integers(0, 127))
    ssrc = draw(st.sampled_from([RAW_SSRC, RAW_RTX_SSRC]) | st.integers(0, 0xFFFFFFFF))
    header = struct.pack("!BBHII", first, pt, 0, draw(st.integers(0, 0xFFFFFFFF)), ssrc)
    header += draw(st.binary(min_size=4 * csrcs, max_size=4 * csrcs))
    if extension:
        profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1234]))
        words = draw(st.integers(0, 8))
        header += struct.pack("!HH", profile, words) + draw(
            st.binary(min_size=4 * words, max_size=4 * words)
        )
    payload = draw(st.binary(max_size=40))
    if padding:
        payload += bytes([draw(st.integers(0, 255))])
    return header + payload


@st.composite
def rtcp_packets(draw: st.DrawFn) -> bytes:
    """An RTCP compound whose packets may be truncated, overlong or of unknown types."""
    data = b""
    for _ in range(draw(st.integers(1, 3))):
        pt = draw(st.sampled_from([200, 201, 203, 205, 206]) | st.integers(192, 223))
        body = draw(st.binary(max_size=48))
        body += bytes(-len(body) % 4)
        words = len(body) // 4 + draw(st.sampled_from([0, 0, 0, -1, 1, 5]))
        version = draw(st.sampled_from([0x80, 0x80, 0x80, 0x40]))
        count = draw(st.integers(0, 31))
        data += struct.pack("!BBH", version | count, pt, max(0, words)) + body
    if len(data) < 8:
        data += bytes(8 - len(data))
    return data


def draw_corpus(strategy: st.SearchStrategy[bytes], size: int, random_seed: int) -> list[bytes]:
    """``size`` examples of ``strategy``, generated (not shrunk) by hypothesis."""
    corpus: list[bytes] = []

    @seed(random_seed)
    @settings(
        max_examples=size,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(datagram: bytes) -> None:
        corpus.append(datagram)

    collect()
    return corpus


# -- the call ---------------------------------------------------------------------------


class FrameClock:
    """Decodes a consumer track in the background, noting when each frame arrived."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.times: list[float] = []
        self._loop = asyncio.get_running_loop()
        self._track = track
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._track.recv()
            self.times.append(self._loop.time())

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.times if start <= t < end) / (end - start)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_fuzzing_the_media_ports_of_a_live_call_neither_raises_nor_stalls_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    random_seed = random.randrange(2**32)
    unauthenticated = (
        draw_corpus(stun_datagrams(), 150, random_seed)
        + draw_corpus(dtls_datagrams(), 150, random_seed)
        + draw_corpus(srtp_datagrams(), 100, random_seed)
        + [b"\x80", b"\x16", b"\x00\x01"]
    )
    authenticated = draw_corpus(rtp_packets(), 150, random_seed) + draw_corpus(
        rtcp_packets(), 100, random_seed
    )
    await asyncio.sleep(0.1)
    gc.collect()
    before = ProcessResources.now()

    worker = Worker(WorkerSettings(consent_timeout=10.0))
    router = await worker.create_router()
    alice, bob = Client(router), Client(router)
    raw = RawClient()
    frames: FrameClock | None = None
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for client in (alice, bob):
            await client.load()
        await alice.open_send_transport()
        await bob.open_recv_transport()
        _, video = await alice.produce(VideoStreamTrack())
        bob_video, _ = await bob.consume(video)
        raw_transport = await router.create_webrtc_transport()
        await raw_transport.produce(kind="video", rtp_parameters=video_parameters(RAW_SSRC))
        await asyncio.wait_for(raw.connect(raw_transport), 10)
        await wait_until(lambda: raw_transport.dtls_state == "connected")
        frames = FrameClock(bob_video.track)
        await wait_until(lambda: len(frames.times) >= 10, timeout=20)
        ports = [t.port for t in router.transports.values()]
        loop = asyncio.get_running_loop()

        baseline_start = loop.time()
        await asyncio.sleep(BASELINE)
        attack_start = loop.time()
        rng = random.Random(random_seed)
        sent = rtp_seq = 0
        while loop.time() < attack_start + ATTACK:
            for _ in range(25):
                attacker.sendto(rng.choice(unauthenticated), ("127.0.0.1", rng.choice(ports)))
            await alice.send_from(alice.client_send, rng.choice(unauthenticated))
            await bob.send_from(bob.client_recv, rng.choice(unauthenticated))
            await raw.send_datagram(rng.choice(unauthenticated))
            for _ in range(2):
                packet = bytearray(rng.choice(authenticated))
                if not is_rtcp(packet):
                    # A fresh sequence number, so SRTP's replay check lets it through.
                    rtp_seq += 1
                    packet[2:4] = (rtp_seq & 0xFFFF).to_bytes(2, "big")
                protected = raw.protect(bytes(packet))
                if protected is not None:
                    await raw.send_datagram(protected)
            sent += 30
            await asyncio.sleep(TICK)
        attack_end = loop.time()
        await asyncio.sleep(0.5)

        baseline = frames.rate(baseline_start, attack_start)
        during = frames.rate(attack_start, attack_end)
        note = f"seed {random_seed}: {baseline:.1f} fps before, {during:.1f} fps during"
        assert baseline > 5, note
        assert during >= 0.8 * baseline, note
        asyncio_errors = [r for r in caplog.records if r.name == "asyncio"]
        assert asyncio_errors == [], [r.getMessage() for r in asyncio_errors]
        errors = worker.datagram_errors
        for kind in ("stun", "dtls", "srtp", "rtp", "rtcp"):
            assert errors[kind] > 0, (kind, errors, note)
        assert errors["internal"] == 0, (errors, note)
        assert sum(errors.values()) > sent // 10, (errors, sent)
        assert all(not t.closed for t in router.transports.values()), note
        # One line per transport per interval, however many datagrams.
        lines = [r for r in caplog.records if r.name == "media.datagram_errors"]
        assert len(lines) <= 3 * len(ports), [r.getMessage() for r in lines]
    finally:
        attacker.close()
        if frames is not None:
            await frames.stop()
        await raw.close()
        await alice.close()
        await bob.close()
        worker.close()

    await asyncio.sleep(0.5)  # let closed sockets and cancelled tasks unwind
    gc.collect()
    after = ProcessResources.now()
    assert after.udp_sockets == before.udp_sockets
    assert after.file_descriptors == before.file_descriptors
    assert after.tasks == before.tasks
    assert worker.port_usage() == (0, 0)
