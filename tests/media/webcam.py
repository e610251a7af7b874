"""A browser-like simulcast webcam on a ``RawClient``: real VP8 at three sizes.

Each encoding is a real libvpx stream (aiortc's ``Vp8Encoder``, which also
packetizes with RFC 7741 descriptors) of its own resolution, sent as a
browser does with mediasoup-client's simulcast: its own SSRC, the MID and RID
header extensions, an RTX stream announced by repaired-RID only, and sender
reports mapping each stream's random timestamp base to one wall clock.
Key frames come when the server asks (a PLI for that encoding's SSRC), and
each encoding can be stopped and restarted, as Chrome does when its
bandwidth estimate drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from av import VideoFrame

from media.rtp_packet import build_sender_report

from .clients import RawClient
from .vp8_packets import one_byte_extension, rtp

MID_ID, RID_ID, RRID_ID = 1, 2, 3
VP8_PT, RTX_PT = 96, 97
CLOCK_RATE = 90000
NTP_EPOCH = 2208988800  # 1900 -> 1970


@dataclass
class Encoding:
    rid: str
    width: int
    height: int
    bitrate: int
    ssrc: int = field(default_factory=lambda: random.randint(1, 0xFFFFFFFF))
    rtx_ssrc: int = field(default_factory=lambda: random.randint(1, 0xFFFFFFFF))
    seq: int = field(default_factory=lambda: random.randrange(0x10000))
    rtx_seq: int = field(default_factory=lambda: random.randrange(0x10000))
    timestamp_base: int = field(default_factory=lambda: random.randrange(1 << 32))
    sending: bool = True
    key_frame_wanted: bool = True
    packets: int = 0
    octets: int = 0
    encoder: Vp8Encoder = field(default_factory=Vp8Encoder)

    def __post_init__(self) -> None:
        self.encoder.target_bitrate = self.bitrate


class _KeyFrameListener:
    """Registered in aiortc's RTP router as the sender of one SSRC: hears its PLIs."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI:
            self.encoding.key_frame_wanted = True


class SimulcastWebcam:
    """Sends ``encodings`` over ``client`` at ``fps`` until ``stop()``."""

    def __init__(self, client: RawClient, encodings: list[Encoding], fps: int = 15) -> None:
        self.client = client
        self.encodings = encodings
        self.fps = fps
        self._task: asyncio.Task[None] | None = None
        for encoding in encodings:
            client.dtls._rtp_router.register_sender(_KeyFrameListener(encoding), encoding.ssrc)

    @staticmethod
    def rtp_parameters() -> dict[str, Any]:
        """What mediasoup-client sends to ``produce`` for this webcam (no SSRCs: RIDs)."""
        return {
            "mid": "0",
            "codecs": [
                {
                    "mimeType": "video/VP8",
                    "payloadType": VP8_PT,
                    "clockRate": CLOCK_RATE,
                    "parameters": {},
                    "rtcpFeedback": [
                        {"type": "nack", "parameter": ""},
                        {"type": "nack", "parameter": "pli"},
                        {"type": "ccm", "parameter": "fir"},
                    ],
                },
                {
                    "mimeType": "video/rtx",
                    "payloadType": RTX_PT,
                    "clockRate": CLOCK_RATE,
                    "parameters": {"apt": VP8_PT},
                    "rtcpFeedback": [],
                },
            ],
            "headerExtensions": [
                {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": MID_ID},
                {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": RID_ID},
                {"uri": "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", "id": RRID_ID},
            ],
            "encodings": [
                {"rid": "r0", "scalabilityMode": "L1T3", "scaleResolutionDownBy": 4},
                {"rid": "r1", "scalabilityMode": "L1T3", "scaleResolutionDownBy": 2},
                {"rid": "r2", "scalabilityMode": "L1T3", "scaleResolutionDownBy": 1},
            ],
            "rtcp": {"cname": "webcam", "reducedSize": True},
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def announce_rtx(self) -> None:
        """A padding-only RTX packet per encoding (a bandwidth probe), named by repaired-RID."""
        for encoding in self.encodings:
            if not encoding.sending:
                continue
            encoding.rtx_seq = (encoding.rtx_seq + 1) & 0xFFFF
            extensions = one_byte_extension(MID_ID, b"0") + one_byte_extension(
                RRID_ID, encoding.rid.encode()
            )
            packet = rtp(
                ssrc=encoding.rtx_ssrc,
                seq=encoding.rtx_seq,
                timestamp=encoding.timestamp_base,
                pt=RTX_PT,
                payload=b"",
                extensions=extensions,
                padding=200,
            )
            await self.client.send_srtp(bytes(packet))

    async def _run(self) -> None:
        started = time.time()
        frame_index = 0
        next_report = started
        while True:
            now = time.time()
            elapsed = now - started
            ticks = round(elapsed * CLOCK_RATE)
            for encoding in self.encodings:
                if encoding.sending:
                    await self._send_frame(encoding, frame_index, ticks)
            if now >= next_report:
                next_report = now + 0.5
                for encoding in self.encodings:
                    if encoding.sending and encoding.packets:
                        await self._send_report(encoding, now, ticks)
                await self.announce_rtx()  # Chrome probes with RTX padding too
            frame_index += 1
            delay = started + frame_index / self.fps - time.time()
            await asyncio.sleep(max(0.0, delay))

    async def _send_frame(self, encoding: Encoding, index: int, ticks: int) -> None:
        image = VideoFrame(encoding.width, encoding.height, "yuv420p")
        for plane in image.planes:
            plane.update(bytes([(index * 7 + encoding.width) & 0xFF]) * plane.buffer_size)
        image.pts = ticks
        image.time_base = fractions.Fraction(1, CLOCK_RATE)
        force, encoding.key_frame_wanted = encoding.key_frame_wanted, False
        payloads, _ = encoding.encoder.encode(image, force_keyframe=force)
        timestamp = (encoding.timestamp_base + ticks) & 0xFFFFFFFF
        extensions = one_byte_extension(MID_ID, b"0") + one_byte_extension(
            RID_ID, encoding.rid.encode()
        )
        for i, payload in enumerate(payloads):
            encoding.seq = (encoding.seq + 1) & 0xFFFF
            packet = rtp(
                ssrc=encoding.ssrc,
                seq=encoding.seq,
                timestamp=timestamp,
                pt=VP8_PT,
                payload=payload,
                marker=i == len(payloads) - 1,
                extensions=extensions,
            )
            encoding.packets += 1
            encoding.octets += len(payload)
            await self.client.send_srtp(bytes(packet))

    async def _send_report(self, encoding: Encoding, now: float, ticks: int) -> None:
        ntp = int((now + NTP_EPOCH) * (1 << 32))
        report = build_sender_report(
            encoding.ssrc,
            ntp,
            (encoding.timestamp_base + ticks) & 0xFFFFFFFF,
            encoding.packets,
            encoding.octets,
        )
        await self.client.send_srtp(report)
