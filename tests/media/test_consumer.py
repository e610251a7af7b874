"""Consumer: one producer's stream, rewritten for one receiving transport.

These are the simple (single-encoding) consumer's behaviours, on real routers
and transports; where media must flow, raw clients (real ICE and DTLS-SRTP,
``object_harness``) send hand-built RTP and RTCP and record what they are
sent.  The simulcast consumer has test_simulcast_consumer.py; a pause with a
real decoder on the other end is in test_call.py.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from typing import Any

import pytest

from media import (
    Consumer,
    InvalidParametersError,
    InvalidStateError,
    Producer,
    Router,
    UnsupportedError,
    WebRtcTransport,
)
from media.rtp_packet import build_nack, build_pli, build_receiver_report, report_block

from .object_harness import (
    RawClients,
    Received,
    audio_parameters,
    record,
    rtp,
    simulcast_parameters,
    video_parameters,
    wait_until,
)

SSRC = 0x1111
RECEIVER_SSRC = 0x7777
VIDEO_ORIENTATION_URI = "urn:3gpp:video-orientation"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TOFFSET_URI = "urn:ietf:params:rtp-hdrext:toffset"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


async def video_pair(
    router: Router, *, paused: bool = False, rtp_capabilities: Any = None
) -> tuple[WebRtcTransport, WebRtcTransport, Producer, Consumer]:
    """A VP8 producer on one transport and its consumer on another (not connected)."""
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    consumer = await recv.consume(
        producer_id=producer.id,
        rtp_capabilities=rtp_capabilities or router.rtp_capabilities,
        paused=paused,
    )
    return send, recv, producer, consumer


async def send_packets(client: Any, seqs: Iterable[int]) -> None:
    for seq in seqs:
        await client.send_srtp(rtp(SSRC, seq))


# -- its rtpParameters ---------------------------------------------------------------------------


async def test_a_video_consumer_gets_one_encoding_with_its_own_ssrc_and_rtx_ssrc(
    router: Router,
) -> None:
    _, _, producer, consumer = await video_pair(router)
    params = consumer.rtp_parameters

    assert (consumer.kind, consumer.type, consumer.producer_id) == ("video", "simple", producer.id)
    [encoding] = params["encodings"]
    assert encoding == {"ssrc": consumer.ssrc, "rtx": {"ssrc": consumer.rtx_ssrc}}
    assert consumer.rtx_ssrc is not None
    assert len({consumer.ssrc, consumer.rtx_ssrc, SSRC, SSRC + 1}) == 4
    vp8, rtx = params["codecs"]
    assert (vp8["mimeType"], rtx["mimeType"]) == ("video/VP8", "video/rtx")
    assert rtx["parameters"] == {"apt": vp8["payloadType"]}
    assert {(fb["type"], fb["parameter"]) for fb in vp8["rtcpFeedback"]} >= {
        ("nack", ""),
        ("nack", "pli"),
    }
    assert [ext["uri"] for ext in params["headerExtensions"]] == [
        ABS_SEND_TIME_URI,  # ours, written on the way out (media.rtp_stream)
        VIDEO_ORIENTATION_URI,
        TOFFSET_URI,
    ]
    assert params["rtcp"]["cname"] == "object-tests"  # the producer's: lip sync groups by it


async def test_a_client_without_rtx_gets_no_rtx_codec_and_no_rtx_ssrc(router: Router) -> None:
    caps = {
        "codecs": [c for c in router.rtp_capabilities["codecs"] if c["mimeType"] != "video/rtx"],
        "headerExtensions": [],
    }

    _, _, _, consumer = await video_pair(router, rtp_capabilities=caps)

    assert [c["mimeType"] for c in consumer.rtp_parameters["codecs"]] == ["video/VP8"]
    assert consumer.rtp_parameters["encodings"] == [{"ssrc": consumer.ssrc}]
    assert consumer.rtx_ssrc is None
    assert consumer.rtp_parameters["headerExtensions"] == []


async def test_an_audio_consumer_gets_opus_and_the_audio_level_extension_only(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="audio", rtp_parameters=audio_parameters())

    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)

    [opus] = consumer.rtp_parameters["codecs"]
    assert (opus["mimeType"], opus["clockRate"], opus["channels"]) == ("audio/opus", 48000, 2)
    assert consumer.rtp_parameters["encodings"] == [{"ssrc": consumer.ssrc}]
    assert [e["uri"] for e in consumer.rtp_parameters["headerExtensions"]] == [AUDIO_LEVEL_URI]


async def test_each_consumer_of_a_transport_gets_the_next_mid_and_ssrcs_no_other_has(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))

    consumers = [
        await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        for _ in range(20)
    ]

    assert [c.rtp_parameters["mid"] for c in consumers] == [str(i) for i in range(20)]
    ssrcs = [s for c in consumers for s in (c.ssrc, c.rtx_ssrc)]
    assert len(set(ssrcs)) == 40
    other = await router.create_webrtc_transport()
    first_elsewhere = await other.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert first_elsewhere.rtp_parameters["mid"] == "0"  # MIDs are per transport


async def test_a_consumer_of_a_simulcast_producer_is_a_simulcast_consumer(router: Router) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=simulcast_parameters())

    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)

    assert consumer.type == "simulcast"
    [encoding] = consumer.rtp_parameters["encodings"]
    assert encoding["ssrc"] == consumer.ssrc and encoding["scalabilityMode"] == "L3T3"


@pytest.mark.parametrize(
    ("make_request", "error"),
    [
        (
            lambda p, caps: {"producer_id": "no-such-producer", "rtp_capabilities": caps},
            InvalidParametersError,
        ),
        (lambda p, caps: {"producer_id": p.id, "rtp_capabilities": "caps"}, UnsupportedError),
        (
            lambda p, caps: {
                "producer_id": p.id,
                "rtp_capabilities": {"codecs": [c for c in caps["codecs"] if c["kind"] == "audio"]},
            },
            UnsupportedError,
        ),
    ],
    ids=["unknown-producer", "capabilities-not-an-object", "client-cannot-decode-vp8"],
)
async def test_a_consumer_that_cannot_be_made_is_refused_and_leaves_nothing_behind(
    router: Router, make_request: Any, error: type[Exception]
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    announced = record(recv.observer, "newconsumer")

    with pytest.raises(error):
        await recv.consume(**make_request(producer, router.rtp_capabilities))

    assert recv.consumers == {} and producer.consumer_count == 0 and announced == []


async def test_a_new_consumer_is_announced_and_counted_by_its_producer(router: Router) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    announced = record(recv.observer, "newconsumer")

    consumer = await recv.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities, app_data={"n": 1}
    )

    assert announced == [("newconsumer", (consumer,))]
    assert recv.consumers == {consumer.id: consumer} and producer.consumer_count == 1
    assert consumer.app_data == {"n": 1} and consumer.transport_id == recv.id
    assert consumer.producer is producer


# -- pause and resume ----------------------------------------------------------------------------


async def test_a_consumer_created_paused_forwards_nothing_until_resumed(
    router: Router, raw_clients: RawClients
) -> None:
    send, recv, producer, consumer = await video_pair(router, paused=True)
    sender, _ = await raw_clients.connect(send)
    _, received = await raw_clients.connect(recv)
    assert consumer.paused and not consumer.producer_paused_state

    await send_packets(sender, range(5))
    await wait_until(lambda: producer.packet_count == 5, what="the producer's packets")
    await consumer.resume()
    await send_packets(sender, range(5, 8))
    await wait_until(lambda: len(received.rtp_of(consumer.ssrc)) == 3, what="forwarding")

    assert received.seqs_of(consumer.ssrc) == [5, 6, 7]
    assert consumer.packet_count == 3


async def test_pause_and_resume_emit_observer_events_once_each_however_often_called(
    router: Router,
) -> None:
    _, _, _, consumer = await video_pair(router)
    events = record(consumer.observer, "pause", "resume")

    await consumer.resume()
    await consumer.pause()
    await consumer.pause()
    assert consumer.paused
    await consumer.resume()
    await consumer.resume()

    assert not consumer.paused
    assert events == [("pause", ()), ("resume", ())]


async def test_a_consumer_forwards_only_while_neither_it_nor_its_producer_is_paused(
    router: Router, raw_clients: RawClients
) -> None:
    send, recv, producer, consumer = await video_pair(router)
    sender, _ = await raw_clients.connect(send)
    _, received = await raw_clients.connect(recv)
    events = record(consumer, "producerpause", "producerresume")
    sent = 0

    async def forwarded_after_sending() -> bool:
        nonlocal sent
        before = producer.packet_count
        await send_packets(sender, range(sent, sent + 2))
        sent += 2
        await wait_until(lambda: producer.packet_count == before + 2, what="the sent packets")
        await asyncio.sleep(0.05)  # what was forwarded has reached the receiver by now
        return len(received.rtp_of(consumer.ssrc)) == sent

    assert await forwarded_after_sending()
    await producer.pause()
    assert consumer.producer_paused_state and not consumer.paused
    await consumer.pause()
    await producer.resume()
    assert not consumer.producer_paused_state and consumer.paused
    paused_count = len(received.rtp_of(consumer.ssrc))
    assert not await forwarded_after_sending()
    await consumer.resume()
    await send_packets(sender, range(sent, sent + 2))
    await wait_until(lambda: len(received.rtp_of(consumer.ssrc)) == paused_count + 2)

    assert events == [("producerpause", ()), ("producerresume", ())]
    # The receiver never sees a gap it would try to repair.
    seqs = received.seqs_of(consumer.ssrc)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_a_resumed_video_consumer_asks_for_a_key_frame_and_a_paused_ones_requests_are_dropped(
    router: Router, raw_clients: RawClients
) -> None:
    send, recv, producer, paused_one = await video_pair(router, paused=True)
    other = await recv.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities, paused=True
    )
    _, upstream = await raw_clients.connect(send)
    receiver, _ = await raw_clients.connect(recv)

    await other.resume()
    await wait_until(lambda: upstream.plis() == [SSRC], what="the resumed consumer's PLI")
    await asyncio.sleep(0.3)  # past key_frame_request_interval
    await receiver.send_srtp(build_pli(RECEIVER_SSRC, paused_one.ssrc))
    # Sent after it on the same path: by the time this one is relayed, so was any other.
    await receiver.send_srtp(build_pli(RECEIVER_SSRC, other.ssrc))
    await wait_until(lambda: len(upstream.plis()) >= 2, what="the relayed PLI")
    await asyncio.sleep(0.3)  # a request deferred by the interval would have come by now

    assert upstream.plis() == [SSRC, SSRC]


async def test_request_key_frame_asks_the_sender_for_one(
    router: Router, raw_clients: RawClients
) -> None:
    send, _, _, consumer = await video_pair(router, paused=True)
    _, upstream = await raw_clients.connect(send)

    await consumer.request_key_frame()

    await wait_until(lambda: upstream.plis() == [SSRC], what="the PLI")


# -- retransmission ----------------------------------------------------------------------------


async def lossy_call(
    router: Router, raw_clients: RawClients, *, rtp_capabilities: Any = None
) -> tuple[Received, Any, Received, Consumer]:
    """A consumer whose numbering is offset from its producer's (it was paused
    and resumed), and whose receiver lost its first five packets: the consumer's
    100-102 (the producer's 100-102) and 103-104 (the producer's 110-111) were
    sent before the receiver was connected; it got 105 (the producer's 112)."""
    send, recv, producer, consumer = await video_pair(router, rtp_capabilities=rtp_capabilities)
    sender, upstream = await raw_clients.connect(send)
    await send_packets(sender, range(100, 103))
    await wait_until(lambda: consumer.packet_count == 3, what="forwarding")
    await consumer.pause()
    await send_packets(sender, range(103, 110))
    await wait_until(lambda: producer.packet_count == 10, what="the packets sent while paused")
    await consumer.resume()
    await send_packets(sender, range(110, 112))
    await wait_until(lambda: consumer.packet_count == 5, what="forwarding again")
    receiver, received = await raw_clients.connect(recv)
    await send_packets(sender, range(112, 113))
    await wait_until(lambda: received.rtp_of(consumer.ssrc) != [], what="the first packet")
    assert received.seqs_of(consumer.ssrc) == [105]
    return upstream, receiver, received, consumer


async def test_a_nack_is_answered_from_the_cache_as_rtx_on_the_consumers_rtx_ssrc(
    router: Router, raw_clients: RawClients
) -> None:
    _, receiver, received, consumer = await lossy_call(router, raw_clients)
    assert consumer.rtx_ssrc is not None

    await receiver.send_srtp(build_nack(RECEIVER_SSRC, consumer.ssrc, [104]))
    await wait_until(lambda: received.rtp_of(consumer.rtx_ssrc or 0) != [], what="the RTX")

    [repair] = received.rtp_of(consumer.rtx_ssrc)
    rtx_payload_type = consumer.rtp_parameters["codecs"][1]["payloadType"]
    assert repair[1] & 0x7F == rtx_payload_type
    # RFC 4588: the original sequence number (the consumer's), then the original
    # payload (the producer's 111).
    assert struct.unpack_from("!H", repair, 12)[0] == 104
    assert repair[14:] == rtp(SSRC, 111)[12:]
    assert consumer.retransmitted_count == 1
    [stats, _] = await consumer.get_stats()
    assert stats["packetsRetransmitted"] == 1


async def test_without_rtx_a_nack_is_answered_with_the_packet_itself(
    router: Router, raw_clients: RawClients
) -> None:
    caps = {
        "codecs": [c for c in router.rtp_capabilities["codecs"] if c["mimeType"] != "video/rtx"],
        "headerExtensions": [],
    }
    _, receiver, received, consumer = await lossy_call(router, raw_clients, rtp_capabilities=caps)

    await receiver.send_srtp(build_nack(RECEIVER_SSRC, consumer.ssrc, [104]))
    await wait_until(lambda: len(received.rtp_of(consumer.ssrc)) == 2, what="the retransmission")

    repair = received.rtp_of(consumer.ssrc)[1]
    assert struct.unpack_from("!H", repair, 2)[0] == 104
    assert repair[12:] == rtp(SSRC, 111)[12:]
    assert consumer.retransmitted_count == 1


async def test_a_nack_for_what_the_sfu_never_had_is_asked_of_the_sender_in_its_numbering(
    router: Router, raw_clients: RawClients
) -> None:
    upstream, receiver, received, consumer = await lossy_call(router, raw_clients)

    # The consumer's 106 would be the producer's 113, which was never sent.
    await receiver.send_srtp(build_nack(RECEIVER_SSRC, consumer.ssrc, [106]))
    await wait_until(lambda: upstream.nacks() != [], what="the relayed NACK")

    assert upstream.nacks() == [(SSRC, [113])]
    assert received.rtp_of(consumer.rtx_ssrc or 0) == []
    assert consumer.retransmitted_count == 0


# -- scores and stats ----------------------------------------------------------------------------


def receiver_report(consumer: Consumer, highest: int, lost: int) -> bytes:
    """The receiver's RR about ``consumer``: highest number and cumulative lost."""
    return build_receiver_report(
        RECEIVER_SSRC, [report_block(consumer.ssrc, 0, lost, highest, 0, 0, 0)]
    )


async def scored_pair(
    router: Router, raw_clients: RawClients
) -> tuple[Any, Any, Consumer, list[dict[str, Any]]]:
    """A sender, a receiver, the consumer between them and the scores it emits."""
    send, recv, _, consumer = await video_pair(router)
    sender, _ = await raw_clients.connect(send)
    receiver, _ = await raw_clients.connect(recv)
    scores: list[dict[str, Any]] = []
    consumer.on("score", scores.append)
    return sender, receiver, consumer, scores


async def test_the_consumers_score_follows_its_producer_and_its_receivers_reports(
    router: Router, raw_clients: RawClients
) -> None:
    sender, receiver, consumer, scores = await scored_pair(router, raw_clients)

    await send_packets(sender, range(3))
    await wait_until(lambda: scores != [], what="the producer's first score")
    assert scores == [{"score": 10, "producerScore": 10, "producerScores": [10]}]

    await receiver.send_srtp(receiver_report(consumer, 1000, 0))
    await wait_until(lambda: consumer.reports_received == 1, what="the first report")
    await send_packets(sender, range(3, 103))
    await wait_until(lambda: consumer.packet_count == 103, what="100 more forwarded")
    await receiver.send_srtp(receiver_report(consumer, 1100, 50))  # half of the last 100 lost
    await wait_until(lambda: len(scores) == 2, what="the score after a lossy report")

    assert scores[1]["score"] < 5 and scores[1]["producerScore"] == 10
    assert consumer.score == scores[1]


async def test_numbers_the_sender_lost_before_us_do_not_lower_the_consumers_score(
    router: Router, raw_clients: RawClients
) -> None:
    sender, receiver, consumer, scores = await scored_pair(router, raw_clients)

    await send_packets(sender, range(3))
    await wait_until(lambda: consumer.packet_count == 3, what="forwarding")
    await receiver.send_srtp(receiver_report(consumer, 1000, 0))
    await wait_until(lambda: consumer.reports_received == 1, what="the first report")
    # 100 numbers go by, 20 of them lost on the sender's link: we send 80,
    # and the receiver reports the 20 it never got as lost.
    await send_packets(sender, [seq for seq in range(3, 103) if seq % 5])
    await wait_until(lambda: consumer.packet_count == 83, what="80 more forwarded")
    await receiver.send_srtp(receiver_report(consumer, 1100, 20))
    await wait_until(lambda: consumer.reports_received == 2, what="the second report")
    await asyncio.sleep(0.1)

    assert consumer.score["score"] == 10
    assert all(s["score"] == 10 for s in scores)


async def test_stats_describe_the_forwarded_stream_then_the_producers(
    router: Router, raw_clients: RawClients
) -> None:
    send, recv, _, consumer = await video_pair(router)
    sender, _ = await raw_clients.connect(send)
    await raw_clients.connect(recv)

    await send_packets(sender, range(4))
    await wait_until(lambda: consumer.packet_count == 4, what="forwarding")
    outbound, inbound = await consumer.get_stats()

    assert outbound["type"] == "outbound-rtp" and inbound["type"] == "inbound-rtp"
    assert (outbound["ssrc"], outbound["rtxSsrc"]) == (consumer.ssrc, consumer.rtx_ssrc)
    assert (outbound["kind"], outbound["mimeType"]) == ("video", "video/VP8")
    assert (outbound["packetCount"], outbound["byteCount"]) == (4, 4 * (12 + 100))
    assert outbound["packetsRetransmitted"] == 0 and outbound["reportsReceived"] == 0
    assert (inbound["ssrc"], inbound["packetCount"]) == (SSRC, 4)


# -- priority and layers --------------------------------------------------------------------------


async def test_priority_is_1_until_set_to_an_integer_from_1_to_255_and_unset_restores_it(
    router: Router,
) -> None:
    _, _, _, consumer = await video_pair(router)
    assert consumer.priority == 1

    await consumer.set_priority(255)
    assert consumer.priority == 255
    for bad in (0, 256, -1, 2.0, "3", True, None):
        with pytest.raises(InvalidParametersError):
            await consumer.set_priority(bad)
    assert consumer.priority == 255
    await consumer.unset_priority()

    assert consumer.priority == 1


async def test_a_simple_consumer_has_no_layers_and_takes_valid_preferred_layers_as_they_are(
    router: Router,
) -> None:
    _, _, _, consumer = await video_pair(router)

    await consumer.set_preferred_layers({"spatialLayer": 0, "temporalLayer": 0})
    await consumer.set_preferred_layers({"spatialLayer": 3})  # clamped to the one there is

    assert (consumer.preferred_layers, consumer.current_layers, consumer.target_layers) == (
        None,
        None,
        None,
    )
    for bad in (None, [0], {}, {"spatialLayer": -1}, {"spatialLayer": True}, {"spatialLayer": "0"}):
        with pytest.raises(InvalidParametersError):
            await consumer.set_preferred_layers(bad)
    with pytest.raises(InvalidParametersError):
        await consumer.set_preferred_layers({"spatialLayer": 0, "temporalLayer": -2})


async def test_the_available_bitrate_is_none_or_a_non_negative_number(router: Router) -> None:
    _, _, _, consumer = await video_pair(router)

    consumer.available_bitrate = 250_000.7
    assert consumer.available_bitrate == 250_000
    with pytest.raises(ValueError):
        consumer.available_bitrate = -1
    with pytest.raises(ValueError):
        consumer.available_bitrate = float("nan")
    consumer.available_bitrate = None

    assert consumer.available_bitrate is None
    assert consumer.desired_bitrate == 0  # nothing received: nothing it would forward


# -- close ---------------------------------------------------------------------------------------


async def test_closing_a_consumer_twice_closes_it_once_and_leaves_its_producer_alone(
    router: Router,
) -> None:
    send, recv, producer, consumer = await video_pair(router)
    closed = record(consumer.observer, "close")
    events = record(consumer, "producerclose", "transportclose")

    consumer.close()
    consumer.close()

    assert consumer.closed and closed == [("close", ())] and events == []
    assert recv.consumers == {} and producer.consumer_count == 0
    assert not producer.closed and send.producers == {producer.id: producer}
    assert consumer.listener_count("producerclose") == 0


async def test_a_closed_consumer_refuses_every_control_call(router: Router) -> None:
    _, _, _, consumer = await video_pair(router)
    consumer.close()

    calls: list[Any] = [
        consumer.pause(),
        consumer.resume(),
        consumer.get_stats(),
        consumer.request_key_frame(),
        consumer.set_priority(2),
        consumer.unset_priority(),
        consumer.set_preferred_layers({"spatialLayer": 0}),
    ]
    for call in calls:
        with pytest.raises(InvalidStateError):
            await call


async def test_closing_its_transport_emits_transportclose_and_its_producer_forgets_it(
    router: Router,
) -> None:
    _, recv, producer, consumer = await video_pair(router)
    events = record(consumer, "producerclose", "transportclose")
    closed = record(consumer.observer, "close")

    recv.close()
    consumer.close()  # already closed: nothing more happens

    assert consumer.closed and events == [("transportclose", ())] and closed == [("close", ())]
    assert producer.consumer_count == 0 and not producer.closed


async def test_its_producer_closing_emits_producerclose_and_removes_it_from_its_transport(
    router: Router,
) -> None:
    _, recv, producer, consumer = await video_pair(router)
    events = record(consumer, "producerclose", "transportclose")

    producer.close()

    assert consumer.closed and events == [("producerclose", ())]
    assert recv.consumers == {}
