"""The simulcast forwarding fast path, with several consumers sharing the producer's buffers.

A simulcast producer's stream hands each packet only to the consumers that
want it (``Consumer.wants``, recomputed by ``Producer.sinks_changed``); after
the first packet of a picture the rest of it takes the *run* (no
``SeqManager``, no VP8 rewriter); and each consumer writes its sequence
number, timestamp, SSRC and PictureID/TL0PICIDX into the producer's buffer
just before its transport copies it, the next consumer overwriting the same
bytes.  Retransmissions rebuild what was sent (``_rewritten``).

Everything here drives real producers and consumers packet by packet, with
fake transports that copy each packet at send time (as encryption does) and
a fake clock.  The strongest check is the *twin*: each consumer of a shared
producer has a twin, the only consumer of a producer of its own fed copies
of the same packets, and the two must send the same bytes.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from media.rtp_packet import header_length, iter_rtcp, parse_nack, payload_end
from media.rtp_parameters import get_consumer_rtp_parameters
from media.rtp_stream import RecvStream
from media.seq_manager import SeqManager
from media.simulcast_consumer import SimulcastConsumer

from .simulcast_harness import FRAME_TICKS, L1T3, ConsumerSide, Sent, Simulcast
from .vp8_packets import one_byte_extension, parse_vp8_fields, rtp, vp8_descriptor

# -- building blocks --------------------------------------------------------------------------


def layers(spatial: int, temporal: int) -> dict[str, int]:
    return {"spatialLayer": spatial, "temporalLayer": temporal}


def add_consumer(
    sim: Simulcast,
    *,
    ssrc: int,
    preferred_layers: Any = None,
    paused: bool = False,
    rtx: bool = True,
    first_seq: int = 1000,
) -> tuple[SimulcastConsumer, ConsumerSide]:
    """A consumer of ``sim``'s producer with its own SSRC (RTX SSRC ``ssrc + 1`` if
    ``rtx``) and a known first sequence number (mediasoup's is random)."""
    side = ConsumerSide()
    codecs = [
        c
        for c in sim.caps["codecs"]
        if c["kind"] == "video" and (rtx or not str(c["mimeType"]).lower().endswith("/rtx"))
    ]
    rtp_parameters = get_consumer_rtp_parameters(
        sim.producer.consumable_rtp_parameters,
        {"codecs": codecs, "headerExtensions": []},
        ssrc=ssrc,
        rtx_ssrc=ssrc + 1,
    )
    consumer = SimulcastConsumer(
        transport=side,  # type: ignore[arg-type]
        producer=sim.producer,
        rtp_parameters=rtp_parameters,
        paused=paused,
        app_data=None,
        preferred_layers=preferred_layers,
    )
    consumer._seq = SeqManager(16, initial_output=first_seq)
    sim.producer.add_consumer(consumer)
    return consumer, side


def picture(
    sim: Simulcast,
    index: int,
    count: int = 1,
    *,
    key: bool = False,
    tid: int | None = None,
    layer_sync: bool = False,
    wide: bool = True,
    size: int = 200,
    rng: random.Random | None = None,
) -> list[bytearray]:
    """The next picture of encoding ``index`` in ``count`` packets, as an encoder sends
    it (PictureID +1, TL0PICIDX +1 on a base layer picture, marker on the last packet).

    The payload after the descriptor names the encoding and the packet's sequence
    number, so whatever a consumer sends can be told apart.  ``wide=False`` sends
    a 7-bit PictureID.  With ``rng``, packets vary: some carry header extensions
    (MID and RID, padded out on the way) or padding after the payload, a picture
    may have no TL0PICIDX, and (more than senders do) one packet in 30 has the
    other PictureID width.
    """
    layer = sim.layers[index]
    if layer.frame:
        layer.timestamp = (layer.timestamp + FRAME_TICKS) & 0xFFFFFFFF
        layer.picture = (layer.picture + 1) & 0x7FFF
    if tid is None:
        tid = 0 if key else L1T3[layer.frame % 4]
    if tid == 0 and layer.frame:
        layer.tl0 = (layer.tl0 + 1) & 0xFF
    layer.frame += 1
    with_tl0 = rng is None or key or rng.random() > 0.05
    packets = []
    for i in range(count):
        layer.seq = (layer.seq + 1) & 0xFFFF
        this_wide = wide if rng is None or rng.random() > 1 / 30 else not wide
        descriptor = vp8_descriptor(
            picture_id=layer.picture if this_wide else layer.picture & 0x7F,
            wide=this_wide,
            tl0=layer.tl0 if with_tl0 else None,
            tid=tid,
            layer_sync=layer_sync or key,
            start=i == 0,
        )
        header = bytes([0x00 if key and i == 0 else 0x01])
        tag = struct.pack("!BH", index, layer.seq)
        body = (tag * (size // 3 + 1))[: size - 1]
        extensions = padding = b""
        if rng is not None and rng.random() < 0.3:
            extensions = one_byte_extension(1, b"0") + one_byte_extension(2, b"r%d" % index)
        if rng is not None and rng.random() < 0.1:
            padding = bytes([rng.randrange(1, 40)])
        packets.append(
            rtp(
                ssrc=layer.ssrc,
                seq=layer.seq,
                timestamp=layer.timestamp,
                payload=descriptor + header + body,
                pt=sim.pt,
                marker=i == count - 1,
                extensions=extensions,
                padding=padding[0] if padding else 0,
            )
        )
    return packets


def probe(sim: Simulcast, index: int, size: int = 200) -> bytearray:
    """A padding-only packet of encoding ``index`` (a bandwidth probe: not forwarded)."""
    layer = sim.layers[index]
    layer.seq = (layer.seq + 1) & 0xFFFF
    return rtp(
        ssrc=layer.ssrc,
        seq=layer.seq,
        timestamp=layer.timestamp,
        payload=b"",
        pt=sim.pt,
        padding=size,
    )


def seq_of(packet: bytes | bytearray) -> int:
    return int(struct.unpack_from("!H", packet, 2)[0])


def vp8_fields(sent: Sent) -> tuple[int, int, int]:
    """(PictureID, TL0PICIDX, TID) of a packet sent, which must have a 15-bit PictureID."""
    data = sent.data
    start = header_length(data)
    assert data[start] & 0x80 and data[start + 1] & 0x80 and data[start + 2] & 0x80, (
        "the PictureID goes out 15 bits wide"
    )
    return sent.vp8


def body(data: bytes) -> bytes:
    """The payload after the VP8 descriptor: the producer's, never rewritten."""
    pos = header_length(data)
    first = data[pos]
    pos += 1
    if first & 0x80:  # X
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I, one byte more with M
            pos += 2 if data[pos] & 0x80 else 1
        if ext & 0x40:  # L
            pos += 1
        if ext & 0x30:  # T or K
            pos += 1
    return data[pos : payload_end(data)]


def unwrap(values: Iterable[int], bits: int) -> list[int]:
    """Numbers of ``bits`` bits as offsets from the first (they may wrap, or go back)."""
    size, half = 1 << bits, 1 << (bits - 1)
    out: list[int] = []
    first = -1
    for value in values:
        if first < 0:
            first = value
        delta = (value - first) % size
        out.append(delta - size if delta >= half else delta)
    return out


def holes(sent: list[Sent]) -> list[int]:
    """Sequence numbers missing between the lowest and the highest sent, as offsets."""
    offsets = set(unwrap((s.seq for s in sent), 16))
    return sorted(set(range(min(offsets), max(offsets) + 1)) - offsets)


def check_stream(sent: list[Sent], ssrc: int, *, skipped: Iterable[int] = ()) -> None:
    """What a receiver needs to see one stream: the consumer's SSRC; every number between
    the first and the last, except ``skipped`` (offsets from the first); a repeated
    number repeats the same bytes; in sequence number order, each picture has the
    next PictureID and a later timestamp, its packets share both, and TL0PICIDX
    moves on exactly at each picture of the base temporal layer (RFC 7741)."""
    assert sent, "nothing was sent"
    assert {s.ssrc for s in sent} == {ssrc}
    by_seq: dict[int, Sent] = {}
    for s in sent:
        if s.seq in by_seq:
            assert by_seq[s.seq].data == s.data, f"{s.seq} sent twice with different bytes"
        by_seq[s.seq] = s
    assert holes(sent) == sorted(skipped)
    offsets = unwrap((s.seq for s in sent), 16)
    numbers = {offset: s.seq for offset, s in zip(offsets, sent, strict=True)}
    ordered = [by_seq[numbers[offset]] for offset in sorted(numbers)]
    fields = [vp8_fields(s) for s in ordered]
    timestamps = [s.timestamp for s in ordered]
    for (a, fa), (b, fb) in itertools.pairwise(zip(timestamps, fields, strict=True)):
        picture_step = (fb[0] - fa[0]) & 0x7FFF
        assert picture_step in (0, 1), f"PictureID {fa[0]} then {fb[0]}"
        base_picture = picture_step == 1 and fb[2] == 0
        assert (fb[1] - fa[1]) & 0xFF == base_picture, f"TL0PICIDX {fa[1]} then {fb[1]}"
        step = (b - a) & 0xFFFFFFFF
        if picture_step == 0:
            assert step == 0, f"one picture, timestamps {a} and {b}"
        else:
            assert 0 < step < 0x80000000, f"timestamp {a} then {b}"


# -- twins: what a consumer sends with others must be what it sends alone ----------------------


def without_the_run(consumer: SimulcastConsumer) -> None:
    """Every packet of ``consumer`` through the managers and the rewriter (no run)."""
    first = consumer._send_first

    def first_only(packet: bytearray, seq: int, stream: RecvStream) -> None:
        first(packet, seq, stream)
        consumer._run_next = -1

    consumer._send_first = first_only  # type: ignore[method-assign]


@dataclass
class Receiver:
    consumer: SimulcastConsumer
    side: ConsumerSide
    twin: SimulcastConsumer
    twin_side: ConsumerSide
    ssrc: int

    def take(self) -> list[Sent]:
        """What the consumer sent since last asked; the twin must have sent the same."""
        sent, alone = self.side.take(), self.twin_side.take()
        assert [s.data for s in sent] == [s.data for s in alone], "differs from its twin's"
        return sent


class Fanout:
    """A simulcast producer with several consumers, each with a twin alone on a producer
    of its own; every packet goes to every producer (as a copy).

    With ``twins_without_the_run``, every packet of a twin goes through the
    managers, as before there was a run: the consumer must still send the same.
    """

    def __init__(self, *, twins_without_the_run: bool = False) -> None:
        self.twins_without_the_run = twins_without_the_run
        self.sim = Simulcast()
        self.alone: list[Simulcast] = []
        self.receivers: list[Receiver] = []
        self.packets: dict[tuple[int, int], bytes] = {}  # (encoding, seq): as sent

    @property
    def sims(self) -> list[Simulcast]:
        return [self.sim, *self.alone]

    def add(
        self,
        *,
        ssrc: int,
        preferred_layers: Any = None,
        paused: bool = False,
        rtx: bool = True,
        first_seq: int | None = None,
    ) -> Receiver:
        kwargs: dict[str, Any] = {
            "ssrc": ssrc,
            "preferred_layers": preferred_layers,
            "paused": paused,
            "rtx": rtx,
            "first_seq": ssrc & 0x7FFF if first_seq is None else first_seq,
        }
        consumer, side = add_consumer(self.sim, **kwargs)
        alone = Simulcast()
        alone.clock.now = self.sim.clock.now
        self.alone.append(alone)
        twin, twin_side = add_consumer(alone, **kwargs)
        if self.twins_without_the_run:
            without_the_run(twin)
        receiver = Receiver(consumer, side, twin, twin_side, ssrc)
        self.receivers.append(receiver)
        return receiver

    def receive(self, index: int, packets: Iterable[bytes | bytearray]) -> None:
        for packet in packets:
            self.packets[index, seq_of(packet)] = bytes(packet)
            for sim in self.sims:
                sim.receive(index, bytearray(packet))

    def send(self, index: int, count: int = 1, **kwargs: Any) -> list[bytearray]:
        """The next picture of encoding ``index``, received in order by every producer."""
        packets = picture(self.sim, index, count, **kwargs)
        self.receive(index, packets)
        return packets

    def frames(
        self,
        frames: int,
        *,
        counts: tuple[int, ...] = (1, 2, 4),
        key: bool = False,
        narrow: tuple[int, ...] = (),
    ) -> None:
        """``frames`` pictures of every encoding (``counts`` packets each), 1/30 s apart;
        the encodings in ``narrow`` with 7-bit PictureIDs."""
        for i in range(frames):
            for index, count in enumerate(counts):
                self.send(index, count, key=key and i == 0, wide=index not in narrow)
            self.advance(1 / 30)

    def advance(self, seconds: float) -> None:
        for sim in self.sims:
            sim.clock.now += seconds

    def tick(self, seconds: float = 0.25) -> None:
        """Move the clocks ``seconds`` on and judge the producers' streams."""
        for sim in self.sims:
            sim.tick(seconds)

    def sender_report(self, index: int, ntp_seconds: float) -> None:
        """Encoding ``index`` reports its latest timestamp as captured at ``ntp_seconds``."""
        for sim in self.sims:
            sim.sender_report(index, ntp_seconds, self.sim.layers[index].timestamp)

    def cap(self, receiver: Receiver, bitrate: int | None) -> None:
        receiver.consumer.available_bitrate = bitrate
        receiver.twin.available_bitrate = bitrate

    def close(self, receiver: Receiver) -> None:
        receiver.consumer.close()
        receiver.twin.close()
        self.receivers.remove(receiver)

    async def set_preferred_layers(self, receiver: Receiver, value: dict[str, int]) -> None:
        await receiver.consumer.set_preferred_layers(value)
        await receiver.twin.set_preferred_layers(value)

    async def pause(self, receiver: Receiver) -> None:
        await receiver.consumer.pause()
        await receiver.twin.pause()

    async def resume(self, receiver: Receiver) -> None:
        await receiver.consumer.resume()
        await receiver.twin.resume()

    def nack(self, receiver: Receiver, seqs: list[int]) -> None:
        receiver.consumer.receive_nack(seqs)
        receiver.twin.receive_nack(seqs)

    def origin(self, sent: Sent) -> bytes:
        """The producer's packet ``sent`` was made from (found by the tag in its payload)."""
        data = sent.data
        start = header_length(data)
        index, seq = struct.unpack_from("!BH", data, start + 7)
        return self.packets[index, seq]


def sent_in_runs(consumer: SimulcastConsumer, side: ConsumerSide) -> Counter[str]:
    """Counts, from now on, the packets ``consumer`` is handed (``handed``), those that
    go through ``_send_first`` (``first``) and those sent without it (``run``)."""
    counts: Counter[str] = Counter()
    send_first, send_rtp = consumer._send_first, consumer.send_rtp

    def first(packet: bytearray, seq: int, stream: RecvStream) -> None:
        counts["first"] += 1
        send_first(packet, seq, stream)

    def handed(packet: bytearray, seq: int, stream: RecvStream | None = None) -> None:
        counts["handed"] += 1
        firsts, sent = counts["first"], len(side.sent)
        send_rtp(packet, seq, stream)
        if counts["first"] == firsts and len(side.sent) > sent:
            counts["run"] += 1

    consumer._send_first = first  # type: ignore[method-assign]
    consumer.send_rtp = handed  # type: ignore[method-assign]
    return counts


def counted_calls(consumer: SimulcastConsumer) -> Counter[int]:
    """How many packets each stream (by encoding index) hands ``consumer`` from now on."""
    calls: Counter[int] = Counter()
    send_rtp = consumer.send_rtp

    def counting(packet: bytearray, seq: int, stream: RecvStream | None = None) -> None:
        calls[-1 if stream is None else stream.index] += 1
        send_rtp(packet, seq, stream)

    consumer.send_rtp = counting  # type: ignore[method-assign]
    return calls


def deliver(sim: Simulcast, index: int, packets: Iterable[bytearray]) -> list[bytearray]:
    packets = list(packets)
    for packet in packets:
        sim.receive(index, packet)
    return packets


def unwrapped_rtx(sent: Sent, consumer: SimulcastConsumer) -> bytes:
    """The packet an RTX packet (RFC 4588) carries, as the receiver rebuilds it."""
    data = sent.data
    assert sent.ssrc == consumer.rtx_ssrc
    assert data[1] & 0x7F == consumer.rtx_payload_type
    start = header_length(data)
    inner = bytearray(data[:start])
    inner[1] = (data[1] & 0x80) | consumer.rtp_parameters["codecs"][0]["payloadType"]
    inner[2:4] = data[start : start + 2]  # the original sequence number
    struct.pack_into("!I", inner, 8, consumer.ssrc)
    return bytes(inner + data[start + 2 :])


def tids(sent: list[Sent]) -> set[int]:
    return {s.vp8[2] for s in sent}


# -- 1. several consumers, one buffer ---------------------------------------------------------


async def test_consumers_on_different_layers_each_send_what_they_would_send_alone() -> None:
    fan = Fanout()
    full = fan.add(ssrc=0x1000)  # r2, every temporal layer
    base = fan.add(ssrc=0x2000, preferred_layers=layers(2, 0))  # r2, base layer only
    middle = fan.add(ssrc=0x3000, preferred_layers=layers(1, 1))  # r1 without TID 2
    idle = fan.add(ssrc=0x4000, paused=True)
    fan.frames(1)  # every encoding active: each consumer aims at its own
    assert [r.consumer.target_layers for r in fan.receivers] == [
        layers(2, 2),
        layers(2, 0),
        layers(1, 1),
        None,
    ]
    fan.frames(25, key=True)  # r2 in 4 packets a picture, r1 in 2, r0 in 1

    r2 = [p for (index, _), p in fan.packets.items() if index == 2][4:]  # from the key frame
    r1 = [p for (index, _), p in fan.packets.items() if index == 1][2:]
    sent = {r.ssrc: r.take() for r in fan.receivers}  # each the same as its twin's
    assert len(sent[0x1000]) == len(r2)
    assert len(sent[0x2000]) == sum(parse_vp8_fields(p)[2] == 0 for p in r2)  # TID 0 pictures only
    assert len(sent[0x3000]) == sum(parse_vp8_fields(p)[2] <= 1 for p in r1)
    assert sent[0x4000] == []
    assert (tids(sent[0x1000]), tids(sent[0x2000]), tids(sent[0x3000])) == ({0, 1, 2}, {0}, {0, 1})
    for receiver in (full, base, middle):
        check_stream(sent[receiver.ssrc], receiver.ssrc)
        for s in sent[receiver.ssrc]:
            original = fan.origin(s)
            assert body(s.data) == body(original)
            assert s.marker == bool(original[1] & 0x80)
            assert s.data[1] & 0x7F == receiver.consumer.rtp_parameters["codecs"][0]["payloadType"]
    assert idle.consumer.current_layers is None
    # The two consumers of r2 wrote their own numbers into the same buffers, in turn.
    for a, b in zip(sent[0x1000][:4], sent[0x2000][:4], strict=True):  # the key frame
        assert fan.origin(a) == fan.origin(b)
        assert (a.seq, b.seq) == (0x1000 + sent[0x1000].index(a), 0x2000 + sent[0x2000].index(b))


# -- 2. retransmissions -----------------------------------------------------------------------


def started(fan: Fanout, frames: int = 8) -> None:
    """Every encoding active, a key frame of each, ``frames`` more pictures; forget the output."""
    fan.frames(1)
    fan.frames(frames, key=True)
    for receiver in fan.receivers:
        receiver.take()


async def test_a_retransmission_is_what_was_sent_though_others_rewrote_the_buffer() -> None:
    fan = Fanout()
    first = fan.add(ssrc=0x1000)
    plain = fan.add(ssrc=0x2000, rtx=False)  # retransmits the packet itself
    fewer = fan.add(ssrc=0x3000, preferred_layers=layers(2, 1))  # writes last, other numbers
    started(fan)
    fan.frames(8)
    sent = {r.ssrc: r.take() for r in fan.receivers}
    fan.frames(4)  # the buffers are the cache's: rewritten since, by all three in turn
    for receiver in fan.receivers:
        receiver.take()

    for receiver in (first, plain, fewer):
        originals = sent[receiver.ssrc]
        fan.nack(receiver, [s.seq for s in originals])
        again = receiver.take()  # the twin's too: what it would retransmit alone
        assert len(again) == len(originals) > 0
        if receiver is plain:
            assert [s.data for s in again] == [s.data for s in originals]
            continue
        assert [unwrapped_rtx(s, receiver.consumer) for s in again] == [s.data for s in originals]
        assert unwrap((s.seq for s in again), 16) == list(range(len(again)))  # RTX's own
    assert first.consumer.retransmitted_count == len(sent[0x1000])


async def test_a_retransmission_after_a_switch_is_what_was_sent_before_it() -> None:
    fan = Fanout()
    mover = fan.add(ssrc=0x1000)
    stayer = fan.add(ssrc=0x2000)
    started(fan)
    fan.frames(4)
    before = mover.take()
    await fan.set_preferred_layers(mover, layers(0, 2))
    fan.frames(1, key=True)  # r0's key frame: the switch
    fan.frames(4)  # r2's buffers rewritten by the other consumer alone
    after = mover.take()
    assert mover.consumer.current_layers == layers(0, 2)
    check_stream(before + after, mover.ssrc)
    stayer.take()

    fan.nack(mover, [s.seq for s in before[-8:]] + [s.seq for s in after[:3]])

    again = [unwrapped_rtx(s, mover.consumer) for s in mover.take()]
    assert again == [s.data for s in before[-8:] + after[:3]]


async def test_a_loss_mid_picture_is_asked_upstream_and_the_repair_fills_its_hole() -> None:
    fan = Fanout()
    receiver = fan.add(ssrc=0x1000)
    other = fan.add(ssrc=0x2000)
    started(fan)
    packets = picture(fan.sim, 2, 6, tid=0)
    fan.receive(2, packets[:2])
    fan.receive(2, packets[3:4])  # packets[2] is lost on the way
    head = receiver.take()
    assert unwrap((s.seq for s in head), 16) == [0, 1, 3]
    fan.sim.send_side.rtcp.clear()

    fan.nack(receiver, [(head[0].seq + 2) & 0xFFFF])  # in the middle of the picture

    [(_pt, _fmt, nack)] = list(iter_rtcp(fan.sim.send_side.rtcp[-1]))
    assert parse_nack(nack) == (1003, [seq_of(packets[2])])
    fan.receive(2, packets[4:])  # the rest of the picture...
    fan.receive(2, packets[2:3])  # ...then the repair
    fan.send(2, 3, tid=0)  # and the next picture
    rest = receiver.take()
    sent = head + rest
    assert unwrap((s.seq for s in sent), 16) == [0, 1, 3, 4, 5, 2, 6, 7, 8]
    check_stream(sent, receiver.ssrc)
    assert [body(s.data) for s in sent[:6]] == [
        body(bytes(p)) for p in (*packets[:2], *packets[3:], packets[2])
    ]
    check_stream(other.take(), other.ssrc)


# -- 3. runs: pictures in several packets, with losses, reordering, padding, a switch ---------


async def test_packets_of_a_picture_keep_their_numbers_through_loss_reorder_and_switch() -> None:
    fan = Fanout()
    # Each consumer's first output is its key frame, then 7 pictures of 4 packets: the
    # producer's numbers, its timestamp and PictureID, and the consumer's first output
    # number all wrap in the picture below.
    r2 = fan.sim.layers[2]
    r2.seq, r2.picture, r2.tl0 = 0xFFFF - 38, 0x7FF6, 0xFE
    r2.timestamp = (-9 * FRAME_TICKS - 1500) & 0xFFFFFFFF
    both = fan.add(ssrc=0x1000, first_seq=0x10000 - 34)  # r2, every temporal layer
    mover = fan.add(ssrc=0x2000, preferred_layers=layers(2, 1))  # r2 without TID 2, then r1
    started(fan, 8)

    big = picture(fan.sim, 2, 6, tid=0)
    assert [seq_of(p) for p in big] == [0xFFFE, 0xFFFF, 0, 1, 2, 3]
    # 0 lost for now; 3 before 2; 1 twice; a bandwidth probe.
    fan.receive(2, [big[0], big[1], big[3], big[5], big[4], big[3], probe(fan.sim, 2)])
    small = picture(fan.sim, 2, 3, tid=2)  # dropped by the mover (temporal layer 1)
    fan.receive(2, small)
    fan.receive(2, [big[2], probe(fan.sim, 2)])  # the repair comes late
    unfinished = picture(fan.sim, 2, 4, tid=0)
    fan.receive(2, [*unfinished[:2], unfinished[0]])  # repeated, which ends the run
    await fan.set_preferred_layers(mover, layers(1, 2))
    key = picture(fan.sim, 1, 2, key=True)
    fan.receive(1, key)  # the mover switches before r2's picture is complete
    fan.receive(2, unfinished[2:])
    for _ in range(3):
        fan.send(1, 2)
        fan.send(2, 2)

    sent = both.take()
    numbers = [0, 1, 3, 5, 4, 3, 6, 7, 8, 2, 9, 10, 9, *range(11, 19)]
    assert unwrap((s.seq for s in sent), 16) == numbers
    assert sent[0].seq == 0xFFFE
    check_stream(sent, both.ssrc)
    assert [s.data for s in sent if s.seq == sent[2].seq] == [sent[2].data] * 2
    order = [*big[:2], big[3], big[5], big[4], big[3], *small, big[2], *unfinished[:2]]
    order += [unfinished[0], *unfinished[2:]]
    assert [body(s.data) for s in sent[: len(order)]] == [body(bytes(p)) for p in order]

    moved = mover.take()
    # The unfinished picture's number after its last packet sent is left out.
    assert unwrap((s.seq for s in moved), 16) == [0, 1, 3, 5, 4, 3, 2, 6, 7, 6, *range(9, 17)]
    check_stream(moved, mover.ssrc, skipped=[8])
    assert body(moved[10].data) == body(bytes(key[0])) and moved[10].vp8[2] == 0
    assert mover.consumer.current_layers == layers(1, 2)


async def test_a_switch_to_an_encoding_at_the_same_tl0picidx_still_moves_it_on() -> None:
    # The rewriter remembers the last TL0PICIDX it numbered (the rest of the
    # picture and its temporal layers have the same): a switch must forget it.
    fan = Fanout()
    r0, r2 = fan.sim.layers[0], fan.sim.layers[2]
    r0.tl0 = (r2.tl0 - 1) & 0xFF  # in step: r0's key frame gets r2's last TL0PICIDX
    mover = fan.add(ssrc=0x1000)
    fan.add(ssrc=0x2000)
    fan.frames(1)
    fan.frames(8, key=True)
    before = mover.take()
    await fan.set_preferred_layers(mover, layers(0, 2))
    fan.frames(4, key=True)
    after = mover.take()

    assert mover.consumer.current_layers == layers(0, 2)
    assert parse_vp8_fields(fan.origin(after[0]))[1] == parse_vp8_fields(fan.origin(before[-1]))[1]
    assert after[0].vp8[1] == (before[-1].vp8[1] + 1) & 0xFF
    check_stream(before + after, mover.ssrc)


# -- 4. who is handed what: wants / sinks_changed -----------------------------------------------


def routed() -> tuple[Simulcast, list[SimulcastConsumer], list[Counter[int]], list[ConsumerSide]]:
    """Four consumers on r2, r0 (base layer), r1 (paused) and r1; every encoding active."""
    sim = Simulcast()
    specs: list[dict[str, Any]] = [
        {"preferred_layers": layers(2, 2)},
        {"preferred_layers": layers(0, 0)},
        {"preferred_layers": layers(1, 1), "paused": True},
        {"preferred_layers": layers(1, 2)},
    ]
    made = [add_consumer(sim, ssrc=0x1000 * (i + 1), **spec) for i, spec in enumerate(specs)]
    for index in range(3):
        deliver(sim, index, picture(sim, index))
    return sim, [c for c, _ in made], [counted_calls(c) for c, _ in made], [s for _, s in made]


def pictures(sim: Simulcast, count: int = 1, *, key: bool = False) -> None:
    """``count`` pictures of every encoding, r2 in 3 packets (a key frame first if asked)."""
    for i in range(count):
        for index in range(3):
            deliver(sim, index, picture(sim, index, 3 if index == 2 else 1, key=key and i == 0))
        sim.clock.now += 1 / 30


def test_a_stream_hands_its_packets_only_to_the_consumers_that_forward_it() -> None:
    sim, consumers, calls, sides = routed()
    pictures(sim, 1, key=True)
    for count in calls:
        count.clear()

    pictures(sim, 10)

    assert calls == [Counter({2: 30}), Counter({0: 10}), Counter(), Counter({1: 10})]
    # The key frame, then: every packet; TID 0 pictures (frames 4 and 8); none; all.
    assert [len(side.take()) for side in sides] == [3 + 30, 1 + 2, 0, 1 + 10]
    assert [s.sinks for s in sim.producer.streams] == [
        (consumers[1],),
        (consumers[3],),
        (consumers[0],),
    ]


def test_before_its_key_frame_a_consumer_is_handed_only_the_encoding_it_waits_for() -> None:
    sim, _consumers, calls, sides = routed()
    sim.send_side.key_frame_requests()

    pictures(sim, 4)  # no key frame yet: nothing forwarded, only the targets handed over

    assert calls == [Counter({2: 12}), Counter({0: 4}), Counter(), Counter({1: 4})]
    assert [side.take() for side in sides] == [[], [], [], []]
    deliver(sim, 2, picture(sim, 2, 3, key=True))
    assert len(sides[0].take()) == 3


async def test_a_new_preferred_layer_hands_over_its_key_frame_then_only_its_packets() -> None:
    sim, consumers, calls, sides = routed()
    pictures(sim, 1, key=True)
    mover, side = consumers[0], sides[0]
    side.take()
    await mover.set_preferred_layers(layers(0, 2))
    assert 1001 in sim.send_side.key_frame_requests()
    calls[0].clear()

    pictures(sim, 3)  # r2 still forwarded; r0 handed over for its key frame
    assert calls[0] == Counter({2: 9, 0: 3})
    assert {s.ssrc for s in side.take()} == {0x1000} and mover.current_layers == layers(2, 2)
    key = deliver(sim, 0, picture(sim, 0, key=True))
    calls[0].clear()
    pictures(sim, 3)

    assert calls[0] == Counter({0: 3})
    switched = side.take()
    assert body(switched[0].data) == body(bytes(key[0]))  # the key frame, first
    assert len(switched) == 4 and mover.current_layers == layers(0, 2)
    assert mover not in sim.producer.streams[2].sinks


async def test_a_paused_consumer_is_handed_nothing_and_on_resume_its_key_frame_first() -> None:
    sim, consumers, calls, sides = routed()
    pictures(sim, 1, key=True)
    waiting, side = consumers[2], sides[2]  # created paused
    pictures(sim, 3)
    assert calls[2] == Counter() and side.take() == []

    await waiting.resume()
    assert 1002 in sim.send_side.key_frame_requests()
    pictures(sim, 2)
    key = deliver(sim, 1, picture(sim, 1, key=True))
    pictures(sim, 2)
    sent = side.take()
    assert body(sent[0].data) == body(bytes(key[0])) and len(sent) == 2  # then TID 0, not 2

    other = consumers[1]
    await other.pause()
    calls[1].clear()
    sides[1].take()
    pictures(sim, 4)
    assert calls[1] == Counter() and sides[1].take() == []
    await other.resume()
    pictures(sim, 1)
    assert calls[1] == Counter({0: 1})  # handed r0 again, waiting for its key frame
    assert sides[1].take() == []


async def test_a_closed_consumer_is_handed_nothing_and_the_others_go_on() -> None:
    sim, consumers, calls, sides = routed()
    pictures(sim, 1, key=True)
    consumers[3].close()
    consumers[0].close()
    for count in calls:
        count.clear()

    pictures(sim, 4)

    assert calls == [Counter(), Counter({0: 4}), Counter(), Counter()]
    assert [s.sinks for s in sim.producer.streams] == [(consumers[1],), (), ()]
    assert len(sides[1].take()) == 1 + 1  # the key frame, then TID 0 pictures


async def test_a_paused_then_closed_producer_hands_nothing_to_anyone() -> None:
    sim, consumers, calls, _ = routed()
    pictures(sim, 1, key=True)
    closed: list[SimulcastConsumer] = []
    for consumer in consumers:
        consumer.on("producerclose", lambda consumer=consumer: closed.append(consumer))
    for count in calls:
        count.clear()

    await sim.producer.pause()
    pictures(sim, 3)
    assert calls == [Counter()] * 4
    await sim.producer.resume()
    pictures(sim, 1)  # handed over again, waiting for key frames
    assert calls == [Counter({2: 3}), Counter({0: 1}), Counter(), Counter({1: 1})]
    sim.producer.close()

    assert closed == consumers and all(c.closed for c in consumers)
    assert [s.sinks for s in sim.producer.streams] == [(), (), ()]
    sim.producer.sinks_changed()  # a late call changes nothing
    assert [s.sinks for s in sim.producer.streams] == [(), (), ()]


async def test_when_an_encoding_stops_the_next_targets_key_frame_is_handed_over() -> None:
    sim, consumers, calls, sides = routed()
    pictures(sim, 1, key=True)
    top, side = consumers[0], sides[0]
    side.take()
    for _ in range(6):  # r2 stops for more than the inactivity timeout
        for index in (0, 1):
            deliver(sim, index, picture(sim, index))
        sim.tick(0.25)
    assert top.target_layers == layers(1, 2) and top.current_layers == layers(2, 2)
    assert top in sim.producer.streams[1].sinks
    calls[0].clear()

    key = deliver(sim, 1, picture(sim, 1, key=True))

    assert calls[0] == Counter({1: 1})
    [switched] = side.take()
    assert body(switched.data) == body(bytes(key[0])) and top.current_layers == layers(1, 2)
    assert top not in sim.producer.streams[2].sinks


async def test_an_encoding_that_starts_with_a_key_frame_is_switched_to_at_that_packet() -> None:
    sim = Simulcast()
    consumer, side = add_consumer(sim, ssrc=0x1000)
    deliver(sim, 0, picture(sim, 0, key=True))  # r0 alone: the target, and its key frame
    assert consumer.current_layers == layers(0, 2)
    calls = counted_calls(consumer)

    key = deliver(sim, 2, picture(sim, 2, 2, key=True))  # r2 appears: the target at once

    assert calls == Counter({2: 2})
    assert consumer.current_layers == layers(2, 2)
    sent = side.take()
    assert [body(s.data) for s in sent[1:]] == [body(bytes(p)) for p in key]
    check_stream(sent, 0x1000)


async def test_a_bitrate_cap_reroutes_the_streams_to_the_layer_it_allows() -> None:
    sim = Simulcast()
    consumer, side = add_consumer(sim, ssrc=0x1000)
    other, other_side = add_consumer(sim, ssrc=0x2000)
    for _ in range(45):  # bitrates measured: r0 < r1 < r2
        for index, size in ((0, 100), (1, 1000), (2, 4000)):
            deliver(sim, index, picture(sim, index, key=sim.layers[index].frame == 0, size=size))
        sim.clock.now += 1 / 30
        if sim.layers[0].frame % 8 == 0:
            sim.producer.tick(sim.clock.now)
    assert consumer.current_layers == layers(2, 2) == other.current_layers
    calls = counted_calls(consumer)

    consumer.available_bitrate = sim.producer.streams[0].bitrate * 1.1  # r0 only
    assert consumer.target_layers is not None and consumer.target_layers["spatialLayer"] == 0
    assert consumer in sim.producer.streams[0].sinks
    deliver(sim, 0, picture(sim, 0, key=True))
    deliver(sim, 2, picture(sim, 2))
    deliver(sim, 1, picture(sim, 1))

    assert calls == Counter({0: 1})
    assert [s.sinks for s in sim.producer.streams] == [(consumer,), (), (other,)]
    check_stream(side.take(), 0x1000)
    check_stream(other_side.take(), 0x2000)


# -- 5. 7-bit PictureIDs: a copy of their own, among consumers writing in place ------------------


async def test_seven_bit_picture_ids_go_out_wide_in_copies_while_others_write_in_place() -> None:
    fan = Fanout()
    fan.sim.layers[0].picture = 110  # the 7-bit PictureID wraps below
    narrow = fan.add(ssrc=0x1000, preferred_layers=layers(0, 2))
    fan.add(ssrc=0x2000, preferred_layers=layers(0, 0))  # r0's base layer
    wide = fan.add(ssrc=0x3000)
    fan.add(ssrc=0x4000, preferred_layers=layers(2, 1))
    counts = (2, 2, 3)
    fan.frames(1, counts=counts, narrow=(0,))
    fan.frames(30, counts=counts, key=True, narrow=(0,))

    sent = {r.ssrc: r.take() for r in fan.receivers}  # each the same as its twin's
    assert len(sent[0x1000]) == 60 and len(sent[0x3000]) == 90
    for receiver in fan.receivers:
        check_stream(sent[receiver.ssrc], receiver.ssrc)  # 15-bit PictureIDs, continuous
        for s in sent[receiver.ssrc]:
            original = fan.origin(s)
            assert body(s.data) == body(original)
            assert len(s.data) == len(original) + (receiver.ssrc <= 0x2000)  # one byte wider
    assert {fan.packets[0, seq_of(fan.origin(s))][14] for s in sent[0x1000]} >= {127, 0}

    # Each way across: 7-bit to 15-bit and back.
    await fan.set_preferred_layers(narrow, layers(2, 2))
    await fan.set_preferred_layers(wide, layers(0, 2))
    fan.frames(8, counts=counts, key=True, narrow=(0,))
    after = {r.ssrc: r.take() for r in fan.receivers}
    assert narrow.consumer.current_layers == layers(2, 2)
    assert wide.consumer.current_layers == layers(0, 2)
    for receiver in fan.receivers:
        check_stream(sent[receiver.ssrc] + after[receiver.ssrc], receiver.ssrc)

    for receiver in (narrow, wide):
        asked = sent[receiver.ssrc][-6:] + after[receiver.ssrc][:6]
        fan.nack(receiver, [s.seq for s in asked])
        again = receiver.take()
        assert [unwrapped_rtx(s, receiver.consumer) for s in again] == [s.data for s in asked]


# -- everything at once, at random --------------------------------------------------------------


def without_padding(data: bytes) -> bytes:
    if not data[0] & 0x20:
        return data
    return bytes([data[0] & 0xDF]) + data[1 : payload_end(data)]


def jumbled(
    rng: random.Random, sim: Simulcast, index: int, packets: list[bytearray], key: bool
) -> tuple[list[bytearray], list[bytearray]]:
    """``packets`` as a network and a sender mix them: (what arrives now, what arrives
    later or never).  Some are held back, some repeated, probes go between, and two
    neighbours may swap."""
    now: list[bytearray] = []
    later: list[bytearray] = []
    for packet in packets:
        roll = rng.random()
        if roll < 0.06 and not key:
            later.append(packet)
            continue
        now.append(packet)
        if roll > 0.96:
            now.append(bytearray(packet))
        elif roll > 0.93:
            now.append(probe(sim, index))
    if len(now) > 2 and rng.random() < 0.2:
        i = rng.randrange(len(now) - 1)
        now[i], now[i + 1] = now[i + 1], now[i]
    return now, later


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_traffic_is_sent_as_each_consumer_would_alone_and_without_the_run(
    seed: int,
) -> None:
    # Multi-packet pictures with losses, late repairs, duplicates, reordering,
    # probes, header extensions and padding; 7-bit PictureIDs on one encoding
    # (or none); layer changes, pauses, bitrate caps, sender reports, NACKs and a
    # close, at random.  Each consumer of the shared producer must send what its
    # twin sends alone with every packet through the managers; a number sent
    # twice carries the same bytes; a retransmission is what was sent.
    rng = random.Random(seed)
    fan = Fanout(twins_without_the_run=True)
    for layer in fan.sim.layers:  # with odd seeds, numbers about to wrap
        layer.seq = 0xFFFF - rng.randrange(200 if seed % 2 else 0x10000)
        layer.timestamp = 0xFFFFFFFF - rng.randrange(300_000 if seed % 2 else 1 << 32)
        layer.picture = 0x7FFF - rng.randrange(100 if seed % 2 else 0x8000)
        layer.tl0 = 0xFF - rng.randrange(20 if seed % 2 else 0x100)
    narrow = rng.randrange(4)  # the encoding sending 7-bit PictureIDs (3: none)
    for i in range(4):
        fan.add(
            ssrc=0x1000 * (i + 1),
            preferred_layers=layers(rng.randrange(3), rng.randrange(3)),
            paused=rng.random() < 0.2,
            rtx=rng.random() < 0.7,
            first_seq=0xFFF0 - i if seed % 2 else None,
        )
    runs = [sent_in_runs(r.consumer, r.side) for r in fan.receivers]
    logs: dict[int, dict[int, bytes]] = {r.ssrc: {} for r in fan.receivers}
    held: list[tuple[int, int, bytearray]] = []
    media_sent = retransmitted = 0

    for step in range(300):
        asked_for = set(fan.sim.send_side.key_frame_requests())  # answered at once
        for index in range(3):
            key = fan.sim.layers[index].ssrc in asked_for or rng.random() < 0.01
            packets = picture(
                fan.sim,
                index,
                rng.choice([1, 1, 2, 3, 5, 8]),
                key=key,
                wide=index != narrow,
                layer_sync=rng.random() < 0.2,
                rng=rng,
            )
            now, later = jumbled(rng, fan.sim, index, packets, key)
            fan.receive(index, now)
            held += [(step + rng.randrange(4), index, p) for p in later if rng.random() < 0.7]
        for item in [h for h in held if h[0] <= step]:
            held.remove(item)
            fan.receive(item[1], [item[2]])
        fan.tick(1 / 30 if step % 8 == 0 else 0.0)
        fan.advance(0.0 if step % 8 == 0 else 1 / 30)

        receiver = rng.choice(fan.receivers)
        roll = rng.random()
        if roll < 0.03:
            await fan.set_preferred_layers(receiver, layers(rng.randrange(3), rng.randrange(3)))
        elif roll < 0.04:
            await (fan.resume if receiver.consumer.paused else fan.pause)(receiver)
        elif roll < 0.05:
            fan.cap(receiver, rng.choice([None, 50_000, 200_000, 1_000_000]))
        elif roll < 0.07:
            fan.sender_report(rng.randrange(3), 3_900_000_000 + fan.sim.clock.now)
        elif roll < 0.2:
            recent = list(logs[receiver.ssrc])[-40:]
            if recent:
                asked = rng.sample(recent, min(6, len(recent)))
                fan.nack(receiver, [*asked, (recent[-1] + rng.randrange(1, 5)) & 0xFFFF])
        elif roll < 0.202 and len(fan.receivers) > 2:
            fan.close(receiver)

        for receiver in fan.receivers:
            log = logs[receiver.ssrc]
            for s in receiver.take():  # the twin's too
                if s.ssrc == receiver.consumer.rtx_ssrc:
                    inner = unwrapped_rtx(s, receiver.consumer)
                    assert inner == without_padding(log[seq_of(inner)])
                    retransmitted += 1
                    continue
                assert s.ssrc == receiver.ssrc
                vp8_fields(s)  # 15 bits wide, whatever the sender's width
                if s.seq in log:  # a duplicate, or a retransmission without RTX
                    assert s.data == log[s.seq], f"{s.seq} sent again, differently"
                    retransmitted += 1
                else:
                    media_sent += 1
                log[s.seq] = s.data

    assert media_sent > 500 and retransmitted > 50
    assert sum(r["run"] for r in runs) > 100  # so many took the run


# -- listeners that close ------------------------------------------------------------------------


# mediasoup's events reach the app later (through its channel); ours are
# emitted on the packet path, so a listener may close its consumer there.
@pytest.mark.parametrize("event", ["layerschange", "score"])
def test_a_consumer_closed_by_its_own_listener_leaves_the_packet_to_the_others(
    event: str,
) -> None:
    sim = Simulcast()
    closing, _ = add_consumer(sim, ssrc=0x1000)
    _other, other_side = add_consumer(sim, ssrc=0x2000)
    closing.on(event, lambda _data: closing.close())
    for index in range(3):
        deliver(sim, index, picture(sim, index))

    key = deliver(sim, 2, picture(sim, 2, 2, key=True))

    assert closing.closed
    assert [body(s.data) for s in other_side.take()] == [body(bytes(p)) for p in key]
