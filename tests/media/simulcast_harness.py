"""A simulcast producer and its consumers on fake transports, driven packet by packet.

No sockets, no event loop, no sleeping: the test sends each packet of each
encoding itself, moves a fake clock and calls the producer's health tick.
The consumer side records the bytes it would have encrypted and sent.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

from media.producer import Producer
from media.rtp_packet import RTCP_PSFB, header_length, iter_rtcp, payload_end
from media.rtp_parameters import (
    DEFAULT_MEDIA_CODECS,
    MID_URI,
    RID_URI,
    RRID_URI,
    generate_router_rtp_capabilities,
    get_consumable_rtp_parameters,
    get_consumer_rtp_parameters,
    get_producer_mapping,
    validate_producer_rtp_parameters,
)
from media.simulcast_consumer import SimulcastConsumer

from .vp8_packets import parse_vp8_fields, rtp, vp8_payload

VP8_PT = 96
RTX_PT = 97
H264_PT = 102
CONSUMER_SSRC = 5555
CONSUMER_RTX_SSRC = 6666
L1T3 = [0, 2, 1, 2]
CLOCK_RATE = 90000
FRAME_TICKS = 3000  # 30 fps


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ProducerSide:
    """What a producer reads of its transport; records the RTCP it sends upstream."""

    id = "send-transport"
    rtcp_ssrc = 1

    def __init__(self) -> None:
        self.last_activity = 0.0
        self.rtcp: list[bytes] = []

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def producer_closed(self, producer: Any) -> None:
        pass

    def key_frame_requests(self) -> list[int]:
        """Media SSRCs of the PLIs and FIRs sent so far (and forget them)."""
        ssrcs = []
        for packet in self.rtcp:
            for pt, fmt, body in iter_rtcp(packet):
                if pt == RTCP_PSFB and fmt == 1:
                    ssrcs.append(struct.unpack_from("!I", body, 8)[0])
                elif pt == RTCP_PSFB and fmt == 4:
                    ssrcs.append(struct.unpack_from("!I", body, 12)[0])
        self.rtcp.clear()
        return ssrcs


@dataclass
class Sent:
    """One packet as the receiver would get it."""

    seq: int
    timestamp: int
    ssrc: int
    marker: bool
    data: bytes

    @property
    def vp8(self) -> tuple[int, int, int]:
        return parse_vp8_fields(self.data)

    @property
    def payload(self) -> bytes:
        return self.data[header_length(self.data) : payload_end(self.data)]


class ConsumerSide:
    """What a consumer writes to its transport."""

    id = "recv-transport"

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes | bytearray, seq: int = -1, ssrc: int = 0) -> None:
        data = bytearray(packet)
        if seq >= 0:  # as SrtpSession.protect writes them
            struct.pack_into("!H", data, 2, seq)
            struct.pack_into("!I", data, 8, ssrc)
        _, second, seq_out, timestamp, ssrc_out = struct.unpack_from("!BBHII", data)
        self.sent.append(Sent(seq_out, timestamp, ssrc_out, bool(second & 0x80), bytes(data)))

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def consumer_closed(self, consumer: Any) -> None:
        pass

    def take(self) -> list[Sent]:
        sent, self.sent = self.sent, []
        return sent


@dataclass
class Layer:
    """One encoding's sender state: numbering as a real encoder would advance it."""

    ssrc: int
    seq: int = field(default_factory=lambda: random.randrange(0x10000))
    timestamp: int = field(default_factory=lambda: random.randrange(1 << 32))
    picture: int = field(default_factory=lambda: random.randrange(0x8000))
    tl0: int = field(default_factory=lambda: random.randrange(0x100))
    frame: int = 0
    rtx_seq: int = field(default_factory=lambda: random.randrange(0x10000))


