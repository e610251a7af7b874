"""Producer: one track a client sends, as the app and the client see it.

Real routers and transports throughout; where media must flow, raw clients
(real ICE and DTLS-SRTP, ``object_harness``) send hand-built RTP and RTCP and
record what the server sends them.  Simulcast streams are tested in
test_simulcast_producer.py, close cascades with pymediasoup clients in
test_call.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from media import (
    InvalidParametersError,
    InvalidStateError,
    MediaError,
    Router,
    UnsupportedError,
    Worker,
    WorkerSettings,
)
from media.rtp_packet import build_fir, build_pli

from .object_harness import (
    OPUS_PT,
    RawClients,
    audio_parameters,
    record,
    rtp,
    simulcast_parameters,
    video_parameters,
    wait_until,
)

SSRC = 0x1111
RECEIVER_SSRC = 0x7777  # the RTCP sender SSRC raw receivers put in their feedback


# -- creation --------------------------------------------------------------------------------


async def test_a_new_producer_is_open_unpaused_and_keeps_its_kind_parameters_and_app_data(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    app_data = {"peerId": "alice", "source": "webcam"}

    producer = await transport.produce(
        kind="video", rtp_parameters=video_parameters(SSRC), app_data=app_data
    )

    assert (producer.kind, producer.closed, producer.paused) == ("video", False, False)
    assert producer.transport_id == transport.id
    assert producer.app_data == {"peerId": "alice", "source": "webcam"}
    assert producer.rtp_parameters["mid"] == "0"
    assert (producer.ssrc, producer.rtx_ssrc) == (SSRC, SSRC + 1)


async def test_producers_created_without_app_data_each_get_an_empty_dict_of_their_own(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    first = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    second = await transport.produce(kind="audio", rtp_parameters=audio_parameters())

    first.app_data["note"] = "mine"

    assert first.app_data == {"note": "mine"}
    assert second.app_data == {}
    assert first.id != second.id


async def test_a_producer_with_one_encoding_is_simple_and_with_several_is_simulcast(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()

    simple = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    simulcast = await transport.produce(kind="video", rtp_parameters=simulcast_parameters())
    audio = await transport.produce(kind="audio", rtp_parameters=audio_parameters())

    assert (simple.type, simulcast.type, audio.type) == ("simple", "simulcast", "simple")
    assert [s["ssrc"] for s in await simulcast.get_stats()] == [0x3000, 0x3001, 0x3002]
    assert [s["ssrc"] for s in await simple.get_stats()] == [SSRC]


async def test_a_producer_is_announced_and_indexed_by_its_transport_and_router(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    announced = record(transport.observer, "newproducer")

    producer = await transport.produce(kind="audio", rtp_parameters=audio_parameters())

    assert announced == [("newproducer", (producer,))]
    assert transport.producers == {producer.id: producer}
    assert router.get_producer(producer.id) is producer
    assert router.producer_count == 1
    assert router.can_consume(producer.id, router.rtp_capabilities)


def _without_codecs() -> dict[str, Any]:
    params = video_parameters(SSRC)
    params["codecs"] = []
    return params


def _audio_codec_for_video() -> dict[str, Any]:
    params = video_parameters(SSRC)
    params["codecs"] = audio_parameters()["codecs"]
    return params


def _unsupported_codec() -> dict[str, Any]:
    params = video_parameters(SSRC)
    params["codecs"][0]["mimeType"] = "video/AV1"
    return params


def _only_rtx() -> dict[str, Any]:
    params = video_parameters(SSRC)
    params["codecs"] = params["codecs"][1:]
    return params


def _duplicate_ssrcs() -> dict[str, Any]:
    params = video_parameters(None)
    params["encodings"] = [{"ssrc": SSRC}, {"ssrc": SSRC}]
    return params


def _simulcast_opus() -> dict[str, Any]:
    params = audio_parameters()
    params["encodings"] = [{"rid": "r0"}, {"rid": "r1"}]
    return params


def _bad_payload_type() -> dict[str, Any]:
    params = video_parameters(SSRC)
    params["codecs"][0]["payloadType"] = 200
    return params


@pytest.mark.parametrize(
    ("kind", "make_parameters", "error"),
    [
        ("data", lambda: video_parameters(SSRC), InvalidParametersError),
        ("video", lambda: "not an object", InvalidParametersError),
        ("video", _without_codecs, InvalidParametersError),
        ("video", _audio_codec_for_video, InvalidParametersError),
        ("video", _bad_payload_type, InvalidParametersError),
        ("video", _duplicate_ssrcs, InvalidParametersError),
        ("video", _unsupported_codec, UnsupportedError),
        ("video", _only_rtx, UnsupportedError),
        ("audio", _simulcast_opus, UnsupportedError),
    ],
    ids=[
        "unknown-kind",
        "not-an-object",
        "no-codecs",
        "codec-of-the-other-kind",
        "payload-type-over-127",
        "two-encodings-one-ssrc",
        "codec-the-router-lacks",
        "only-rtx",
        "simulcast-opus",
    ],
)
async def test_invalid_rtp_parameters_are_refused_and_leave_nothing_behind(
    router: Router, kind: str, make_parameters: Any, error: type[MediaError]
) -> None:
    transport = await router.create_webrtc_transport()
    announced = record(transport.observer, "newproducer")

    with pytest.raises(error):
        await transport.produce(kind=kind, rtp_parameters=make_parameters())

    assert announced == []
    assert transport.producers == {} and router.producer_count == 0
    # Nothing was reserved: the SSRC is free for a producer that is well formed.
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    assert producer.ssrc == SSRC


async def test_the_callers_rtp_parameters_are_copied_not_kept(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    params = video_parameters(SSRC)

    producer = await transport.produce(kind="video", rtp_parameters=params)
    params["encodings"][0]["ssrc"] = 0x9999
    params["codecs"].clear()

    assert producer.rtp_parameters["encodings"][0]["ssrc"] == SSRC
    assert [c["mimeType"] for c in producer.rtp_parameters["codecs"]] == ["video/VP8", "video/rtx"]


# -- pause and resume --------------------------------------------------------------------------


async def test_pausing_emits_observer_pause_once_and_pausing_again_changes_nothing(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    events = record(producer.observer, "pause", "resume")

    await producer.pause()
    await producer.pause()

    assert producer.paused
    assert events == [("pause", ())]


async def test_resuming_emits_observer_resume_once_and_resuming_again_changes_nothing(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    events = record(producer.observer, "pause", "resume")

    await producer.resume()  # not paused: nothing to do
    await producer.pause()
    await producer.resume()
    await producer.resume()

    assert not producer.paused
    assert events == [("pause", ()), ("resume", ())]


async def test_a_producer_created_paused_is_paused_and_its_consumers_know_it(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()

    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC), paused=True)
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)

    assert producer.paused
    assert consumer.producer_paused_state and not consumer.paused


async def test_pausing_and_resuming_tell_every_consumer_on_every_transport_once(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    producer = await send.produce(kind="audio", rtp_parameters=audio_parameters())
    consumers = []
    for _ in range(2):
        recv = await router.create_webrtc_transport()
        consumers.append(
            await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        )
    seen = [record(consumer, "producerpause", "producerresume") for consumer in consumers]

    await producer.pause()
    await producer.pause()
    assert all(c.producer_paused_state for c in consumers)
    await producer.resume()
    await producer.resume()

    assert seen == [[("producerpause", ()), ("producerresume", ())]] * 2
    assert not any(c.producer_paused_state or c.paused for c in consumers)


async def test_a_paused_producer_still_receives_but_forwards_nothing_until_resumed(
    router: Router, raw_clients: RawClients
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    sender, _ = await raw_clients.connect(send)
    _, received = await raw_clients.connect(recv)

    for seq in range(5):
        await sender.send_srtp(rtp(SSRC, seq))
    await wait_until(lambda: len(received.rtp_of(consumer.ssrc)) == 5, what="forwarding")
    await producer.pause()
    for seq in range(5, 15):
        await sender.send_srtp(rtp(SSRC, seq))
    await wait_until(lambda: producer.packet_count == 15, what="the packets sent while paused")
    await producer.resume()
    await sender.send_srtp(rtp(SSRC, 15))
    await wait_until(lambda: len(received.rtp_of(consumer.ssrc)) == 6, what="forwarding again")

    # Nothing of the pause reached the receiver, and its numbering has no gap.
    assert received.seqs_of(consumer.ssrc) == [0, 1, 2, 3, 4, 5]


async def test_resuming_a_video_producer_asks_its_sender_for_a_key_frame(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    video = await transport.produce(
        kind="video", rtp_parameters=video_parameters(SSRC), paused=True
    )
    _, received = await raw_clients.connect(transport)
    assert received.plis() == []

    await video.resume()

    await wait_until(lambda: received.plis() == [SSRC], what="a PLI after resume")


async def test_closed_producers_refuse_pause_resume_and_stats(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    producer.close()

    for call in (producer.pause, producer.resume, producer.get_stats):
        with pytest.raises(InvalidStateError):
            await call()


# -- key frame requests ----------------------------------------------------------------------


async def test_a_receivers_pli_reaches_the_sender_as_a_pli_for_the_producers_ssrc(
    router: Router, raw_clients: RawClients
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    _, upstream = await raw_clients.connect(send)
    receiver, _ = await raw_clients.connect(recv)
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    # A new consumer asks for a key frame itself; the next request is allowed
    # once key_frame_request_interval (0.2 s) has passed.
    await wait_until(lambda: upstream.plis() == [SSRC], what="the new consumer's PLI")
    await asyncio.sleep(0.3)

    await receiver.send_srtp(build_pli(RECEIVER_SSRC, consumer.ssrc))

    await wait_until(lambda: upstream.plis() == [SSRC, SSRC], what="the relayed PLI")
    assert upstream.firs() == []


async def test_a_receivers_fir_reaches_a_sender_that_only_takes_fir_as_a_fir(
    router: Router, raw_clients: RawClients
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    params = video_parameters(SSRC, feedback=[{"type": "ccm", "parameter": "fir"}])
    producer = await send.produce(kind="video", rtp_parameters=params)
    consumer = await recv.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities, paused=True
    )
    _, upstream = await raw_clients.connect(send)
    receiver, _ = await raw_clients.connect(recv)
    await consumer.resume()  # asks for a key frame
    await wait_until(lambda: upstream.firs() == [SSRC], what="the resumed consumer's FIR")
    await asyncio.sleep(0.3)

    await receiver.send_srtp(build_fir(RECEIVER_SSRC, consumer.ssrc, 1))

    await wait_until(lambda: upstream.firs() == [SSRC, SSRC], what="the relayed FIR")
    assert upstream.plis() == []


async def test_key_frame_requests_within_the_interval_become_one_sent_when_it_ends(
    raw_clients: RawClients,
) -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, key_frame_request_interval=0.5))
    try:
        router = await worker.create_router()
        send = await router.create_webrtc_transport()
        recv = await router.create_webrtc_transport()
        producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
        consumer = await recv.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities, paused=True
        )
        _, upstream = await raw_clients.connect(send)
        receiver, _ = await raw_clients.connect(recv)
        await consumer.resume()
        loop = asyncio.get_running_loop()
        await wait_until(lambda: len(upstream.plis()) == 1, what="the resumed consumer's PLI")
        first = loop.time()

        # Five more requests in one compound packet, inside the interval.
        await receiver.send_srtp(build_pli(RECEIVER_SSRC, consumer.ssrc) * 5)
        await wait_until(lambda: len(upstream.plis()) == 2, 3, "the deferred PLI")
        deferred = loop.time()
        await asyncio.sleep(0.7)  # past another interval: nothing else was pending

        assert upstream.plis() == [SSRC, SSRC]
        assert deferred - first >= 0.4  # sent when the interval ended, not at once
    finally:
        worker.close()


async def test_an_audio_producer_is_never_asked_for_a_key_frame(
    router: Router, raw_clients: RawClients
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    audio = await send.produce(kind="audio", rtp_parameters=audio_parameters(0x2222))
    video = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    caps = router.rtp_capabilities
    audio_consumer = await recv.consume(producer_id=audio.id, rtp_capabilities=caps, paused=True)
    video_consumer = await recv.consume(producer_id=video.id, rtp_capabilities=caps, paused=True)
    _, upstream = await raw_clients.connect(send)
    receiver, _ = await raw_clients.connect(recv)
    await video_consumer.resume()
    await wait_until(lambda: upstream.plis() == [SSRC], what="the resumed video consumer's PLI")
    await audio_consumer.resume()
    await audio.pause()
    await audio.resume()
    await asyncio.sleep(0.3)  # past key_frame_request_interval

    await receiver.send_srtp(build_pli(RECEIVER_SSRC, audio_consumer.ssrc))
    # Sent after it on the same path: by the time this one is relayed, so was any other.
    await receiver.send_srtp(build_pli(RECEIVER_SSRC, video_consumer.ssrc))
    await wait_until(lambda: len(upstream.plis()) >= 2, what="the relayed video PLI")

    assert upstream.plis() == [SSRC, SSRC]
    assert upstream.firs() == []


# -- what it receives: stats and score ---------------------------------------------------------


async def test_stats_count_what_arrived_and_what_never_did(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    sender, _ = await raw_clients.connect(transport)

    for seq in range(20):
        if seq != 7:
            await sender.send_srtp(rtp(SSRC, seq, size=100))
    await wait_until(lambda: producer.packet_count == 19, what="the packets")
    [stats] = await producer.get_stats()

    assert stats["type"] == "inbound-rtp"
    assert (stats["kind"], stats["mimeType"]) == ("video", "video/VP8")
    assert (stats["ssrc"], stats["rtxSsrc"], stats["rid"]) == (SSRC, SSRC + 1, None)
    assert (stats["packetCount"], stats["byteCount"]) == (19, 19 * (12 + 100))
    assert stats["packetsLost"] == 1
    assert stats["active"] is True and stats["score"] == 10


async def test_the_score_is_10_from_the_first_packet_and_0_after_a_silence(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    scores: list[list[dict[str, Any]]] = []
    producer.on("score", scores.append)
    sender, _ = await raw_clients.connect(transport)
    assert producer.score == []  # nothing received yet: no score at all

    for seq in range(5):
        await sender.send_srtp(rtp(SSRC, seq))
    await wait_until(lambda: producer.packet_count == 5, what="the packets")
    entry = {"encodingIdx": 0, "ssrc": SSRC, "rid": None}
    assert scores == [[{**entry, "score": 10}]]  # once, not per packet

    # Video is inactive after 0.5 s without a packet (WorkerSettings).
    await wait_until(lambda: len(scores) == 2, 5, "the score of a silent stream")
    assert scores[1] == [{**entry, "score": 0}]
    assert producer.score == scores[1]
    [stats] = await producer.get_stats()
    assert stats["active"] is False and stats["bitrate"] == 0


# -- close -----------------------------------------------------------------------------------


async def test_closing_a_producer_closes_its_consumers_with_producerclose_and_unindexes_it(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    receivers = [await router.create_webrtc_transport() for _ in range(2)]
    consumers = [
        await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        for recv in receivers
    ]
    consumer_events = [record(c, "producerclose", "transportclose") for c in consumers]
    producer_events = record(producer, "transportclose")
    closed = record(producer.observer, "close")

    producer.close()

    assert producer.closed and all(c.closed for c in consumers)
    assert consumer_events == [[("producerclose", ())]] * 2
    assert closed == [("close", ())] and producer_events == []
    assert all(recv.consumers == {} for recv in receivers)
    assert send.producers == {} and router.get_producer(producer.id) is None
    assert not router.can_consume(producer.id, router.rtp_capabilities)
    with pytest.raises(InvalidParametersError):
        await receivers[0].consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        )


async def test_closing_a_producer_twice_closes_it_once_and_releases_its_listeners(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    closed = record(producer.observer, "close")
    producer.on("score", lambda scores: None)

    producer.close()
    producer.close()

    assert closed == [("close", ())]
    assert producer.listener_count("score") == 0
    assert producer.observer.listener_count("close") == 0


async def test_closing_its_transport_emits_transportclose_and_closes_its_consumers_elsewhere(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="audio", rtp_parameters=audio_parameters())
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    producer_events = record(producer, "transportclose")
    consumer_events = record(consumer, "producerclose", "transportclose")

    send.close()
    producer.close()  # already closed by its transport: nothing more happens

    assert producer.closed and consumer.closed
    assert producer_events == [("transportclose", ())]
    assert consumer_events == [("producerclose", ())]
    assert router.get_producer(producer.id) is None and recv.consumers == {}


async def test_the_ssrc_of_a_closed_producer_carries_a_new_producers_media(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    old = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    sender, _ = await raw_clients.connect(transport)
    await sender.send_srtp(rtp(SSRC, 0))
    await wait_until(lambda: old.packet_count == 1, what="the first producer's packet")

    old.close()
    new = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    for seq in range(1, 4):
        await sender.send_srtp(rtp(SSRC, seq))

    await wait_until(lambda: new.packet_count == 3, what="the new producer's packets")
    assert old.packet_count == 1


async def test_an_audio_producer_forwards_opus_with_the_routers_payload_type(
    router: Router, raw_clients: RawClients
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="audio", rtp_parameters=audio_parameters(0x2222))
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    sender, _ = await raw_clients.connect(send)
    _, received = await raw_clients.connect(recv)

    await sender.send_srtp(rtp(0x2222, 40, pt=OPUS_PT, size=60))
    await wait_until(lambda: received.rtp_of(consumer.ssrc) != [], what="the audio packet")

    [packet] = received.rtp_of(consumer.ssrc)
    router_payload_type = consumer.rtp_parameters["codecs"][0]["payloadType"]
    assert router_payload_type != OPUS_PT
    assert packet[1] & 0x7F == router_payload_type
    assert packet[12:] == rtp(0x2222, 40, pt=OPUS_PT, size=60)[12:]
