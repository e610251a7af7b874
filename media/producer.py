"""Producer: one media track a client sends, fanned out to its consumers.

A producer has one receive stream (``media.rtp_stream.RecvStream``) per
encoding: one for a plain track (``type == "simple"``), one per simulcast
layer otherwise (``type == "simulcast"``, webcams send r0/r1/r2).  The
transport's forwarding table maps each SSRC straight to its stream's bound
``receive_rtp`` / ``receive_rtx``, so the hot path never goes through the
producer; the producer owns the streams, the consumers and the control paths.

Encodings are identified as mediasoup's ``Producer::GetRtpStream`` does:
SSRCs signalled in ``rtpParameters.encodings`` are bound when the producer is
created; otherwise a packet's RID header extension names its encoding, a
repaired-RID names the encoding whose RTX stream it is, and a packet with a
MID only belongs to the single encoding of a non-simulcast producer.

Health (activity, bitrate, score) is judged by ``tick(now)``, which the
transport schedules every quarter of the inactivity timeout (or half the stop
timeout, if shorter): a stream silent for ``inactivity_timeout`` is inactive
and scores 0, and so is a simulcast encoding silent for ``stop_timeout`` while
a lower one keeps sending (the sender turned it off: Chrome does when its
bandwidth estimate drops, or after a network change), so that consumers fall
back to the lower one sooner than a whole stream's silence would tell.  ``score`` events carry
mediasoup's ``ProducerScore[]`` and are emitted when a score changes (on
sender reports, activity changes), never per packet.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .errors import InvalidStateError
from .events import EventEmitter
from .link import StreamCounters
from .rtp_parameters import Json, ProducerMapping, parse_scalability_mode
from .rtp_stream import RTX_CACHE_SIZE, RecvStream

if TYPE_CHECKING:
    from .consumer import Consumer
    from .webrtc_transport import WebRtcTransport

__all__ = ["RTX_CACHE_SIZE", "Producer", "StreamMatch"]

StreamMatch = tuple[RecvStream, bool]
"""The stream a new SSRC belongs to, and whether it is that stream's RTX SSRC."""


