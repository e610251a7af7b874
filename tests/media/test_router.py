"""Router: one room's media, owning its transports and indexing its producers.

Real workers, routers and transports (no client needed: nothing here depends on
media flowing).  How router capabilities are computed is unit-tested in
test_rtp_parameters.py; a router closing under real clients is in test_call.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from media import (
    InvalidParametersError,
    InvalidStateError,
    NoFreePortError,
    Router,
    UnsupportedError,
    Worker,
    WorkerSettings,
)

from .object_harness import audio_parameters, record, video_parameters, wait_until
from .test_ports import free_udp_range

SSRC = 0x1111


async def ports_in_use(worker: Worker, expected: int) -> None:
    """Wait for the worker's port count (asyncio closes a socket on its next iteration)."""
    await wait_until(lambda: worker.port_usage()[0] == expected, 2, f"{expected} ports in use")


# -- what a router offers --------------------------------------------------------------------


async def test_a_router_made_without_codecs_offers_opus_vp8_and_h264_with_rtx_for_video(
    worker: Worker,
) -> None:
    router = await worker.create_router(app_data={"room": "lobby"})

    codecs = router.rtp_capabilities["codecs"]

    assert [c["mimeType"] for c in codecs] == [
        "audio/opus",
        "video/VP8",
        "video/rtx",
        "video/H264",
        "video/rtx",
    ]
    assert router.app_data == {"room": "lobby"}
    assert not router.closed and worker.routers == {router.id: router}


async def test_a_router_made_with_opus_only_refuses_video_producers(worker: Worker) -> None:
    router = await worker.create_router(
        [{"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}]
    )
    transport = await router.create_webrtc_transport()

    with pytest.raises(UnsupportedError):
        await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    audio = await transport.produce(kind="audio", rtp_parameters=audio_parameters())

    assert [c["mimeType"] for c in router.rtp_capabilities["codecs"]] == ["audio/opus"]
    assert transport.producers == {audio.id: audio}


async def test_malformed_media_codecs_are_refused_and_no_router_is_made(worker: Worker) -> None:
    with pytest.raises(InvalidParametersError):
        await worker.create_router([{"kind": "text", "mimeType": "text/plain", "clockRate": 1}])

    assert worker.routers == {}


# -- transports ------------------------------------------------------------------------------


async def test_a_transport_takes_the_workers_settings_unless_told_otherwise(
    worker: Worker, router: Router
) -> None:
    transport = await router.create_webrtc_transport()

    assert transport.settings.consent_timeout == worker.settings.consent_timeout == 10.0
    assert transport.settings.key_frame_request_interval == 0.2
    assert transport.sctp_parameters is None and transport.sctp_state is None
    assert transport.available_outgoing_bitrate == 600_000
    assert transport.app_data == {}
    assert transport.router is router


async def test_transport_options_reach_the_transport(router: Router) -> None:
    transport = await router.create_webrtc_transport(
        enable_sctp=True,
        num_sctp_streams=(16, 8),
        max_sctp_message_size=65536,
        sctp_send_buffer_size=100_000,
        consent_timeout=15.0,
        initial_available_outgoing_bitrate=2_000_000,
        app_data={"peerId": "alice"},
    )

    assert transport.sctp_parameters == {
        "port": 5000,
        "OS": 16,
        "MIS": 8,
        "mctp": False,
        "maxMessageSize": 65536,
    }
    assert transport.settings.sctp_send_buffer_size == 100_000
    assert transport.settings.consent_timeout == 15.0
    assert transport.available_outgoing_bitrate == 2_000_000
    assert transport.app_data == {"peerId": "alice"}
    # The client may open as many streams as MIS says: ids 0..7.
    await transport.produce_data(sctp_stream_parameters={"streamId": 7})
    with pytest.raises(InvalidParametersError):
        await transport.produce_data(sctp_stream_parameters={"streamId": 8})


@pytest.mark.parametrize(
    "options",
    [{"consent_timeout": 5.0}, {"enable_sctp": True, "max_sctp_message_size": 0}],
    ids=["consent-timeout-below-rfc-7675", "empty-sctp-messages"],
)
async def test_invalid_transport_options_are_refused_before_a_port_is_taken(
    worker: Worker, router: Router, options: dict[str, Any]
) -> None:
    announced = record(router.observer, "newtransport")

    with pytest.raises(ValueError):
        await router.create_webrtc_transport(**options)

    assert router.transports == {} and announced == []
    assert worker.port_usage()[0] == 0


async def test_each_transport_has_its_own_port_and_ice_credentials_on_the_listen_ip(
    router: Router,
) -> None:
    first = await router.create_webrtc_transport()
    second = await router.create_webrtc_transport()

    assert first.port != second.port
    assert [(c["ip"], c["port"]) for c in first.ice_candidates] == [
        ("127.0.0.1", first.port),
        ("127.0.0.1", first.tcp_port),
    ]
    first_ice, second_ice = first.ice_parameters, second.ice_parameters
    assert first_ice["usernameFragment"] != second_ice["usernameFragment"]
    assert first_ice["password"] != second_ice["password"]
    assert router.transports == {first.id: first, second.id: second}


async def test_transports_announce_the_workers_announced_address() -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, announced_address="203.0.113.7"))
    try:
        router = await worker.create_router()
        transport = await router.create_webrtc_transport()

        udp, tcp = transport.ice_candidates
        for candidate in (udp, tcp):
            assert (candidate["ip"], candidate["address"]) == ("203.0.113.7", "203.0.113.7")
        assert (udp["port"], tcp["port"]) == (transport.port, transport.tcp_port)
    finally:
        worker.close()


