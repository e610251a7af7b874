"""SimulcastConsumer: one of a producer's encodings at a time, as one stream.

A webcam sends three encodings (r0/r1/r2: quarter, half and full
resolution, each with up to three temporal layers).  A receiver gets exactly
one stream, with one SSRC (and one RTX SSRC), as from mediasoup's
``SimulcastConsumer``:

What is forwarded
    The *target* spatial layer is the highest encoding at or below the
    preferred one whose stream is active (packets in the last
    ``inactivity_timeout``); if none is, the lowest active one above it.
    ``available_bitrate`` (set by a bandwidth estimator) caps it further
    against the bitrate each layer measured over the last second, down to
    the base temporal layer of the lowest active encoding, which is always
    forwarded.  The target temporal layer is the preferred one on the
    preferred encoding, the highest below it, the lowest above it.

When it switches
    Only on a key frame of the target encoding: the consumer asks that
    stream for one (PLI, or FIR; again every second while it waits), drops
    the target's packets until it comes and keeps forwarding the current
    encoding meanwhile.  Temporal layers change at once going down, and
    going up at the next layer sync (VP8's Y bit) or key frame.

How continuity is kept
    Sequence numbers go through a ``SeqManager``: dropped packets (other
    temporal layers, padding) leave no gap, and a switch continues right
    after the last number sent (skipping one if the last frame sent was
    incomplete, so the receiver drops it rather than decoding garbage, as
    mediasoup does).  RTP timestamps of a new encoding are shifted into the
    current timeline with the two streams' sender report NTP/RTP pairs (the
    same capture instant keeps the same timestamp), or, before the sender
    has reported, by the time elapsed since the last packet sent; either way
    they only grow.  VP8 PictureID and TL0PICIDX are renumbered
    (``media.codecs.vp8.Vp8Rewriter``).  Our sender reports carry the
    current encoding's NTP/RTP pair in the same shifted timeline.

Each forwarded packet is a copy (its timestamp and payload differ from the
producer's), kept in a 512-packet ring by output sequence number: a NACK is
answered from it with RTX, and a number that is not there is mapped back
through the ``SeqManager`` to the current encoding and NACKed upstream.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .codecs.vp8 import Vp8Rewriter, write_descriptor
from .consumer import Consumer, parse_layers
from .rtp_parameters import Json, parse_scalability_mode
from .rtp_stream import RTX_CACHE_SIZE, RecvStream
from .seq_manager import SeqManager

if TYPE_CHECKING:
    from .producer import Producer
    from .webrtc_transport import WebRtcTransport

_HEADER_TAIL = struct.Struct("!HII")  # sequence number, timestamp, SSRC
_MASK32 = 0xFFFFFFFF
_HALF32 = 0x80000000
_RING_MASK = RTX_CACHE_SIZE - 1

DOWNGRADE_SLACK = 1.15
"""Under a bitrate cap, the layers forwarded now are kept until they measure this
much above it (key frames make the rate spiky); going up needs a fit under it."""
KEY_FRAME_RETRY_TICKS = 4
"""While waiting for the target's key frame, ask again every this many producer
ticks (a tick is a quarter of the inactivity timeout: 1 s by default)."""
FRAME_TIME = 1 / 30
"""The timestamp step put between two encodings when their timestamps would
otherwise not grow (mediasoup assumes 30 fps too)."""


class SimulcastConsumer(Consumer):
    """mediasoup ``SimulcastConsumer``: a ``Consumer`` with ``type == "simulcast"``,
    layers and the ``layerschange`` event (current layers, or None)."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        producer: Producer,
        rtp_parameters: Json,
        paused: bool,
        app_data: dict[str, Any] | None,
        preferred_layers: Any = None,
    ) -> None:
        super().__init__(
            transport=transport,
            producer=producer,
            rtp_parameters=rtp_parameters,
            paused=paused,
            app_data=app_data,
        )
        self.type = "simulcast"
        self._streams = producer.streams
        encoding = rtp_parameters["encodings"][0]
        _, temporal_layers = parse_scalability_mode(encoding.get("scalabilityMode"))
        self._temporal_layers = temporal_layers
        if preferred_layers is None:
            self._preferred = (len(self._streams) - 1, temporal_layers - 1)
        else:
            self._preferred = parse_layers(
                preferred_layers,
                spatial_layers=len(self._streams),
                temporal_layers=temporal_layers,
            )
        self._target_spatial = -1
        self._target_temporal = -1
        self._current = -1
        self._reported_layers: Json | None = None
        self._reported_temporal = -1
        # mediasoup starts between 1000 and 32768 (a libsrtp rollover issue).
        self._seq = SeqManager(16, initial_output=random.randint(1000, 0x7FFF))
        self._last_marker = True
        self._max_seq = self._seq.max_output
        self._ts_offset = 0
        self._ts_stream: RecvStream | None = None
        self._max_ts: int | None = None
        self._max_ts_arrival = 0.0
        mime = str(rtp_parameters["codecs"][0]["mimeType"]).lower()
        self._vp8 = Vp8Rewriter(temporal_layers) if mime == "video/vp8" else None
        self._sent: list[bytearray | None] = [None] * RTX_CACHE_SIZE
        self._waiting_ticks = 0
        self._uncapped = (-1, -1)
        self._update_targets()

    # -- layers ------------------------------------------------------------------------

    @property
    def preferred_layers(self) -> Json:
        return {"spatialLayer": self._preferred[0], "temporalLayer": self._preferred[1]}

    @property
    def target_layers(self) -> Json | None:
        if self._target_spatial < 0:
            return None
        return {"spatialLayer": self._target_spatial, "temporalLayer": self._target_temporal}

    @property
    def current_layers(self) -> Json | None:
        if self._current < 0:
            return None
        return {"spatialLayer": self._current, "temporalLayer": self._current_temporal()}

    def _current_temporal(self) -> int:
        top = self._temporal_layers - 1
        if self._vp8 is None:
            return top  # no temporal layer is told apart, so none is dropped
        current = self._vp8.current_temporal
        return top if current < 0 else min(current, top)

    async def set_preferred_layers(self, layers: Any) -> None:
        """mediasoup ``setPreferredLayers``: clamped to the layers there are."""
        self._check_open()
        self._preferred = parse_layers(
            layers, spatial_layers=len(self._streams), temporal_layers=self._temporal_layers
        )
        self._update_targets()

    @property
    def desired_bitrate(self) -> int:
        """Bits/s the layers the consumer would forward with no cap need: their peak
        over the last two seconds (0 while nothing is to be forwarded)."""
        spatial, temporal = self._uncapped_layers()
        if spatial < 0:
            return 0
        return self._streams[spatial].peak_bitrate_up_to(temporal)

    def _available_bitrate_changed(self) -> None:
        self._update_targets()

    def _uncapped_layers(self) -> tuple[int, int]:
        if not self._forwarding:
            return -1, -1
        preferred_spatial, preferred_temporal = self._preferred
        spatial = -1
        for stream in self._streams:
            if not stream.active:
                continue
            spatial = stream.index
            if spatial >= preferred_spatial:
                break
        if spatial < 0:
            return -1, -1
        if spatial == preferred_spatial:
            return spatial, preferred_temporal
        return spatial, (self._temporal_layers - 1 if spatial < preferred_spatial else 0)

    def _choose_layers(self, spatial: int, temporal: int) -> tuple[int, int]:
        """The uncapped layers (``spatial``, ``temporal``), capped by ``available_bitrate``."""
        cap = self._available_bitrate
        if spatial < 0 or cap is None:
            return spatial, temporal
        if cap >= self._streams[spatial].peak_bitrate_up_to(temporal):
            return spatial, temporal  # granted what it desires: no limit in effect
        forwarded = (self._target_spatial, self._target_temporal)
        lowest = spatial, 0
        for s in range(spatial, -1, -1):
            stream = self._streams[s]
            if not stream.active:
                continue
            for t in range(temporal if s == spatial else self._temporal_layers - 1, -1, -1):
                lowest = s, t
                limit = cap * DOWNGRADE_SLACK if (s, t) <= forwarded else cap
                if stream.bitrate_up_to(t) <= limit:
                    return s, t
        return lowest

    def _update_targets(self) -> None:
        uncapped = self._uncapped_layers()
        if uncapped != self._uncapped:
            # What it desires changed (a preference, an encoding that stopped or
            # came back, a pause): let the bandwidth estimator share again first
            # (it may set ``available_bitrate``, which comes back here).
            self._uncapped = uncapped
            self._demand_changed()
        self._set_targets(*self._choose_layers(*uncapped))

    def _set_targets(self, spatial: int, temporal: int) -> None:
        if (spatial, temporal) == (self._target_spatial, self._target_temporal):
            return
        previous = self._target_spatial
        self._target_spatial, self._target_temporal = spatial, temporal
        if spatial < 0:
            self._current = -1  # nothing is forwarded until a target's key frame
            self._emit_layers()
            return
        if self._vp8 is not None and spatial == self._current:
            self._vp8.target_temporal = temporal
        if spatial != self._current and spatial != previous:
            self._waiting_ticks = 0
            self._streams[spatial].request_key_frame()

    def _emit_layers(self) -> None:
        layers = self.current_layers
        # The rewriter's raw value, so the hot path compares one int per packet.
        self._reported_temporal = self._vp8.current_temporal if self._vp8 is not None else -1
        if layers != self._reported_layers:
            self._reported_layers = layers
            self.emit("layerschange", layers)

    # -- the producer's streams ------------------------------------------------------------

    def producer_tick(self, now: float | None, streams_changed: bool) -> None:
        if self.closed:
            return
        if streams_changed or self._available_bitrate is not None:
            self._update_targets()
        if now is None:
            return
        target = self._target_spatial
        if target >= 0 and target != self._current:
            self._waiting_ticks += 1
            if self._waiting_ticks >= KEY_FRAME_RETRY_TICKS:
                self._waiting_ticks = 0
                self._streams[target].request_key_frame()

    def _current_producer_score(self) -> int:
        return self._streams[self._current].score if self._current >= 0 else 0

    # -- forwarding (hot path) -------------------------------------------------------------

    def send_rtp(self, packet: bytearray, seq: int, stream: RecvStream | None = None) -> None:
        if stream is None:
            return
        if stream.index != self._current:
            if stream.index != self._target_spatial or not stream.is_key_frame(packet):
                return  # another layer, or the target before its key frame
            self._switch_to(stream, seq, packet)
        numbers = self._seq
        if packet[0] & 0x20 and rtp_packet.payload_end(packet) <= rtp_packet.header_length(packet):
            numbers.drop(seq)  # padding only: not forwarded, and no gap left
            return
        rewrite = None
        vp8 = self._vp8
        descriptor = stream.vp8
        if vp8 is not None and descriptor is not None:
            rewrite = vp8.process(descriptor)
            if rewrite is None:
                numbers.drop(seq)  # a temporal layer above the target
                return
            if vp8.current_temporal != self._reported_temporal:
                self._emit_layers()
        out_seq = numbers.input(seq)
        if out_seq < 0:
            return  # dropped before, or from before the switch
        timestamp = (
            ((packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]) - self._ts_offset
        ) & _MASK32
        out = bytearray(packet)
        _HEADER_TAIL.pack_into(out, 2, out_seq, timestamp, self.ssrc)
        if rewrite is not None and descriptor is not None:
            write_descriptor(out, descriptor, rewrite[0], rewrite[1])
        max_ts = self._max_ts
        if max_ts is None or 0 < (timestamp - max_ts) & _MASK32 < _HALF32:
            self._max_ts = timestamp
            self._max_ts_arrival = stream.last_packet_at or 0.0
        if (out_seq - self._max_seq) & 0xFFFF < 0x8000:  # the newest number sent
            self._max_seq = out_seq
            self._last_marker = bool(packet[1] & 0x80)
        self._sent[out_seq & _RING_MASK] = out
        self.packet_count += 1
        self.byte_count += len(out)
        self._transport.send_rtp(out)

    def _switch_to(self, stream: RecvStream, seq: int, packet: bytearray) -> None:
        """Start forwarding ``stream`` at this key frame packet."""
        timestamp = (packet[4] << 24) | (packet[5] << 16) | (packet[6] << 8) | packet[7]
        self._ts_offset = self._timestamp_offset(stream, timestamp)
        self._ts_stream = stream
        # The key frame continues right after the last number sent; after an
        # incomplete frame (no marker), one number is skipped so the receiver
        # discards that frame instead of waiting for its end (mediasoup #408).
        self._seq.sync(seq - (1 if self._last_marker else 2))
        if self._vp8 is not None:
            self._vp8.sync()
            self._vp8.target_temporal = self._target_temporal
        self._current = stream.index
        self._stream = stream
        self._emit_layers()
        self._emit_score()

    def _timestamp_offset(self, stream: RecvStream, timestamp: int) -> int:
        """What to subtract from ``stream``'s timestamps to continue our timeline."""
        reference = self._ts_stream
        max_ts = self._max_ts
        if reference is None or max_ts is None:
            return 0  # the first encoding keeps its own timestamps
        if reference is stream:
            return self._ts_offset
        clock = stream.clock_rate
        if reference.sr_ntp is not None and stream.sr_ntp is not None:
            # The same NTP instant maps to the same output timestamp: the
            # reference's offset, moved by the two streams' SR pairs.
            offset = (
                stream.sr_rtp
                - reference.sr_rtp
                + round((reference.sr_ntp - stream.sr_ntp) * clock)
                + self._ts_offset
            ) & _MASK32
        else:
            # No sender report yet: place the key frame as far after the last
            # packet sent as it arrived after it.
            elapsed = max(0.0, (stream.last_packet_at or 0.0) - self._max_ts_arrival)
            wanted = (max_ts + max(1, round(elapsed * clock))) & _MASK32
            offset = (timestamp - wanted) & _MASK32
        step = (timestamp - offset - max_ts) & _MASK32
        if step == 0 or step >= _HALF32:
            # Not after what the receiver has: one frame later (mediasoup).
            offset = (timestamp - max_ts - round(FRAME_TIME * clock)) & _MASK32
        return offset

    def send_sender_report(
        self, ntp: int, rtp_timestamp: int, stream: RecvStream | None = None
    ) -> None:
        """Relay the current encoding's NTP/RTP pair, in our timeline."""
        if stream is None or stream.index != self._current:
            return
        self._send_sender_report(ntp, (rtp_timestamp - self._ts_offset) & _MASK32)

    def receive_nack(self, seqs: list[int]) -> None:
        """Retransmit what we sent (RTX); map the rest back to the encoding, NACK upstream."""
        if not self._forwarding:
            return
        missing: list[int] = []
        for seq in seqs:
            sent = self._sent[seq & _RING_MASK]
            if sent is not None and rtp_packet.rtp_seq(sent) == seq:
                self._retransmit(sent, seq)
                continue
            source = self._seq.input_for(seq)
            if source is not None:
                missing.append(source)
        if missing and self._current >= 0:
            self._streams[self._current].request_retransmission(missing)

    def receive_key_frame_request(self) -> None:
        """The client lost a picture: a key frame of what it gets (or is about to)."""
        if not self._forwarding:
            return
        layer = self._current if self._current >= 0 else self._target_spatial
        if layer >= 0:
            self._streams[layer].request_key_frame()

    async def request_key_frame(self) -> None:
        """mediasoup ``requestKeyFrame``: the target encoding's, and the current one's."""
        self._check_open()
        if not self._forwarding:
            return
        for layer in {self._target_spatial, self._current} - {-1}:
            self._streams[layer].request_key_frame()

    # -- control ---------------------------------------------------------------------------

    def _update_forwarding(self) -> None:
        forwarding = not self.paused and not self.producer_paused_state and not self.closed
        if forwarding != self._forwarding:
            self._forwarding = forwarding
            self._update_targets()

    def _outbound_stats(self) -> Json:
        stats = super()._outbound_stats()
        stats.update(
            preferredLayers=self.preferred_layers,
            targetLayers=self.target_layers,
            currentLayers=self.current_layers,
            priority=self.priority,
        )
        return stats

    async def get_stats(self) -> list[Json]:
        """Ours, then the producer stream forwarded now (mediasoup)."""
        self._check_open()
        stats = [self._outbound_stats()]
        if self._current >= 0:
            stats.append(self._streams[self._current].stats(self._producer.mime_type))
        return stats

    def _close(self) -> None:
        super()._close()
        self._target_spatial = self._current = -1
        self._sent = []


__all__ = ["SimulcastConsumer"]
