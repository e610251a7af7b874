"""Request payloads decoded once, into one struct per method (signalling.payloads)."""

from __future__ import annotations

import re
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.payloads import (
    REQUESTS,
    ChangeDisplayNameRequest,
    ConnectWebRtcTransportRequest,
    CreateWebRtcTransportRequest,
    EmptyRequest,
    JoinRequest,
    PeerLimits,
    ProduceDataRequest,
    ProduceRequest,
    Request,
    RequestError,
    SetConsumerPreferredLayersRequest,
    SetConsumerPriorityRequest,
    decode_request,
)
from signalling.protocol import ErrorCode
from signalling.rooms import Room

PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def refused(method: str, data: Any, limits: PeerLimits | None = None) -> str:
    """The reason of the 400 that ``data`` gets (and that it is a short printable one)."""
    with pytest.raises(RequestError) as error:
        decode_request(method, data, limits or PeerLimits())
    assert error.value.code == ErrorCode.BAD_REQUEST
    reason = error.value.reason
    assert len(reason) <= 80 and PRINTABLE.match(reason), reason
    return reason


# -- the table --------------------------------------------------------------------------


def test_every_handled_method_has_a_struct_and_nothing_else_does() -> None:
    assert set(REQUESTS) == set(Room.HANDLERS)


@pytest.mark.parametrize("method", sorted(Room.HANDLERS))
def test_each_handler_takes_the_struct_of_its_method(method: str) -> None:
    hints = typing.get_type_hints(Room.HANDLERS[method])
    assert hints["request"] is REQUESTS[method]


def test_an_unknown_method_has_no_struct() -> None:
    with pytest.raises(RequestError) as error:
        decode_request("fly", {})
    assert error.value.code == ErrorCode.UNKNOWN_METHOD


# -- valid requests ---------------------------------------------------------------------


def test_a_produce_request_is_decoded_with_its_wire_names() -> None:
    rtp_parameters = {"codecs": [{"mimeType": "video/VP8"}], "encodings": [{"ssrc": 1}]}
    request = decode_request(
        "produce",
        {
            "transportId": "t1",
            "kind": "video",
            "rtpParameters": rtp_parameters,
            "appData": {"source": "webcam"},
        },
    )
    assert request == ProduceRequest(
        transport_id="t1",
        kind="video",
        rtp_parameters=rtp_parameters,
        app_data={"source": "webcam"},
    )


def test_a_connect_request_keeps_its_dtls_parameters_as_sent() -> None:
    dtls = {"role": "client", "fingerprints": [{"algorithm": "sha-256", "value": "AB:CD"}]}
    request = decode_request("connectWebRtcTransport", {"transportId": "t", "dtlsParameters": dtls})
    assert request == ConnectWebRtcTransportRequest(transport_id="t", dtls_parameters=dtls)


def test_optional_fields_default_and_null_reads_as_absent() -> None:
    assert decode_request("join", {}) == JoinRequest()
    assert decode_request("join", {"displayName": None, "device": None}) == JoinRequest()
    data = decode_request(
        "produceData",
        {"transportId": "t", "sctpStreamParameters": {"streamId": 1}, "label": None},
    )
    assert isinstance(data, ProduceDataRequest)
    assert (data.label, data.protocol, data.app_data) == (None, None, None)
    layers = decode_request("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": 2})
    assert layers == SetConsumerPreferredLayersRequest(consumer_id="c", spatial_layer=2)


def test_a_join_keeps_its_objects_as_sent() -> None:
    caps = {"codecs": [], "headerExtensions": []}
    request = decode_request(
        "join",
        {
            "displayName": "Alice",
            "device": {"flag": "chrome"},
            "rtpCapabilities": caps,
            "sctpCapabilities": {"numStreams": {"OS": 1024, "MIS": 1024}},
        },
    )
    assert request == JoinRequest(
        display_name="Alice",
        device={"flag": "chrome"},
        rtp_capabilities=caps,
        sctp_capabilities={"numStreams": {"OS": 1024, "MIS": 1024}},
    )


def test_transport_flags_are_read_for_their_truth_as_room_js_does() -> None:
    request = decode_request("createWebRtcTransport", {"producing": 1, "consuming": ""})
    assert isinstance(request, CreateWebRtcTransportRequest)
    assert (request.producing, request.consuming, request.force_tcp) == (True, False, False)
    tcp = decode_request("createWebRtcTransport", {"forceTcp": "yes", "producing": []})
    assert isinstance(tcp, CreateWebRtcTransportRequest)
    assert (tcp.force_tcp, tcp.producing) == (True, False)


