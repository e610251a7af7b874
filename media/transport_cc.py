"""Transport-wide congestion control feedback for sending clients (sans-I/O).

Why: a browser sends its top simulcast encoding only once its own bandwidth
estimate has grown past that encoding's bitrate.  With transport-cc negotiated
(draft-holmer-rmcat-transport-wide-cc-extensions-01), Chrome estimates on the
sending side (Google Congestion Control, with probing) from the arrival times
the receiver reports, and reaches a loopback link's capacity in a few seconds.
With REMB alone it climbs by the loss-based rule (about 8 % per second) from
its start bitrate, which takes 15-25 s to reach 2.5 Mbit/s.  mediasoup makes the
same choice: transport-cc when the producer negotiated the extension, REMB
otherwise (``TransportCongestionControlServer``).

This module only reports arrivals; it estimates nothing.  The transport calls
:meth:`TransportCcFeedback.on_packet` with the 16-bit transport-wide sequence
number of every packet that carries one, and :meth:`TransportCcFeedback.build`
every feedback interval, which returns the RTCP packets to send.

Wire format (the draft, section 3.1): RTPFB (PT 205) with FMT 15; after the two
SSRCs, the base sequence number, the packet status count, a 24-bit reference
time in multiples of 64 ms and an 8-bit feedback packet count; then 16-bit
packet chunks (run length, or a status vector of 14 one-bit or 7 two-bit
symbols) and one receive delta per received packet, in multiples of 250 us (one
byte when 0-63.75 ms, else two bytes signed).
"""

from __future__ import annotations

import struct

RTCP_RTPFB = 205
TRANSPORT_CC_FMT = 15

# Packet status symbols (section 3.1.1).
NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2

DELTA_TICK_US = 250
REFERENCE_TICK_US = 64_000
_MAX_RUN_LENGTH = 0x1FFF  # 13 bits
_MAX_REFERENCE = 0xFFFFFF
_HEADER = struct.Struct("!BBHIIHHI")  # common header, SSRCs, base, count, ref|fb count

# libwebrtc keeps one feedback under the IP MTU; a status chunk costs at most
# 2 bytes per 7 packets and a delta at most 2 bytes, so this many packets fit.
MAX_STATUSES_PER_FEEDBACK = 400


