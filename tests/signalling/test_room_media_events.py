"""What the media says reaches the clients as mediasoup-demo words it, in both dialects.

Scores, layer changes and bandwidth estimates are emitted by hand on the real
media objects the server made (as the media layer emits them); speech is fed
as RTP packets with audio levels into a real producer.  Consumer controls are
checked on the consumer API they forward to.
"""

from __future__ import annotations

import gc
import struct
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from signalling.protoo_client import ProtooError
from signalling.server import Server

from .conftest import ClientFactory, eventually
from .handmade import (
    AUDIO_LEVEL_ID,
    DIALECT_PARAMS,
    HandmadePeer,
    PeerFactory,
    server_consumer,
    server_peer,
    server_producer,
    server_transport,
    until_resumed,
)

DIALECTS = ["2024", "2025"]


@pytest.fixture
async def peer(connect: ClientFactory) -> AsyncIterator[PeerFactory]:
    async def make(peer_id: str, dialect: str = "2024", **options: Any) -> HandmadePeer:
        client = await connect(peer_id, join=False, **DIALECT_PARAMS[dialect])
        made = HandmadePeer(client, peer_id, dialect)
        await made.join(**options)
        return made

    yield make


async def watching(
    peer: PeerFactory, dialect: str, kind: str = "video"
) -> tuple[tuple[HandmadePeer, HandmadePeer], tuple[str, str]]:
    """Bob (in ``dialect``) consuming a producer of Alice's: (bob, alice), (producer, consumer)."""
    bob = await peer("bob", dialect)
    alice = await peer("alice", consume=False)
    producer_id = await alice.produce(kind)
    await bob.wait_consumers(1)
    return (bob, alice), (producer_id, bob.consumer_id())


async def last_word(client: Any, method: str) -> tuple[str, dict[str, Any]]:
    """The next notification of ``method``, or of the ``pong`` that follows it.

    A ping notification sent now is answered after anything already queued,
    so a ``pong`` first means ``method`` was not sent.
    """
    await client.notify("ping")
    while True:
        name, data = await client.next_notification()
        if name in (method, "pong"):
            return name, data


async def everything_said(client: Any, *methods: str) -> list[tuple[str, dict[str, Any]]]:
    """The notifications of ``methods`` sent so far, in order (up to a ``pong``)."""
    await client.notify("ping")
    said = []
    while True:
        name, data = await client.next_notification()
        if name == "pong":
            return said
        if name in methods:
            said.append((name, data))


# -- scores ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_producer_score_goes_to_its_producer(
    server: Server, connect: ClientFactory, dialect: str
) -> None:
    client = await connect("alice", join=False, **DIALECT_PARAMS[dialect])
    alice = HandmadePeer(client, "alice", dialect)
    await alice.join(consume=False)
    producer_id = await alice.produce("video")
    score = [{"encodingIdx": 0, "ssrc": 1234, "rid": None, "score": 7}]

    server_producer(server, "alice", producer_id).emit("score", score)

    _, data = await client.next_notification("producerScore")
    assert data == {"producerId": producer_id, "score": score}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_consumer_score_goes_to_its_consumer(
    server: Server, peer: PeerFactory, dialect: str
) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, dialect)
    consumer = server_consumer(server, "bob", consumer_id)
    await until_resumed(consumer)
    # Once resumed, the consumer's score is told at once (Room.js).
    _, first = await bob.client.next_notification("consumerScore")
    assert first["consumerId"] == consumer_id and set(first["score"]) == {
        "score",
        "producerScore",
        "producerScores",
    }
    score = {"score": 9, "producerScore": 10, "producerScores": [0, 10]}

    consumer.emit("score", score)

    _, data = await bob.client.next_notification("consumerScore")
    assert data == {"consumerId": consumer_id, "score": score}


@pytest.mark.parametrize(
    ("dialect", "layers", "expected"),
    [
        ("2024", {"spatialLayer": 2, "temporalLayer": 1}, {"spatialLayer": 2, "temporalLayer": 1}),
        ("2024", None, {"spatialLayer": None, "temporalLayer": None}),
        (
            "2025",
            {"spatialLayer": 2, "temporalLayer": 1},
            {"layers": {"spatialLayer": 2, "temporalLayer": 1}},
        ),
        ("2025", None, {}),
    ],
)
async def test_a_consumer_layer_change_goes_to_its_consumer(
    server: Server, peer: PeerFactory, dialect: str, layers: Any, expected: dict[str, Any]
) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, dialect)

    server_consumer(server, "bob", consumer_id).emit("layerschange", layers)

    _, data = await bob.client.next_notification("consumerLayersChanged")
    assert data == {"consumerId": consumer_id, **expected}


# -- bandwidth ---------------------------------------------------------------------------

