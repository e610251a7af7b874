"""Shared by the tests of single media objects (test_producer.py, test_consumer.py,
test_router.py, test_webrtc_transport.py).

The ``rtpParameters`` a client would send for a track, RTP and RTCP packets
built by hand, ``RawClients`` (real ICE and DTLS-SRTP clients, closed by the
``raw_clients`` fixture) and ``Received``, which records what such a client is
sent, decrypted: the server side under test is always the real object.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from media import WebRtcTransport
from media.rtp_packet import RTCP_BYE, RTCP_PSFB, RTCP_RTPFB, iter_rtcp, parse_nack

from .clients import RawClient

VP8_PT = 97
VP8_RTX_PT = 98
OPUS_PT = 111
MID_EXTENSION_ID = 1
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"

VIDEO_FEEDBACK = [
    {"type": "nack", "parameter": ""},
    {"type": "nack", "parameter": "pli"},
    {"type": "ccm", "parameter": "fir"},
]


def video_parameters(
    ssrc: int | None = 0x1111,
    *,
    mid: str = "0",
    feedback: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """What a client sends for a VP8 track: one encoding (with an RTX SSRC when
    ``ssrc`` is given; else the SSRCs are learned from the MID of the first packets)."""
    codecs: list[dict[str, Any]] = [
        {
            "mimeType": "video/VP8",
            "clockRate": 90000,
            "payloadType": VP8_PT,
            "parameters": {},
            "rtcpFeedback": [dict(fb) for fb in (VIDEO_FEEDBACK if feedback is None else feedback)],
        },
        {
            "mimeType": "video/rtx",
            "clockRate": 90000,
            "payloadType": VP8_RTX_PT,
            "parameters": {"apt": VP8_PT},
            "rtcpFeedback": [],
        },
    ]
    encoding: dict[str, Any] = {}
    if ssrc is not None:
        encoding = {"ssrc": ssrc, "rtx": {"ssrc": ssrc + 1}}
    return {
        "mid": mid,
        "codecs": codecs,
        "headerExtensions": [{"uri": MID_URI, "id": MID_EXTENSION_ID}],
        "encodings": [encoding],
        "rtcp": {"cname": "object-tests"},
    }


def audio_parameters(ssrc: int = 0x2222, *, mid: str = "1") -> dict[str, Any]:
    """What a client sends for an Opus track."""
    return {
        "mid": mid,
        "codecs": [
            {
                "mimeType": "audio/opus",
                "clockRate": 48000,
                "channels": 2,
                "payloadType": OPUS_PT,
                "parameters": {},
                "rtcpFeedback": [],
            }
        ],
        "headerExtensions": [{"uri": MID_URI, "id": MID_EXTENSION_ID}],
        "encodings": [{"ssrc": ssrc}],
        "rtcp": {"cname": "object-tests"},
    }


def simulcast_parameters(*, mid: str = "2") -> dict[str, Any]:
    """A VP8 webcam with three encodings told apart by SSRC."""
    params = video_parameters(None, mid=mid)
    params["encodings"] = [
        {"ssrc": 0x3000 + i, "rtx": {"ssrc": 0x3100 + i}, "scalabilityMode": "L1T3"}
        for i in range(3)
    ]
    return params


def rtp(ssrc: int, seq: int, *, pt: int = VP8_PT, size: int = 100) -> bytes:
    """An RTP packet with ``size`` bytes of payload that names its sequence number
    (the forwarder never decodes it, so it tells apart what was forwarded)."""
    header = struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 3000) & 0xFFFFFFFF, ssrc)
    return header + bytes([0x10]) + struct.pack("!H", seq & 0xFFFF) + bytes(size - 3)


def rtp_with_mid(ssrc: int, seq: int, mid: str, *, pt: int = VP8_PT) -> bytes:
    """An RTP packet naming its MID in an RFC 8285 one-byte header extension."""
    value = mid.encode()
    element = bytes([(MID_EXTENSION_ID << 4) | (len(value) - 1)]) + value
    element += bytes(-len(element) % 4)
    header = struct.pack("!BBHII", 0x90, pt, seq, seq * 3000, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(element) // 4) + element + bytes(100)


def bye(*ssrcs: int) -> bytes:
    """RTCP BYE (RFC 3550 section 6.6) for the given sources."""
    return struct.pack("!BBH", 0x80 | len(ssrcs), RTCP_BYE, len(ssrcs)) + b"".join(
        struct.pack("!I", ssrc) for ssrc in ssrcs
    )


def record(emitter: Any, *events: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Every emission of ``events`` on ``emitter``, in order, with its arguments."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    for event in events:
        emitter.on(event, lambda *args, event=event: seen.append((event, args)))
    return seen


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what or 'condition'}: not within {timeout} s"
        await asyncio.sleep(0.01)


class Received:
    """Everything a raw client is sent, decrypted, in arrival order."""

    def __init__(self, client: RawClient) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        dtls = client.dtls
        handle_rtp, handle_rtcp = dtls._handle_rtp_data, dtls._handle_rtcp_data

        async def record_rtp(data: bytes, arrival_time_ms: int) -> None:
            self.rtp.append(bytes(data))
            await handle_rtp(data, arrival_time_ms)

        async def record_rtcp(data: bytes) -> None:
            self.rtcp.extend(packet for _, _, packet in iter_rtcp(data))
            await handle_rtcp(data)

        dtls._handle_rtp_data = record_rtp  # type: ignore[method-assign]
        dtls._handle_rtcp_data = record_rtcp  # type: ignore[method-assign]

    def _feedback_about(self, pt: int, fmt: int) -> list[int]:
        """The media SSRC of each feedback packet of this type and FMT (FIR: the FCI's)."""
        ssrcs: list[int] = []
        for packet in self.rtcp:
            if packet[1] == pt and packet[0] & 0x1F == fmt:
                ssrcs.append(struct.unpack_from("!I", packet, 12 if fmt == 4 else 8)[0])
        return ssrcs

    def plis(self) -> list[int]:
        return self._feedback_about(RTCP_PSFB, 1)

    def firs(self) -> list[int]:
        return self._feedback_about(RTCP_PSFB, 4)

    def nacks(self) -> list[tuple[int, list[int]]]:
        return [
            parse_nack(packet)
            for packet in self.rtcp
            if packet[1] == RTCP_RTPFB and packet[0] & 0x1F == 1
        ]

    def rtp_of(self, ssrc: int) -> list[bytes]:
        return [packet for packet in self.rtp if struct.unpack_from("!I", packet, 8)[0] == ssrc]

    def seqs_of(self, ssrc: int) -> list[int]:
        return [struct.unpack_from("!H", packet, 2)[0] for packet in self.rtp_of(ssrc)]


class RawClients:
    """Raw clients (real ICE and DTLS-SRTP, no RTP stack) connected to server transports."""

    def __init__(self) -> None:
        self._clients: list[RawClient] = []

    async def connect(self, transport: WebRtcTransport) -> tuple[RawClient, Received]:
        """A client connected to ``transport`` (DTLS up on both sides), and what it is sent."""
        client = RawClient()
        self._clients.append(client)
        received = Received(client)
        await asyncio.wait_for(client.connect(transport), 10)
        await wait_until(lambda: transport.dtls_state == "connected", 10, "DTLS connected")
        return client, received

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
