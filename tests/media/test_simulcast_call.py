"""A simulcast webcam through the SFU to a real receiver, over ICE, DTLS-SRTP and VP8.

The sender is a ``RawClient`` sending three real VP8 encodings (160x120,
320x240, 640x480) as mediasoup-client's simulcast does (RIDs, RTX announced
by repaired-RID, sender reports, key frames on PLI); the receiver is
pymediasoup on aiortc, which decodes what it gets.  The decoded resolution
tells which encoding the consumer forwards.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamTrack

from media import Router

from .clients import Client, RawClient, join
from .webcam import Encoding, SimulcastWebcam

SIZES = [(160, 120), (320, 240), (640, 480)]


async def decoded_width(track: MediaStreamTrack, width: int, timeout: float) -> float:
    """Seconds until a frame ``width`` wide is decoded (fails after ``timeout``)."""
    started = time.monotonic()
    seen: list[Any] = []

    async def watch() -> None:
        while True:
            frame = await track.recv()
            seen.append(frame.width)
            if frame.width == width:
                return

    try:
        await asyncio.wait_for(watch(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {width}-wide frame in {timeout} s; saw {seen[-5:]}") from None
    return time.monotonic() - started


# The webcam's Python encoders can stall for more than the production 0.5 s
# on a loaded 2-core machine, which is a real (but here unwanted) fallback.
@pytest.mark.worker_settings(stream_inactivity_timeout=1.5)
async def test_a_receiver_decodes_the_encoding_it_prefers_and_falls_back_when_one_stops(
    router: Router, clients: list[Client]
) -> None:
    transport = await router.create_webrtc_transport()
    sender = RawClient()
    await sender.connect(transport)
    encodings = [
        Encoding(rid=f"r{i}", width=w, height=h, bitrate=(100_000, 300_000, 800_000)[i])
        for i, (w, h) in enumerate(SIZES)
    ]
    webcam = SimulcastWebcam(sender, encodings)
    producer = await transport.produce(kind="video", rtp_parameters=webcam.rtp_parameters())
    try:
        webcam.start()
        bob = await join(router, clients, send=False, recv=True)
        bob_video, consumer = await bob.consume(producer)
        assert consumer.type == "simulcast"
        layers: list[Any] = []
        consumer.on("layerschange", layers.append)

        await decoded_width(bob_video.track, 640, timeout=10)
        assert consumer.current_layers == {"spatialLayer": 2, "temporalLayer": 2}
        # Each encoding's RTX stream was told apart by its repaired-RID.
        assert [s.rtx_ssrc for s in producer.streams] == [e.rtx_ssrc for e in encodings]
        assert [s.ssrc for s in producer.streams] == [e.ssrc for e in encodings]

        await consumer.set_preferred_layers({"spatialLayer": 0})
        await decoded_width(bob_video.track, 160, timeout=5)
        await consumer.set_preferred_layers({"spatialLayer": 2})
        await decoded_width(bob_video.track, 640, timeout=5)

        # r2 stops, as Chrome stops its top layer when its estimate drops.
        encodings[2].sending = False
        fell_back = await decoded_width(bob_video.track, 320, timeout=5)
        assert fell_back < 4, fell_back  # the inactivity timeout, then r1's key frame
        encodings[2].sending = True
        await decoded_width(bob_video.track, 640, timeout=5)

        spatial = [entry["spatialLayer"] for entry in layers if entry]
        # 2, 0 (preferred), back up to 2, down to 1 when r2 stops, 2 again.
        assert spatial == [2, 0, 2, 1, 2], spatial
        assert producer.streams[2].sr_ntp is not None  # sender reports reached r2's stream
        stats = await bob.client_recv.handler.pc.getStats()  # type: ignore[union-attr]
        inbound = next(s for s in stats.values() if s.type == "inbound-rtp")
        assert inbound.packetsLost == 0  # no gap across four switches
    finally:
        await webcam.stop()
        await sender.close()
