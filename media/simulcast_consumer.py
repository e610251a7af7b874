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
    against the bitrate each layer measured over the last second, frame rate
    first (the highest encoding that fits at its full frame rate; temporal
    layers go only on the lowest active encoding, down to its base layer,
    which is always forwarded: ``_choose_layers``); with hysteresis
    (``_steady``: a grace before going down, a hold before going back up on
    the same room).  The target temporal layer
    is the preferred one on the preferred encoding, the highest below it,
    the lowest above it.

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

What it costs per packet
    The producer's streams hand a consumer only the packets of the encoding
    it forwards and of the one it waits for (``wants``), with the VP8
    descriptor parsed once for all consumers.  The first packet of each
    picture goes through the managers (``_send_first``); the rest of the
    picture, in order and with the same descriptor fields (the stream's
    ``frame``), shares its decision, timestamp and PictureID/TL0PICIDX and
    takes the next sequence number (the *run*; the ``SeqManager`` is told
    where the run got to before it is asked anything else).  Nothing is
    copied: the consumer writes its sequence number, timestamp, SSRC and
    descriptor fields into the producer's buffer, which its transport
    copies into the encryption buffer at once; the next consumer overwrites
    the same fields with its own (a 7-bit PictureID, which grows by a
    byte, gets a copy of its own).