BWE = {
    "type": "bwe",
    "direction": "out",
    "info": {
        "desiredBitrate": 1_500_000,
        "effectiveDesiredBitrate": 1_200_000,
        "availableBitrate": 900_000,
    },
}


@pytest.mark.parametrize(("dialect", "sent"), [("2024", True), ("2025", False)])
async def test_a_downlink_estimate_goes_to_the_2024_client_of_the_transport(
    server: Server, peer: PeerFactory, dialect: str, sent: bool
) -> None:
    bob = await peer("bob", dialect)
    transport = server_transport(server, "bob", bob.transports["consumer"])

    transport.emit("trace", {**BWE, "direction": "in"})  # the uplink: not told
    transport.emit("trace", {"type": "probation", "direction": "out", "info": {}})
    transport.emit("trace", BWE)

    name, data = await last_word(bob.client, "downlinkBwe")
    if sent:
        assert (name, data) == ("downlinkBwe", BWE["info"])
    else:
        assert name == "pong"


# -- who speaks --------------------------------------------------------------------------


def speech(ssrc: int, seq: int, level: int) -> bytearray:
    """Opus with the audio level element under the client's id (RFC 8285 one-byte header)."""
    header = struct.pack("!BBHII", 0x90, 111, seq, seq * 960, ssrc)
    element = bytes([AUDIO_LEVEL_ID << 4, 0x80 | level, 0, 0])
    return bytearray(header + struct.pack("!HH", 0xBEDE, 1) + element + b"\xfc\xff\xfe")


async def test_the_room_says_who_speaks_in_each_dialect(server: Server, peer: PeerFactory) -> None:
    old = await peer("old", "2024", consume=False)
    new = await peer("new", "2025", consume=False)
    alice = await peer("alice", consume=False)
    producer = server_producer(server, "alice", await alice.produce("audio"))
    speakers = server.rooms["room"].speakers
    assert speakers is not None and speakers.producer_ids == [producer.id]
    ssrc = producer.rtp_parameters["encodings"][0]["ssrc"]

    for seq in range(10):
        producer.receive_rtp(speech(ssrc, seq, 20))
    speakers.update()  # what the timer does every 0.8 s
    speakers.update()  # nobody spoke since

    assert await everything_said(old.client, "activeSpeaker", "speakingPeers") == [
        ("activeSpeaker", {"peerId": "alice", "volume": -20}),
        ("activeSpeaker", {"peerId": None}),
    ]
    assert await everything_said(new.client, "activeSpeaker", "speakingPeers") == [
        ("speakingPeers", {"peerVolumes": [{"peerId": "alice", "volume": -20}]}),
        ("activeSpeaker", {"peerId": "alice"}),
        ("speakingPeers", {"peerVolumes": []}),
        ("activeSpeaker", {}),
    ]


async def test_the_2025_active_speaker_is_told_only_when_it_changes(
    server: Server, peer: PeerFactory
) -> None:
    new = await peer("new", "2025", consume=False)
    alice = await peer("alice", consume=False)
    producer = server_producer(server, "alice", await alice.produce("audio"))
    speakers = server.rooms["room"].speakers
    assert speakers is not None
    ssrc = producer.rtp_parameters["encodings"][0]["ssrc"]

    for interval in range(3):
        for seq in range(10):
            producer.receive_rtp(speech(ssrc, interval * 10 + seq, 30))
        speakers.update()

    said = await everything_said(new.client, "activeSpeaker", "speakingPeers")
    assert [name for name, _ in said] == [
        "speakingPeers",
        "activeSpeaker",  # once, not every interval
        "speakingPeers",
        "speakingPeers",
    ]


async def test_video_producers_are_not_listened_to(server: Server, peer: PeerFactory) -> None:
    alice = await peer("alice", consume=False)
    await alice.produce("video")
    assert server.rooms["room"].speakers is None


# -- consumer controls ---------------------------------------------------------------------


class Recorder:
    """Stands in for the consumer API the simulcast consumer offers."""

    def __init__(self, consumer: Any) -> None:
        self.calls: list[tuple[str, Any]] = []
        consumer.set_preferred_layers = self._layers
        consumer.set_priority = self._priority

    async def _layers(self, layers: dict[str, int]) -> None:
        self.calls.append(("set_preferred_layers", layers))

    async def _priority(self, priority: int) -> None:
        self.calls.append(("set_priority", priority))