class TransportCcFeedback:
    """Arrival times of the transport-wide sequence numbers not yet reported.

    Bounded: a packet more than ``max_gap`` sequence numbers ahead of what is
    pending (a reordered stream cannot be that far ahead; a hostile or restarted
    sender can) starts over from it, and a packet older than what was already
    reported is ignored, as mediasoup does.  So the pending state never holds
    more than ``max_gap`` entries whatever a client sends.

    After :meth:`new_path` the numbers the client sent into the path it left
    are not reported at all (see there).
    """

    def __init__(self, *, max_gap: int = 2000) -> None:
        self.max_gap = max_gap
        self._arrivals: dict[int, int] = {}  # unwrapped sequence number -> arrival (us)
        self._next_base = -1  # the first sequence number the next feedback reports
        self._highest = -1  # unwrapped
        self._feedback_count = 0
        self._rebase = False  # the next packet ahead starts the report (new_path)
        self.media_ssrc = 0
        self.packets_reported = 0
        self.feedbacks_built = 0

    @property
    def pending(self) -> int:
        return len(self._arrivals)

    def on_packet(self, sequence_number: int, arrival_us: int, media_ssrc: int) -> None:
        """Record one packet; ``sequence_number`` is the 16-bit value on the wire."""
        highest = self._highest
        if highest < 0:
            unwrapped = sequence_number
            self._next_base = unwrapped
        else:
            # RFC 3550 appendix A.1 style unwrapping around the highest seen.
            delta = (sequence_number - highest) & 0xFFFF
            unwrapped = highest + delta if delta < 0x8000 else highest + delta - 0x10000
            if unwrapped < self._next_base:
                return  # already reported (as lost): too late
            if self._rebase:
                # The first packet by the new path: what the client sent
                # between the last one reported and this one went into the old
                # path, and is left unreported (new_path).
                self._rebase = False
                self._next_base = unwrapped
            elif unwrapped - self._next_base > self.max_gap:
                self._arrivals.clear()
                self._next_base = unwrapped
        if unwrapped > highest:
            self._highest = unwrapped
        self._arrivals.setdefault(unwrapped, arrival_us)
        self.media_ssrc = media_ssrc

    def new_path(self, sender_ssrc: int) -> list[bytes]:
        """The client's packets come by another path from now on (ICE moved).

        Returns the feedback for what arrived by the old path, to send now;
        the sequence numbers after it up to the first packet that arrives by
        the new path are never reported, neither received nor lost.

        Why: after an address change the client sent for seconds into a path
        that no longer delivers (Chromium notices only after its ~2 s network
        change debounce).  Reported lost, those hundreds of numbers read as
        90-100 % loss on the new path, and Chrome's estimate can collapse.
        Measured (24 address changes, same link or link replaced): in each of
        the 11 runs with over 400 numbers lost (a first feedback of losses
        alone; the estimate was 4.0-7.2 Mbit/s, so more went into the void)
        it fell to 0.3-1.9 Mbit/s within 0.2 s and Chrome switched its top
        simulcast encoding off, which the SFU then had to leave: video back
        after 2.7-4.6 s (9 of 11 over 3 s), against 2.3-2.8 s in 12 of the
        other 13 (3.3 s once, Chromium late to move).
        libwebrtc drops feedback about packets sent on a previous network
        route itself (``TransportFeedbackAdapter`` compares each packet's
        ``network_route``), but only after a route change it deems relevant
        (``IsRelevantRouteChange``: a new network id); a new address on the
        same interface and subnet keeps the id, so there the client cannot
        tell, and the server, which saw the path move, has to.  QUIC does the
        same on a migration (RFC 9000 section 9.4: congestion state is not
        carried over to a new path).  Leaving numbers out is safe on the wire:
        the sender is where a lost feedback packet would leave it (its
        ``TransportFeedbackAdapter`` clears the in-flight bytes of every number
        below an acknowledged one, and estimates from reported packets only).
        """
        packets = self.build(sender_ssrc)
        # Nothing pending now: the next packet ahead of the highest is by the
        # new path (one behind it is a late one of the old path, too late).
        self._rebase = self._highest >= 0
        return packets

    def build(self, sender_ssrc: int) -> list[bytes]:
        """The feedback packets for everything received since the last call."""
        packets: list[bytes] = []
        arrivals = self._arrivals
        if not arrivals:
            return packets
        base = self._next_base
        end = self._highest + 1
        while base < end:
            # A feedback starts at its first received packet's reference time;
            # losses before it are reported by the run of NOT_RECEIVED.
            first = base
            while first not in arrivals:
                first += 1
            reference = arrivals[first] // REFERENCE_TICK_US
            previous_us = reference * REFERENCE_TICK_US
            statuses: list[int] = []
            deltas = bytearray()
            seq = base
            while seq < end and len(statuses) < MAX_STATUSES_PER_FEEDBACK:
                arrival = arrivals.get(seq)
                if arrival is None:
                    statuses.append(NOT_RECEIVED)
                else:
                    ticks = (arrival - previous_us) // DELTA_TICK_US
                    if 0 <= ticks <= 0xFF:  # always so for the first: within one reference tick
                        statuses.append(SMALL_DELTA)
                        deltas.append(ticks)
                    elif -0x8000 <= ticks <= 0x7FFF:
                        statuses.append(LARGE_DELTA)
                        deltas += struct.pack("!h", ticks)
                    else:
                        break  # over 8 s from the previous packet: the next feedback
                    # Deltas are quantised; summing the quantised ones keeps
                    # the receiver's reconstruction from drifting.
                    previous_us += ticks * DELTA_TICK_US
                seq += 1
            packets.append(self._packet(sender_ssrc, base, reference, statuses, deltas))
            base = seq
        self.packets_reported += len(arrivals)
        arrivals.clear()
        self._next_base = end
        return packets

    def _packet(
        self, sender_ssrc: int, base: int, reference: int, statuses: list[int], deltas: bytearray
    ) -> bytes:
        chunks = encode_chunks(statuses)
        body_len = 16 + 2 * len(chunks) + len(deltas)  # after the 4-byte common header
        padding = -body_len % 4
        words = (4 + body_len + padding) // 4 - 1
        # RFC 3550 section 6.4.1 padding: the P bit, the last byte counts it.
        first = 0x80 | (0x20 if padding else 0) | TRANSPORT_CC_FMT
        count = self._feedback_count
        self._feedback_count = (count + 1) & 0xFF
        self.feedbacks_built += 1
        out = bytearray(
            _HEADER.pack(
                first,
                RTCP_RTPFB,
                words,
                sender_ssrc,
                self.media_ssrc,
                base & 0xFFFF,
                len(statuses),
                ((reference & _MAX_REFERENCE) << 8) | count,
            )
        )
        for chunk in chunks:
            out += chunk.to_bytes(2, "big")
        out += deltas
        if padding:
            out += bytes(padding - 1) + bytes((padding,))
        return bytes(out)


