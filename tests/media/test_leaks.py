"""After any sequence of creates and closes, nothing is left behind.

500 server-side cycles exercise every close path of the ownership tree; a few
more run with real clients connected and media flowing, and more with ICE-TCP
connections in every state (validated, refused, silent, lost).  Afterwards the
file descriptors, UDP and TCP sockets, asyncio tasks, ports, every registry and
every media object must be back where they started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from typing import Any

from aiortc.mediastreams import VideoStreamTrack

from media import (
    Consumer,
    DataConsumer,
    DataProducer,
    Producer,
    Router,
    WebRtcTransport,
    Worker,
    WorkerSettings,
)
from media.tcp_listener import TcpConnection

from .clients import Client, count_frames
from .resources import ProcessResources
from .test_ice_tcp import TcpClient

MEDIA_CLASSES = (Router, WebRtcTransport, Producer, Consumer, DataProducer, DataConsumer)


def video_parameters(ssrc: int) -> dict[str, Any]:
    """What pymediasoup sends for a VP8 track (see tests/media/clients.py)."""
    return {
        "mid": "0",
        "codecs": [
            {
                "mimeType": "video/VP8",
                "clockRate": 90000,
                "payloadType": 97,
                "parameters": {},
                "rtcpFeedback": [{"type": "nack", "parameter": ""}],
            },
            {
                "mimeType": "video/rtx",
                "clockRate": 90000,
                "payloadType": 98,
                "parameters": {"apt": 97},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1}],
        "encodings": [{"ssrc": ssrc, "rtx": {"ssrc": ssrc + 1}}],
        "rtcp": {"cname": "leak-test"},
    }


def live_media_objects() -> dict[str, int]:
    gc.collect()
    counts = {cls.__name__: 0 for cls in MEDIA_CLASSES}
    for obj in gc.get_objects():
        if isinstance(obj, MEDIA_CLASSES):
            counts[type(obj).__name__] += 1
    return counts


async def one_cycle(worker: Worker, router: Router, variant: int) -> None:
    sctp = variant % 2 == 0
    send = await router.create_webrtc_transport(enable_sctp=sctp)
    recv = await router.create_webrtc_transport(enable_sctp=sctp)
    producer = await send.produce(kind="video", rtp_parameters=video_parameters(1000 + variant))
    caps = {"codecs": router.rtp_capabilities["codecs"], "headerExtensions": []}
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=caps)
    if sctp:
        data_producer = await send.produce_data(sctp_stream_parameters={"streamId": 1})
        await recv.consume_data(data_producer_id=data_producer.id)
    step = variant % 5
    if step == 0:
        send.close()  # cascades to the consumer on the other transport
        recv.close()
    elif step == 1:
        producer.close()
        recv.close()
        send.close()
    elif step == 2:
        consumer.close()
        recv.close()
        send.close()
    elif step == 3:
        await consumer.pause()
        await producer.pause()
        recv.close()
        send.close()
    else:
        room = await worker.create_router()
        extra = await room.create_webrtc_transport(enable_sctp=True)
        await extra.produce(kind="video", rtp_parameters=video_parameters(7))
        room.close()
        send.close()
        recv.close()


async def connected_cycle(router: Router, variant: int) -> None:
    alice, bob = Client(router), Client(router)
    await alice.load()
    await bob.load()
    await alice.open_send_transport()
    await bob.open_recv_transport()
    _, video = await alice.produce(VideoStreamTrack())
    bob_video, consumer = await bob.consume(video)
    assert len(await count_frames(bob_video.track, 2, timeout=20)) == 2
    if variant % 2 == 0:
        await alice.close()  # close_notify: the server closes alice's transport
        for _ in range(100):
            if consumer.closed:
                break
            await asyncio.sleep(0.02)
        assert consumer.closed
    else:
        assert alice.send_transport is not None
        alice.send_transport.close()  # the app closes it
        await alice.close()
    assert bob.recv_transport is not None
    bob.recv_transport.close()
    await bob.close()


async def test_500_create_close_cycles_return_every_resource_to_its_starting_count() -> None:
    worker = Worker()
    router = await worker.create_router()
    await one_cycle(worker, router, 0)  # warm up lazy imports and caches
    await asyncio.sleep(0.05)
    before = ProcessResources.now()
    objects_before = live_media_objects()

    order = list(range(500))
    random.Random(7).shuffle(order)
    for variant in order:
        await one_cycle(worker, router, variant)
    for variant in range(4):
        await connected_cycle(router, variant)
    await asyncio.sleep(0.3)  # let cancelled tasks finish unwinding

    counts = worker.resource_counts()
    assert counts == {
        "routers": 1,
        "transports": 0,
        "producers": 0,
        "consumers": 0,
        "data_producers": 0,
        "data_consumers": 0,
    }
    assert router.producer_count == 0 and router.data_producer_count == 0
    after = ProcessResources.now()
    assert after.udp_sockets == before.udp_sockets
    assert after.file_descriptors == before.file_descriptors
    assert after.tasks == before.tasks
    assert live_media_objects() == objects_before
    worker.close()
    del router
    assert live_media_objects() == {cls.__name__: 0 for cls in MEDIA_CLASSES}


async def tcp_cycle(router: Router, variant: int) -> None:
    """A transport with ICE-TCP connections in every state, closed one way or another."""
    transport = await router.create_webrtc_transport(enable_udp=variant % 3 != 0)
    clients = [await TcpClient.connect(transport) for _ in range(1 + variant % 3)]
    await clients[0].check(transport)  # validated and selected
    if len(clients) > 1:
        clients[1].send(b"\x16\xfe\xfd" + bytes(20))  # not STUN: the server closes it
        assert await clients[1].closed_by_server()
    # clients[2], if any, stays silent (open, unvalidated)
    step = variant % 4
    if step == 0:
        transport.close()
    elif step == 1:
        clients[0].close()  # the selected path goes away first
        for _ in range(100):
            if transport.ice_state == "disconnected":
                break
            await asyncio.sleep(0.01)
        assert transport.ice_state == "disconnected"
        transport.close()
    elif step == 2:
        router.close()  # the transport with it
    else:
        more = await TcpClient.connect(transport)  # connecting while it closes
        clients.append(more)
        transport.close()
    for client in clients:
        client.close()
        with contextlib.suppress(Exception):
            await client.writer.wait_closed()


async def test_ice_tcp_listeners_and_connections_are_all_released() -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, tcp_stun_timeout=0.2))
    router = await worker.create_router()
    await tcp_cycle(router, 0)  # warm up
    await asyncio.sleep(0.3)
    before = ProcessResources.now()
    objects_before = live_media_objects()

    for variant in range(80):
        if router.closed:
            router = await worker.create_router()
        await tcp_cycle(router, variant)
    await asyncio.sleep(0.5)  # past the STUN timeout of any connection still pending

    assert worker.port_usage()[0] == 0
    assert worker.port_allocator.tcp_in_use() == 0
    assert worker.resource_counts()["transports"] == 0
    after = ProcessResources.now()
    assert after.tcp_sockets == before.tcp_sockets
    assert after.udp_sockets == before.udp_sockets
    assert after.file_descriptors == before.file_descriptors
    assert after.tasks == before.tasks
    objects = live_media_objects()
    objects["Router"] = objects_before["Router"]  # routers were replaced, not leaked
    assert objects == objects_before
    assert sum(1 for obj in gc.get_objects() if isinstance(obj, TcpConnection)) == 0
    worker.close()
