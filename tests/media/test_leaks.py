"""After any sequence of creates and closes, nothing is left behind.

500 server-side cycles exercise every close path of the ownership tree; a few
more run with real clients connected and media flowing.  Afterwards the file
descriptors, UDP sockets, asyncio tasks, every registry and every media object
must be back where they started.
"""

from __future__ import annotations

import asyncio
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
)

from .clients import Client, count_frames
from .resources import ProcessResources

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