@pytest.mark.parametrize(
    ("sctp_capabilities", "streams"),
    [
        (None, (1024, 1024)),
        ({}, (1024, 1024)),
        ({"numStreams": None}, (1024, 1024)),
        ({"numStreams": {}}, (1024, 1024)),
        ({"numStreams": {"OS": 16}}, (16, 1024)),
        ({"numStreams": {"OS": 1, "MIS": 65535}, "maxMessageSize": 262144}, (1, 65535)),
    ],
)
def test_sctp_streams_default_to_1024(sctp_capabilities: Any, streams: tuple[int, int]) -> None:
    request = decode_request("createWebRtcTransport", {"sctpCapabilities": sctp_capabilities})
    assert isinstance(request, CreateWebRtcTransportRequest)
    assert request.num_sctp_streams == streams
    assert (request.sctp_capabilities is None) == (sctp_capabilities is None)


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("getRouterRtpCapabilities", {"anything": [1, 2]}),
        ("connectWebRtcTransport", {"transportId": "t", "dtlsParameters": {}, "appData": {}}),
        ("produce", {"transportId": "t", "kind": "audio", "rtpParameters": {}, "paused": True}),
        ("pauseConsumer", {"consumerId": "c", "consumer_id": 5, "CONSUMERID": None}),
        ("changeDisplayName", {"displayName": "Bob", "oldDisplayName": 7}),
        ("getRtcStatsUrl", {"x": {"y": "z"}}),
    ],
)
def test_extra_fields_are_tolerated(method: str, data: dict[str, Any]) -> None:
    assert isinstance(decode_request(method, data), REQUESTS[method])


def test_methods_without_fields_accept_any_object() -> None:
    assert decode_request("getRouterRtpCapabilities", {}) == EmptyRequest()


# -- refused requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "data", "field"),
    [
        ("produce", {"kind": "video", "rtpParameters": {}}, "transportId"),
        ("produce", {"transportId": "t", "rtpParameters": {}}, "kind"),
        ("produce", {"transportId": "t", "kind": "video"}, "rtpParameters"),
        ("connectWebRtcTransport", {"transportId": "t"}, "dtlsParameters"),
        ("produceData", {"transportId": "t"}, "sctpStreamParameters"),
        ("resumeConsumer", {}, "consumerId"),
        ("closeProducer", {}, "producerId"),
        ("getDataProducerStats", {}, "dataProducerId"),
        ("getDataConsumerStats", {}, "dataConsumerId"),
        ("setConsumerPreferredLayers", {"consumerId": "c"}, "spatialLayer"),
        ("setConsumerPriority", {"consumerId": "c"}, "priority"),
        ("changeDisplayName", {}, "displayName"),
        ("restartIce", {"transportId": None}, "transportId"),
    ],
)
def test_a_missing_required_field_is_named(method: str, data: Any, field: str) -> None:
    assert refused(method, data) == f"{field} is missing or has the wrong type"


@pytest.mark.parametrize(
    ("method", "data", "field"),
    [
        ("produce", {"transportId": 7, "kind": "video", "rtpParameters": {}}, "transportId"),
        ("produce", {"transportId": "t", "kind": ["video"], "rtpParameters": {}}, "kind"),
        ("produce", {"transportId": "t", "kind": "video", "rtpParameters": []}, "rtpParameters"),
        (
            "produce",
            {"transportId": "t", "kind": "video", "rtpParameters": {}, "appData": "x"},
            "appData",
        ),
        ("connectWebRtcTransport", {"transportId": "t", "dtlsParameters": "x"}, "dtlsParameters"),
        ("join", {"displayName": 42}, "displayName"),
        ("join", {"device": "phone"}, "device"),
        ("join", {"rtpCapabilities": []}, "rtpCapabilities"),
        ("join", {"sctpCapabilities": 1}, "sctpCapabilities"),
        ("createWebRtcTransport", {"sctpCapabilities": "x"}, "sctpCapabilities"),
        (
            "createWebRtcTransport",
            {"sctpCapabilities": {"numStreams": [1024]}},
            "sctpCapabilities.numStreams",
        ),
        (
            "createWebRtcTransport",
            {"sctpCapabilities": {"numStreams": {"OS": "1024"}}},
            "sctpCapabilities.numStreams.OS",
        ),
        (
            "createWebRtcTransport",
            {"sctpCapabilities": {"numStreams": {"MIS": 1.5}}},
            "sctpCapabilities.numStreams.MIS",
        ),
        ("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": "1"}, "spatialLayer"),
        ("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": True}, "spatialLayer"),
        ("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": 1.0}, "spatialLayer"),
        (
            "setConsumerPreferredLayers",
            {"consumerId": "c", "spatialLayer": 1, "temporalLayer": "high"},
            "temporalLayer",
        ),
        ("setConsumerPriority", {"consumerId": "c", "priority": False}, "priority"),
        ("changeDisplayName", {"displayName": {"first": "Bob"}}, "displayName"),
        ("produceData", {"transportId": "t", "sctpStreamParameters": {}, "label": 1}, "label"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(method: str, data: Any, field: str) -> None:
    assert refused(method, data) == f"{field} is missing or has the wrong type"


@pytest.mark.parametrize(
    ("method", "data", "reason"),
    [
        ("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": -1}, "spatialLayer"),
        ("setConsumerPreferredLayers", {"consumerId": "c", "spatialLayer": 256}, "spatialLayer"),
        (
            "setConsumerPreferredLayers",
            {"consumerId": "c", "spatialLayer": 0, "temporalLayer": 2**64},
            "temporalLayer",
        ),
    ],
)
def test_a_layer_is_a_uint8(method: str, data: Any, reason: str) -> None:
    assert refused(method, data) == f"{reason} must be 0..255"


