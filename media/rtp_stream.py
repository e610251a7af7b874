"""One encoding a producer receives: its hot path, reception statistics and health.

A producer has one ``RecvStream`` per encoding (one for a plain track, three
for a webcam sending simulcast r0/r1/r2).  Each stream has its own SSRC and
RTX SSRC, retransmission cache, RFC 3550 reception counters, sender report
NTP/RTP pair, score and bitrate, as mediasoup's ``RtpStreamRecv``.

``receive_rtp`` runs once per inbound packet and is the SFU's hot path: it
maps the payload type and header extension ids to the router's in place
(one-byte extension heads through a precomputed table; for video, our
abs-send-time goes into the padding left where the sender's transport-wide
number was, the same for every consumer: see ``send_time``), tracks the sequence
number and jitter, caches the packet and hands the same buffer to every
consumer that wants this stream (``sinks``: a simulcast consumer only takes
the encoding it forwards or waits for).  Nothing else runs per packet,
except for a simulcast producer's VP8 streams, which read the payload
descriptor once for all consumers (PictureID/TL0PICIDX rewriting and
temporal layer dropping need it for every packet, the bitrate per temporal
layer its TID).  Simulcast consumers write their own header fields into the
buffer before their transport encrypts a copy of it, so the cache checks
sequence numbers kept aside, not the bytes.

Health is judged off the hot path, by ``sample(now)`` (the producer calls it
a few times a second): a stream with no packet for ``inactivity_timeout`` is
inactive and scores 0 (mediasoup's inactivity check); the bitrate is measured
over a one-second sliding window of byte counter samples, per temporal layer
where the codec says which layer a packet belongs to.  The loss score is
updated on each sender report, as mediasoup's ``RtpStreamRecv::UpdateScore``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, Protocol

from . import rtp_packet
from .codecs import h264, vp8
from .link import StreamCounters
from .rtp_parameters import ABS_SEND_TIME_ID as SEND_TIME_ID

if TYPE_CHECKING:
    from .producer import Producer

# Packets kept for retransmission: ~1 s of 1 Mbit/s video, the window in which
# a NACK is still useful to a jitter buffer.
RTX_CACHE_SIZE = 512
_RTX_CACHE_MASK = RTX_CACHE_SIZE - 1

BITRATE_WINDOW = 1.0
"""Seconds of history the bitrate is measured over."""
PEAK_SAMPLES = 8
"""Bitrate measurements a stream's peak is taken over (two seconds at the default
four a second): what a consumer asks a bandwidth estimator for."""
MAX_TEMPORAL_LAYERS = 4  # VP8's TID is two bits

_SEQ_AND_TIMESTAMP = struct.Struct("!HI")

# mediasoup's score history: the latest 24 samples, the newest weighing most.
_SCORE_HISTORY = 24


class Sink(Protocol):
    """What a stream hands its packets and reports to (a consumer)."""

    def send_rtp(self, packet: bytearray, seq: int, stream: RecvStream) -> None: ...

    def send_sender_report(self, ntp: int, rtp_timestamp: int, stream: RecvStream) -> None: ...


class RtcpSender(Protocol):
    """What a stream needs of its transport."""

    rtcp_ssrc: int
    last_activity: float

    def send_rtcp(self, packet: bytes) -> None: ...


class ScoreHistory:
    """A 0-10 score as the weighted mean of recent samples (mediasoup's ``RtpStream``)."""

    __slots__ = ("_samples", "score")

    def __init__(self, score: int = 10) -> None:
        self._samples: list[int] = []
        self.score = score

    def add(self, sample: int) -> bool:
        """Add a sample; return whether the score changed."""
        samples = self._samples
        samples.append(sample)
        if len(samples) > _SCORE_HISTORY:
            del samples[0]
        total = weights = 0
        for weight, value in enumerate(samples, 1):
            weights += weight
            total += weight * value
        return self._set(round(total / weights))

    def reset(self, score: int) -> bool:
        """Forget the history (a stream that stopped or restarted); return if it changed."""
        self._samples.clear()
        return self._set(score)

    def _set(self, score: int) -> bool:
        changed = score != self.score
        self.score = score
        return changed


def loss_score(expected: int, received: int, repaired: int, retransmitted: int, rtx: bool) -> int:
    """mediasoup's interval score: delivered ratio to the 4th power, times 10.

    Packets repaired by retransmission count as partly delivered; the more of
    the interval needed repairing, the less they count.
    """
    if expected <= 0 or received <= 0:
        return 10
    lost = min(max(0, expected - received), received)
    if repaired > lost:
        if rtx:
            retransmitted = max(repaired, retransmitted - (repaired - lost))
            repaired = lost
        else:
            lost = repaired
    weight = (1 / (repaired / received + 1)) ** 4
    if retransmitted > 0:
        weight *= repaired / retransmitted
    lost_effective = lost - repaired * weight
    delivered = (received - lost_effective) / received
    return max(0, min(10, round(delivered**4 * 10)))


_SEND_TIME_HEAD = SEND_TIME_ID << 4 | 2  # a one-byte element with 3 bytes of data
_SEND_TIME_ELEMENT = struct.Struct("!I")  # the head and the 24-bit value
_AST_UNITS_PER_SECOND = 1 << 18


def send_time_element(now: float) -> int:
    """The four bytes of our abs-send-time element for ``now`` (``time.monotonic()``,
    the event loop's clock): 24 bits of 6.18 fixed-point seconds, wrapping every 64 s.

    The clock is read per packet, right before it goes out: uvloop's
    ``loop.time()`` is per iteration and in whole milliseconds, and a receiver
    tells a paced burst (which it takes for a probe of the path) from a queue
    by spacings of a millisecond or two."""
    return _SEND_TIME_HEAD << 24 | (int(now * _AST_UNITS_PER_SECOND) & 0xFFFFFF)


_SEND_TIME = _SEND_TIME_HEAD << 24
_pack_send_time = _SEND_TIME_ELEMENT.pack_into


def _send_time_now() -> int:
    """The 24-bit abs-send-time of this instant (6.18 fixed point, ``time.monotonic()``)."""
    return int(_monotonic() * 262144.0) & 0xFFFFFF


def stamp_send_time(packet: bytearray, now: float) -> bool:
    """Rewrite the abs-send-time element we put in ``packet`` (a copy being
    retransmitted, or a cached packet) with ``now``; return whether it had one.

    Off the hot path: walks the one-byte block in place.
    """
    if not packet[0] & 0x10:
        return False
    block = 12 + ((packet[0] & 0x0F) << 2)
    size = len(packet)
    if size < block + 4 or packet[block] != 0xBE or packet[block + 1] != 0xDE:
        return False
    end = block + 4 + (((packet[block + 2] << 8) | packet[block + 3]) << 2)
    pos = block + 4
    if end > size:
        return False
    while pos < end:
        head = packet[pos]
        if head < 0x10:
            pos += 1
            continue
        if head >= 0xF0:
            return False
        if head == _SEND_TIME_HEAD:
            if pos + 4 > end:
                return False
            _SEND_TIME_ELEMENT.pack_into(packet, pos, send_time_element(now))
            return True
        pos += (head & 0x0F) + 2
    return False


def _one_byte_heads(id_map: dict[int, int]) -> bytes:
    """For every first byte of an RFC 8285 one-byte element (id 1-14 and length), the
    byte with the router's id; 0 where the id is not mapped (the element is padded out)."""
    heads = bytearray(256)
    for head in range(0x10, 0xF0):
        new_id = id_map.get(head >> 4)
        if new_id is not None and 0 < new_id < 15:
            heads[head] = (new_id << 4) | (head & 0x0F)
    return bytes(heads)


class RecvStream:
    """One received encoding (mediasoup ``RtpStreamRecv``)."""

    __slots__ = (
        "_base_seq",
        "_cache",
        "_cache_seq",
        "_clock",
        "_clock_rate",
        "_cycles",
        "_expected_prior",
        "_extension_heads",
        "_extension_ids",
        "_fir_seq",
        "_fraction_lost",
        "_h264",
        "_inactivity_timeout",
        "_key_frame_interval",
        "_last_key_frame_request",
        "_last_sr_arrival",
        "_last_sr_ntp_middle",
        "_max_seq",
        "_payload_type_map",
        "_peaks",
        "_pending_key_frame",
        "_received_prior",
        "_rtx_payload_types",
        "_samples",
        "_score_prior",
        "_transit",
        "_transport",
        "_use_fir",
        "active",
        "audio_level_sink",
        "bitrate",
        "byte_count",
        "frame",
        "index",
        "jitter",
        "kind",
        "last_packet_at",
        "layer_bitrates",
        "layer_bytes",
        "nack_supported",
        "packet_count",
        "packets_repaired",
        "packets_retransmitted",
        "paused",
        "producer",
        "rid",
        "rtx_ssrc",
        "scores",
        "send_time",
        "sinks",
        "sr_ntp",
        "sr_rtp",
        "ssrc",
        "temporal_layers",
        "timestamp",
        "vp8",
    )

    def __init__(
        self,
        *,
        producer: Producer | None,
        transport: RtcpSender,
        index: int,
        encoding: dict[str, Any],
        kind: str,
        payload_types: dict[int, int],
        rtx_payload_types: dict[int, int],
        extension_ids: dict[int, int],
        clock_rate: int,
        mime_type: str,
        temporal_layers: int = 1,
        simulcast: bool = False,
        nack_supported: bool = False,
        use_fir: bool = False,
        key_frame_request_interval: float = 0.2,
        inactivity_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer
        self._transport = transport
        self.index = index
        self.kind = kind
        self.ssrc: int | None = encoding.get("ssrc")
        self.rtx_ssrc: int | None = (encoding.get("rtx") or {}).get("ssrc")
        self.rid: str | None = encoding.get("rid")
        self.temporal_layers = max(1, temporal_layers)
        self.nack_supported = nack_supported
        # The router's payload type for each of ours (-1: not ours), by number.
        self._payload_type_map = [payload_types.get(pt, -1) for pt in range(128)]
        self._rtx_payload_types = rtx_payload_types
        self._extension_ids = extension_ids
        self._extension_heads = _one_byte_heads(extension_ids)
        self._clock_rate = clock_rate
        self._clock = clock
        self._use_fir = use_fir
        self._key_frame_interval = key_frame_request_interval
        self._inactivity_timeout = inactivity_timeout
        self._last_key_frame_request = -1e9
        self._pending_key_frame: asyncio.TimerHandle | None = None
        self._fir_seq = 0
        self._cache: list[bytearray | None] = [None] * RTX_CACHE_SIZE
        self._cache_seq = [-1] * RTX_CACHE_SIZE  # which packet each entry is
        self.sinks: tuple[Sink, ...] = ()
        self.send_time = False
        """Whether packets go out with our abs-send-time (``SEND_TIME_ID``), written
        into padding of their one-byte extension block (the transport's choice)."""
        self.paused = False
        self.audio_level_sink: Callable[[bytearray], None] | None = None
        """Set through ``Producer.audio_level_sink`` (an audio level observer)."""
        # Only a simulcast stream reads payloads, and only VP8 has per-packet fields.
        mime = mime_type.lower()
        self.vp8 = vp8.Vp8Descriptor() if simulcast and mime == "video/vp8" else None
        self._h264 = mime == "video/h264"
        self.layer_bytes = [0] * MAX_TEMPORAL_LAYERS
        # Reception statistics for receiver reports (RFC 3550 appendix A.3).
        self.packet_count = 0
        self.byte_count = 0
        self.packets_retransmitted = 0
        self.packets_repaired = 0
        self._max_seq = -1
        self._cycles = 0
        self._base_seq = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._fraction_lost = 0
        self._last_sr_ntp_middle = 0
        self._last_sr_arrival = 0.0
        self.sr_ntp: float | None = None
        """Seconds (NTP) of the latest sender report, with ``sr_rtp`` its RTP timestamp."""
        self.sr_rtp = 0
        # Interarrival jitter (RFC 3550 appendix A.8), in timestamp units.
        self.jitter = 0.0
        self._transit = float("inf")
        # Health, judged off the hot path.
        self.last_packet_at: float | None = None
        self.timestamp = 0
        """The RTP timestamp of the latest packet (consumers rewrite it from here)."""
        self.frame: tuple[int, int, int, int] | None = None
        """A VP8 simulcast stream's latest packet's (timestamp, PictureID, descriptor
        layout, PictureID offset), None if it has padding: a consumer compares it
        with the previous packet's (``SimulcastConsumer.send_rtp``)."""
        self.active = False
        self.scores = ScoreHistory(0)
        self._score_prior = (0, 0, 0, 0)  # expected, received, repaired, retransmitted
        self._samples: deque[tuple[float, int, tuple[int, ...]]] = deque()
        self.bitrate = 0
        self.layer_bitrates = [0] * MAX_TEMPORAL_LAYERS
        self._peaks: deque[tuple[int, ...]] = deque(maxlen=PEAK_SAMPLES)

    def __repr__(self) -> str:
        return f"<RecvStream {self.index} rid={self.rid} ssrc={self.ssrc}>"

    @property
    def score(self) -> int:
        return self.scores.score

    @property
    def clock_rate(self) -> int:
        return self._clock_rate

    @property
    def clock(self) -> Callable[[], float]:
        """What the stream tells time by (``time.monotonic``; a fake one in tests)."""
        return self._clock

    # -- forwarding (hot path) -----------------------------------------------------

    def receive_rtp(self, buf: bytearray) -> None:
        """One decrypted RTP packet of this encoding (ours to keep).

        A packet nobody takes (no consumer forwards or awaits this encoding, as
        for a simulcast layer above or below every receiver's, and no audio
        level observer reads it) is counted, checked and parsed for its layer
        but not prepared for sending: its extension ids stay as they came, it
        gets no send time and is not cached (no receiver can ask for it again;
        its sequence number is, so that a repair of it is known as a copy).
        """
        second = buf[1]
        pt = self._payload_type_map[second & 0x7F]
        if pt < 0:
            return
        taken = bool(self.sinks) or self.audio_level_sink is not None
        first = buf[0]
        start = 12 + ((first & 0x0F) << 2)  # where the payload starts (so far)
        if first & 0x30:  # X or P: parts libsrtp does not validate for us
            # Raises ValueError when the padding or the extension block overruns.
            start = self._map_extensions(buf, first, start, taken)
        if pt != second & 0x7F:
            buf[1] = (second & 0x80) | pt
        seq, timestamp = _SEQ_AND_TIMESTAMP.unpack_from(buf, 2)
        self.timestamp = timestamp
        # Interarrival jitter, RFC 3550 section 6.4.1 and appendix A.8, in
        # timestamp units: arrival is when the transport read the datagram
        # (no clock call of our own).  The first packet (transit starts at
        # infinity) and a timestamp wrap give an absurd difference: skipped.
        arrival = self._transport.last_activity
        transit = arrival * self._clock_rate - timestamp
        d = transit - self._transit
        self._transit = transit
        if d < 0:
            d = -d
        if d < 2147483648.0:
            self.jitter += (d - self.jitter) * 0.0625
        # RFC 3550 appendix A.1: the highest sequence number and its cycles.
        max_seq = self._max_seq
        if (seq - max_seq) & 0xFFFF < 0x8000 and max_seq >= 0:
            if seq < max_seq:
                self._cycles += 0x10000
            self._max_seq = seq
        elif max_seq < 0:
            self._base_seq = self._max_seq = seq
        size = len(buf)
        self.packet_count += 1
        self.byte_count += size
        self.last_packet_at = arrival
        if not self.active:
            self._activate()
            if not taken:
                # A consumer may aim at the encoding that has just appeared and
                # switch at this very packet: if so, prepare it after all.
                taken = bool(self.sinks) or self.audio_level_sink is not None
                if taken and first & 0x10:
                    self._map_extensions(buf, first, 12 + ((first & 0x0F) << 2), True)
        # A packet nobody takes is not kept (nobody can be sent it again), but
        # its number is: a repair of it is still a copy we did not need.
        index = seq & _RTX_CACHE_MASK
        self._cache[index] = buf if taken else None
        self._cache_seq[index] = seq
        descriptor = self.vp8
        if descriptor is not None:
            # Parsed once here for every consumer; bytes counted per temporal layer.
            if start > size:
                vp8.parse_descriptor(descriptor, buf, 0, 0)  # CSRCs beyond the packet
            else:
                end = size - buf[-1] if first & 0x20 else size
                vp8.parse_descriptor(descriptor, buf, start, end)
            self.layer_bytes[descriptor.tid] += size
            if not taken:
                return
            # Equal for the packets of one picture whose descriptors have the same
            # fields at the same place (a consumer treats them alike); None for a
            # packet with padding.
            self.frame = (
                None
                if first & 0x20
                else (
                    timestamp,
                    descriptor.picture_id,
                    descriptor.layout,
                    descriptor.picture_id_pos,
                )
            )
        if self.paused:
            return
        if self.audio_level_sink is not None:
            self.audio_level_sink(buf)
        for consumer in self.sinks:
            consumer.send_rtp(buf, seq, self)

    def _map_extensions(self, buf: bytearray, first: int, start: int, taken: bool) -> int:
        """Check the padding and, if the packet is ``taken`` (forwarded), map header
        extension ids in place (RFC 8285); return where the payload starts.

        Raises ValueError when the padding or the extension block overruns the
        packet: it is malformed and must not be forwarded (mediasoup drops it too).
        """
        size = len(buf)
        block = start
        if first & 0x10:
            if size < block + 4:
                start = -1
            else:
                start = block + 4 + (((buf[block + 2] << 8) | buf[block + 3]) << 2)
                if start > size:
                    start = -1
        elif start > size:
            start = -1
        if first & 0x20 and size - buf[-1] < start:
            raise ValueError("RTP padding overruns the payload")
        if not first & 0x10:
            return start if start >= 0 else 12 + ((first & 0x0F) << 2)
        if start < 0:
            raise ValueError("RTP header extension block overruns the packet")
        if not taken:
            return start
        if buf[block] != 0xBE or buf[block + 1] != 0xDE:
            rtp_packet.rewrite_extension_ids(buf, self._extension_ids)  # two-byte elements
            return start
        # One-byte elements, as browsers send: the new head of each id/length
        # byte comes from a table (0: not ours to forward, padded out).  With
        # ``send_time``, the first element padded out that leaves room (four
        # bytes, with the padding byte after it: a browser's transport-wide
        # number) gets our abs-send-time instead.
        heads = self._extension_heads
        pos = block + 4
        stamp = self.send_time
        zeros = -1  # where the current run of zero bytes began (padding, padded out)
        while pos < start:
            head = buf[pos]
            if head < 0x10:  # id 0: padding
                if zeros < 0:
                    zeros = pos
                pos += 1
                if stamp and pos - zeros > 3:
                    # Four zero bytes: room for our element (one pass, no rescan).
                    _pack_send_time(buf, zeros, _SEND_TIME | _send_time_now())
                    stamp = False
                    zeros = -1
                continue
            if head >= 0xF0:  # id 15: stop reading (section 4.2)
                break
            length = (head & 0x0F) + 2
            if pos + length > start:  # the element overruns the block
                buf[pos:start] = bytes(start - pos)
                break
            new = heads[head]
            if new == head:
                zeros = -1
            elif new:
                buf[pos] = new
                zeros = -1
            elif stamp and (length > 3 or (length == 3 and pos + 3 < start and not buf[pos + 3])):
                # Read now: the packet leaves in this loop iteration, with
                # every consumer's copy carrying the same value.
                _pack_send_time(buf, pos, _SEND_TIME | _send_time_now())
                if length > 4:
                    buf[pos + 4 : pos + length] = bytes(length - 4)
                stamp = False
                zeros = -1
                pos += length if length > 3 else 4
                continue
            else:
                buf[pos : pos + length] = bytes(length)
                if zeros < 0:
                    zeros = pos
                if stamp and pos + length - zeros > 3:
                    _pack_send_time(buf, zeros, _SEND_TIME | _send_time_now())
                    stamp = False
                    zeros = -1
            pos += length
        return start

    def is_key_frame(self, buf: bytearray) -> bool:
        """Whether ``buf`` (the packet just received) starts a key frame.

        Consumers ask only while they wait for one (a switch, a resume).
        """
        d = self.vp8
        if d is not None:
            return d.valid and d.key_frame
        start = rtp_packet.header_length(buf)
        if start < 0:
            return False
        end = rtp_packet.payload_end(buf)
        if self._h264:
            return h264.is_key_frame(buf, start, end)
        return vp8.is_key_frame(buf, start, end)

    def receive_rtx(self, packet: bytearray) -> None:
        """An RTX packet (RFC 4588): unwrap it into the packet it repairs.

        Raises ValueError when its padding overruns the payload (the transport
        counts it as a malformed RTP datagram).  A padding-only packet, which
        browsers send to probe bandwidth, is dropped quietly.

        A repair is not a sign that the encoding is being sent: it is a copy of
        a packet sent earlier (RFC 4588 section 4), requested by a NACK or sent
        by the browser as a bandwidth probe (libwebrtc probes with RTX copies of
        recent packets when it has them).  So it neither refreshes the time of
        the stream's last packet, which tells an encoding the sender turned off
        (``Producer.stop_timeout``) or a silent stream (``inactivity_timeout``),
        nor revives an inactive stream: it is dropped then.  After a network
        change Chrome resets its estimate and stops its top encoding while it
        probes with copies of that encoding's packets from before the change;
        counted as activity, they kept consumers on it for 1.2-1.6 s with no
        new picture coming (issue 12).
        """
        apt = self._rtx_payload_types.get(packet[1] & 0x7F)
        if apt is None:
            return
        start = rtp_packet.header_length(packet)
        end = rtp_packet.payload_end(packet)
        if start < 0 or end < start:
            raise ValueError("RTX padding overruns the payload")
        if end - start < 2:
            return  # padding only: nothing to repair
        self.packets_retransmitted += 1
        osn = (packet[start] << 8) | packet[start + 1]
        if self._cache_seq[osn & _RTX_CACHE_MASK] == osn:
            return  # already have it: a retransmission we did not need
        if not self.active:
            return  # stopped or silent: a copy of an old packet does not revive it
        original = bytearray(packet[:start])
        original[0] &= 0xDF  # the padding, if any, belonged to the RTX packet
        original[1] = (original[1] & 0x80) | apt
        original[2:4] = packet[start : start + 2]
        if self.ssrc is not None:
            rtp_packet.set_seq_and_ssrc(original, osn, self.ssrc)
        original += packet[start + 2 : end]
        self.packets_repaired += 1
        # A retransmission arrives late by design: it says nothing about the
        # path's jitter (RFC 4588 sends it as a stream of its own).
        transit, jitter, last = self._transit, self.jitter, self.last_packet_at
        self.receive_rtp(original)
        self._transit, self.jitter, self.last_packet_at = transit, jitter, last

    def cached_packet(self, seq: int) -> bytearray | None:
        """The packet ``seq`` if it is still cached.

        A simulcast stream's consumers write their own sequence number,
        timestamp, SSRC (and VP8 PictureID/TL0PICIDX) into the packet before
        encrypting it, so only its payload type, marker and payload are
        certainly the producer's (``timestamp`` and ``vp8`` had the rest).
        """
        index = seq & _RTX_CACHE_MASK
        if self._cache_seq[index] != seq:
            return None
        return self._cache[index]

    # -- statistics ---------------------------------------------------------------

    def expected(self) -> int:
        if self._max_seq < 0:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    def reception_counters(self) -> StreamCounters:
        """What has arrived of this stream so far, as cumulative counters.

        Expected is RFC 3550 appendix A.3's (extended highest - base + 1);
        lost counts retransmitted (RTX) packets as received, as receiver
        reports do.
        """
        expected = self.expected()
        return StreamCounters(
            kind=self.kind,
            expected=expected,
            lost=max(0, expected - self.packet_count),
            jitter_ms=self.jitter * 1000 / self._clock_rate if expected else None,
        )

    @property
    def fraction_lost(self) -> int:
        return self._fraction_lost

    def report_block(self, now: float) -> bytes:
        """Our reception report about this stream (RFC 3550 section 6.4.1)."""
        extended_max = self._cycles + max(self._max_seq, 0)
        expected = self.expected()
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

    def receive_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> bool:
        """Keep the sender's NTP/RTP pair; update the loss score; return if it changed."""
        self._last_sr_ntp_middle = (ntp >> 16) & 0xFFFFFFFF
        self._last_sr_arrival = now
        self.sr_ntp = ntp / 4294967296.0
        self.sr_rtp = rtp_timestamp
        return self.update_score()

    def update_score(self) -> bool:
        """Score the interval since the previous update from its losses (mediasoup)."""
        totals = (
            self.expected(),
            self.packet_count,
            self.packets_repaired,
            self.packets_retransmitted,
        )
        expected, received, repaired, retransmitted = (
            a - b for a, b in zip(totals, self._score_prior, strict=True)
        )
        self._score_prior = totals
        if not self.active:
            return False
        # Repaired packets went through receive_rtp too: count them apart, as
        # mediasoup's media counter (which they do not reach) does.
        sample = loss_score(
            expected, received - repaired, repaired, retransmitted, rtx=self.rtx_ssrc is not None
        )
        return self.scores.add(sample)

    # -- health (off the hot path) -------------------------------------------------

    def _activate(self) -> None:
        self.active = True
        self.scores.reset(10)
        if self.producer is not None:
            self.producer.stream_activity_changed(self)

    def sample(self, now: float) -> bool:
        """Measure the bitrate and judge activity at ``now``; return whether activity changed."""
        samples = self._samples
        samples.append((now, self.byte_count, tuple(self.layer_bytes)))
        while len(samples) > 2 and now - samples[1][0] >= BITRATE_WINDOW:
            samples.popleft()
        then, old_bytes, old_layers = samples[0]
        elapsed = now - then
        if elapsed > 0:
            self.bitrate = int((self.byte_count - old_bytes) * 8 / elapsed)
            layers = self.layer_bytes
            self.layer_bitrates = [
                int((layers[i] - old_layers[i]) * 8 / elapsed) for i in range(MAX_TEMPORAL_LAYERS)
            ]
        if (
            self.active
            and self.last_packet_at is not None
            and now - self.last_packet_at > self._inactivity_timeout
        ):
            self.deactivate()
            return True
        if self.active:
            self._peaks.append((self.bitrate, *self.layer_bitrates))
        return False

    def deactivate(self) -> None:
        """Inactive (score 0, nothing measured) until its next packet: it went
        silent, or the sender stopped it while sending others (``Producer.tick``)."""
        self.active = False
        self.scores.reset(0)
        self.bitrate = 0
        self.layer_bitrates = [0] * MAX_TEMPORAL_LAYERS
        self._peaks.clear()

    def bitrate_up_to(self, temporal_layer: int) -> int:
        """Bits/s of temporal layers 0..``temporal_layer`` (all of it without layer info),
        over the last second."""
        if self.vp8 is None or temporal_layer >= self.temporal_layers - 1:
            return self.bitrate
        return sum(self.layer_bitrates[: temporal_layer + 1])

    def peak_bitrate_up_to(self, temporal_layer: int) -> int:
        """The highest ``bitrate_up_to`` of the last two seconds: what forwarding
        these layers needs, key frames included."""
        peak = self.bitrate_up_to(temporal_layer)
        whole = self.vp8 is None or temporal_layer >= self.temporal_layers - 1
        for sample in self._peaks:
            value = sample[0] if whole else sum(sample[1 : temporal_layer + 2])
            if value > peak:
                peak = value
        return peak

    # -- RTCP out -----------------------------------------------------------------

    def request_key_frame(self) -> None:
        """Ask the sender for a key frame of this encoding (PLI, or FIR if that is all
        it supports; RFC 4585 section 6.3.1, RFC 5104 section 4.3.1).

        Requests collapse into one per interval; one inside the interval is
        sent when it ends rather than dropped, so a late joiner still gets its
        key frame promptly.
        """
        if self.kind != "video" or self._pending_key_frame is not None or self.ssrc is None:
            return
        wait = self._last_key_frame_request + self._key_frame_interval - self._clock()
        if wait <= 0:
            self._send_key_frame_request()
        else:
            loop = asyncio.get_running_loop()
            self._pending_key_frame = loop.call_later(wait, self._send_key_frame_request)

    def _send_key_frame_request(self) -> None:
        self._pending_key_frame = None
        self._last_key_frame_request = self._clock()
        ssrc = self.ssrc
        if ssrc is None:
            return
        sender = self._transport.rtcp_ssrc
        if self._use_fir:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            self._transport.send_rtcp(rtp_packet.build_fir(sender, ssrc, self._fir_seq))
        else:
            self._transport.send_rtcp(rtp_packet.build_pli(sender, ssrc))

    def request_retransmission(self, seqs: list[int]) -> None:
        """Relay a consumer's NACK upstream for packets we never had."""
        if self.nack_supported and self.ssrc is not None and seqs:
            self._transport.send_rtcp(
                rtp_packet.build_nack(self._transport.rtcp_ssrc, self.ssrc, seqs)
            )

    def close(self) -> None:
        if self._pending_key_frame is not None:
            self._pending_key_frame.cancel()
            self._pending_key_frame = None
        self.sinks = ()
        self.producer = None
        self._cache = []
        self._cache_seq = []

    def stats(self, mime_type: str) -> dict[str, Any]:
        """``get_stats`` entry (mediasoup's ``inbound-rtp``)."""
        return {
            "type": "inbound-rtp",
            "timestamp": time.time() * 1000,
            "kind": self.kind,
            "mimeType": mime_type,
            "ssrc": self.ssrc,
            "rtxSsrc": self.rtx_ssrc,
            "rid": self.rid,
            "encodingIdx": self.index,
            "packetCount": self.packet_count,
            "byteCount": self.byte_count,
            "packetsLost": max(0, self.expected() - self.packet_count),
            "packetsRetransmitted": self.packets_retransmitted,
            "packetsRepaired": self.packets_repaired,
            "fractionLost": self._fraction_lost,
            "jitter": int(self.jitter),
            "bitrate": self.bitrate,
            "active": self.active,
            "score": self.score,
        }


__all__ = [
    "BITRATE_WINDOW",
    "RTX_CACHE_SIZE",
    "SEND_TIME_ID",
    "RecvStream",
    "ScoreHistory",
    "Sink",
    "loss_score",
    "send_time_element",
    "stamp_send_time",
]
