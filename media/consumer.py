"""Consumer: one producer's stream, rewritten for one receiving transport.

Each consumer has its own SSRC (and RTX SSRC), as in mediasoup, so a receiver
never sees two streams with one SSRC.  Sequence numbers keep the producer's
numbering plus an offset that is re-anchored whenever forwarding restarts
after a pause, so the receiver sees no gap it would try to repair.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .errors import InvalidStateError
from .events import EventEmitter
from .link import StreamCounters
from .rtp_parameters import Json

if TYPE_CHECKING:
    from .producer import Producer
    from .webrtc_transport import WebRtcTransport


class Consumer(EventEmitter):
    """mediasoup ``Consumer``: events ``transportclose``, ``producerclose``,
    ``producerpause``, ``producerresume``; observer ``close``, ``pause``,
    ``resume``."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        producer: Producer,
        rtp_parameters: Json,
        paused: bool,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.producer_id = producer.id
        self.kind = producer.kind
        self.type = "simple"
        self.rtp_parameters = rtp_parameters
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.paused = paused
        self.producer_paused_state = producer.paused
        self._transport = transport
        self._producer = producer
        encoding = rtp_parameters["encodings"][0]
        self.ssrc: int = encoding["ssrc"]
        self.rtx_ssrc: int | None = (encoding.get("rtx") or {}).get("ssrc")
        codecs = rtp_parameters["codecs"]
        self.rtx_payload_type: int | None = codecs[1]["payloadType"] if len(codecs) > 1 else None
        self._forwarding = not paused and not producer.paused
        self._seq_offset = 0
        self._resync = False
        self._last_seq = -1
        self._rtx_seq = 0
        self.packet_count = 0
        self.byte_count = 0
        self.retransmitted_count = 0
        # From the client's latest receiver report about this stream.
        self.packets_lost = 0
        self.fraction_lost = 0
        self.highest_seq_reported = 0
        self.jitter = 0
        self.reports_received = 0
        self.clock_rate: int = codecs[0]["clockRate"]
        self.round_trip_time: float | None = None
        self._sr_sent: dict[int, float] = {}
        self.score = 10

    def __repr__(self) -> str:
        return f"<Consumer {self.id} of {self.producer_id}{' closed' if self.closed else ''}>"

    @property
    def transport_id(self) -> str:
        return self._transport.id

    @property
    def producer(self) -> Producer:
        return self._producer

    # -- forwarding -------------------------------------------------------------

    def send_rtp(self, packet: bytearray, seq: int) -> None:
        if not self._forwarding:
            return
        if self._resync:
            # Continue right after the last packet the receiver saw.
            self._seq_offset = (self._last_seq + 1 - seq) & 0xFFFF
            self._resync = False
        out_seq = (seq + self._seq_offset) & 0xFFFF
        self._last_seq = out_seq
        self.packet_count += 1
        self.byte_count += len(packet)
        # The SSRC and sequence number are written into the encryption buffer:
        # the cached packet stays the producer's.
        self._transport.send_rtp(packet, out_seq, self.ssrc)

    def send_sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        if not self._forwarding or self.packet_count == 0:
            return
        self._transport.send_rtcp(
            rtp_packet.build_sender_report(
                self.ssrc, ntp, rtp_timestamp, self.packet_count, self.byte_count
            )
        )
        if len(self._sr_sent) > 8:
            self._sr_sent.clear()
        self._sr_sent[(ntp >> 16) & 0xFFFFFFFF] = time.monotonic()

    def receive_nack(self, seqs: list[int]) -> None:
        """Retransmit what the cache holds (RFC 4588 RTX); relay the rest."""
        producer = self._producer
        missing: list[int] = []
        for seq in seqs:
            producer_seq = (seq - self._seq_offset) & 0xFFFF
            cached = producer.cached_packet(producer_seq)
            if cached is None:
                missing.append(producer_seq)
            else:
                self._retransmit(cached, seq)
        if missing:
            producer.request_retransmission(missing)

    def _retransmit(self, cached: bytearray, seq: int) -> None:
        self.retransmitted_count += 1
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            self._transport.send_rtp(cached, seq, self.ssrc)
            return
        start = rtp_packet.header_length(cached)
        if start < 0:
            return
        out = bytearray(cached[:start])
        out[0] &= 0xDF
        out[1] = (out[1] & 0x80) | self.rtx_payload_type
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        rtp_packet.set_seq_and_ssrc(out, self._rtx_seq, self.rtx_ssrc)
        out += seq.to_bytes(2, "big")
        out += cached[start : rtp_packet.payload_end(cached)]
        self._transport.send_rtp(out)

    def receive_key_frame_request(self) -> None:
        if self._forwarding:
            self._producer.request_key_frame()

    def receive_report(self, block: rtp_packet.ReportBlock) -> None:
        """The client's reception report about this stream (RFC 3550 section 6.4.1)."""
        self.fraction_lost = block.fraction_lost
        self.packets_lost = block.cumulative_lost
        self.highest_seq_reported = block.highest_seq
        self.jitter = block.jitter
        self.reports_received += 1
        # The round trip needs our SR the report refers to (LSR) and how long
        # the client held it (DLSR, in 1/65536 s).
        sent = self._sr_sent.get(block.lsr)
        if sent is not None:
            self.round_trip_time = max(0.0, time.monotonic() - sent - block.dlsr / 65536)

    def report_counters(self) -> StreamCounters | None:
        """The latest receiver report as cumulative counters (None before the first).

        A reader diffs two of these (``media.link.LinkMonitor``) for the loss
        between them; jitter is converted from timestamp units with the
        codec's clock rate.
        """
        if self.reports_received == 0:
            return None
        rtt = self.round_trip_time
        return StreamCounters(
            kind=self.kind,
            expected=self.highest_seq_reported,
            lost=self.packets_lost,
            jitter_ms=self.jitter * 1000 / self.clock_rate,
            rtt_ms=None if rtt is None else rtt * 1000,
            reports=self.reports_received,
        )

    # -- control ------------------------------------------------------------------

    def _update_forwarding(self) -> None:
        forwarding = not self.paused and not self.producer_paused_state and not self.closed
        if forwarding and not self._forwarding:
            self._resync = self._last_seq >= 0
            self._forwarding = True
            self._producer.request_key_frame()
        elif not forwarding:
            self._forwarding = False

    async def pause(self) -> None:
        self._check_open()
        if self.paused:
            return
        self.paused = True
        self._update_forwarding()
        self.observer.emit("pause")

    async def resume(self) -> None:
        """Resume; a video consumer asks its producer for a key frame."""
        self._check_open()
        if not self.paused:
            return
        self.paused = False
        self._update_forwarding()
        self.observer.emit("resume")

    async def request_key_frame(self) -> None:
        self._check_open()
        self._producer.request_key_frame()

    def producer_paused(self) -> None:
        if self.closed or self.producer_paused_state:
            return
        self.producer_paused_state = True
        self._update_forwarding()
        self.emit("producerpause")

    def producer_resumed(self) -> None:
        if self.closed or not self.producer_paused_state:
            return
        self.producer_paused_state = False
        self._update_forwarding()
        self.emit("producerresume")

    async def get_stats(self) -> list[Json]:
        self._check_open()
        return [
            {
                "type": "outbound-rtp",
                "timestamp": time.time() * 1000,
                "kind": self.kind,
                "mimeType": self.rtp_parameters["codecs"][0]["mimeType"],
                "ssrc": self.ssrc,
                "rtxSsrc": self.rtx_ssrc,
                "packetCount": self.packet_count,
                "byteCount": self.byte_count,
                "packetsRetransmitted": self.retransmitted_count,
                "packetsLost": self.packets_lost,
                "fractionLost": self.fraction_lost,
                "jitter": self.jitter,
                "highestSeqReported": self.highest_seq_reported,
                "reportsReceived": self.reports_received,
                "roundTripTime": self.round_trip_time,
                "score": self.score,
            },
            *await self._producer.get_stats(),
        ]

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidStateError(f"consumer {self.id} is closed")

    # -- close --------------------------------------------------------------------

    def close(self) -> None:
        """Close it (app-initiated)."""
        if self.closed:
            return
        self._close()
        self._producer.remove_consumer(self)
        self._transport.consumer_closed(self)
        self.release_listeners()

    def producer_closed(self) -> None:
        """Its producer closed: emit ``producerclose`` (mediasoup behaviour)."""
        if self.closed:
            return
        self._close()
        self._transport.consumer_closed(self)
        self.emit("producerclose")
        self.release_listeners()

    def transport_closed(self) -> None:
        """Its transport closed: emit ``transportclose``."""
        if self.closed:
            return
        self._close()
        self._producer.remove_consumer(self)
        self.emit("transportclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        self._forwarding = False
        self.observer.emit("close")