@pytest.mark.parametrize("priority", [0, 256, -5])
def test_a_priority_is_1_to_255(priority: int) -> None:
    reason = refused("setConsumerPriority", {"consumerId": "c", "priority": priority})
    assert reason == "priority must be 1..255"
    assert decode_request(
        "setConsumerPriority", {"consumerId": "c", "priority": 255}
    ) == SetConsumerPriorityRequest(consumer_id="c", priority=255)


@pytest.mark.parametrize("streams", [0, 65536])
def test_sctp_streams_are_1_to_65535(streams: int) -> None:
    reason = refused("createWebRtcTransport", {"sctpCapabilities": {"numStreams": {"OS": streams}}})
    assert reason == "sctpCapabilities.numStreams.OS must be 1..65535"


@pytest.mark.parametrize("data", [None, [], "join", 3, True])
def test_data_must_be_an_object(data: Any) -> None:
    assert refused("join", data) == "data must be an object"


# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "data", "field"),
    [
        (
            "produce",
            {"transportId": "t" * 257, "kind": "video", "rtpParameters": {}},
            "transportId",
        ),
        ("produce", {"transportId": "t", "kind": "v" * 257, "rtpParameters": {}}, "kind"),
        ("resumeConsumer", {"consumerId": "c" * 10_000}, "consumerId"),
        (
            "produceData",
            {"transportId": "t", "sctpStreamParameters": {}, "protocol": "p" * 300},
            "protocol",
        ),
    ],
)
def test_ids_and_short_texts_are_at_most_256_characters(method: str, data: Any, field: str) -> None:
    assert refused(method, data) == f"{field} is too long"
    short = {k: v[:256] if isinstance(v, str) else v for k, v in data.items()}
    assert isinstance(decode_request(method, short), REQUESTS[method])


def test_text_length_counts_characters_not_bytes() -> None:
    assert decode_request("resumeConsumer", {"consumerId": "é" * 256})


@pytest.mark.parametrize("method", ["join", "changeDisplayName"])
def test_a_display_name_is_bounded_by_the_configured_length(method: str) -> None:
    limits = PeerLimits(display_name_length=8)
    assert refused(method, {"displayName": "x" * 9}, limits) == "displayName is too long"
    request = decode_request(method, {"displayName": "x" * 8}, limits)
    assert isinstance(request, (JoinRequest, ChangeDisplayNameRequest))
    assert request.display_name == "x" * 8
    # The default limit applies when none is given.
    assert refused(method, {"displayName": "x" * 129}) == "displayName is too long"


def test_a_device_is_bounded_by_its_configured_json_size() -> None:
    limits = PeerLimits(device_bytes=32)
    device = {"name": "x" * 21}  # {"name":"xxx..."}: 32 bytes
    assert decode_request("join", {"device": device}, limits) == JoinRequest(device=device)
    reason = refused("join", {"device": {"name": "x" * 22}}, limits)
    assert reason == "device is larger than 32 bytes"


@pytest.mark.parametrize(
    ("method", "data"),
    [
        ("produce", {"transportId": "t", "kind": "video", "rtpParameters": {}}),
        ("produceData", {"transportId": "t", "sctpStreamParameters": {}}),
    ],
)
def test_app_data_is_bounded_by_its_configured_json_size(method: str, data: Any) -> None:
    limits = PeerLimits(app_data_bytes=4096)
    assert decode_request(method, {**data, "appData": {"b": "x" * 4000}}, limits)
    reason = refused(method, {**data, "appData": {"blob": "x" * 100_000}}, limits)
    assert reason == "appData is larger than 4096 bytes"


# -- hostile input ----------------------------------------------------------------------


def test_a_reason_never_echoes_what_the_client_sent() -> None:
    hostile = "\x00évil" + "x" * 5000
    for data in (
        {"consumerId": hostile},
        {"consumerId": {hostile: hostile}},
        {hostile: hostile},
        {"consumerId": [hostile]},
    ):
        reason = refused("resumeConsumer", data)
        assert "evil" not in reason and "xxx" not in reason


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = sorted({f.encode_name for kind in REQUESTS.values() for f in msgspec.structs.fields(kind)})


@given(
    method=st.sampled_from(sorted(REQUESTS)),
    data=st.one_of(json_values, st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)),
)
def test_any_data_decodes_or_is_a_short_printable_400(method: str, data: Any) -> None:
    try:
        request = decode_request(method, data)
    except RequestError as error:
        assert error.code == ErrorCode.BAD_REQUEST
        assert len(error.reason) <= 80 and PRINTABLE.match(error.reason), error.reason
    else:
        assert isinstance(request, Request) and isinstance(request, REQUESTS[method])
