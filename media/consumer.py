"""Consumer: one producer's stream, rewritten for one receiving transport.

Each consumer has its own SSRC (and RTX SSRC), as in mediasoup, so a receiver
never sees two streams with one SSRC.  This module's ``Consumer`` is
mediasoup's ``SimpleConsumer`` (a single-encoding producer): sequence numbers
keep the producer's numbering plus an offset that is re-anchored whenever
forwarding restarts after a pause, so the receiver sees no gap it would try
to repair.  ``media.simulcast_consumer.SimulcastConsumer`` extends it for
producers with several encodings.

Both expose the same control surface: pause/resume, ``request_key_frame``,
``preferred_layers`` / ``current_layers`` / ``target_layers`` (None for a
simple consumer), ``priority``, ``desired_bitrate`` (what it would forward
with no limit) and ``available_bitrate`` (set by a bandwidth estimator).
"""

from __future__ import annotations

import struct
import time
import uuid
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .errors import InvalidParametersError, InvalidStateError
from .events import EventEmitter
from .link import StreamCounters, upstream_gaps
from .rtp_parameters import Json
from .rtp_stream import RecvStream, ScoreHistory, send_time_element, stamp_send_time

if TYPE_CHECKING:
    from .producer import Producer
    from .webrtc_transport import WebRtcTransport

DEFAULT_PRIORITY = 1
_PADDING_HEADER = struct.Struct("!BBHIIHHI")  # RTP header, one-byte block, abs-send-time


