"""Producer: one media stream a client sends, fanned out to its consumers.

The forwarding path is the hot path of the whole SFU: ``receive_rtp`` is called
once per inbound RTP packet with the SRTP-decrypted bytes.  It maps the payload
type and header extension ids to the router's (in place, one copy), records
the sequence number for receiver reports, keeps the packet in a small
retransmission cache, and hands the same buffer to every consumer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .errors import InvalidStateError
from .events import EventEmitter
from .link import StreamCounters
from .rtp_parameters import Json, ProducerMapping

if TYPE_CHECKING:
    from .consumer import Consumer
    from .webrtc_transport import WebRtcTransport

# Packets kept for retransmission: ~1 s of 1 Mbit/s video, the window in which
# a NACK is still useful to a jitter buffer.
RTX_CACHE_SIZE = 512
_RTX_CACHE_MASK = RTX_CACHE_SIZE - 1


class Producer(EventEmitter):
    """mediasoup ``Producer``: events ``transportclose``; observer ``close``,
    ``pause``, ``resume``."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        kind: str,
        rtp_parameters: Json,
        forwarded_encoding: Json,
        mapping: ProducerMapping,
        consumable_rtp_parameters: Json,
        paused: bool,
        key_frame_request_interval: float,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.kind = kind
        self.type = "simple"
        self.rtp_parameters = rtp_parameters
        self.consumable_rtp_parameters = consumable_rtp_parameters
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.paused = paused
        self._transport = transport
        self._mapping = mapping
        self._consumers: dict[str, Consumer] = {}
        self._sinks: tuple[Consumer, ...] = ()
        self._cache: list[bytearray | None] = [None] * RTX_CACHE_SIZE
        self._key_frame_interval = key_frame_request_interval
        self._last_key_frame_request = -1e9
        self._pending_key_frame: asyncio.TimerHandle | None = None
        encoding = forwarded_encoding
        self.ssrc: int | None = encoding.get("ssrc")
        self.rtx_ssrc: int | None = (encoding.get("rtx") or {}).get("ssrc")
        self.rid: str | None = encoding.get("rid")
        self.mid: str | None = rtp_parameters.get("mid")
        self.nack_supported = any(
            fb.get("type") == "nack" and not fb.get("parameter")
            for codec in rtp_parameters["codecs"]
            for fb in codec.get("rtcpFeedback") or []
            if isinstance(fb, dict)
        )
        # Reception statistics for receiver reports (RFC 3550 appendix A.3).
        self.packet_count = 0
        self.byte_count = 0
        self._max_seq = -1
        self._cycles = 0
        self._base_seq = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._fraction_lost = 0
        self._last_sr_ntp_middle = 0
        self._last_sr_arrival = 0.0
        # Interarrival jitter (RFC 3550 appendix A.8), in timestamp units.
        self.jitter = 0.0
        self._transit = float("inf")
        self._clock_rate: int = next(
            c["clockRate"]
            for c in rtp_parameters["codecs"]
            if not str(c["mimeType"]).lower().endswith("/rtx")
        )
        self.score = 10

    def __repr__(self) -> str:
        return f"<Producer {self.id} {self.kind}{' closed' if self.closed else ''}>"

    @property
    def transport_id(self) -> str:
        return self._transport.id

    # -- forwarding -----------------------------------------------------------

    def receive_rtp(self, buf: bytearray) -> None:
        """One decrypted RTP packet of this producer's media stream (ours to keep)."""
        pt = self._mapping.payload_types.get(buf[1] & 0x7F)
        if pt is None:
            return
        first = buf[0]
        if first & 0x30:  # X or P: parts libsrtp does not validate for us
            if first & 0x20 and rtp_packet.payload_end(buf) < rtp_packet.header_length(buf):
                raise ValueError("RTP padding overruns the payload")
            # Raises ValueError when the extension block overruns the packet.
            rtp_packet.rewrite_extension_ids(buf, self._mapping.header_extension_ids)
        buf[1] = (buf[1] & 0x80) | pt
        seq = (buf[2] << 8) | buf[3]
        # Interarrival jitter, RFC 3550 section 6.4.1 and appendix A.8, in
        # timestamp units: arrival is when the transport read the datagram
        # (no clock call of our own).  The first packet (transit starts at
        # infinity) and a timestamp wrap give an absurd difference: skipped.
        transit = self._transport.last_activity * self._clock_rate - (
            (buf[4] << 24) | (buf[5] << 16) | (buf[6] << 8) | buf[7]
        )
        d = transit - self._transit
        self._transit = transit
        if d < 0:
            d = -d
        if d < 2147483648.0:
            self.jitter += (d - self.jitter) * 0.0625
        self._track(seq)
        self.packet_count += 1
        self.byte_count += len(buf)
        self._cache[seq & _RTX_CACHE_MASK] = buf
        if self.paused:
            return
        for consumer in self._sinks:
            consumer.send_rtp(buf, seq)

    def receive_rtx(self, packet: bytearray) -> None:
        """An RTX packet (RFC 4588): unwrap it into the packet it repairs.

        Raises ValueError when its padding overruns the payload (the transport
        counts it as a malformed RTP datagram).  A padding-only packet, which
        browsers send to probe bandwidth, is dropped quietly.
        """
        apt = self._mapping.rtx_payload_types.get(packet[1] & 0x7F)
        if apt is None:
            return
        start = rtp_packet.header_length(packet)
        end = rtp_packet.payload_end(packet)
        if start < 0 or end < start:
            raise ValueError("RTX padding overruns the payload")
        if end - start < 2:
            return  # padding only: nothing to repair
        osn = (packet[start] << 8) | packet[start + 1]
        cached = self._cache[osn & _RTX_CACHE_MASK]
        if cached is not None and rtp_packet.rtp_seq(cached) == osn:
            return  # already have it: a retransmission we did not need
        original = bytearray(packet[:start])
        original[0] &= 0xDF  # the padding, if any, belonged to the RTX packet
        original[1] = (original[1] & 0x80) | apt
        original[2:4] = packet[start : start + 2]
        original += packet[start + 2 : end]
        # A retransmission arrives late by design: it says nothing about the
        # path's jitter (RFC 4588 sends it as a stream of its own).
        transit, jitter = self._transit, self.jitter
        self.receive_rtp(original)
        self._transit, self.jitter = transit, jitter

    def _track(self, seq: int) -> None:
        if self._max_seq < 0:
            self._base_seq = self._max_seq = seq
            return
        if (seq - self._max_seq) & 0xFFFF < 0x8000:
            if seq < self._max_seq:
                self._cycles += 0x10000
            self._max_seq = seq

    def reception_counters(self) -> StreamCounters:
        """What has arrived of this stream so far, as cumulative counters.

        Expected is RFC 3550 appendix A.3's (extended highest - base + 1);
        lost counts retransmitted (RTX) packets as received, as receiver
        reports do.  A reader diffs two of these for an interval
        (``media.link.LinkMonitor``); nothing here is reset by reading.
        """
        expected = self._expected()
        return StreamCounters(
            kind=self.kind,
            expected=expected,
            lost=max(0, expected - self.packet_count),
            jitter_ms=self.jitter * 1000 / self._clock_rate if expected else None,
        )

    def _expected(self) -> int:
        if self._max_seq < 0:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    def cached_packet(self, seq: int) -> bytearray | None:
        packet = self._cache[seq & _RTX_CACHE_MASK]
        if packet is None or rtp_packet.rtp_seq(packet) != seq:
            return None
        return packet

    # -- RTCP -----------------------------------------------------------------

    def receive_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> bytes:
        """Relay the sender's clock mapping to consumers; return our report block.

        Consumers keep the producer's RTP timestamps, so the producer's own
        NTP/RTP pair is right for them too and browsers can lip-sync audio and
        video coming from the same sender (RFC 3550 section 6.4.1).
        """
        self._last_sr_ntp_middle = (ntp >> 16) & 0xFFFFFFFF
        self._last_sr_arrival = now
        for consumer in self._sinks:
            consumer.send_sender_report(ntp, rtp_timestamp)
        return self.report_block(now)

    def report_block(self, now: float) -> bytes:
        extended_max = self._cycles + max(self._max_seq, 0)
        expected = self._expected()
        lost = expected - self.packet_count
        expected_interval = expected - self._expected_prior
        received_interval = self.packet_count - self._received_prior
        self._expected_prior, self._received_prior = expected, self.packet_count
        lost_interval = expected_interval - received_interval
        if expected_interval > 0 and lost_interval > 0:
            self._fraction_lost = (lost_interval << 8) // expected_interval
        else:
            self._fraction_lost = 0
        dlsr = int((now - self._last_sr_arrival) * 65536) if self._last_sr_arrival else 0
        return rtp_packet.report_block(
            self.ssrc or 0,
            self._fraction_lost,
            lost,
            extended_max,
            int(self.jitter),
            self._last_sr_ntp_middle,
            dlsr,
        )

    def request_key_frame(self) -> None:
        """Ask the sender for a key frame (PLI, RFC 4585 section 6.3.1).

        Requests from many consumers collapse into one per interval; one that
        arrives inside the interval is sent when it ends rather than dropped,
        so a late joiner still gets its key frame promptly.
        """
        if self.closed or self.kind != "video" or self._pending_key_frame is not None:
            return
        now = time.monotonic()
        wait = self._last_key_frame_request + self._key_frame_interval - now
        if wait <= 0:
            self._send_pli()
        else:
            loop = asyncio.get_running_loop()
            self._pending_key_frame = loop.call_later(wait, self._send_pli)

    def _send_pli(self) -> None:
        self._pending_key_frame = None
        self._last_key_frame_request = time.monotonic()
        if self.ssrc is not None:
            self._transport.send_rtcp(rtp_packet.build_pli(self._transport.rtcp_ssrc, self.ssrc))

    def request_retransmission(self, seqs: list[int]) -> None:
        """Relay a consumer's NACK upstream for packets we never had."""
        if self.nack_supported and self.ssrc is not None and seqs:
            self._transport.send_rtcp(
                rtp_packet.build_nack(self._transport.rtcp_ssrc, self.ssrc, seqs)
            )

    # -- consumers --------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers[consumer.id] = consumer
        self._sinks = tuple(self._consumers.values())

    def remove_consumer(self, consumer: Consumer) -> None:
        if self._consumers.pop(consumer.id, None) is not None:
            self._sinks = tuple(self._consumers.values())

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    # -- control ----------------------------------------------------------------

    async def pause(self) -> None:
        self._check_open()
        if self.paused:
            return
        self.paused = True
        self.observer.emit("pause")
        for consumer in self._sinks:
            consumer.producer_paused()

    async def resume(self) -> None:
        self._check_open()
        if not self.paused:
            return
        self.paused = False
        self.observer.emit("resume")
        for consumer in self._sinks:
            consumer.producer_resumed()
        self.request_key_frame()

    async def get_stats(self) -> list[Json]:
        self._check_open()
        mime = self.rtp_parameters["codecs"][0]["mimeType"]
        return [
            {
                "type": "inbound-rtp",
                "timestamp": time.time() * 1000,
                "kind": self.kind,
                "mimeType": mime,
                "ssrc": self.ssrc,
                "rtxSsrc": self.rtx_ssrc,
                "packetCount": self.packet_count,
                "byteCount": self.byte_count,
                "packetsLost": max(0, self._expected() - self.packet_count),
                "fractionLost": self._fraction_lost,
                "jitter": int(self.jitter),
                "score": self.score,
            }
        ]

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidStateError(f"producer {self.id} is closed")

    # -- close ------------------------------------------------------------------

    def close(self) -> None:
        """Close it (app-initiated): its consumers get ``producerclose``."""
        if self.closed:
            return
        self._close()
        self._transport.producer_closed(self)
        self.release_listeners()

    def transport_closed(self) -> None:
        """Its transport closed: emit ``transportclose``."""
        if self.closed:
            return
        self._close()
        self.emit("transportclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        if self._pending_key_frame is not None:
            self._pending_key_frame.cancel()
            self._pending_key_frame = None
        consumers, self._consumers, self._sinks = self._consumers, {}, ()
        for consumer in list(consumers.values()):
            consumer.producer_closed()
        self._cache = []
        self.observer.emit("close")
