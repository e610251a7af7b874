"""Real calls between a 2025-dialect pymediasoup client and a 2024 one.

Alice speaks the 2025 dialect (``demo2025.Demo2025``, written from
protooMessages.ts), Bob is the 2024 bot (``signalling.bot``): they join the
same room, send each other video and chat, and Alice steers her media with
notifications.  Video frames are decoded, so the media really flows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc.mediastreams import VideoStreamTrack

from signalling.bot import Bot
from signalling.server import Server

from ..media.tone import ToneTrack
from .conftest import ServerFactory
from .demo2025 import Demo2025

ROOM = "call"


@pytest.fixture
async def call_server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def people() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for person in made:
        await person.close()


def base_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def until(check: Any, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_2025_client_and_a_2024_client_see_and_chat_with_each_other(
    call_server: Server, people: list[Any]
) -> None:
    alice = Demo2025(base_url(call_server), ROOM, "alice")
    people.append(alice)
    assert await alice.join() == []
    assert alice.version is not None and alice.version.startswith("ghostless")
    webcam = await alice.produce(VideoStreamTrack(), "webcam")
    chat = await alice.produce_chat()

    bob = Bot(base_url(call_server), ROOM, "bob", video=True, chat=True)
    people.append(bob)
    joined = await bob.join()
    assert [p["id"] for p in joined["peers"]] == ["alice"]  # the 2024 shape

    assert alice.client is not None
    _, new_peer = await alice.client.next_notification("newPeer")
    assert new_peer["peer"]["peerId"] == "bob"
    assert await bob.wait_for_frames(10, timeout=20), "Bob decoded no video from Alice"
    [bob_video] = bob.producer_ids
    assert await alice.wait_for_frames(bob_video, 10), "Alice decoded no video from Bob"
    [offer] = [o for o in alice.offers if o["producerId"] == bob_video]
    assert offer["transportId"] == alice.recv_transport.id  # type: ignore[union-attr]
    assert offer["appData"]["peerId"] == "bob"
    assert set(offer["consumerScore"]) == {"score", "producerScore", "producerScores"}

    await until(lambda: chat.readyState == "open" and bob.chat_channel is not None)
    await until(lambda: bob.chat_channel.readyState == "open")
    while "hi Bob" not in bob.messages or "hi Alice" not in alice.messages:
        chat.send("hi Bob")
        bob.chat_channel.send("hi Alice")
        await asyncio.sleep(0.2)
    [data_offer] = alice.data_offers
    assert data_offer["transportId"] == alice.recv_transport.id  # type: ignore[union-attr]
    assert data_offer["dataConsumerId"] and data_offer["label"] == "chat"
    assert webcam.id in {p for p in call_server.rooms[ROOM].peers["alice"].producers}


async def test_a_2025_client_steers_its_media_with_notifications(
    call_server: Server, people: list[Any]
) -> None:
    alice = Demo2025(base_url(call_server), ROOM, "alice")
    people.append(alice)
    await alice.join()
    bob = Bot(base_url(call_server), ROOM, "bob", video=True, chat=False)
    people.append(bob)
    await bob.join()
    assert bob.client is not None
    webcam = await alice.produce(VideoStreamTrack(), "webcam")
    assert await bob.wait_for_frames(5, timeout=20)
    [bob_video] = bob.producer_ids
    assert await alice.wait_for_frames(bob_video, 5)

    # Her own producer: paused, resumed, closed.
    await alice.notify("pauseProducer", {"producerId": webcam.id})
    await bob.client.next_notification("consumerPaused")
    await alice.notify("resumeProducer", {"producerId": webcam.id})
    await bob.client.next_notification("consumerResumed")
    frames = bob.decoded_frames()
    assert await bob.wait_for_frames(frames + 5, timeout=20), "no video after resuming"

    # Her consumer of Bob's video: paused (frames stop), resumed (they come back).
    [offer] = [o for o in alice.offers if o["producerId"] == bob_video]
    server_consumer = call_server.rooms[ROOM].peers["alice"].consumers[offer["consumerId"]]
    await alice.notify("pauseConsumer", {"consumerId": offer["consumerId"]})
    await until(lambda: server_consumer.paused)
    await alice.notify("setConsumerPriority", {"consumerId": offer["consumerId"], "priority": 2})
    await alice.notify(
        "setConsumerPreferredLayers", {"consumerId": offer["consumerId"], "spatialLayer": 0}
    )
    await alice.notify("resumeConsumer", {"consumerId": offer["consumerId"]})
    await alice.notify("requestConsumerKeyFrame", {"consumerId": offer["consumerId"]})
    frames = alice.frames_of(bob_video)
    assert await alice.wait_for_frames(bob_video, frames + 5), "no video after resuming"

    await alice.notify("closeProducer", {"producerId": webcam.id})
    _, closed = await bob.client.next_notification("consumerClosed")
    assert closed["consumerId"] not in call_server.rooms[ROOM].peers["bob"].consumers


async def test_both_dialects_hear_who_speaks(call_server: Server, people: list[Any]) -> None:
    carol = Demo2025(base_url(call_server), ROOM, "carol")
    people.append(carol)
    await carol.join()
    bob = Bot(base_url(call_server), ROOM, "bob", video=False, chat=False)
    people.append(bob)
    await bob.join()
    alice = Demo2025(base_url(call_server), ROOM, "alice")
    people.append(alice)
    await alice.join()
    assert carol.client is not None and bob.client is not None

    await alice.produce(ToneTrack(), "mic")

    _, said = await bob.client.next_notification("activeSpeaker", timeout=15)
    assert said["peerId"] == "alice" and -20 <= said["volume"] <= 0
    _, said = await carol.client.next_notification("activeSpeaker", timeout=15)
    assert said == {"peerId": "alice"}
    _, volumes = await carol.client.next_notification("speakingPeers", timeout=15)
    assert [v["peerId"] for v in volumes["peerVolumes"]] == ["alice"]
