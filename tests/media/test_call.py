"""End-to-end calls through the SFU with real pymediasoup/aiortc clients.

Every test runs real ICE, DTLS, SRTP, SCTP and VP8/Opus codecs on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from pymediasoup.consumer import Consumer as ClientConsumer
from pymediasoup.transport import IceParameters

from media import Consumer, EventEmitter, Producer, Router

from .clients import Client, count_frames, join


async def video_call(
    router: Router, clients: list[Client], *, frames: int
) -> tuple[Client, Client, Producer, ClientConsumer, Consumer]:
    """Alice sends video; Bob receives it and has decoded ``frames`` frames."""
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    bob_video, consumer = await bob.consume(video)
    assert len(await count_frames(bob_video.track, frames, timeout=20)) == frames
    return alice, bob, video, bob_video, consumer


def wait_for_event(
    emitter: EventEmitter, event: str, timeout: float
) -> Coroutine[None, None, tuple[object, ...]]:
    """Listen now (before the action that fires it); await the result later."""
    future: asyncio.Future[tuple[object, ...]] = asyncio.get_running_loop().create_future()

    def fire(*args: object) -> None:
        if not future.done():
            future.set_result(args)

    emitter.once(event, fire)
    return asyncio.wait_for(future, timeout)


async def test_a_consumer_decodes_the_video_and_audio_a_producer_sends(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    _, audio = await alice.produce(AudioStreamTrack())

    bob_video, video_consumer = await bob.consume(video)
    bob_audio, audio_consumer = await bob.consume(audio)

    frames = await count_frames(bob_video.track, 30, timeout=20)
    assert len(frames) == 30
    assert all(frame.width == 640 and frame.height == 480 for frame in frames)
    samples = await count_frames(bob_audio.track, 50, timeout=20)
    assert len(samples) == 50
    assert video_consumer.packet_count > 0 and audio_consumer.packet_count > 0
    stats = await video_consumer.get_stats()
    assert stats[0]["type"] == "outbound-rtp" and stats[0]["packetCount"] > 0
    assert stats[1]["type"] == "inbound-rtp" and stats[1]["packetCount"] > 0


async def test_a_late_joiner_gets_a_key_frame_promptly(
    router: Router, clients: list[Client]
) -> None:
    _, _, video, _, _ = await video_call(router, clients, frames=5)
    # aiortc sends a key frame only every 3000 frames unless asked: a late
    # joiner decodes nothing until the SFU relays a PLI for it.
    await asyncio.sleep(2)

    carol = await join(router, clients, send=False, recv=True)
    started = time.monotonic()
    carol_video, _ = await carol.consume(video)
    frames = await count_frames(carol_video.track, 1, timeout=10)
    latency = time.monotonic() - started
    assert len(frames) == 1, "the late joiner never decoded a frame"
    # The target (< 1 s) is measured by scripts/bench_sfu.py; this bound is generous.
    assert latency < 5, f"first frame took {latency:.2f} s"


async def test_a_data_channel_message_reaches_the_other_participant(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    chat = await alice.produce_data("chat")
    data_producer = next(iter(alice.data_producers.values()))
    bob_chat, data_consumer = await bob.consume_data(data_producer)
    received: asyncio.Queue[object] = asyncio.Queue()
    bob_chat.on("message", received.put_nowait)
    for _ in range(100):
        if chat.readyState == "open" and bob_chat.readyState == "open":
            break
        await asyncio.sleep(0.05)

    chat.send("hello from alice")
    assert await asyncio.wait_for(received.get(), 10) == "hello from alice"
    assert data_producer.messages_received == 1
    assert data_consumer.messages_sent == 1


async def test_closing_a_transport_closes_its_producers_and_their_consumers(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    _, consumer = await bob.consume(video)
    data_producer_client = await alice.produce_data("chat")
    assert data_producer_client is not None
    data_producer = next(iter(alice.data_producers.values()))
    _, data_consumer = await bob.consume_data(data_producer)
    events: list[str] = []
    video.on("transportclose", lambda: events.append("producer transportclose"))
    video.observer.on("close", lambda: events.append("producer observer close"))
    consumer.on("producerclose", lambda: events.append("consumer producerclose"))
    consumer.observer.on("close", lambda: events.append("consumer observer close"))
    data_consumer.on("dataproducerclose", lambda: events.append("dataconsumer dataproducerclose"))
    assert alice.send_transport is not None
    alice.send_transport.close()

    assert alice.send_transport.closed and alice.send_transport.end_reason == "closed_by_app"
    assert video.closed and consumer.closed and data_producer.closed and data_consumer.closed
    assert events == [
        "consumer observer close",
        "consumer producerclose",
        "producer observer close",
        "producer transportclose",
        "dataconsumer dataproducerclose",
    ]
    assert router.get_producer(video.id) is None
    assert bob.recv_transport is not None and bob.recv_transport.consumers == {}
    assert bob.recv_transport.data_consumers == {}
    assert alice.send_transport.id not in router.transports


async def test_closing_a_producer_closes_its_consumers_only(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    _, audio = await alice.produce(AudioStreamTrack())
    _, video_consumer = await bob.consume(video)
    _, audio_consumer = await bob.consume(audio)
    closed: list[str] = []
    video_consumer.on("producerclose", lambda: closed.append("video"))

    video.close()

    assert closed == ["video"]
    assert video_consumer.closed and not audio_consumer.closed
    assert alice.send_transport is not None
    assert list(alice.send_transport.producers) == [audio.id]
    assert bob.recv_transport is not None
    assert list(bob.recv_transport.consumers) == [audio_consumer.id]


async def test_closing_the_router_closes_every_transport(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    transports = list(router.transports.values())
    route_closed: list[str] = []
    for transport in transports:
        transport.on("routerclose", lambda t=transport: route_closed.append(t.id))

    router.close()

    assert sorted(route_closed) == sorted(t.id for t in transports)
    assert all(t.closed and t.end_reason == "router_closed" for t in transports)
    assert video.closed and router.transports == {}


async def test_a_client_leaving_gracefully_is_reported_as_dtls_closed_at_once(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=True)
    bob = await join(router, clients, send=True, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    bob_video, consumer = await bob.consume(video)
    _, audio = await bob.produce(AudioStreamTrack())
    alice_audio, _ = await alice.consume(audio)
    assert len(await count_frames(bob_video.track, 3, timeout=20)) == 3
    assert len(await count_frames(alice_audio.track, 3, timeout=20)) == 3
    assert alice.send_transport is not None and alice.recv_transport is not None
    send_ended = wait_for_event(alice.send_transport, "ended", timeout=5)
    recv_ended = wait_for_event(alice.recv_transport, "ended", timeout=5)

    started = time.monotonic()
    await alice.close()
    assert await send_ended == ("dtls_closed",)
    assert await recv_ended == ("dtls_closed",)
    assert time.monotonic() - started < 5
    assert consumer.closed and alice.send_transport.closed


@pytest.mark.slow
async def test_a_client_vanishing_silently_is_reported_as_consent_expired(
    router: Router, clients: list[Client]
) -> None:
    alice, _, video, _, consumer = await video_call(router, clients, frames=3)
    assert alice.send_transport is not None
    transport = alice.send_transport
    assert transport.settings.consent_timeout == 10.0
    ended = wait_for_event(transport, "ended", timeout=10.0 + 5)

    vanished = time.monotonic()
    alice.vanish()
    assert await ended == ("ice_consent_expired",)
    elapsed = time.monotonic() - vanished
    # The last consent check came at most ~6 s before vanishing (5 s +/- 20 %).
    assert 3.0 < elapsed < 10.0 + 2.0, elapsed
    assert transport.ice_state == "disconnected" or transport.closed
    assert consumer.closed and video.closed
    assert transport.last_activity <= vanished + 0.5


async def inbound_stats(client: Client) -> Any:
    assert client.client_recv is not None
    report = await client.client_recv.handler.pc.getStats()
    return next(s for s in report.values() if s.type == "inbound-rtp" and s.kind == "video")


async def test_a_paused_consumer_stops_and_resumes_without_a_sequence_gap(
    router: Router, clients: list[Client]
) -> None:
    _, bob, video, bob_video, consumer = await video_call(router, clients, frames=5)

    await consumer.pause()
    sent_while_paused = consumer.packet_count
    await asyncio.sleep(1)
    assert consumer.packet_count == sent_while_paused
    assert video.packet_count > sent_while_paused  # the producer kept sending

    await consumer.resume()
    assert len(await count_frames(bob_video.track, 10, timeout=20)) == 10
    assert consumer.packet_count > sent_while_paused
    # Sequence numbers continued where they stopped: the receiver lost nothing.
    stats = await inbound_stats(bob)
    assert stats.packetsLost == 0


@pytest.mark.slow
async def test_restarting_ice_keeps_media_and_consent_flowing(
    router: Router, clients: list[Client]
) -> None:
    _, bob, _, bob_video, _ = await video_call(router, clients, frames=3)
    assert bob.recv_transport is not None and bob.client_recv is not None
    old = bob.recv_transport.ice_parameters

    transport = bob.recv_transport

    new = await transport.restart_ice()
    restarted = asyncio.get_running_loop().time()
    await bob.client_recv.restartIce(IceParameters.model_validate(new))

    assert new["usernameFragment"] != old["usernameFragment"]
    assert new["password"] != old["password"]
    assert len(await count_frames(bob_video.track, 30, timeout=20)) == 30
    # Consent checks (every 5 s +/- 20 %) are still accepted after the restart.
    for _ in range(80):
        if (transport._ice.last_consent or 0) > restarted:
            break
        await asyncio.sleep(0.1)
    assert (transport._ice.last_consent or 0) > restarted
    assert not transport.closed


async def test_transport_stats_describe_the_connection(
    router: Router, clients: list[Client]
) -> None:
    alice, _, _, _, _ = await video_call(router, clients, frames=3)
    assert alice.send_transport is not None

    [stats] = await alice.send_transport.get_stats()

    assert stats["type"] == "webrtc-transport"
    assert stats["iceState"] == "completed" and stats["dtlsState"] == "connected"
    assert stats["iceSelectedTuple"]["localIp"] == "127.0.0.1"
    assert stats["bytesReceived"] > 0 and stats["rtpPacketsReceived"] > 0