@pytest.mark.parametrize(
    ("data", "call"),
    [
        ({"spatialLayer": 2, "temporalLayer": 1}, {"spatialLayer": 2, "temporalLayer": 1}),
        ({"spatialLayer": 0}, {"spatialLayer": 0}),
        ({"spatialLayer": 1, "temporalLayer": None}, {"spatialLayer": 1}),
    ],
)
async def test_preferred_layers_are_forwarded_to_the_consumer(
    server: Server, peer: PeerFactory, data: dict[str, Any], call: dict[str, int]
) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, "2024")
    recorder = Recorder(server_consumer(server, "bob", consumer_id))

    assert (
        await bob.client.request("setConsumerPreferredLayers", {"consumerId": consumer_id, **data})
        == {}
    )

    assert recorder.calls == [("set_preferred_layers", call)]


async def test_priority_is_forwarded_to_the_consumer(server: Server, peer: PeerFactory) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, "2024")
    recorder = Recorder(server_consumer(server, "bob", consumer_id))

    await bob.client.request("setConsumerPriority", {"consumerId": consumer_id, "priority": 3})

    assert recorder.calls == [("set_priority", 3)]


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("setConsumerPreferredLayers", {}),
        ("setConsumerPreferredLayers", {"spatialLayer": "1"}),
        ("setConsumerPreferredLayers", {"spatialLayer": True}),
        ("setConsumerPreferredLayers", {"spatialLayer": -1}),
        ("setConsumerPreferredLayers", {"spatialLayer": 1.5}),
        ("setConsumerPreferredLayers", {"spatialLayer": 1, "temporalLayer": 256}),
        ("setConsumerPreferredLayers", {"spatialLayer": 1, "temporalLayer": "high"}),
        ("setConsumerPriority", {}),
        ("setConsumerPriority", {"priority": "2"}),
        ("setConsumerPriority", {"priority": 300}),
        ("setConsumerPriority", {"priority": 0}),
        ("setConsumerPriority", {"priority": False}),
    ],
)
async def test_bad_consumer_controls_are_bad_requests_and_change_nothing(
    server: Server, peer: PeerFactory, method: str, data: dict[str, Any]
) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, "2024")
    recorder = Recorder(server_consumer(server, "bob", consumer_id))

    with pytest.raises(ProtooError) as error:
        await bob.client.request(method, {"consumerId": consumer_id, **data})

    assert error.value.code == 400
    assert recorder.calls == []


@pytest.mark.parametrize(
    "method", ["setConsumerPreferredLayers", "setConsumerPriority", "requestConsumerKeyFrame"]
)
async def test_consumer_controls_of_an_unknown_consumer_are_not_found(
    peer: PeerFactory, method: str
) -> None:
    bob = await peer("bob")
    with pytest.raises(ProtooError) as error:
        await bob.client.request(method, {"consumerId": "nope", "spatialLayer": 0, "priority": 1})
    assert error.value.code == 404


async def test_the_consumer_as_it_is_takes_layers_and_priority(
    server: Server, peer: PeerFactory
) -> None:
    # Whatever the consumer does with them (a simple one has nothing to prefer).
    (bob, _), (_, consumer_id) = await watching(peer, "2024")
    layers = {"consumerId": consumer_id, "spatialLayer": 0, "temporalLayer": 0}
    assert await bob.client.request("setConsumerPreferredLayers", layers) == {}
    assert (
        await bob.client.request("setConsumerPriority", {"consumerId": consumer_id, "priority": 1})
        == {}
    )


async def test_a_key_frame_request_reaches_the_consumer(server: Server, peer: PeerFactory) -> None:
    (bob, _), (_, consumer_id) = await watching(peer, "2024")
    consumer = server_consumer(server, "bob", consumer_id)
    asked: list[bool] = []

    async def request_key_frame() -> None:
        asked.append(True)

    consumer.request_key_frame = request_key_frame  # type: ignore[method-assign]
    await bob.client.request("requestConsumerKeyFrame", {"consumerId": consumer_id})
    await eventually(lambda: asked == [True])
    assert server_peer(server, "bob").consumers[consumer_id] is consumer


async def test_a_room_that_heard_speech_is_freed_by_reference_counting_alone(
    server: Server, peer: PeerFactory
) -> None:
    """No cycle through the observer outlives the room (gc.freeze() would keep it)."""
    alice = await peer("alice", consume=False)
    producer = server_producer(server, "alice", await alice.produce("audio"))
    speakers = server.rooms["room"].speakers
    assert speakers is not None
    ssrc = producer.rtp_parameters["encodings"][0]["ssrc"]
    for seq in range(10):
        producer.receive_rtp(speech(ssrc, seq, 20))
    speakers.update()
    room = weakref.ref(server.rooms["room"])
    observer, heard = weakref.ref(speakers), weakref.ref(producer)
    del speakers, producer
    gc.collect()
    gc.disable()
    try:
        await alice.client.request("beforeDisconnect")
        await eventually(lambda: not server.rooms)
        assert (room(), observer(), heard()) == (None, None, None)
    finally:
        gc.enable()