async def test_transports_take_ports_from_the_workers_range_until_it_is_full() -> None:
    port_range = free_udp_range(2)
    worker = Worker(WorkerSettings(consent_timeout=10.0, port_range=port_range))
    try:
        router = await worker.create_router()
        first = await router.create_webrtc_transport()
        await router.create_webrtc_transport()

        with pytest.raises(NoFreePortError):
            await router.create_webrtc_transport()

        assert len(router.transports) == 2
        assert worker.port_usage() == (2, 2)
        first.close()
        await ports_in_use(worker, 1)
        third = await router.create_webrtc_transport()
        assert third.port == first.port
    finally:
        worker.close()


async def test_creating_a_transport_is_announced_to_the_routers_observer(router: Router) -> None:
    announced = record(router.observer, "newtransport", "newrtpobserver")

    transport = await router.create_webrtc_transport()
    observer = await router.create_audio_level_observer()

    assert announced == [("newtransport", (transport,)), ("newrtpobserver", (observer,))]
    assert router.rtp_observers == {observer.id: observer}


async def test_a_router_closed_while_a_transport_is_being_made_refuses_it_and_frees_its_port(
    worker: Worker, router: Router
) -> None:
    announced = record(router.observer, "newtransport")
    making = asyncio.ensure_future(router.create_webrtc_transport())
    await asyncio.sleep(0)  # the socket is bound, the endpoint not yet ready
    assert worker.port_usage()[0] == 1

    router.close()

    with pytest.raises(InvalidStateError):
        await making
    assert router.transports == {} and announced == []
    await ports_in_use(worker, 0)


# -- producers across the room -----------------------------------------------------------------


async def test_any_transport_of_the_router_can_consume_a_producer_of_another(
    router: Router,
) -> None:
    send = await router.create_webrtc_transport()
    recv = await router.create_webrtc_transport()
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(SSRC))

    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)

    assert router.get_producer(producer.id) is producer and router.producer_count == 1
    assert consumer.producer is producer


async def test_a_producer_of_another_router_cannot_be_consumed(
    worker: Worker, router: Router
) -> None:
    other = await worker.create_router()
    producer = await (await other.create_webrtc_transport()).produce(
        kind="video", rtp_parameters=video_parameters(SSRC)
    )
    transport = await router.create_webrtc_transport()

    assert not router.can_consume(producer.id, router.rtp_capabilities)
    assert other.can_consume(producer.id, other.rtp_capabilities)
    with pytest.raises(InvalidParametersError):
        await transport.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)


