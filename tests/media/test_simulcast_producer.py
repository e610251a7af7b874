"""A simulcast producer: each encoding a stream of its own, found by SSRC, RID or repaired-RID.

The SSRC learning tests run the transport's real slow path (``_learn_ssrc``)
and forwarding table on a transport that is never connected: the packets are
handed over as the datagram path would after SRTP.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import weakref
from typing import Any

import pytest

from media import Router
from media.errors import UnsupportedError
from media.rtp_packet import RTCP_SR, build_sender_report
from media.rtp_stream import loss_score

from .simulcast_harness import Simulcast
from .test_rtp_stream import Sink
from .vp8_packets import one_byte_extension, rtp, vp8_payload

MID, RID, RRID = 1, 2, 3


def simulcast_parameters(*, ssrcs: bool = False) -> dict[str, Any]:
    """What mediasoup-client sends for a webcam with three encodings (rid r0/r1/r2)."""
    encodings: list[dict[str, Any]] = []
    for i, scale in enumerate((4, 2, 1)):
        encoding: dict[str, Any] = {
            "rid": f"r{i}",
            "scalabilityMode": "L1T3",
            "scaleResolutionDownBy": scale,
            "maxBitrate": 150_000 * 3**i,
            "active": True,
            "dtx": False,
        }
        if ssrcs:
            encoding.update(ssrc=2001 + i, rtx={"ssrc": 3001 + i})
        encodings.append(encoding)
    return {
        "mid": "0",
        "codecs": [
            {
                "mimeType": "video/VP8",
                "payloadType": 96,
                "clockRate": 90000,
                "parameters": {},
                "rtcpFeedback": [
                    {"type": "goog-remb", "parameter": ""},
                    {"type": "nack", "parameter": ""},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "ccm", "parameter": "fir"},
                ],
            },
            {
                "mimeType": "video/rtx",
                "payloadType": 97,
                "clockRate": 90000,
                "parameters": {"apt": 96},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": MID},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": RID},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", "id": RRID},
        ],
        "encodings": encodings,
        "rtcp": {"cname": "webcam", "reducedSize": True},
    }


def media_packet(ssrc: int, seq: int, rid: str | None, *, mid: str = "0") -> bytearray:
    extensions = one_byte_extension(MID, mid.encode())
    if rid is not None:
        extensions += one_byte_extension(RID, rid.encode())
    return rtp(
        ssrc=ssrc,
        seq=seq,
        timestamp=1000,
        pt=96,
        payload=vp8_payload(picture_id=1, tl0=0, tid=0),
        extensions=extensions,
    )


def rtx_packet(ssrc: int, seq: int, repaired_rid: str, original: bytearray) -> bytearray:
    extensions = one_byte_extension(MID, b"0") + one_byte_extension(RRID, repaired_rid.encode())
    payload = original[2:4] + original[len(original) - len(vp8_payload(picture_id=1)) :]
    return rtp(
        ssrc=ssrc, seq=seq, timestamp=1000, pt=97, payload=bytes(payload), extensions=extensions
    )


async def test_rid_and_repaired_rid_bind_each_encoding_and_its_own_rtx_stream(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=simulcast_parameters())
    assert producer.type == "simulcast" and [s.rid for s in producer.streams] == ["r0", "r1", "r2"]

    for i in (2, 0, 1):  # any order
        packet = media_packet(100 + i, 10, f"r{i}")
        handler = transport._learn_ssrc(100 + i, packet)
        assert handler == producer.streams[i].receive_rtp
        assert handler is not None
        handler(packet)
    # r0's and r1's RTX streams carry repaired-rid, not rid: each is its own
    # encoding's (it used to be taken for r2's).  A consumer takes r0.
    sink = Sink()
    producer.streams[0].sinks = (sink,)
    lost = media_packet(100, 11, "r0")
    for i in (0, 1):
        original = media_packet(100 + i, 11, f"r{i}")
        repair = rtx_packet(200 + i, 1, f"r{i}", original)
        handler = transport._learn_ssrc(200 + i, repair)
        assert handler == producer.streams[i].receive_rtx
        assert handler is not None
        handler(repair)

    assert [(s.ssrc, s.rtx_ssrc) for s in producer.streams] == [
        (100, 200),
        (101, 201),
        (102, None),
    ]
    assert [s.packets_repaired for s in producer.streams] == [1, 1, 0]
    cached = producer.streams[0].cached_packet(11)
    assert (
        cached is not None and cached[12:] != b"" and struct.unpack_from("!I", cached, 8)[0] == 100
    )
    assert lost[2:4] == cached[2:4]
    assert sink.packets == [(bytes(cached), 11)]
    assert transport._rtp_table[200] == producer.streams[0].receive_rtx


async def test_ssrcs_given_in_the_encodings_are_bound_when_producing(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(
        kind="video", rtp_parameters=simulcast_parameters(ssrcs=True)
    )

    for i, stream in enumerate(producer.streams):
        assert transport._rtp_table[2001 + i] == stream.receive_rtp
        assert transport._rtp_table[3001 + i] == stream.receive_rtx
    producer.close()
    assert not any(ssrc in transport._rtp_table for ssrc in (2001, 2002, 2003, 3001))


async def test_a_track_without_simulcast_is_found_by_its_mid_alone(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    params = simulcast_parameters()
    params["encodings"] = [{}]
    producer = await transport.produce(kind="video", rtp_parameters=params)

    media = media_packet(555, 1, None)
    assert transport._learn_ssrc(555, media) == producer.streams[0].receive_rtp
    repair = rtp(
        ssrc=556,
        seq=1,
        timestamp=0,
        pt=97,
        payload=media[2:4] + b"x",
        extensions=one_byte_extension(MID, b"0"),
    )
    assert transport._learn_ssrc(556, repair) == producer.streams[0].receive_rtx
    assert producer.type == "simple" and (producer.ssrc, producer.rtx_ssrc) == (555, 556)


async def test_packets_of_an_unknown_rid_or_another_mid_go_nowhere(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=simulcast_parameters())

    assert transport._learn_ssrc(700, media_packet(700, 1, "r9")) is None
    assert transport._rtp_table[700] is None  # claimed by the producer's MID, dropped
    assert transport._learn_ssrc(701, media_packet(701, 1, "r0", mid="7")) is None
    assert 701 not in transport._rtp_table  # nobody's (yet)
    # A second SSRC for a RID already bound is ignored (mediasoup).
    transport._learn_ssrc(702, media_packet(702, 1, "r1"))
    assert transport._learn_ssrc(703, media_packet(703, 1, "r1")) is None
    assert producer.streams[1].ssrc == 702


async def test_sender_reports_reach_the_encoding_they_are_about(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(
        kind="video", rtp_parameters=simulcast_parameters(ssrcs=True)
    )

    sr = build_sender_report(2002, 0x0000_1000_8000_0000, 4242, 10, 1000)
    transport._receive_rtcp_packet(RTCP_SR, 0, sr)

    assert [s.sr_rtp for s in producer.streams] == [0, 4242, 0]
    assert producer.streams[1].sr_ntp == pytest.approx(0x1000 + 0.5)


async def test_simulcast_needs_a_codec_whose_key_frames_are_known(router: Router) -> None:
    vp9_router = await router._worker.create_router(
        [{"kind": "video", "mimeType": "video/VP9", "clockRate": 90000}]
    )
    transport = await vp9_router.create_webrtc_transport()
    params = simulcast_parameters()
    params["codecs"][0]["mimeType"] = "video/VP9"

    with pytest.raises(UnsupportedError):
        await transport.produce(kind="video", rtp_parameters=params)


async def test_a_closed_simulcast_call_leaves_no_reference_cycle(router: Router) -> None:
    # Signalling runs gc.freeze(): objects kept alive only by a cycle are never freed.
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=simulcast_parameters(ssrcs=True))
    caps = {"codecs": router.rtp_capabilities["codecs"], "headerExtensions": []}
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=caps)
    for i in range(3):
        send._rtp_table[2001 + i](media_packet(2001 + i, 1, f"r{i}"))  # type: ignore[misc]
    assert consumer.type == "simulcast" and consumer.target_layers is not None
    refs = [weakref.ref(producer), weakref.ref(consumer)]
    gc.disable()
    try:
        send.close()
        recv.close()
        del producer, consumer
        await asyncio.sleep(0)
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


# -- each stream's health -------------------------------------------------------------------------


def test_each_encoding_measures_its_own_bitrate_and_stats() -> None:
    sim = Simulcast()
    sim.run(2.0, sizes=(100, 300, 2400))
    r0, r1, r2 = sim.producer.streams

    # ~30 packets/s of (12 + descriptor + payload) bytes, over the last second.
    assert r0.bitrate == pytest.approx(30 * 8 * (12 + 5 + 100), rel=0.15)
    assert r2.bitrate == pytest.approx(30 * 8 * (12 + 5 + 2400), rel=0.15)
    # L1T3: half the frames are TID 2, a quarter each TID 0 and 1.
    assert r1.bitrate_up_to(0) == pytest.approx(r1.bitrate / 4, rel=0.2)
    assert r1.bitrate_up_to(1) == pytest.approx(r1.bitrate / 2, rel=0.2)
    assert sim.producer.packet_count == 3 * 60


async def test_producer_stats_have_one_entry_per_encoding() -> None:
    sim = Simulcast()
    sim.run(0.5)

    stats = await sim.producer.get_stats()

    assert [(s["rid"], s["ssrc"], s["active"], s["score"]) for s in stats] == [
        ("r0", 1001, True, 10),
        ("r1", 1002, True, 10),
        ("r2", 1003, True, 10),
    ]


def test_an_encoding_is_active_while_packets_came_in_the_last_second() -> None:
    sim = Simulcast(inactivity_timeout=1.0)
    sim.run(0.5)
    scores: list[list[dict[str, Any]]] = []
    sim.producer.on("score", scores.append)

    sim.run(0.9, layers=(0, 1))
    assert sim.producer.streams[2].active
    sim.run(0.4, layers=(0, 1))

    assert [s.active for s in sim.producer.streams] == [True, True, False]
    assert scores[-1][2] == {"encodingIdx": 2, "ssrc": 1003, "rid": "r2", "score": 0}
    assert sim.producer.streams[2].bitrate == 0
    sim.send(2)
    assert sim.producer.streams[2].active and sim.producer.streams[2].score == 10


def test_the_loss_score_is_mediasoups() -> None:
    assert loss_score(100, 100, 0, 0, rtx=True) == 10
    # mediasoup divides what was delivered by what was received: (90 - 10) / 90.
    assert loss_score(100, 90, 0, 0, rtx=True) == 6
    assert loss_score(100, 50, 0, 0, rtx=True) == 0
    # Repaired losses weigh less than unrepaired ones.
    assert loss_score(100, 90, 10, 10, rtx=True) > loss_score(100, 90, 0, 0, rtx=True)
    assert loss_score(0, 0, 0, 0, rtx=True) == 10


def test_first_packets_emit_the_producer_score_once() -> None:
    sim = Simulcast()
    scores: list[list[dict[str, Any]]] = []
    sim.producer.on("score", scores.append)

    sim.send_all(10)

    assert len(scores) == 3  # r0, then r1, then r2 appear
    assert scores[-1] == sim.producer.score