class Producer(EventEmitter):
    """mediasoup ``Producer``: events ``transportclose``, ``score`` (a list of
    ``{encodingIdx, ssrc, rid, score}``); observer ``close``, ``pause``, ``resume``."""

    def __init__(
        self,
        *,
        transport: WebRtcTransport,
        kind: str,
        rtp_parameters: Json,
        mapping: ProducerMapping,
        consumable_rtp_parameters: Json,
        paused: bool,
        key_frame_request_interval: float,
        app_data: dict[str, Any] | None,
        inactivity_timeout: float = 1.0,
        stop_timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.id = str(uuid.uuid4())
        self.kind = kind
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
        self._tick_timer: asyncio.TimerHandle | None = None
        self.inactivity_timeout = inactivity_timeout
        self.stop_timeout = stop_timeout
        """0: an encoding is inactive only after ``inactivity_timeout`` of silence."""
        self.mid: str | None = rtp_parameters.get("mid")
        codecs = rtp_parameters["codecs"]
        media_codec = next(c for c in codecs if not str(c["mimeType"]).lower().endswith("/rtx"))
        self.mime_type: str = media_codec["mimeType"]
        feedback = [
            (fb.get("type"), fb.get("parameter") or "")
            for codec in codecs
            for fb in codec.get("rtcpFeedback") or []
            if isinstance(fb, dict)
        ]
        self.nack_supported = ("nack", "") in feedback
        # mediasoup asks with PLI when the sender takes it, else with FIR.
        use_fir = ("nack", "pli") not in feedback and ("ccm", "fir") in feedback
        encodings = rtp_parameters["encodings"]
        self.type = "simulcast" if len(encodings) > 1 else "simple"
        self.streams: list[RecvStream] = [
            RecvStream(
                producer=self,
                transport=transport,
                index=index,
                encoding=encoding,
                kind=kind,
                payload_types=mapping.payload_types,
                rtx_payload_types=mapping.rtx_payload_types,
                extension_ids=mapping.header_extension_ids,
                clock_rate=media_codec["clockRate"],
                mime_type=self.mime_type,
                temporal_layers=parse_scalability_mode(encoding.get("scalabilityMode"))[1],
                simulcast=self.type == "simulcast",
                nack_supported=self.nack_supported,
                use_fir=use_fir,
                key_frame_request_interval=key_frame_request_interval,
                inactivity_timeout=inactivity_timeout,
                clock=clock,
            )
            for index, encoding in enumerate(encodings)
        ]
        for stream in self.streams:
            stream.paused = paused
        self._last_scores: list[Json] = []

    def __repr__(self) -> str:
        return f"<Producer {self.id} {self.kind}{' closed' if self.closed else ''}>"

    @property
    def transport_id(self) -> str:
        return self._transport.id

    # -- the streams, seen as one ----------------------------------------------------

    @property
    def ssrc(self) -> int | None:
        """The first encoding's SSRC that is known (the only one of a simple producer)."""
        return next((s.ssrc for s in self.streams if s.ssrc is not None), None)

    @property
    def rtx_ssrc(self) -> int | None:
        return self.streams[0].rtx_ssrc

    @property
    def rid(self) -> str | None:
        return self.streams[0].rid

    @property
    def packet_count(self) -> int:
        return sum(s.packet_count for s in self.streams)

    @property
    def byte_count(self) -> int:
        return sum(s.byte_count for s in self.streams)

    @property
    def jitter(self) -> float:
        """Interarrival jitter (RFC 3550 A.8) in timestamp units, the worst stream's."""
        return max(s.jitter for s in self.streams)

    @property
    def score(self) -> list[Json]:
        """mediasoup's ``ProducerScore[]``: one entry per encoding that has sent anything."""
        return [
            {"encodingIdx": s.index, "ssrc": s.ssrc, "rid": s.rid, "score": s.score}
            for s in self.streams
            if s.ssrc is not None and s.last_packet_at is not None
        ]

    @property
    def audio_level_sink(self) -> Callable[[bytearray], None] | None:
        """Set by an audio level observer (``media.audio_level_observer``): it is
        handed every packet forwarded, and only then is anything read of it."""
        return self.streams[0].audio_level_sink

    @audio_level_sink.setter
    def audio_level_sink(self, sink: Callable[[bytearray], None] | None) -> None:
        for stream in self.streams:
            stream.audio_level_sink = sink

    def receive_rtp(self, buf: bytearray) -> None:
        """A packet of this producer (the transport calls the stream's method directly)."""
        stream = self._stream_of(buf)
        if stream is not None:
            stream.receive_rtp(buf)

    def receive_rtx(self, packet: bytearray) -> None:
        ssrc = rtp_packet.rtp_ssrc(packet)
        stream = next((s for s in self.streams if s.rtx_ssrc == ssrc), None)
        if stream is None and len(self.streams) == 1:
            stream = self.streams[0]
        if stream is not None:
            stream.receive_rtx(packet)

    def _stream_of(self, buf: bytearray) -> RecvStream | None:
        if len(self.streams) == 1:
            return self.streams[0]
        ssrc = rtp_packet.rtp_ssrc(buf)
        return next((s for s in self.streams if s.ssrc == ssrc), None)

    def reception_counters(self) -> StreamCounters:
        """What has arrived of this producer's streams so far, as cumulative counters.

        Sums the encodings (each is a stream the client sends); jitter is the
        worst stream's.  A reader diffs two of these for an interval
        (``media.link.LinkMonitor``); nothing here is reset by reading.
        """
        counters = [s.reception_counters() for s in self.streams]
        jitters = [c.jitter_ms for c in counters if c.jitter_ms is not None]
        return StreamCounters(
            kind=self.kind,
            expected=sum(c.expected for c in counters),
            lost=sum(c.lost for c in counters),
            jitter_ms=max(jitters) if jitters else None,
        )

    def cached_packet(self, seq: int) -> bytearray | None:
        return self.streams[0].cached_packet(seq)

    # -- identifying new SSRCs (the transport's slow path) ------------------------------

    def match_ssrc(self, ssrc: int, packet: bytearray) -> StreamMatch | bool | None:
        """Which of our streams an SSRC nobody signalled belongs to.

        Returns False when the packet is not ours (another MID, or nothing to
        tell), None when it is ours but goes nowhere (an unknown RID, an RTX
        stream of an encoding whose RTX is known already), else the stream and
        whether the SSRC is its RTX.  Binds the SSRC to the stream.
        """
        mapping = self._mapping
        mid = _extension_text(packet, mapping.mid_id)
        if mid is not None and mid != self.mid:
            return False
        rid = _extension_text(packet, mapping.rid_id)
        rrid = _extension_text(packet, mapping.rrid_id)
        if mid is None and rid is None and rrid is None:
            return False
        is_rtx = (packet[1] & 0x7F) in mapping.rtx_payload_types
        stream: RecvStream | None
        if rrid is not None:
            # RFC 8852: an RTX stream names the encoding it repairs.
            stream = self._stream_with_rid(rrid)
            is_rtx = True
        elif rid is not None:
            stream = self._stream_with_rid(rid)
        elif len(self.streams) == 1:
            stream = self.streams[0]
        else:
            return None  # simulcast without RIDs or SSRCs: nothing says which layer
        if stream is None:
            return None
        if is_rtx:
            if stream.rtx_ssrc not in (None, ssrc):
                return None
            stream.rtx_ssrc = ssrc
        else:
            if stream.ssrc not in (None, ssrc):
                return None  # mediasoup: a second SSRC for one RID is ignored
            stream.ssrc = ssrc
        return stream, is_rtx

    def _stream_with_rid(self, rid: str) -> RecvStream | None:
        for stream in self.streams:
            if stream.rid == rid:
                return stream
        # A single encoding declared without a RID still takes a RID-tagged stream.
        if len(self.streams) == 1 and self.streams[0].rid is None:
            return self.streams[0]
        return None

    # -- RTCP -----------------------------------------------------------------

    def receive_sender_report(
        self, ntp: int, rtp_timestamp: int, now: float, stream: RecvStream | None = None
    ) -> bytes:
        """Relay an encoding's (the first's by default) clock mapping to consumers;
        return our report block about it.

        Consumers rewrite the mapping into their own timeline (a simple one
        keeps the producer's timestamps), so browsers can lip-sync audio and
        video coming from the same sender (RFC 3550 section 6.4.1).
        """
        if stream is None:
            stream = self.streams[0]
        if stream.receive_sender_report(ntp, rtp_timestamp, now):
            self._scores_changed()
        for consumer in self._sinks:
            consumer.send_sender_report(ntp, rtp_timestamp, stream)
        return stream.report_block(now)

    def request_key_frame(self, encoding_idx: int | None = None) -> None:
        """Ask the sender for a key frame of one encoding, or of every encoding."""
        if self.closed or self.kind != "video":
            return
        if encoding_idx is not None:
            self.streams[encoding_idx].request_key_frame()
            return
        for stream in self.streams:
            stream.request_key_frame()

    def request_retransmission(self, seqs: list[int]) -> None:
        """Relay a consumer's NACK upstream for packets we never had (first stream)."""
        self.streams[0].request_retransmission(seqs)

    # -- health -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Judge the streams' health every quarter of the inactivity timeout."""
        if self._tick_timer is None and not self.closed:
            interval = self.inactivity_timeout / 4
            if self.stop_timeout > 0 and self.type == "simulcast":
                interval = min(interval, self.stop_timeout / 2)
            interval = max(0.05, interval)
            self._tick_timer = loop.call_later(interval, self._on_timer, loop, interval)

    def _on_timer(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self._tick_timer = None
        if self.closed:
            return
        self.tick(loop.time())
        if not self.closed:
            self._tick_timer = loop.call_later(interval, self._on_timer, loop, interval)

    def tick(self, now: float) -> None:
        """Measure bitrates and activity at ``now`` (the event loop's clock); tell consumers."""
        changed = False
        for stream in self.streams:
            if stream.sample(now):
                changed = True
        if self.stop_timeout > 0 and self.type == "simulcast" and self._stopped_encoding(now):
            changed = True
        for consumer in self._sinks:
            consumer.producer_tick(now, changed)
        if changed:
            self._scores_changed()

    def _stopped_encoding(self, now: float) -> bool:
        """Deactivate the encodings silent for ``stop_timeout`` while a lower one
        sends on; whether any was.  Both conditions: a pause of the whole source
        (all silent) or of the link is not an encoding being turned off, and a
        late frame of the top encoding (a key frame is paced out over ~100 ms)
        is shorter than the timeout."""
        timeout = self.stop_timeout
        latest_lower = -1.0  # the latest packet of any lower encoding
        stopped = False
        for stream in self.streams:
            last = stream.last_packet_at
            if last is None:
                continue
            if stream.active and latest_lower - last > timeout and now - latest_lower < timeout:
                stream.deactivate()
                stopped = True
            if last > latest_lower:
                latest_lower = last
        return stopped

    def stream_activity_changed(self, stream: RecvStream) -> None:
        """A stream got its first packet after silence (called from its hot path, once)."""
        for consumer in self._sinks:
            consumer.producer_tick(None, True)
        self._scores_changed()

    def _scores_changed(self) -> None:
        scores = self.score
        if scores == self._last_scores:
            return
        self._last_scores = scores
        self.emit("score", scores)
        for consumer in self._sinks:
            consumer.producer_score_changed()

    # -- consumers --------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers[consumer.id] = consumer
        self._set_sinks()

    def remove_consumer(self, consumer: Consumer) -> None:
        if self._consumers.pop(consumer.id, None) is not None:
            self._set_sinks()

    def _set_sinks(self) -> None:
        self._sinks = tuple(self._consumers.values())
        self.sinks_changed()

    def sinks_changed(self) -> None:
        """Hand each stream's packets to the consumers that want them (``Consumer.wants``).

        A simulcast consumer calls this when it switches or aims at another
        encoding, so a packet of an encoding nobody forwards or waits for
        costs no call per consumer.
        """
        if self.closed:
            return
        for stream in self.streams:
            stream.sinks = tuple(c for c in self._sinks if c.wants(stream))

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    # -- control ----------------------------------------------------------------

    async def pause(self) -> None:
        self._check_open()
        if self.paused:
            return
        self.paused = True
        for stream in self.streams:
            stream.paused = True
        self.observer.emit("pause")
        for consumer in self._sinks:
            consumer.producer_paused()

    async def resume(self) -> None:
        self._check_open()
        if not self.paused:
            return
        self.paused = False
        for stream in self.streams:
            stream.paused = False
        self.observer.emit("resume")
        for consumer in self._sinks:
            consumer.producer_resumed()
        self.request_key_frame()

    async def get_stats(self) -> list[Json]:
        """One ``inbound-rtp`` entry per encoding."""
        self._check_open()
        return [stream.stats(self.mime_type) for stream in self.streams]

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
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        consumers, self._consumers, self._sinks = self._consumers, {}, ()
        for consumer in list(consumers.values()):
            consumer.producer_closed()
        for stream in self.streams:
            stream.close()
        self.observer.emit("close")


def _extension_text(packet: bytearray, ext_id: int | None) -> str | None:
    if ext_id is None:
        return None
    value = rtp_packet.extension_value(packet, ext_id)
    return None if value is None else value.decode(errors="replace")
