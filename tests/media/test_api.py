"""The embedded SFU implements the media API that signalling/ is written against.

mypy checks the assignments below structurally (a missing or mistyped member
fails ``scripts/test``); the test checks at run time that real objects, made
through the API itself, have every member the protocols name.
"""

from __future__ import annotations

import inspect
from typing import Any

import media
from media import api

from .test_leaks import video_parameters


def protocol_members(protocol: type) -> set[str]:
    members: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or cls.__name__ in ("Protocol", "Generic"):
            continue
        members.update(name for name in vars(cls) if not name.startswith("_"))
        members.update(getattr(cls, "__annotations__", {}))
    return members


def has_members(obj: Any, protocol: type) -> list[str]:
    return sorted(name for name in protocol_members(protocol) if not hasattr(obj, name))


async def test_every_media_object_has_what_its_protocol_names(worker: media.Worker) -> None:
    workers: api.Worker = worker
    routers: api.Router = await workers.create_router()
    transport: api.WebRtcTransport = await routers.create_webrtc_transport(enable_sctp=True)
    producer: api.Producer = await transport.produce(
        kind="video", rtp_parameters=video_parameters(0x1234)
    )
    data_producer: api.DataProducer = await transport.produce_data(
        sctp_stream_parameters={"streamId": 1, "ordered": True}
    )
    consumer: api.Consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=routers.rtp_capabilities
    )
    data_consumer: api.DataConsumer = await transport.consume_data(
        data_producer_id=data_producer.id
    )
    speakers: api.AudioLevelObserver = await routers.create_audio_level_observer()
    try:
        objects: list[tuple[Any, type]] = [
            (routers, api.Router),
            (transport, api.WebRtcTransport),
            (producer, api.Producer),
            (consumer, api.Consumer),
            (data_producer, api.DataProducer),
            (data_consumer, api.DataConsumer),
            (speakers, api.AudioLevelObserver),
            (workers, api.Worker),
        ]
        for obj, protocol in objects:
            assert has_members(obj, protocol) == [], protocol.__name__
        assert inspect.iscoroutinefunction(transport.produce)
    finally:
        routers.close()
    assert transport.closed and producer.closed and data_consumer.closed