Each forwarded packet is kept in a 512-entry ring by output sequence number,
as the producer's packet with the timestamp and VP8 numbers it went out
with: a NACK is answered from it with RTX (rebuilt as it was sent), and a
number that is not there is mapped back through the ``SeqManager`` to the
current encoding and NACKed upstream.
"""

from __future__ import annotations

import math
import random
import struct
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .codecs.vp8 import Vp8Descriptor, Vp8Rewriter, parse_descriptor, write_descriptor
from .consumer import Consumer, parse_layers
from .rtp_parameters import Json, parse_scalability_mode
from .rtp_stream import RTX_CACHE_SIZE, RecvStream
from .seq_manager import SeqManager

if TYPE_CHECKING:
    from .producer import Producer
    from .webrtc_transport import WebRtcTransport

_HEADER_TAIL = struct.Struct("!HII")  # sequence number, timestamp, SSRC
_PICTURE = struct.Struct("!H")  # a 15-bit VP8 PictureID field (M bit set)
_PICTURE_TL0 = struct.Struct("!HB")  # ... and the TL0PICIDX that follows it
_Sent = tuple[int, bytearray, tuple[int, tuple[int, int] | None]]
_MASK32 = 0xFFFFFFFF
_HALF32 = 0x80000000
_RING_MASK = RTX_CACHE_SIZE - 1

DOWNGRADE_SLACK = 1.25
"""Under a bitrate cap, the layers forwarded now are kept until they measure this
much above it; going up needs a fit under it.  Key frames make the rate spiky,
and a browser's REMB falls to 0.85 x what arrived on each overuse it detects
(delay noise, here and there): one such step must not cost a layer, which
would lower what arrives and the next REMB with it."""
DOWNGRADE_GRACE = 0.5
"""... and for this long (a key frame inflates a second's measurement for a
second), unless they measure ``DOWNGRADE_AT_ONCE`` times the cap or more."""
DOWNGRADE_AT_ONCE = 1.5
UPGRADE_HOLD = 2.0
"""After the cap pushed the layers down, they go back up no sooner than this,
unless the cap rose ``UPGRADE_CAP_RISE`` above what it was then (new room, not
the same measurement seen again).  The hold doubles, up to ``UPGRADE_HOLD_MAX``,
each time the layers are pushed down again within ``FLAP_WINDOW`` of going up,
and is back to this after a quiet ``FLAP_WINDOW``."""
UPGRADE_HOLD_MAX = 16.0
UPGRADE_CAP_RISE = 1.1
FLAP_WINDOW = 10.0
KEY_FRAME_RETRY_TICKS = 4
"""While waiting for the target's key frame, ask again every this many producer
ticks (a tick is the shorter of a quarter of the inactivity timeout and half the
encoding stop timeout: 0.125 s by default, so every 0.5 s).  The encoding sends
at most one request per ``key_frame_request_interval`` (1 s, as mediasoup's
key frame request manager waits before asking again): a retry inside that
interval waits for its end, so the sender gets at most one a second."""
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
        self._forwarded: RecvStream | None = None  # the stream of ``_current``
        self._reported_layers: Json | None = None
        self._reported_temporal = -1
        # mediasoup starts between 1000 and 32768 (a libsrtp rollover issue).
        self._seq = SeqManager(16, initial_output=random.randint(1000, 0x7FFF))
        self._ts_offset = 0
        self._ts_stream: RecvStream | None = None
        self._max_ts = -1  # the highest timestamp sent (-1: none yet)
        self._max_ts_arrival = 0.0
        mime = str(rtp_parameters["codecs"][0]["mimeType"]).lower()
        self._vp8 = Vp8Rewriter(temporal_layers) if mime == "video/vp8" else None
        # What was sent, by output sequence number (for NACKs): the number, the
        # producer's packet and the (timestamp, VP8 rewrite) it went out with.
        self._sent: list[_Sent | None] = [None] * RTX_CACHE_SIZE
        # The run: the packets after the first of a picture, in order, take a
        # short path with what the first one worked out (see ``send_rtp``).
        self._run_next = -1  # the input number that continues it (-1: no run)
        self._run_frame: tuple[int, int, int, int] | None = None  # the stream's ``frame``
        self._run_position = 0  # of the PictureID
        self._run_seq_delta = 0
        self._run_timestamp = 0
        self._run_picture = 0  # the PictureID field (M bit set)
        self._run_tl0 = -1
        self._run_sent_as: tuple[int, tuple[int, int] | None] = (0, None)
        self._waiting_ticks = 0
        self._uncapped = (-1, -1)
        # Layer changes under a cap (``_steady``), on the streams' clock.
        self._clock = self._streams[0].clock
        self._over_since = -1.0
        self._rechoosing = False
        self._downgraded_at = self._upgraded_at = -math.inf
        self._downgraded_cap = 0
        self._hold = UPGRADE_HOLD
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
        """The uncapped layers (``spatial``, ``temporal``), capped by ``available_bitrate``.

        Frame rate first: the highest encoding that fits at its full frame rate
        (its top temporal layer; the preferred one on the uncapped encoding);
        only when not even the lowest active encoding fits so do its temporal
        layers go, down to its base layer, which always flows.  That is how the
        browser itself degrades a camera under a low estimate (WebRTC's
        ``maintain-framerate`` preference: it turns its top encodings off and
        keeps the others at full rate), and what a call needs: a face at a
        quarter of the resolution and 30 fps reads better than at 7.5 fps.
        (mediasoup climbs spatial-major instead, and so can end on a higher
        encoding's base layer, 7.5 fps, when a jittery link's REMB is low.)
        """
        cap = self._available_bitrate
        if spatial < 0 or cap is None:
            return spatial, temporal
        if cap >= self._streams[spatial].peak_bitrate_up_to(temporal):
            return spatial, temporal  # granted what it desires: no limit in effect
        forwarded = self._rank(self._target_spatial, self._target_temporal)
        # In order of preference: each active encoding at its full frame rate,
        # then the lowest one's reduced rates (its base layer is the floor).
        candidates = [
            (s, self._full_temporal(s)) for s in range(spatial, -1, -1) if self._streams[s].active
        ]
        if not candidates:
            return spatial, 0
        lowest = candidates[-1][0]
        candidates += [(lowest, t) for t in range(self._full_temporal(lowest) - 1, 0, -1)]
        for s, t in candidates:
            limit = cap * DOWNGRADE_SLACK if self._rank(s, t) <= forwarded else cap
            if self._streams[s].bitrate_up_to(t) <= limit:
                return s, t
        return lowest, 0

    def _full_temporal(self, spatial: int) -> int:
        """The temporal layer that is ``spatial``'s full frame rate for this consumer."""
        uncapped_spatial, uncapped_temporal = self._uncapped
        return uncapped_temporal if spatial == uncapped_spatial else self._temporal_layers - 1

    def _rank(self, spatial: int, temporal: int) -> tuple[bool, int, int]:
        """Orders layers as ``_choose_layers`` prefers them: any encoding at its full
        frame rate above any at a reduced one, then by encoding and temporal layer."""
        if spatial < 0:
            return False, -1, -1
        return temporal >= self._full_temporal(spatial), spatial, temporal

    def _steady(self, choice: tuple[int, int], cap: int | None) -> tuple[int, int]:
        """``choice``, unless it moves the layers the cap moves too eagerly (same
        preferences, same encodings): a downgrade waits out a key frame's bump,
        an upgrade after a downgrade waits for new room (``UPGRADE_HOLD``)."""
        current = (self._target_spatial, self._target_temporal)
        if cap is None or current[0] < 0 or choice == current:
            self._over_since = -1.0
            return choice
        now = self._clock()
        if self._rank(*choice) < self._rank(*current):
            stream = self._streams[current[0]]
            measured = stream.bitrate_up_to(current[1]) if stream.active else 0
            if stream.active and measured < cap * DOWNGRADE_AT_ONCE:
                over_since = self._over_since
                if over_since < 0:
                    self._over_since = now
                    return current
                if now - over_since < DOWNGRADE_GRACE:
                    return current
            self._over_since = -1.0
            # Pushed down by the cap: back up only on new room or after the hold,
            # the longer the sooner this follows the last time it went up.
            if now - self._upgraded_at < FLAP_WINDOW:
                self._hold = min(UPGRADE_HOLD_MAX, self._hold * 2)
            elif now - self._downgraded_at >= FLAP_WINDOW:
                self._hold = UPGRADE_HOLD
            self._downgraded_at, self._downgraded_cap = now, cap
            return choice
        self._over_since = -1.0
        if now - self._downgraded_at < self._hold and cap < self._downgraded_cap * UPGRADE_CAP_RISE:
            return current
        self._upgraded_at = now
        return choice

    def _update_targets(self) -> None:
        uncapped = self._uncapped_layers()
        if uncapped != self._uncapped:
            # What it desires changed (a preference, an encoding that stopped or
            # came back, a pause): let the bandwidth estimator share again first
            # (it may set ``available_bitrate``, which comes back here), and
            # take what fits at once.
            self._uncapped = uncapped
            self._over_since = -1.0
            self._rechoosing = True
            try:
                self._demand_changed()
            finally:
                self._rechoosing = False
            self._set_targets(*self._choose_layers(*uncapped))
            return
        choice = self._choose_layers(*uncapped)
        if not self._rechoosing:
            choice = self._steady(choice, self._available_bitrate)
        self._set_targets(*choice)

    def _set_targets(self, spatial: int, temporal: int) -> None:
        if (spatial, temporal) == (self._target_spatial, self._target_temporal):
            return
        previous = self._target_spatial
        self._target_spatial, self._target_temporal = spatial, temporal
        if spatial < 0:
            self._current = -1  # nothing is forwarded until a target's key frame
            self._forwarded = None
            self._producer.sinks_changed()
            self._emit_layers()
            return
        if spatial != previous:
            self._producer.sinks_changed()  # the new target's packets, for its key frame
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

    def wants(self, stream: RecvStream) -> bool:
        """The encoding forwarded now and the one waited for: no other encoding's
        packets are handed to ``send_rtp``."""
        return stream.index == self._current or stream.index == self._target_spatial

    # -- forwarding (hot path) -------------------------------------------------------------

    def send_rtp(self, packet: bytearray, seq: int, stream: RecvStream | None = None) -> None:
        if stream is not self._forwarded or stream is None:
            if (
                stream is None
                or stream.index != self._target_spatial
                or not stream.is_key_frame(packet)
            ):
                return  # another layer, or the target before its key frame
            self._switch_to(stream, seq)
            if self.closed:
                return  # closed by a listener of the switch's events
        if seq != self._run_next or stream.frame != self._run_frame:
            self._send_first(packet, seq, stream)
            return
        # The run: the next packet of the picture the previous one began or
        # continued, with the same descriptor fields and no padding.  It shares
        # that packet's fate and numbers (as ``_send_first`` would find) and
        # takes the next sequence number, without asking the managers.
        out_seq = (seq + self._run_seq_delta) & 0xFFFF
        self._run_next = (seq + 1) & 0xFFFF
        # In place: the producer's buffer gets our header fields and PictureID
        # (and TL0PICIDX) just before the transport copies it to encrypt it.
        _HEADER_TAIL.pack_into(packet, 2, out_seq, self._run_timestamp, self.ssrc)
        tl0 = self._run_tl0
        if tl0 >= 0:
            _PICTURE_TL0.pack_into(packet, self._run_position, self._run_picture, tl0)
        else:
            _PICTURE.pack_into(packet, self._run_position, self._run_picture)
        self._sent[out_seq & _RING_MASK] = (out_seq, packet, self._run_sent_as)
        self.packet_count += 1
        self.byte_count += len(packet)
        self._transport.send_rtp(packet)

    def _send_first(self, packet: bytearray, seq: int, stream: RecvStream) -> None:
        """A packet the run does not take: a new picture, a gap, padding, a late packet."""
        numbers = self._seq
        run_next = self._run_next
        if run_next >= 0:
            self._run_next = -1
            if seq != run_next:
                # A gap, a late or a repeated packet: the manager must know where
                # the run got to.  Right after it, the manager takes the jump as
                # the run's packets (consecutive, none dropped).
                numbers.input((run_next - 1) & 0xFFFF)
        if packet[0] & 0x20 and rtp_packet.payload_end(packet) <= rtp_packet.header_length(packet):
            numbers.drop(seq)  # padding only: not forwarded, and no gap left
            return
        vp8 = self._vp8
        descriptor = stream.vp8
        rewrite = None
        if vp8 is not None and descriptor is not None:
            rewrite = vp8.process(descriptor)
            if rewrite is None:
                numbers.drop(seq)  # a temporal layer above the target
                return
            if vp8.current_temporal != self._reported_temporal:
                self._emit_layers()
                if self.closed:
                    return  # (as after a switch)
        out_seq = numbers.input(seq)
        if out_seq < 0:
            return  # dropped before, or from before the switch
        timestamp = (stream.timestamp - self._ts_offset) & _MASK32
        max_ts = self._max_ts
        if timestamp != max_ts and (max_ts < 0 or 0 < (timestamp - max_ts) & _MASK32 < _HALF32):
            self._max_ts = timestamp
            self._max_ts_arrival = stream.last_packet_at or 0.0
        sent_as = (timestamp, rewrite)
        self._sent[out_seq & _RING_MASK] = (out_seq, packet, sent_as)
        self.packet_count += 1
        picture = tl0 = -1
        if rewrite is not None and descriptor is not None:
            picture_out, tl0_out = rewrite
            if picture_out >= 0 and descriptor.picture_id >= 0:
                if not descriptor.picture_id_wide:
                    # A 7-bit PictureID goes out as a 15-bit one: a longer copy of our own.
                    out = self._rewritten(packet, out_seq, sent_as)
                    self.byte_count += len(out)
                    self._transport.send_rtp(out)
                    return
                picture = 0x8000 | picture_out
                if tl0_out >= 0 and descriptor.tl0 >= 0:  # TL0PICIDX follows the PictureID
                    tl0 = tl0_out
                    _PICTURE_TL0.pack_into(packet, descriptor.picture_id_pos, picture, tl0)
                else:
                    _PICTURE.pack_into(packet, descriptor.picture_id_pos, picture)
            elif tl0_out >= 0 and descriptor.tl0 >= 0:
                packet[descriptor.tl0_pos] = tl0_out
        _HEADER_TAIL.pack_into(packet, 2, out_seq, timestamp, self.ssrc)
        self.byte_count += len(packet)
        self._transport.send_rtp(packet)
        if picture >= 0 and stream.frame is not None and descriptor is not None:
            # The rest of this picture can take the run while it comes in order.
            self._run_next = (seq + 1) & 0xFFFF
            self._run_frame = stream.frame
            self._run_position = descriptor.picture_id_pos
            self._run_seq_delta = out_seq - seq
            self._run_timestamp = timestamp
            self._run_picture = picture
            self._run_tl0 = tl0
            self._run_sent_as = sent_as

    def _numbers(self) -> SeqManager:
        """The sequence numbers, told of the packets the run numbered (and the run ended)."""
        numbers = self._seq
        if self._run_next >= 0:
            # The run's packets were consecutive and none was dropped: telling
            # the manager the last one is the same as telling it each of them.
            numbers.input((self._run_next - 1) & 0xFFFF)
            self._run_next = -1
        return numbers

    def _rewritten(
        self, packet: bytearray, out_seq: int, sent_as: tuple[int, tuple[int, int] | None]
    ) -> bytearray:
        """A copy of the producer's ``packet`` as we sent it (retransmissions, 7-bit PictureIDs).

        Consumers rewrite the producer's buffer in place, but only fields that
        are all rewritten here: the descriptor is parsed again for its layout.
        """
        timestamp, rewrite = sent_as
        out = bytearray(packet)
        _HEADER_TAIL.pack_into(out, 2, out_seq, timestamp, self.ssrc)
        if rewrite is not None:
            start = rtp_packet.header_length(out)
            if start >= 0:
                descriptor = Vp8Descriptor()
                parse_descriptor(descriptor, out, start, rtp_packet.payload_end(out))
                if descriptor.valid:
                    write_descriptor(out, descriptor, rewrite[0], rewrite[1])
        return out

    def _switch_to(self, stream: RecvStream, seq: int) -> None:
        """Start forwarding ``stream`` at this key frame packet (the one it just received)."""
        self._ts_offset = self._timestamp_offset(stream, stream.timestamp)
        self._ts_stream = stream
        # The key frame continues right after the last number sent; after an
        # incomplete frame (no marker), one number is skipped so the receiver
        # discards that frame instead of waiting for its end (mediasoup #408).
        complete = self._last_sent_was_complete()
        self._seq.sync(seq - (1 if complete else 2))
        if self._vp8 is not None:
            self._vp8.sync()
            self._vp8.target_temporal = self._target_temporal
        self._current = stream.index
        self._forwarded = self._stream = stream
        self._producer.sinks_changed()
        self._emit_layers()
        self._emit_score()

    def _last_sent_was_complete(self) -> bool:
        """Whether the newest packet sent (if any) has the marker bit: ended its frame."""
        newest = self._numbers().max_output
        sent = self._sent[newest & _RING_MASK]
        if sent is None or sent[0] != newest:
            return True  # nothing sent yet
        return bool(sent[1][1] & 0x80)

    def _timestamp_offset(self, stream: RecvStream, timestamp: int) -> int:
        """What to subtract from ``stream``'s timestamps to continue our timeline."""
        reference = self._ts_stream
        max_ts = self._max_ts
        if reference is None or max_ts < 0:
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
            if sent is not None and sent[0] == seq:
                self._retransmit(self._rewritten(sent[1], seq, sent[2]), seq)
                continue
            source = self._numbers().input_for(seq)
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
        self._forwarded = None
        self._sent = []


__all__ = ["SimulcastConsumer"]
