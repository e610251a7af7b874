"""The dialect layer: which dialect a URL asks for, and how each message is worded.

Canonical shapes (what the room's handlers take and produce) on one side, the
2025 mediasoup-demo shapes (``server/src/signaling/protooMessages.ts``) on the
other; the 2024 dialect is the canonical one minus what only 2025 clients get.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest

from signalling.dialect import (
    DIALECT_2024,
    DIALECT_2025,
    DOMINANT_SPEAKER,
    DOWNLINK_BWE,
    SPEAKING_PEERS,
    Dialect2025,
    select,
)

# -- choosing a dialect ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "name"),
    [
        # The 2024 app: lib/urlFactory.js
        ("roomId=r&peerId=p&consumerReplicas=undefined", "2024"),
        ("roomId=r&peerId=p", "2024"),
        # The 2025 app: qs.stringify({roomId, peerId, consumerReplicas, usePipeTransports})
        ("roomId=r&peerId=p&usePipeTransports=false", "2025"),
        ("roomId=r&peerId=p&consumerReplicas=1&usePipeTransports=true", "2025"),
        # Said explicitly, it wins.
        ("roomId=r&peerId=p&dialect=2025", "2025"),
        ("roomId=r&peerId=p&usePipeTransports=false&dialect=2024", "2024"),
    ],
)
def test_the_url_says_which_dialect_a_connection_speaks(query: str, name: str) -> None:
    assert select(parse_qs(query, keep_blank_values=True)).name == name


def test_an_explicit_dialect_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dialect"):
        select(parse_qs("roomId=r&peerId=p&dialect=2023"))


# -- requests from the client ------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "producing", "consuming"),
    [("producer", True, False), ("consumer", False, True)],
)
def test_a_2025_transport_direction_becomes_producing_or_consuming(
    direction: str, producing: bool, consuming: bool
) -> None:
    data = {"forceTcp": False, "appData": {"direction": direction}, "sctpCapabilities": None}
    assert DIALECT_2025.request("createWebRtcTransport", data) == {
        **data,
        "producing": producing,
        "consuming": consuming,
    }


@pytest.mark.parametrize("app_data", [{"direction": "sideways"}, {}, "producer", {"direction": 1}])
def test_a_2025_transport_without_a_valid_direction_is_refused(app_data: Any) -> None:
    with pytest.raises(ValueError, match=r"appData\.direction"):
        DIALECT_2025.request("createWebRtcTransport", {"appData": app_data})


def test_other_requests_pass_through_unchanged_in_both_dialects() -> None:
    data = {"transportId": "t", "kind": "audio", "rtpParameters": {}, "appData": {"source": "mic"}}
    assert DIALECT_2025.request("produce", data) is data
    assert DIALECT_2024.request("createWebRtcTransport", {"producing": True}) == {"producing": True}


# -- responses ------------------------------------------------------------------------------

CAPS = {"codecs": [], "headerExtensions": []}
TRANSPORT = {
    "id": "t1",
    "iceParameters": {"usernameFragment": "u"},
    "iceCandidates": [],
    "dtlsParameters": {"role": "auto"},
    "sctpParameters": None,
}
STATS = [{"type": "inbound-rtp"}]


@pytest.mark.parametrize(
    ("method", "canonical", "worded_2025"),
    [
        ("getRouterRtpCapabilities", CAPS, {"routerRtpCapabilities": CAPS}),
        (
            "createWebRtcTransport",
            TRANSPORT,
            {**{k: v for k, v in TRANSPORT.items() if k != "id"}, "transportId": "t1"},
        ),
        ("connectWebRtcTransport", None, {}),
        ("restartIce", {"usernameFragment": "u2"}, {"iceParameters": {"usernameFragment": "u2"}}),
        ("produce", {"id": "p1"}, {"producerId": "p1"}),
        ("produceData", {"id": "d1"}, {"dataProducerId": "d1"}),
        ("getTransportStats", STATS, {"stats": STATS}),
        ("getProducerStats", STATS, {"stats": STATS}),
        ("getConsumerStats", STATS, {"stats": STATS}),
        ("getDataProducerStats", STATS, {"stats": STATS}),
        ("getDataConsumerStats", STATS, {"stats": STATS}),
        ("getRtcStatsUrl", {}, {}),
        ("changeDisplayName", None, {}),
        ("ping", {"serverTime": 1.0}, {"serverTime": 1.0}),
    ],
)
def test_responses_are_worded_per_dialect(method: str, canonical: Any, worded_2025: Any) -> None:
    assert DIALECT_2025.response(method, canonical) == worded_2025
    assert DIALECT_2024.response(method, canonical) == ({} if canonical is None else canonical)


def test_the_2025_join_answer_lists_serialized_peers() -> None:
    joined = {
        "peers": [
            {"id": "bob", "displayName": "Bob", "device": {"flag": "chrome"}, "quality": "good"}
        ],
        "heartbeatInterval": 30.0,
        "resumeToken": "r",
    }
    assert DIALECT_2025.response("join", joined) == {
        "peers": [
            {"peerId": "bob", "displayName": "Bob", "device": {"flag": "chrome"}, "quality": "good"}
        ],
        "heartbeatInterval": 30.0,
        "resumeToken": "r",
    }
    assert DIALECT_2024.response("join", joined) is joined


# -- notifications from the server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "canonical", "in_2024", "in_2025"),
    [
        (
            "newPeer",
            {"id": "bob", "displayName": "Bob", "device": {}, "quality": "good"},
            ("newPeer", {"id": "bob", "displayName": "Bob", "device": {}, "quality": "good"}),
            (
                "newPeer",
                {"peer": {"peerId": "bob", "displayName": "Bob", "device": {}, "quality": "good"}},
            ),
        ),
        (
            "consumerLayersChanged",
            {"consumerId": "c", "spatialLayer": 2, "temporalLayer": 1},
            ("consumerLayersChanged", {"consumerId": "c", "spatialLayer": 2, "temporalLayer": 1}),
            (
                "consumerLayersChanged",
                {"consumerId": "c", "layers": {"spatialLayer": 2, "temporalLayer": 1}},
            ),
        ),
        (
            "consumerLayersChanged",
            {"consumerId": "c", "spatialLayer": 0, "temporalLayer": None},
            (
                "consumerLayersChanged",
                {"consumerId": "c", "spatialLayer": 0, "temporalLayer": None},
            ),
            ("consumerLayersChanged", {"consumerId": "c", "layers": {"spatialLayer": 0}}),
        ),
        (
            "consumerLayersChanged",
            {"consumerId": "c", "spatialLayer": None, "temporalLayer": None},
            (
                "consumerLayersChanged",
                {"consumerId": "c", "spatialLayer": None, "temporalLayer": None},
            ),
            ("consumerLayersChanged", {"consumerId": "c"}),
        ),
        (
            "activeSpeaker",
            {"peerId": "bob", "volume": -20},
            ("activeSpeaker", {"peerId": "bob", "volume": -20}),
            None,  # the 2025 activeSpeaker is the dominant speaker
        ),
        (
            "activeSpeaker",
            {"peerId": None},
            ("activeSpeaker", {"peerId": None}),
            ("activeSpeaker", {}),  # {peerId: undefined}
        ),
        (
            DOMINANT_SPEAKER,
            {"peerId": "bob"},
            None,
            ("activeSpeaker", {"peerId": "bob"}),
        ),
        (
            SPEAKING_PEERS,
            {"peerVolumes": [{"peerId": "bob", "volume": -20}]},
            None,
            ("speakingPeers", {"peerVolumes": [{"peerId": "bob", "volume": -20}]}),
        ),
        (
            DOWNLINK_BWE,
            {"desiredBitrate": 1, "effectiveDesiredBitrate": 2, "availableBitrate": 3},
            (
                "downlinkBwe",
                {"desiredBitrate": 1, "effectiveDesiredBitrate": 2, "availableBitrate": 3},
            ),
            None,  # the 2025 server has no downlinkBwe
        ),
        (
            "producerScore",
            {"producerId": "p", "score": [{"encodingIdx": 0, "ssrc": 1, "score": 9}]},
            (
                "producerScore",
                {"producerId": "p", "score": [{"encodingIdx": 0, "ssrc": 1, "score": 9}]},
            ),
            (
                "producerScore",
                {"producerId": "p", "score": [{"encodingIdx": 0, "ssrc": 1, "score": 9}]},
            ),
        ),
        (
            "peerClosed",
            {"peerId": "bob", "reason": "graceful"},
            ("peerClosed", {"peerId": "bob", "reason": "graceful"}),
            ("peerClosed", {"peerId": "bob", "reason": "graceful"}),
        ),
        (
            "peerQuality",  # ghostless's own: the same everywhere
            {"peerId": "bob", "quality": "poor", "reasons": ["loss"]},
            ("peerQuality", {"peerId": "bob", "quality": "poor", "reasons": ["loss"]}),
            ("peerQuality", {"peerId": "bob", "quality": "poor", "reasons": ["loss"]}),
        ),
    ],
)
def test_notifications_are_worded_per_dialect(
    method: str, canonical: Any, in_2024: Any, in_2025: Any
) -> None:
    assert DIALECT_2024.notification(method, canonical) == in_2024
    assert DIALECT_2025.notification(method, canonical) == in_2025


def test_only_2025_connections_are_greeted_with_a_version() -> None:
    assert DIALECT_2024.greetings() == []
    assert Dialect2025("ghostless 9").greetings() == [
        ("mediasoupVersion", {"version": "ghostless 9"})
    ]


# -- requests from the server ----------------------------------------------------------------

NEW_CONSUMER = {
    "peerId": "bob",
    "producerId": "p",
    "id": "c",
    "kind": "video",
    "rtpParameters": {"codecs": []},
    "type": "simple",
    "appData": {"peerId": "bob", "source": "webcam"},
    "producerPaused": False,
    "transportId": "t",
    "consumerScore": {"score": 10, "producerScore": 10, "producerScores": [10]},
}
NEW_DATA_CONSUMER = {
    "peerId": "bob",
    "dataProducerId": "dp",
    "id": "dc",
    "sctpStreamParameters": {"streamId": 3},
    "label": "chat",
    "protocol": "",
    "appData": {"peerId": "bob", "channel": "chat"},
    "transportId": "t",
}


def test_new_consumer_is_worded_per_dialect() -> None:
    assert DIALECT_2024.server_request("newConsumer", NEW_CONSUMER) == {
        k: v for k, v in NEW_CONSUMER.items() if k not in ("transportId", "consumerScore")
    }
    assert DIALECT_2025.server_request("newConsumer", NEW_CONSUMER) == {
        "peerId": "bob",
        "transportId": "t",
        "consumerId": "c",
        "producerId": "p",
        "kind": "video",
        "rtpParameters": {"codecs": []},
        "type": "simple",
        "producerPaused": False,
        "consumerScore": {"score": 10, "producerScore": 10, "producerScores": [10]},
        "appData": {"peerId": "bob", "source": "webcam"},
    }


def test_new_data_consumer_is_worded_per_dialect() -> None:
    assert DIALECT_2024.server_request("newDataConsumer", NEW_DATA_CONSUMER) == {
        k: v for k, v in NEW_DATA_CONSUMER.items() if k != "transportId"
    }
    assert DIALECT_2025.server_request("newDataConsumer", NEW_DATA_CONSUMER) == {
        "peerId": "bob",
        "transportId": "t",
        "dataConsumerId": "dc",
        "dataProducerId": "dp",
        "sctpStreamParameters": {"streamId": 3},
        "label": "chat",
        "protocol": "",
        "appData": {"peerId": "bob", "channel": "chat"},
    }


def test_the_2025_calls_without_an_answer_are_notifications() -> None:
    assert DIALECT_2025.commands == {
        "closeProducer",
        "pauseProducer",
        "resumeProducer",
        "pauseConsumer",
        "resumeConsumer",
        "setConsumerPreferredLayers",
        "setConsumerPriority",
        "requestConsumerKeyFrame",
        "changeDisplayName",
    }
    assert DIALECT_2024.commands == frozenset()


def test_translation_never_changes_the_canonical_data_it_was_given() -> None:
    # broadcast() hands the same dict to every peer, whatever its dialect.
    data = {"id": "bob", "displayName": "Bob", "device": {}, "quality": "good"}
    snapshot = dict(data)
    DIALECT_2025.notification("newPeer", data)
    DIALECT_2025.server_request("newConsumer", NEW_CONSUMER)
    assert data == snapshot and "id" in NEW_CONSUMER