async def test_can_consume_needs_a_live_producer_and_a_codec_the_client_decodes(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    caps = router.rtp_capabilities
    opus_only = {"codecs": [c for c in caps["codecs"] if c["kind"] == "audio"]}
    rtx_only = {"codecs": [c for c in caps["codecs"] if c["mimeType"] == "video/rtx"]}

    assert router.can_consume(producer.id, caps)
    assert not router.can_consume(producer.id, opus_only)
    assert not router.can_consume(producer.id, rtx_only)
    assert not router.can_consume(producer.id, "not capabilities")
    assert not router.can_consume("no-such-producer", caps)
    producer.close()
    assert not router.can_consume(producer.id, caps)


# -- close -----------------------------------------------------------------------------------


async def test_closing_a_router_closes_everything_in_it_once_and_frees_its_ports(
    worker: Worker,
) -> None:
    router = await worker.create_router()
    alice = await router.create_webrtc_transport(enable_sctp=True)
    bob = await router.create_webrtc_transport(enable_sctp=True)
    video = await alice.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    audio = await bob.produce(kind="audio", rtp_parameters=audio_parameters())
    caps = router.rtp_capabilities
    consumers = [
        await bob.consume(producer_id=video.id, rtp_capabilities=caps),
        await alice.consume(producer_id=audio.id, rtp_capabilities=caps),
    ]
    chat = await alice.produce_data(sctp_stream_parameters={"streamId": 1})
    chat_consumer = await bob.consume_data(data_producer_id=chat.id)
    speaker = await router.create_audio_level_observer()
    await speaker.add_producer(audio.id)
    transport_events = [record(t, "routerclose", "ended") for t in (alice, bob)]
    producer_events = [record(p, "transportclose") for p in (video, audio, chat)]
    consumer_events = [
        record(c, "producerclose", "transportclose", "dataproducerclose")
        for c in (*consumers, chat_consumer)
    ]
    observer_events = record(speaker, "routerclose")
    closed = record(router.observer, "close")
    assert worker.port_usage()[0] == 2

    router.close()

    assert router.closed and closed == [("close", ())]
    assert transport_events == [[("routerclose", ())]] * 2
    assert [t.end_reason for t in (alice, bob)] == ["router_closed"] * 2
    assert producer_events == [[("transportclose", ())]] * 3
    # A consumer hears of whichever closed first, its producer or its transport: once.
    assert all(len(events) == 1 for events in consumer_events)
    assert all(c.closed for c in consumers) and chat_consumer.closed
    assert observer_events == [("routerclose", ())] and speaker.closed
    assert router.transports == {} and router.rtp_observers == {}
    assert router.producer_count == 0 and router.data_producer_count == 0
    assert worker.routers == {} and not worker.closed
    assert worker.resource_counts() == {
        "routers": 0,
        "transports": 0,
        "producers": 0,
        "consumers": 0,
        "data_producers": 0,
        "data_consumers": 0,
    }
    await ports_in_use(worker, 0)


async def test_closing_a_router_twice_closes_it_once(worker: Worker, router: Router) -> None:
    router.close()
    again = record(router.observer, "close")

    router.close()

    assert again == [] and router.closed and worker.routers == {}


async def test_closing_one_router_leaves_the_others_of_the_worker_alone(
    worker: Worker, router: Router
) -> None:
    other = await worker.create_router()
    transport = await other.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))

    router.close()

    assert worker.routers == {other.id: other}
    assert not (other.closed or transport.closed or producer.closed)
    assert worker.resource_counts()["producers"] == 1


async def test_a_closed_router_makes_nothing_more(router: Router) -> None:
    router.close()

    with pytest.raises(InvalidStateError):
        await router.create_webrtc_transport()
    with pytest.raises(InvalidStateError):
        await router.create_audio_level_observer()
    assert router.transports == {} and router.rtp_observers == {}


async def test_closing_the_worker_closes_its_routers_with_workerclose() -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0))
    routers = [await worker.create_router() for _ in range(2)]
    transports = [await router.create_webrtc_transport() for router in routers]
    router_events = [record(r, "workerclose") for r in routers]
    transport_events = [record(t, "routerclose") for t in transports]
    closed = record(worker.observer, "close")

    worker.close()

    assert router_events == [[("workerclose", ())]] * 2
    assert transport_events == [[("routerclose", ())]] * 2
    assert all(r.closed for r in routers) and all(t.closed for t in transports)
    assert closed == [("close", ())] and worker.routers == {}
    with pytest.raises(InvalidStateError):
        await worker.create_router()
    await wait_until(lambda: worker.port_usage()[0] == 0, 2, "the ports freed")


async def test_a_new_router_is_announced_to_the_workers_observer(worker: Worker) -> None:
    announced = record(worker.observer, "newrouter")

    router = await worker.create_router()

    assert announced == [("newrouter", (router,))]