class Consumer(EventEmitter):
    """mediasoup ``Consumer``: events ``transportclose``, ``producerclose``,
    ``producerpause``, ``producerresume``, ``score`` (``{score, producerScore,
    producerScores}``), ``layerschange`` (simulcast only); observer ``close``,
    ``pause``, ``resume``."""

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
        self._stream = producer.streams[0]
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
        self.upstream_jitter = 0.0  # the forwarded stream's jitter at us when it came
        self.reports_received = 0
        self.sent_at_report = 0  # our packet_count when the latest report came
        self.clock_rate: int = codecs[0]["clockRate"]
        self.round_trip_time: float | None = None
        self._sr_sent: dict[int, float] = {}
        self._scores = ScoreHistory(10)
        self._last_score: Json | None = None
        self.priority = DEFAULT_PRIORITY
        self._available_bitrate: int | None = None

    def __repr__(self) -> str:
        return f"<Consumer {self.id} of {self.producer_id}{' closed' if self.closed else ''}>"

    @property
    def transport_id(self) -> str:
        return self._transport.id

    @property
    def producer(self) -> Producer:
        return self._producer

    # -- layers and bitrate (what signalling and the bandwidth estimator read) ------------

    @property
    def preferred_layers(self) -> Json | None:
        return None

    @property
    def current_layers(self) -> Json | None:
        return None

    @property
    def target_layers(self) -> Json | None:
        return None

    @property
    def desired_bitrate(self) -> int:
        """Bits/s this consumer would forward with no limit: the producer stream's peak
        over the last two seconds (0 while it forwards nothing)."""
        if not self._forwarding or not self._stream.active:
            return 0
        return self._stream.peak_bitrate_up_to(self._stream.temporal_layers - 1)

    @property
    def available_bitrate(self) -> int | None:
        """Bits/s a bandwidth estimator allows this consumer (None: no limit).

        A simple consumer cannot act on it; a simulcast one picks its layers
        by it at once (and again whenever its producer's bitrates are measured).
        """
        return self._available_bitrate

    @available_bitrate.setter
    def available_bitrate(self, bitrate: int | float | None) -> None:
        if bitrate is not None and not bitrate >= 0:
            raise ValueError("available_bitrate must be None or non-negative")
        self._available_bitrate = None if bitrate is None else int(bitrate)
        self._available_bitrate_changed()

    def _available_bitrate_changed(self) -> None:
        """A simulcast consumer re-chooses its layers."""

    async def set_preferred_layers(self, layers: Any) -> None:
        """mediasoup ``setPreferredLayers``: a simple consumer has one layer (checked, kept)."""
        self._check_open()
        parse_layers(layers, spatial_layers=1, temporal_layers=1)

    async def set_priority(self, priority: Any) -> None:
        """mediasoup ``setPriority`` (1..255): the bandwidth estimator's weight."""
        self._check_open()
        if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 255:
            raise InvalidParametersError("priority must be an integer 1..255")
        self.priority = priority
        self._demand_changed()

    async def unset_priority(self) -> None:
        self._check_open()
        self.priority = DEFAULT_PRIORITY
        self._demand_changed()

    def _demand_changed(self) -> None:
        """Ask the transport's bandwidth sharing to run now, not at its next round."""
        distribute = getattr(self._transport, "distribute_available_bitrate", None)
        if distribute is not None:
            distribute()

    # -- forwarding -------------------------------------------------------------

    def send_rtp(self, packet: bytearray, seq: int, stream: RecvStream | None = None) -> None:
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

    def send_sender_report(
        self, ntp: int, rtp_timestamp: int, stream: RecvStream | None = None
    ) -> None:
        """Relay the producer's NTP/RTP pair (a simple consumer keeps its timestamps)."""
        self._send_sender_report(ntp, rtp_timestamp)

    def _send_sender_report(self, ntp: int, rtp_timestamp: int) -> None:
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
        stream = self._stream
        missing: list[int] = []
        for seq in seqs:
            producer_seq = (seq - self._seq_offset) & 0xFFFF
            cached = stream.cached_packet(producer_seq)
            if cached is None:
                missing.append(producer_seq)
            else:
                self._retransmit(cached, seq)
        if missing:
            stream.request_retransmission(missing)

    def _retransmit(self, cached: bytearray, seq: int) -> None:
        self.retransmitted_count += 1
        if self.rtx_ssrc is None or self.rtx_payload_type is None:
            # Our abs-send-time, if the packet carries it, says when it leaves now.
            stamp_send_time(cached, time.monotonic())
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
        stamp_send_time(out, time.monotonic())
        self._transport.send_rtp(out)

    @property
    def can_pad(self) -> bool:
        """Whether ``padding_packet`` gives packets now: forwarding, with RTX."""
        return self._forwarding and self.rtx_ssrc is not None and self.rtx_payload_type is not None

    def padding_packet(self, size: int, now: float) -> bytearray | None:
        """A padding-only RTX packet of ``size`` padding bytes (1..255), carrying our
        abs-send-time for ``now``: what the bandwidth loop probes the client's
        downlink with (None without RTX: padding on the media stream would take
        sequence numbers the receiver expects media in)."""
        if self.rtx_ssrc is None or self.rtx_payload_type is None or not self._forwarding:
            return None
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        packet = bytearray(20 + size)
        _PADDING_HEADER.pack_into(
            packet,
            0,
            0xB0,  # V=2, P, X
            self.rtx_payload_type,
            self._rtx_seq,
            0,  # a padding packet's timestamp means nothing to the receiver
            self.rtx_ssrc,
            0xBEDE,
            1,
            send_time_element(now),
        )
        packet[-1] = size
        return packet

    def receive_key_frame_request(self) -> None:
        if self._forwarding:
            self._producer.request_key_frame()

    def receive_report(self, block: rtp_packet.ReportBlock) -> None:
        """The client's reception report about this stream (RFC 3550 section 6.4.1)."""
        expected = (block.highest_seq - self.highest_seq_reported) & 0xFFFFFFFF
        lost = block.cumulative_lost - self.packets_lost
        sent_since = self.packet_count - self.sent_at_report
        first = self.reports_received == 0
        # The client counts as lost every number it did not get, also those we
        # never sent because they were lost before us (the sender's uplink):
        # those are not this link's loss (mediasoup's RtpStreamSend scores on
        # what it sent, too).
        if 0 < expected < 0x80000000:
            gaps = upstream_gaps(expected, sent_since)
            expected, lost = expected - gaps, lost - gaps
        self.sent_at_report = self.packet_count
        self.fraction_lost = block.fraction_lost
        self.packets_lost = block.cumulative_lost
        self.highest_seq_reported = block.highest_seq
        self.jitter = block.jitter
        self.upstream_jitter = self._stream.jitter
        self.reports_received += 1
        # The round trip needs our SR the report refers to (LSR) and how long
        # the client held it (DLSR, in 1/65536 s).
        sent = self._sr_sent.get(block.lsr)
        if sent is not None:
            self.round_trip_time = max(0.0, time.monotonic() - sent - block.dlsr / 65536)
        # Our stream's score, as mediasoup's RtpStreamSend: what the client
        # received of what it expected between two reports, to the 4th power.
        if not first and 0 < expected < 0x80000000:
            delivered = max(0.0, min(1.0, (expected - max(0, lost)) / expected))
            if self._scores.add(round(delivered**4 * 10)):
                self._emit_score()

    def report_counters(self) -> StreamCounters | None:
        """The latest receiver report as cumulative counters (None before the first).

        A reader diffs two of these (``media.link.LinkMonitor``) for the loss
        between them.  Jitter is the client's less the jitter the stream
        already had when it reached us (read when the report came): an SFU
        forwards at once, so the sender's uplink jitter reaches the receiver
        unchanged, and like the sender's loss it is not this link's.  Delay
        variations add, so the client's jitter is at most the sum of both
        links' (RFC 3550 jitter is a mean absolute deviation): the difference
        is the least this link must have, a floor that never blames it for the
        sender's.  Converted from timestamp units with the codec's clock rate.
        """
        if self.reports_received == 0:
            return None
        rtt = self.round_trip_time
        return StreamCounters(
            kind=self.kind,
            expected=self.highest_seq_reported,
            lost=self.packets_lost,
            jitter_ms=max(0.0, self.jitter - self.upstream_jitter) * 1000 / self.clock_rate,
            rtt_ms=None if rtt is None else rtt * 1000,
            reports=self.reports_received,
            sent=self.sent_at_report,
        )

    # -- scores -------------------------------------------------------------------

    @property
    def score(self) -> Json:
        """mediasoup's ``ConsumerScore``: ours (from the client's reports), the
        producer stream we forward, and every producer stream's."""
        return {
            "score": self._scores.score,
            "producerScore": self._current_producer_score(),
            "producerScores": [s.score for s in self._producer.streams],
        }

    def _current_producer_score(self) -> int:
        return self._stream.score

    def producer_score_changed(self) -> None:
        self._emit_score()

    def _emit_score(self) -> None:
        score = self.score
        if score != self._last_score:
            self._last_score = score
            self.emit("score", score)

    def wants(self, stream: RecvStream) -> bool:
        """Whether ``stream``'s packets are to be handed to ``send_rtp`` (all of them
        here; a simulcast consumer takes one encoding at a time)."""
        return True

    def producer_tick(self, now: float | None, streams_changed: bool) -> None:
        """The producer judged its streams' health (``now``: None if a stream just woke)."""

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

    def _outbound_stats(self) -> Json:
        return {
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
            "score": self._scores.score,
        }

    async def get_stats(self) -> list[Json]:
        self._check_open()
        return [self._outbound_stats(), *await self._producer.get_stats()]

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


def parse_layers(layers: Any, *, spatial_layers: int, temporal_layers: int) -> tuple[int, int]:
    """mediasoup's ``ConsumerLayers`` ({spatialLayer, temporalLayer?}), clamped to
    what exists; an absent temporal layer means the highest."""
    if not isinstance(layers, dict):
        raise InvalidParametersError("layers must be an object")
    spatial = layers.get("spatialLayer")
    temporal = layers.get("temporalLayer")
    for name, value in (("spatialLayer", spatial), ("temporalLayer", temporal)):
        if value is None and name == "temporalLayer":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidParametersError(f"layers.{name} must be a non-negative integer")
    assert isinstance(spatial, int)
    spatial = min(spatial, spatial_layers - 1)
    temporal = temporal_layers - 1 if temporal is None else min(temporal, temporal_layers - 1)
    return spatial, temporal
