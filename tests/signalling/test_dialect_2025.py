"""A client speaking the 2025 mediasoup-demo dialect, message by message.

Every message is written by hand from ``server/src/signaling/protooMessages.ts``;
2024 clients share the rooms and keep hearing their own dialect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from signalling.protoo_client import ProtooClient, ProtooError
from signalling.server import Server

from .conftest import ClientFactory, eventually, url
from .handmade import (
    DIALECT_PARAMS,
    SCTP_CAPABILITIES,
    HandmadePeer,
    PeerFactory,
    server_consumer,
    server_peer,
    server_producer,
    until_resumed,
)


@pytest.fixture
async def peer(connect: ClientFactory) -> AsyncIterator[PeerFactory]:
    async def make(
        peer_id: str, dialect: str = "2025", *, join: bool = True, **options: Any
    ) -> HandmadePeer:
        client = await connect(peer_id, join=False, **DIALECT_PARAMS[dialect])
        made = HandmadePeer(client, peer_id, dialect)
        if join:
            await made.join(**options)
        return made

    yield make


# -- before join ------------------------------------------------------------------------


async def test_a_2025_client_is_greeted_with_the_server_version(connect: ClientFactory) -> None:
    client = await connect("alice", join=False, usePipeTransports="false")
    _, data = await client.next_notification("mediasoupVersion")
    assert data["version"].startswith("ghostless")


async def test_a_2024_client_is_not_greeted(connect: ClientFactory) -> None:
    client = await connect("alice", join=False)
    assert await client.request("ping")
    assert client.notifications.empty()


async def test_there_is_no_rtcstats_url_to_give(connect: ClientFactory) -> None:
    client = await connect("alice", join=False, usePipeTransports="false")
    assert await client.request("getRtcStatsUrl") == {}


async def test_router_capabilities_come_wrapped(connect: ClientFactory) -> None:
    client = await connect("alice", join=False, usePipeTransports="false")
    answer = await client.request("getRouterRtpCapabilities")
    assert set(answer) == {"routerRtpCapabilities"}
    assert {c["mimeType"] for c in answer["routerRtpCapabilities"]["codecs"]} >= {"audio/opus"}


async def test_transports_are_asked_for_by_direction_and_answered_with_transport_id(
    server: Server, peer: PeerFactory
) -> None:
    alice = await peer("alice", join=False)
    client = alice.client
    answer = await client.request(
        "createWebRtcTransport",
        {
            "forceTcp": False,
            "sctpCapabilities": SCTP_CAPABILITIES,
            "appData": {"direction": "consumer"},
        },
    )
    assert set(answer) == {
        "transportId",
        "iceParameters",
        "iceCandidates",
        "dtlsParameters",
        "sctpParameters",
    }
    transport = server_peer(server, "alice").transports[answer["transportId"]]
    assert transport.app_data == {"producing": False, "consuming": True}
    assert answer["sctpParameters"]["MIS"] == 1024

    ice = await client.request("restartIce", {"transportId": answer["transportId"]})
    assert set(ice) == {"iceParameters"} and ice["iceParameters"]["password"]
    stats = await client.request("getTransportStats", {"transportId": answer["transportId"]})
    assert stats["stats"][0]["type"] == "webrtc-transport"


@pytest.mark.parametrize("app_data", [{"direction": "both"}, {}, None])
async def test_a_transport_without_a_direction_is_a_bad_request(
    peer: PeerFactory, app_data: Any
) -> None:
    alice = await peer("alice", join=False)
    with pytest.raises(ProtooError) as error:
        await alice.client.request(
            "createWebRtcTransport", {"forceTcp": False, "appData": app_data}
        )
    assert error.value.code == 400 and "direction" in error.value.reason


async def test_an_unknown_dialect_is_refused_at_the_door(server: Server) -> None:
    async with ws_connect(
        url(server, dialect="1999"),
        subprotocols=["protoo"],  # type: ignore[list-item]
    ) as ws:
        await ws.wait_closed()
    assert ws.close_code == 4400


# -- peers ------------------------------------------------------------------------------


async def test_peers_are_serialized_with_peer_id_and_new_ones_wrapped(peer: PeerFactory) -> None:
    alice = await peer("alice", "2024")
    bob = await peer("bob")
    assert [p["peerId"] for p in bob.joined["peers"]] == ["alice"]
    assert "id" not in bob.joined["peers"][0] and "remoteAddress" not in bob.joined["peers"][0]
    assert bob.joined["resumeToken"]  # ghostless's additions are there too

    await peer("carol")

    _, to_bob = await bob.client.next_notification("newPeer")
    assert to_bob == {
        "peer": {
            "peerId": "carol",
            "displayName": "carol",
            "device": {"flag": "python", "name": "handmade"},
            "quality": "good",
        }
    }
    _, to_alice = await alice.client.next_notification("newPeer")
    assert to_alice["id"] == "bob"
    _, to_alice = await alice.client.next_notification("newPeer")
    assert to_alice["id"] == "carol" and "peer" not in to_alice


async def test_display_names_change_by_notification(peer: PeerFactory) -> None:
    alice = await peer("alice", "2024")
    bob = await peer("bob")

    await bob.client.notify("changeDisplayName", {"displayName": "Robert"})

    _, data = await alice.client.next_notification("peerDisplayNameChanged")
    assert data == {"peerId": "bob", "displayName": "Robert", "oldDisplayName": "bob"}


async def test_a_leaving_peer_is_announced_with_its_peer_id(peer: PeerFactory) -> None:
    alice = await peer("alice")
    bob = await peer("bob")
    await bob.client.request("beforeDisconnect")
    _, data = await alice.client.next_notification("peerClosed")
    assert data == {"peerId": "bob", "reason": "graceful"}


# -- producing and consuming ---------------------------------------------------------------


async def test_produce_answers_producer_id_and_consumers_are_offered_by_consumer_id(
    server: Server, peer: PeerFactory
) -> None:
    bob = await peer("bob")
    carol = await peer("carol", "2024")
    alice = await peer("alice")

    producer_id = await alice.produce("audio", source="mic")
    await bob.wait_consumers(1)
    await carol.wait_consumers(1)

    [offer] = bob.new_consumers
    assert set(offer) == {
        "peerId",
        "transportId",
        "consumerId",
        "producerId",
        "kind",
        "rtpParameters",
        "type",
        "producerPaused",
        "consumerScore",
        "appData",
    }
    assert offer["peerId"] == "alice" and offer["producerId"] == producer_id
    assert offer["transportId"] == bob.transports["consumer"]
    assert offer["appData"] == {"source": "mic", "peerId": "alice"}
    # mediasoup's ConsumerScore; no packet has come yet, so the values are the media's guess.
    assert set(offer["consumerScore"]) == {"score", "producerScore", "producerScores"}
    assert all(0 <= s <= 10 for s in offer["consumerScore"]["producerScores"])
    assert offer["type"] == "simple" and offer["producerPaused"] is False
    [offer_2024] = carol.new_consumers
    assert "transportId" not in offer_2024 and "consumerScore" not in offer_2024
    assert offer_2024["id"] in server_peer(server, "carol").consumers

    consumer = server_consumer(server, "bob", offer["consumerId"])
    await until_resumed(consumer)
    stats = await bob.client.request("getConsumerStats", {"consumerId": consumer.id})
    assert stats["stats"][0]["type"] == "outbound-rtp"
    stats = await alice.client.request("getProducerStats", {"producerId": producer_id})
    assert stats["stats"][0]["type"] == "inbound-rtp"


async def test_data_producers_answer_their_id_and_data_consumers_are_offered_by_id(
    server: Server, peer: PeerFactory
) -> None:
    bob = await peer("bob", sctp=True)
    alice = await peer("alice", consume=False)

    data_producer_id = await alice.produce_data("chat")
    await bob.wait_consumers(1)

    [offer] = bob.new_data_consumers
    assert offer["dataProducerId"] == data_producer_id
    assert offer["transportId"] == bob.transports["consumer"]
    assert offer["dataConsumerId"] in server_peer(server, "bob").data_consumers
    assert offer["appData"] == {"channel": "chat", "peerId": "alice"}
    stats = await alice.client.request("getDataProducerStats", {"dataProducerId": data_producer_id})
    assert stats["stats"][0]["type"] == "data-producer"
    stats = await bob.client.request(
        "getDataConsumerStats", {"dataConsumerId": offer["dataConsumerId"]}
    )
    assert stats["stats"][0]["type"] == "data-consumer"


async def test_producers_are_paused_resumed_and_closed_by_notification(
    server: Server, peer: PeerFactory
) -> None:
    bob = await peer("bob")
    alice = await peer("alice")
    producer_id = await alice.produce("audio")
    await bob.wait_consumers(1)
    consumer_id = bob.consumer_id()

    await alice.client.notify("pauseProducer", {"producerId": producer_id})
    _, paused = await bob.client.next_notification("consumerPaused")
    await alice.client.notify("resumeProducer", {"producerId": producer_id})
    _, resumed = await bob.client.next_notification("consumerResumed")
    await alice.client.notify("closeProducer", {"producerId": producer_id})
    _, closed = await bob.client.next_notification("consumerClosed")

    assert paused == resumed == closed == {"consumerId": consumer_id}
    assert server_peer(server, "alice").producers == {}


async def test_consumers_are_steered_by_notification(server: Server, peer: PeerFactory) -> None:
    bob = await peer("bob")
    alice = await peer("alice")
    await alice.produce("video")
    await bob.wait_consumers(1)
    consumer = server_consumer(server, "bob", bob.consumer_id())
    await until_resumed(consumer)
    calls: list[tuple[str, Any]] = []

    async def record(name: str, value: Any = None) -> None:
        calls.append((name, value))

    consumer.set_preferred_layers = lambda layers: record("layers", layers)  # type: ignore[attr-defined]
    consumer.set_priority = lambda priority: record("priority", priority)  # type: ignore[attr-defined]
    consumer.request_key_frame = lambda: record("key frame")  # type: ignore[method-assign]

    send = bob.client.notify
    await send("pauseConsumer", {"consumerId": consumer.id})
    await eventually(lambda: consumer.paused)
    await send("resumeConsumer", {"consumerId": consumer.id})
    await eventually(lambda: not consumer.paused)
    await send("setConsumerPreferredLayers", {"consumerId": consumer.id, "spatialLayer": 1})
    await send("setConsumerPriority", {"consumerId": consumer.id, "priority": 2})
    await send("requestConsumerKeyFrame", {"consumerId": consumer.id})
    await eventually(lambda: len(calls) == 3)

    assert calls == [("layers", {"spatialLayer": 1}), ("priority", 2), ("key frame", None)]


async def test_a_bad_notification_is_ignored_and_the_session_goes_on(
    server: Server, peer: PeerFactory
) -> None:
    bob = await peer("bob")
    await bob.client.notify("pauseProducer", {"producerId": "not mine"})
    await bob.client.notify("setConsumerPriority", {"consumerId": "nope", "priority": "high"})
    await bob.client.notify("changeDisplayName", {"displayName": 7})
    assert "serverTime" in await bob.client.request("ping")
    assert server_peer(server, "bob").display_name == "bob"


async def test_the_2025_calls_still_work_as_requests(server: Server, peer: PeerFactory) -> None:
    alice = await peer("alice")
    producer_id = await alice.produce("audio")
    assert await alice.client.request("pauseProducer", {"producerId": producer_id}) == {}
    assert server_producer(server, "alice", producer_id).paused


async def test_a_2025_client_that_resumes_keeps_its_dialect(
    server: Server, peer: PeerFactory, connect: ClientFactory
) -> None:
    alice = await peer("alice")
    token = alice.joined["resumeToken"]
    alice.client.abort()
    again: ProtooClient = await connect(
        "alice", join=False, resumeToken=token, usePipeTransports="false"
    )
    await again.next_notification("sessionResumed")
    answer = await again.request("getRouterRtpCapabilities")
    assert "routerRtpCapabilities" in answer