def encode_chunks(statuses: list[int]) -> list[int]:
    """Packet status chunks for ``statuses`` (section 3.1.3 and 3.1.4).

    Greedy: long runs as run-length chunks, otherwise a one-bit vector of 14
    when only "received small" and "not received" occur, else a two-bit vector
    of 7.  A vector may extend past the last status; the status count tells the
    receiver where to stop.
    """
    chunks: list[int] = []
    n = len(statuses)
    i = 0
    while i < n:
        symbol = statuses[i]
        run = 1
        while i + run < n and statuses[i + run] == symbol and run < _MAX_RUN_LENGTH:
            run += 1
        if run >= 14 or (i + run == n and run >= 7):
            chunks.append((symbol << 13) | run)
            i += run
            continue
        window = statuses[i : i + 14]
        if max(window) <= SMALL_DELTA:
            chunk = 0x8000
            for j, status in enumerate(window):
                chunk |= status << (13 - j)
            chunks.append(chunk)
            i += 14
            continue
        if run >= 7:
            chunks.append((symbol << 13) | run)
            i += run
            continue
        chunk = 0xC000
        for j, status in enumerate(statuses[i : i + 7]):
            chunk |= status << (12 - 2 * j)
        chunks.append(chunk)
        i += 7
    return chunks


def parse_feedback(packet: bytes) -> tuple[int, list[int | None]]:
    """(base sequence number, arrival time in us or None per packet) of one feedback.

    The receiver's view of what :class:`TransportCcFeedback` sends (used to
    test it and to read a client's feedback); raises ValueError on a packet
    that does not add up.
    """
    if len(packet) < 20 or packet[1] != RTCP_RTPFB or packet[0] & 0x1F != TRANSPORT_CC_FMT:
        raise ValueError("not a transport-cc feedback")
    end = len(packet)
    if packet[0] & 0x20:
        end -= packet[-1]
    base, count, reference_and_count = struct.unpack_from("!HHI", packet, 12)
    reference = reference_and_count >> 8
    if reference & 0x800000:
        reference -= 0x1000000  # 24-bit signed
    statuses: list[int] = []
    pos = 20
    while len(statuses) < count:
        if pos + 2 > end:
            raise ValueError("feedback ends inside its packet chunks")
        chunk = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
        remaining = count - len(statuses)
        if not chunk & 0x8000:
            statuses.extend([(chunk >> 13) & 0x3] * min(chunk & _MAX_RUN_LENGTH, remaining))
        elif not chunk & 0x4000:
            statuses.extend((chunk >> (13 - j)) & 1 for j in range(min(14, remaining)))
        else:
            statuses.extend((chunk >> (12 - 2 * j)) & 3 for j in range(min(7, remaining)))
    arrivals: list[int | None] = []
    time_us = reference * REFERENCE_TICK_US
    for status in statuses:
        if status == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if status == SMALL_DELTA:
            if pos + 1 > end:
                raise ValueError("feedback ends inside its deltas")
            time_us += packet[pos] * DELTA_TICK_US
            pos += 1
        elif status == LARGE_DELTA:
            if pos + 2 > end:
                raise ValueError("feedback ends inside its deltas")
            time_us += struct.unpack_from("!h", packet, pos)[0] * DELTA_TICK_US
            pos += 2
        else:
            raise ValueError("reserved packet status symbol")
        arrivals.append(time_us)
    return base, arrivals