class Simulcast:
    """A three-encoding (by default) VP8 producer with SSRCs signalled up front."""

    def __init__(
        self,
        *,
        layers: int = 3,
        scalability_mode: str | None = "L1T3",
        codec: str = "VP8",
        inactivity_timeout: float = 1.0,
        stop_timeout: float = 0.0,
    ) -> None:
        self.clock = Clock()
        self.send_side = ProducerSide()
        self.caps = generate_router_rtp_capabilities(DEFAULT_MEDIA_CODECS)
        self.codec = codec
        self.layers = [Layer(ssrc=1001 + i) for i in range(layers)]
        pt = VP8_PT if codec == "VP8" else H264_PT
        media: dict[str, Any] = {
            "mimeType": f"video/{codec}",
            "payloadType": pt,
            "clockRate": CLOCK_RATE,
            "parameters": (
                {} if codec == "VP8" else {"packetization-mode": 1, "profile-level-id": "42e01f"}
            ),
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
            ],
        }
        encodings = []
        for i, layer in enumerate(self.layers):
            encoding: dict[str, Any] = {
                "ssrc": layer.ssrc,
                "rtx": {"ssrc": layer.ssrc + 100},
                "rid": f"r{i}",
                "maxBitrate": 100_000 * 4**i,
            }
            if scalability_mode:
                encoding["scalabilityMode"] = scalability_mode
            encodings.append(encoding)
        params = validate_producer_rtp_parameters(
            "video",
            {
                "mid": "0",
                "codecs": [
                    media,
                    {
                        "mimeType": "video/rtx",
                        "payloadType": RTX_PT,
                        "clockRate": CLOCK_RATE,
                        "parameters": {"apt": pt},
                    },
                ],
                "headerExtensions": [
                    {"uri": MID_URI, "id": 1},
                    {"uri": RID_URI, "id": 2},
                    {"uri": RRID_URI, "id": 3},
                ],
                "encodings": encodings,
                "rtcp": {"cname": "harness"},
            },
        )
        mapping = get_producer_mapping("video", params, self.caps)
        self.producer = Producer(
            transport=self.send_side,  # type: ignore[arg-type]
            kind="video",
            rtp_parameters=params,
            mapping=mapping,
            consumable_rtp_parameters=get_consumable_rtp_parameters(
                "video", params, self.caps, mapping
            ),
            paused=False,
            key_frame_request_interval=0.0,
            app_data=None,
            inactivity_timeout=inactivity_timeout,
            stop_timeout=stop_timeout,
            clock=self.clock,
        )
        self.pt = pt

    def consumer(
        self, *, preferred_layers: Any = None, paused: bool = False
    ) -> tuple[SimulcastConsumer, ConsumerSide]:
        side = ConsumerSide()
        caps = {
            "codecs": [c for c in self.caps["codecs"] if c["kind"] == "video"],
            "headerExtensions": [],
        }
        rtp_parameters = get_consumer_rtp_parameters(
            self.producer.consumable_rtp_parameters,
            caps,
            ssrc=CONSUMER_SSRC,
            rtx_ssrc=CONSUMER_RTX_SSRC,
        )
        consumer = SimulcastConsumer(
            transport=side,  # type: ignore[arg-type]
            producer=self.producer,
            rtp_parameters=rtp_parameters,
            paused=paused,
            app_data=None,
            preferred_layers=preferred_layers,
        )
        self.producer.add_consumer(consumer)
        return consumer, side

    # -- sending ---------------------------------------------------------------------------

    def packet(
        self,
        index: int,
        *,
        key: bool = False,
        tid: int | None = None,
        start: bool = True,
        marker: bool = True,
        size: int = 100,
        padding: int = 0,
        new_frame: bool = True,
    ) -> bytearray:
        """The next packet of encoding ``index`` (one packet per frame by default)."""
        layer = self.layers[index]
        if new_frame and layer.frame:
            layer.timestamp = (layer.timestamp + FRAME_TICKS) & 0xFFFFFFFF
            layer.picture = (layer.picture + 1) & 0x7FFF
        if tid is None:
            tid = 0 if key else L1T3[layer.frame % 4]
        if new_frame and tid == 0 and layer.frame:
            layer.tl0 = (layer.tl0 + 1) & 0xFF
        if new_frame:
            layer.frame += 1
        if self.codec == "VP8":
            payload = vp8_payload(
                key=key, start=start, size=size, picture_id=layer.picture, tl0=layer.tl0, tid=tid
            )
        else:
            payload = (bytes([0x67]) if key else bytes([0x41])) + bytes(size - 1)
        layer.seq = (layer.seq + 1) & 0xFFFF
        return rtp(
            ssrc=layer.ssrc,
            seq=layer.seq,
            timestamp=layer.timestamp,
            payload=payload if not padding else b"",
            pt=self.pt,
            marker=marker,
            padding=padding,
        )

    def receive(self, index: int, packet: bytearray) -> None:
        self.send_side.last_activity = self.clock.now
        self.producer.streams[index].receive_rtp(packet)

    def retransmit(self, index: int, original: bytearray) -> None:
        """An RTX copy (RFC 4588) of ``original``, a packet of encoding ``index``."""
        layer = self.layers[index]
        layer.rtx_seq = (layer.rtx_seq + 1) & 0xFFFF
        start = header_length(original)
        self.send_side.last_activity = self.clock.now
        self.producer.streams[index].receive_rtx(
            rtp(
                ssrc=layer.ssrc + 100,
                seq=layer.rtx_seq,
                timestamp=struct.unpack_from("!I", original, 4)[0],
                payload=bytes(original[2:4]) + bytes(original[start:]),
                pt=RTX_PT,
                marker=bool(original[1] & 0x80),
            )
        )

    def send(self, index: int, **kwargs: Any) -> bytearray:
        packet = self.packet(index, **kwargs)
        self.receive(index, packet)
        return packet

    def send_all(self, frames: int = 1, *, key: bool = False, dt: float = 1 / 30) -> None:
        """``frames`` frames of every encoding, ``dt`` apart (a key frame first if asked)."""
        for i in range(frames):
            for index in range(len(self.layers)):
                self.send(index, key=key and i == 0)
            self.clock.now += dt

    def tick(self, seconds: float = 0.25) -> None:
        self.clock.now += seconds
        self.producer.tick(self.clock.now)

    def sender_report(self, index: int, ntp_seconds: float, rtp_timestamp: int) -> bytes:
        ntp = int(ntp_seconds * (1 << 32))
        return self.producer.receive_sender_report(
            ntp, rtp_timestamp, self.clock.now, self.producer.streams[index]
        )

    def run(
        self,
        seconds: float,
        *,
        layers: tuple[int, ...] = (0, 1, 2),
        sizes: tuple[int, ...] = (100, 300, 2400),
        fps: int = 30,
        tick: float = 0.25,
    ) -> None:
        """Send ``fps`` frames a second of ``layers`` for ``seconds``, ticking every ``tick`` s."""
        next_tick = self.clock.now + tick
        for _ in range(round(seconds * fps)):
            for index in layers:
                self.send(index, size=sizes[index])
            self.clock.now += 1 / fps
            if self.clock.now >= next_tick:
                self.producer.tick(self.clock.now)
                next_tick += tick
