"""Unit tests of media/rtp_parameters.py: router capabilities, validation and the ORTC maps."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from media.errors import InvalidParametersError, UnsupportedError
from media.rtp_parameters import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    CONSUMER_HEADER_EXTENSION_URIS,
    DEFAULT_MEDIA_CODECS,
    FIRST_DYNAMIC_PAYLOAD_TYPE,
    MID_URI,
    RID_URI,
    RRID_URI,
    TOFFSET_URI,
    TRANSPORT_CC_URI,
    VIDEO_FEEDBACK,
    VIDEO_ORIENTATION_URI,
    Json,
    ProducerMapping,
    can_consume,
    codecs_match,
    generate_router_rtp_capabilities,
    get_consumable_rtp_parameters,
    get_consumer_rtp_parameters,
    get_producer_mapping,
    validate_producer_rtp_parameters,
)

ROUTER_CAPS = generate_router_rtp_capabilities(DEFAULT_MEDIA_CODECS)


def router_pt(mime_type: str) -> int:
    [codec] = [c for c in ROUTER_CAPS["codecs"] if c["mimeType"] == mime_type]
    return int(codec["preferredPayloadType"])


def router_rtx_pt(apt: int) -> int:
    [codec] = [
        c
        for c in ROUTER_CAPS["codecs"]
        if c["mimeType"] == "video/rtx" and c["parameters"]["apt"] == apt
    ]
    return int(codec["preferredPayloadType"])


def router_ext_id(kind: str, uri: str) -> int:
    [ext] = [e for e in ROUTER_CAPS["headerExtensions"] if e["kind"] == kind and e["uri"] == uri]
    return int(ext["preferredId"])


def pymediasoup_video_parameters() -> Json:
    """A VP8 + RTX producer as pymediasoup serialises it, None-valued extras included."""
    return {
        "mid": "0",
        "msid": None,
        "codecs": [
            {
                "mimeType": "video/VP8",
                "clockRate": 90000,
                "channels": None,
                "payloadType": 97,
                "parameters": {},
                "rtcpFeedback": [{"type": "nack", "parameter": ""}],
            },
            {
                "mimeType": "video/rtx",
                "clockRate": 90000,
                "channels": None,
                "payloadType": 98,
                "parameters": {"apt": 97},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {"uri": MID_URI, "id": 1, "encrypt": False, "parameters": {}},
            {"uri": ABS_SEND_TIME_URI, "id": 3, "encrypt": False, "parameters": {}},
        ],
        "encodings": [{"ssrc": 2705181936, "rid": None, "rtx": {"ssrc": 2798056960}, "dtx": False}],
        "rtcp": {"cname": "x", "reducedSize": True, "mux": True},
    }


def opus_parameters() -> Json:
    return {
        "mid": "1",
        "codecs": [
            {
                "mimeType": "audio/opus",
                "clockRate": 48000,
                "channels": 2,
                "payloadType": 111,
                "parameters": {"minptime": 10, "useinbandfec": 1},
                "rtcpFeedback": [],
            }
        ],
        "headerExtensions": [
            {"uri": MID_URI, "id": 4},
            {"uri": AUDIO_LEVEL_URI, "id": 1},
            {"uri": ABS_SEND_TIME_URI, "id": 2},
        ],
        "encodings": [{"ssrc": 1111}],
        "rtcp": {"cname": "audio-cname"},
    }


def client_caps(*, codecs: list[Json], header_extension_uris: list[str]) -> Json:
    """rtpCapabilities as mediasoup-client sends them on consume."""
    return {
        "codecs": codecs,
        "headerExtensions": [
            {"kind": "video", "uri": uri, "preferredId": 5 + i, "direction": "sendrecv"}
            for i, uri in enumerate(header_extension_uris)
        ],
    }


VP8_CAP: Json = {
    "kind": "video",
    "mimeType": "video/VP8",
    "preferredPayloadType": 96,
    "clockRate": 90000,
    "parameters": {},
    "rtcpFeedback": [],
}
RTX_CAP: Json = {
    "kind": "video",
    "mimeType": "video/rtx",
    "preferredPayloadType": 97,
    "clockRate": 90000,
    "parameters": {"apt": 96},
    "rtcpFeedback": [],
}
H264_CAP: Json = {
    "kind": "video",
    "mimeType": "video/H264",
    "preferredPayloadType": 102,
    "clockRate": 90000,
    "parameters": {"packetization-mode": 1, "profile-level-id": "42e01f"},
    "rtcpFeedback": [],
}


# -- router capabilities ------------------------------------------------------------------


def test_router_codecs_get_unique_dynamic_payload_types() -> None:
    pts = [c["preferredPayloadType"] for c in ROUTER_CAPS["codecs"]]

    assert len(pts) == len(set(pts))
    assert min(pts) == FIRST_DYNAMIC_PAYLOAD_TYPE
    assert all(96 <= pt <= 127 for pt in pts)


def test_every_router_video_codec_is_followed_by_its_rtx() -> None:
    codecs = ROUTER_CAPS["codecs"]

    assert [c["mimeType"] for c in codecs] == [
        "audio/opus",
        "video/VP8",
        "video/rtx",
        "video/H264",
        "video/rtx",
    ]
    for i, codec in enumerate(codecs):
        if codec["kind"] == "video" and codec["mimeType"] != "video/rtx":
            rtx = codecs[i + 1]
            assert rtx["mimeType"] == "video/rtx"
            assert rtx["clockRate"] == codec["clockRate"]
            assert rtx["parameters"] == {"apt": codec["preferredPayloadType"]}
            assert rtx["rtcpFeedback"] == []


def test_router_audio_codecs_keep_their_channels_and_have_no_feedback() -> None:
    [opus] = [c for c in ROUTER_CAPS["codecs"] if c["kind"] == "audio"]

    assert opus["channels"] == 2
    assert opus["rtcpFeedback"] == []


def test_an_audio_codec_without_channels_gets_one() -> None:
    caps = generate_router_rtp_capabilities(
        [{"kind": "audio", "mimeType": "audio/PCMU", "clockRate": 8000}]
    )

    assert caps["codecs"][0]["channels"] == 1


def test_router_video_codecs_offer_nack_pli_fir_remb_and_transport_cc_in_own_copies() -> None:
    caps = generate_router_rtp_capabilities(DEFAULT_MEDIA_CODECS)
    media = [c for c in caps["codecs"] if c["kind"] == "video" and c["mimeType"] != "video/rtx"]

    for codec in media:
        assert codec["rtcpFeedback"] == VIDEO_FEEDBACK
    media[0]["rtcpFeedback"].clear()
    assert media[1]["rtcpFeedback"] == VIDEO_FEEDBACK
    # mediasoup's shapes: a sender keeps transport-cc when it negotiates the
    # transport-wide extension (media.transport_cc answers it), else goog-remb.
    assert VIDEO_FEEDBACK == [
        {"type": "nack", "parameter": ""},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
        {"type": "goog-remb", "parameter": ""},
        {"type": "transport-cc", "parameter": ""},
    ]


def test_router_codec_parameters_are_copied_from_the_media_codec() -> None:
    [h264] = [c for c in ROUTER_CAPS["codecs"] if c["mimeType"] == "video/H264"]

    assert h264["parameters"] == DEFAULT_MEDIA_CODECS[2]["parameters"]
    assert h264["parameters"] is not DEFAULT_MEDIA_CODECS[2]["parameters"]


def test_router_capabilities_offer_the_header_extensions_with_mediasoup_ids() -> None:
    exts = {(e["kind"], e["uri"]): e for e in ROUTER_CAPS["headerExtensions"]}

    assert {key: e["preferredId"] for key, e in exts.items()} == {
        ("audio", MID_URI): 1,
        ("video", MID_URI): 1,
        ("video", RID_URI): 2,
        ("video", RRID_URI): 3,
        ("audio", ABS_SEND_TIME_URI): 4,
        ("video", ABS_SEND_TIME_URI): 4,
        ("audio", TRANSPORT_CC_URI): 5,
        ("video", TRANSPORT_CC_URI): 5,
        ("audio", AUDIO_LEVEL_URI): 10,
        ("video", VIDEO_ORIENTATION_URI): 11,
        ("video", TOFFSET_URI): 12,
    }
    for (_, uri), ext in exts.items():
        assert ext["preferredEncrypt"] is False
        # Only the router receives transport-wide numbers (mediasoup's "recvonly").
        assert ext["direction"] == ("recvonly" if uri == TRANSPORT_CC_URI else "sendrecv")


@pytest.mark.parametrize(
    "media_codec",
    [
        {"kind": "data", "mimeType": "data/x", "clockRate": 1},
        {"mimeType": "audio/opus", "clockRate": 48000},
        {"kind": "audio", "clockRate": 48000},
        {"kind": "audio", "mimeType": "audio/opus"},
        {"kind": "audio", "mimeType": "audio/opus", "clockRate": "48000"},
        {"kind": "audio", "mimeType": "audio/opus", "clockRate": True},
        "audio/opus",
    ],
    ids=[
        "bad-kind",
        "no-kind",
        "no-mime",
        "no-clock",
        "string-clock",
        "bool-clock",
        "not-an-object",
    ],
)
def test_a_malformed_media_codec_is_refused(media_codec: Any) -> None:
    with pytest.raises(InvalidParametersError):
        generate_router_rtp_capabilities([media_codec])


# -- codecs_match -------------------------------------------------------------------------


def opus(channels: int | None = 2) -> Json:
    codec: Json = {"mimeType": "audio/opus", "clockRate": 48000}
    if channels is not None:
        codec["channels"] = channels
    return codec


def h264(profile_level_id: str | None = "42e01f", mode: int | str | None = 1) -> Json:
    parameters: Json = {}
    if profile_level_id is not None:
        parameters["profile-level-id"] = profile_level_id
    if mode is not None:
        parameters["packetization-mode"] = mode
    return {"mimeType": "video/H264", "clockRate": 90000, "parameters": parameters}


VP8: Json = {"mimeType": "video/VP8", "clockRate": 90000}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (opus(2), opus(2), True),
        (opus(2), opus(1), False),
        (opus(None), opus(1), True),
        (opus(None), opus(2), False),
        (VP8, {"mimeType": "video/vp8", "clockRate": 90000}, True),
        (VP8, {"mimeType": "video/VP8", "clockRate": 48000}, False),
        (VP8, h264(), False),
        (h264("42e01f"), h264("42001f"), True),
        (h264("42e01f"), h264("42C01F"), True),
        (h264("42e01f"), h264(None), True),
        (h264("42e01f"), h264("4d001f"), False),
        (h264("64001f"), h264("64001f"), True),
        (h264(mode=1), h264(mode=0), False),
        (h264(mode=1), h264(mode="1"), True),
        (h264(mode=0), h264(mode=None), True),
    ],
    ids=[
        "opus-stereo",
        "opus-channels-differ",
        "channels-default-to-one",
        "missing-channels-is-not-stereo",
        "mime-case-insensitive",
        "clock-rate-differs",
        "different-mime",
        "h264-baseline-family-42e0-4200",
        "h264-baseline-family-42c0",
        "h264-profile-defaults-to-baseline",
        "h264-main-is-not-baseline",
        "h264-same-high-profile",
        "h264-packetization-mode-differs",
        "h264-packetization-mode-as-string",
        "h264-packetization-mode-defaults-to-0",
    ],
)
def test_codecs_match_compares_what_makes_a_media_format(a: Json, b: Json, expected: bool) -> None:
    assert codecs_match(a, b) is expected
    assert codecs_match(b, a) is expected


# -- validate_producer_rtp_parameters -----------------------------------------------------


def with_changes(path: tuple[str | int, ...], value: Any) -> Json:
    """The pymediasoup parameters with one nested field replaced (or deleted if ...)."""
    params = pymediasoup_video_parameters()
    target: Any = params
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return params


MALFORMED: list[tuple[str, Any]] = [
    ("not-an-object", ["codecs"]),
    ("none", None),
    ("no-codecs", with_changes(("codecs",), ...)),
    ("empty-codecs", with_changes(("codecs",), [])),
    ("codecs-not-a-list", with_changes(("codecs",), {"mimeType": "video/VP8"})),
    ("codec-not-an-object", with_changes(("codecs", 0), "video/VP8")),
    ("no-mime-type", with_changes(("codecs", 0, "mimeType"), ...)),
    ("mime-type-not-a-string", with_changes(("codecs", 0, "mimeType"), 8)),
    ("mime-type-of-another-kind", with_changes(("codecs", 0, "mimeType"), "audio/opus")),
    ("no-payload-type", with_changes(("codecs", 0, "payloadType"), ...)),
    ("payload-type-string", with_changes(("codecs", 0, "payloadType"), "97")),
    ("payload-type-bool", with_changes(("codecs", 0, "payloadType"), True)),
    ("payload-type-128", with_changes(("codecs", 0, "payloadType"), 128)),
    ("payload-type-negative", with_changes(("codecs", 0, "payloadType"), -1)),
    ("no-clock-rate", with_changes(("codecs", 1, "clockRate"), ...)),
    ("clock-rate-float", with_changes(("codecs", 1, "clockRate"), 90000.0)),
    ("codec-parameters-list", with_changes(("codecs", 0, "parameters"), [])),
    ("encodings-not-a-list", with_changes(("encodings",), {"ssrc": 1})),
    ("encodings-empty", with_changes(("encodings",), [])),
    ("encoding-not-an-object", with_changes(("encodings", 0), 1234)),
    ("ssrc-string", with_changes(("encodings", 0, "ssrc"), "1234")),
    ("ssrc-negative", with_changes(("encodings", 0, "ssrc"), -1)),
    ("ssrc-too-big", with_changes(("encodings", 0, "ssrc"), 2**32)),
    ("ssrc-bool", with_changes(("encodings", 0, "ssrc"), True)),
    ("rtx-not-an-object", with_changes(("encodings", 0, "rtx"), 2798056960)),
    ("rtx-without-ssrc", with_changes(("encodings", 0, "rtx"), {})),
    ("rtx-ssrc-too-big", with_changes(("encodings", 0, "rtx", "ssrc"), 2**32)),
    ("rtx-ssrc-bool", with_changes(("encodings", 0, "rtx", "ssrc"), True)),
    ("rid-not-a-string", with_changes(("encodings", 0, "rid"), 0)),
    (
        "simulcast-without-ssrc-or-rid",
        with_changes(("encodings",), [{"maxBitrate": 1}, {"maxBitrate": 2}]),
    ),
    ("header-extensions-not-a-list", with_changes(("headerExtensions",), {})),
    ("header-extension-not-an-object", with_changes(("headerExtensions", 0), MID_URI)),
    ("header-extension-without-id", with_changes(("headerExtensions", 0, "id"), ...)),
    ("header-extension-id-0", with_changes(("headerExtensions", 0, "id"), 0)),
    ("header-extension-id-256", with_changes(("headerExtensions", 0, "id"), 256)),
    ("header-extension-id-string", with_changes(("headerExtensions", 0, "id"), "1")),
    ("header-extension-id-bool", with_changes(("headerExtensions", 0, "id"), True)),
    ("header-extension-without-uri", with_changes(("headerExtensions", 0, "uri"), ...)),
    ("rtcp-not-an-object", with_changes(("rtcp",), ["x"])),
    ("mid-not-a-string", with_changes(("mid",), 0)),
]


@pytest.mark.parametrize(
    "rtp_parameters", [case for _, case in MALFORMED], ids=[name for name, _ in MALFORMED]
)
def test_malformed_producer_parameters_are_refused(rtp_parameters: Any) -> None:
    with pytest.raises(InvalidParametersError):
        validate_producer_rtp_parameters("video", rtp_parameters)


def test_pymediasoup_parameters_with_none_valued_extras_are_accepted_as_a_copy() -> None:
    params = pymediasoup_video_parameters()

    clean = validate_producer_rtp_parameters("video", params)

    assert clean == pymediasoup_video_parameters()
    clean["codecs"][0]["parameters"]["x"] = 1
    assert params["codecs"][0]["parameters"] == {}


@pytest.mark.parametrize(
    "rtp_parameters",
    [
        {"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}]},
        with_changes(("encodings",), None),
        with_changes(("encodings",), [{"rid": "r0"}, {"rid": "r1"}]),
        with_changes(("encodings", 0, "rtx"), None),
        with_changes(("headerExtensions", 0, "id"), 255),
        with_changes(("mid",), None),
    ],
    ids=["minimal", "encodings-none", "simulcast-by-rid", "no-rtx", "two-byte-id", "no-mid"],
)
def test_well_formed_producer_parameters_are_accepted(rtp_parameters: Json) -> None:
    assert validate_producer_rtp_parameters("video", rtp_parameters) == rtp_parameters


def test_audio_parameters_are_accepted_for_an_audio_producer_only() -> None:
    validate_producer_rtp_parameters("audio", opus_parameters())

    with pytest.raises(InvalidParametersError):
        validate_producer_rtp_parameters("video", opus_parameters())


# -- get_producer_mapping -----------------------------------------------------------------


def test_a_vp8_producer_maps_its_payload_types_onto_the_router_ones() -> None:
    mapping = get_producer_mapping("video", pymediasoup_video_parameters(), ROUTER_CAPS)

    vp8 = router_pt("video/VP8")
    assert mapping.payload_types == {97: vp8, 98: router_rtx_pt(vp8)}
    assert mapping.rtx_payload_types == {98: 97}


def test_the_producer_mapping_remembers_the_mid_rid_and_rrid_ids() -> None:
    params = pymediasoup_video_parameters()
    params["headerExtensions"] += [{"uri": RID_URI, "id": 10}, {"uri": RRID_URI, "id": 11}]

    mapping = get_producer_mapping("video", params, ROUTER_CAPS)

    assert (mapping.mid_id, mapping.rid_id, mapping.rrid_id) == (1, 10, 11)


def test_a_producer_without_mid_rid_or_rrid_has_none_of_their_ids() -> None:
    params = pymediasoup_video_parameters()
    params["headerExtensions"] = []

    mapping = get_producer_mapping("video", params, ROUTER_CAPS)

    assert (mapping.mid_id, mapping.rid_id, mapping.rrid_id) == (None, None, None)
    assert mapping.header_extension_ids == {}


def test_only_forwardable_header_extensions_are_mapped() -> None:
    params = pymediasoup_video_parameters()
    params["headerExtensions"] += [
        {"uri": RID_URI, "id": 4},
        {"uri": VIDEO_ORIENTATION_URI, "id": 13},
        {"uri": TOFFSET_URI, "id": 14},
        {"uri": AUDIO_LEVEL_URI, "id": 5},  # an audio extension on a video producer
        {"uri": "urn:example:unknown", "id": 6},
    ]

    mapping = get_producer_mapping("video", params, ROUTER_CAPS)

    assert mapping.header_extension_ids == {
        13: router_ext_id("video", VIDEO_ORIENTATION_URI),
        14: router_ext_id("video", TOFFSET_URI),
    }


def test_the_forwardable_header_extensions_are_audio_level_orientation_and_toffset() -> None:
    # MID/RID/RRID describe the producer's stream; abs-send-time only feeds our REMB.
    assert {AUDIO_LEVEL_URI, VIDEO_ORIENTATION_URI, TOFFSET_URI} == CONSUMER_HEADER_EXTENSION_URIS


def test_an_opus_producer_forwards_audio_level_only() -> None:
    mapping = get_producer_mapping("audio", opus_parameters(), ROUTER_CAPS)

    assert mapping.payload_types == {111: router_pt("audio/opus")}
    assert mapping.rtx_payload_types == {}
    assert mapping.header_extension_ids == {1: router_ext_id("audio", AUDIO_LEVEL_URI)}
    assert mapping.mid_id == 4


def test_an_h264_baseline_producer_maps_onto_the_router_h264() -> None:
    params = pymediasoup_video_parameters()
    params["codecs"][0] = {
        "mimeType": "video/H264",
        "clockRate": 90000,
        "payloadType": 97,
        "parameters": {"packetization-mode": 1, "profile-level-id": "42001f"},
    }

    mapping = get_producer_mapping("video", params, ROUTER_CAPS)

    h264_pt = router_pt("video/H264")
    assert mapping.payload_types == {97: h264_pt, 98: router_rtx_pt(h264_pt)}


def test_a_producer_whose_first_codec_the_router_lacks_is_unsupported() -> None:
    params = pymediasoup_video_parameters()
    params["codecs"][0]["mimeType"] = "video/VP9"

    with pytest.raises(UnsupportedError):
        get_producer_mapping("video", params, ROUTER_CAPS)


def test_a_producer_with_only_rtx_codecs_is_unsupported() -> None:
    params = pymediasoup_video_parameters()
    del params["codecs"][0]

    with pytest.raises(UnsupportedError):
        get_producer_mapping("video", params, ROUTER_CAPS)


def test_a_producer_codec_of_the_other_kind_is_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        get_producer_mapping("video", opus_parameters(), ROUTER_CAPS)


def test_a_secondary_codec_the_router_lacks_and_an_orphan_rtx_are_left_unmapped() -> None:
    params = pymediasoup_video_parameters()
    params["codecs"] += [
        {"mimeType": "video/VP9", "clockRate": 90000, "payloadType": 99, "parameters": {}},
        {
            "mimeType": "video/rtx",
            "clockRate": 90000,
            "payloadType": 100,
            "parameters": {"apt": 99},
        },
        {"mimeType": "video/rtx", "clockRate": 90000, "payloadType": 101, "parameters": {}},
    ]

    mapping = get_producer_mapping("video", params, ROUTER_CAPS)

    assert set(mapping.payload_types) == {97, 98}
    assert mapping.rtx_payload_types == {98: 97}


# -- consumable and consumer parameters ---------------------------------------------------


def vp8_consumable() -> tuple[Json, ProducerMapping]:
    params = pymediasoup_video_parameters()
    params["headerExtensions"] += [
        {"uri": VIDEO_ORIENTATION_URI, "id": 13},
        {"uri": TOFFSET_URI, "id": 14},
    ]
    mapping = get_producer_mapping("video", params, ROUTER_CAPS)
    return get_consumable_rtp_parameters("video", params, ROUTER_CAPS, mapping), mapping


def test_the_consumable_parameters_describe_the_stream_in_router_terms() -> None:
    consumable, _ = vp8_consumable()
    vp8 = router_pt("video/VP8")

    assert consumable == {
        "codecs": [
            {
                "mimeType": "video/VP8",
                "payloadType": vp8,
                "clockRate": 90000,
                "parameters": {},
                # Not transport-cc: nothing we send carries transport-wide numbers.
                "rtcpFeedback": [fb for fb in VIDEO_FEEDBACK if fb["type"] != "transport-cc"],
            },
            {
                "mimeType": "video/rtx",
                "payloadType": router_rtx_pt(vp8),
                "clockRate": 90000,
                "parameters": {"apt": vp8},
                "rtcpFeedback": [],
            },
        ],
        "headerExtensions": [
            {"uri": uri, "id": router_ext_id("video", uri), "encrypt": False, "parameters": {}}
            # abs-send-time: ours, written on the way out (media.rtp_stream)
            for uri in (ABS_SEND_TIME_URI, VIDEO_ORIENTATION_URI, TOFFSET_URI)
        ],
        "encodings": [{}],
        "rtcp": {"cname": "x", "reducedSize": True},
    }


def test_the_consumable_audio_parameters_keep_channels_and_codec_parameters() -> None:
    params = opus_parameters()
    mapping = get_producer_mapping("audio", params, ROUTER_CAPS)

    consumable = get_consumable_rtp_parameters("audio", params, ROUTER_CAPS, mapping)

    [codec] = consumable["codecs"]
    assert codec["payloadType"] == router_pt("audio/opus")
    assert codec["channels"] == 2
    assert codec["parameters"] == {"minptime": 10, "useinbandfec": 1}
    assert [e["uri"] for e in consumable["headerExtensions"]] == [AUDIO_LEVEL_URI]
    assert consumable["rtcp"]["cname"] == "audio-cname"


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (client_caps(codecs=[VP8_CAP, RTX_CAP], header_extension_uris=[]), True),
        (client_caps(codecs=[H264_CAP, VP8_CAP], header_extension_uris=[]), True),
        (client_caps(codecs=[H264_CAP], header_extension_uris=[]), False),
        (client_caps(codecs=[RTX_CAP], header_extension_uris=[]), False),
        ({"codecs": None}, False),
        ({}, False),
        (None, False),
        ("VP8", False),
    ],
    ids=["vp8", "vp8-second", "h264-only", "rtx-only", "codecs-none", "empty", "none", "string"],
)
def test_can_consume_needs_a_client_codec_matching_the_stream(caps: Any, expected: bool) -> None:
    consumable, _ = vp8_consumable()

    assert can_consume(consumable, caps) is expected


def test_a_consumer_with_rtx_gets_the_media_codec_and_its_rtx() -> None:
    consumable, _ = vp8_consumable()
    caps = client_caps(codecs=[VP8_CAP, RTX_CAP], header_extension_uris=[])

    params = get_consumer_rtp_parameters(consumable, caps, ssrc=1111, rtx_ssrc=2222)

    assert params["codecs"] == consumable["codecs"]
    assert params["encodings"] == [{"ssrc": 1111, "rtx": {"ssrc": 2222}}]
    assert params["rtcp"] == consumable["rtcp"]


def test_a_consumer_without_rtx_gets_the_media_codec_only() -> None:
    consumable, _ = vp8_consumable()
    caps = client_caps(codecs=[VP8_CAP], header_extension_uris=[])

    params = get_consumer_rtp_parameters(consumable, caps, ssrc=1111, rtx_ssrc=2222)

    assert params["codecs"] == consumable["codecs"][:1]
    assert params["encodings"] == [{"ssrc": 1111}]


def test_a_consumer_gets_only_the_header_extensions_its_client_supports() -> None:
    consumable, _ = vp8_consumable()
    caps = client_caps(codecs=[VP8_CAP], header_extension_uris=[TOFFSET_URI, MID_URI])

    params = get_consumer_rtp_parameters(consumable, caps, ssrc=1, rtx_ssrc=2)

    assert params["headerExtensions"] == [
        {
            "uri": TOFFSET_URI,
            "id": router_ext_id("video", TOFFSET_URI),
            "encrypt": False,
            "parameters": {},
        }
    ]


def test_consumer_parameters_are_a_copy_of_the_consumable_ones() -> None:
    consumable, _ = vp8_consumable()
    before = copy.deepcopy(consumable)
    caps = client_caps(codecs=[VP8_CAP, RTX_CAP], header_extension_uris=[TOFFSET_URI])

    params = get_consumer_rtp_parameters(consumable, caps, ssrc=1, rtx_ssrc=2)
    params["codecs"][0]["rtcpFeedback"].clear()
    params["headerExtensions"][0]["id"] = 99
    params["rtcp"]["cname"] = "changed"

    assert consumable == before


def test_a_consumer_whose_client_cannot_decode_the_stream_is_unsupported() -> None:
    consumable, _ = vp8_consumable()
    caps = client_caps(codecs=[H264_CAP, RTX_CAP], header_extension_uris=[TOFFSET_URI])

    assert not can_consume(consumable, caps)
    with pytest.raises(UnsupportedError):
        get_consumer_rtp_parameters(consumable, caps, ssrc=1, rtx_ssrc=2)
