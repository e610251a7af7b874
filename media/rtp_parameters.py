"""RTP capabilities and parameters, as mediasoup's ``ortc.ts`` shapes them.

Everything here is pure: it turns the router's media codecs, a producer's
``rtpParameters`` and a consumer's ``rtpCapabilities`` into the dicts that go
on the wire (camelCase, exactly as mediasoup-client expects) and into the small
lookup tables the forwarding path uses (payload type and header extension id
maps).
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParametersError, UnsupportedError

Json = dict[str, Any]

# Header extensions the router offers, with mediasoup's preferred ids, so that
# mediasoup-client negotiates the same ids it would against mediasoup.
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
VIDEO_ORIENTATION_URI = "urn:3gpp:video-orientation"
TOFFSET_URI = "urn:ietf:params:rtp-hdrext:toffset"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
ABS_SEND_TIME_ID = 4
"""The router's id of abs-send-time, so every consumer's: the one we write."""

ROUTER_HEADER_EXTENSIONS: list[Json] = [
    {"kind": "audio", "uri": MID_URI, "preferredId": 1},
    {"kind": "video", "uri": MID_URI, "preferredId": 1},
    {"kind": "video", "uri": RID_URI, "preferredId": 2},
    {"kind": "video", "uri": RRID_URI, "preferredId": 3},
    {"kind": "audio", "uri": ABS_SEND_TIME_URI, "preferredId": ABS_SEND_TIME_ID},
    {"kind": "video", "uri": ABS_SEND_TIME_URI, "preferredId": ABS_SEND_TIME_ID},
    # mediasoup's direction: the router receives transport-wide numbers only.
    {"kind": "audio", "uri": TRANSPORT_CC_URI, "preferredId": 5, "direction": "recvonly"},
    {"kind": "video", "uri": TRANSPORT_CC_URI, "preferredId": 5, "direction": "recvonly"},
    {"kind": "audio", "uri": AUDIO_LEVEL_URI, "preferredId": 10},
    {"kind": "video", "uri": VIDEO_ORIENTATION_URI, "preferredId": 11},
    {"kind": "video", "uri": TOFFSET_URI, "preferredId": 12},
]

# Extensions forwarded from a producer to its consumers.  MID, RID and
# repaired-RID describe the producer's stream and are padded out on the way
# (consumers are demultiplexed by SSRC, which mediasoup-client writes into the
# remote SDP).  The producer's abs-send-time is read on the way in, for the
# uplink estimate we answer with REMB (``media.bwe``), and padded out too, as
# is its transport-wide number: what a receiver gets is ours (below).
CONSUMER_HEADER_EXTENSION_URIS = frozenset({AUDIO_LEVEL_URI, VIDEO_ORIENTATION_URI, TOFFSET_URI})
SENDER_HEADER_EXTENSION_URIS = {"video": frozenset({ABS_SEND_TIME_URI}), "audio": frozenset()}
"""Extensions consumers are offered that we write ourselves: video packets leave
with our abs-send-time (``media.rtp_stream``, in the padding where the
producer's transport-wide number was), as mediasoup rewrites it on egress, so
a receiver's delay-based estimator measures our path to it."""

# goog-remb and transport-cc, as in mediasoup's supportedRtpCapabilities.  A
# sending browser keeps one of them (mediasoup-client drops goog-remb when the
# transport-wide extension is negotiated): transport-cc gets per-packet arrival
# reports (media.transport_cc), which Chrome's send-side estimator ramps up on
# within seconds; a client without it (aiortc) gets REMB from our receive-side
# estimator (media.bwe).  Consumers get no transport-cc: we do not number what
# we send, so receivers report with REMB (from the abs-send-time we write) and
# receiver reports.
VIDEO_FEEDBACK: list[Json] = [
    {"type": "nack", "parameter": ""},
    {"type": "nack", "parameter": "pli"},
    {"type": "ccm", "parameter": "fir"},
    {"type": "goog-remb", "parameter": ""},
    {"type": "transport-cc", "parameter": ""},
]

DEFAULT_MEDIA_CODECS: list[Json] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
    {
        "kind": "video",
        "mimeType": "video/H264",
        "clockRate": 90000,
        "parameters": {
            "packetization-mode": 1,
            "profile-level-id": "42e01f",
            "level-asymmetry-allowed": 1,
        },
    },
]

FIRST_DYNAMIC_PAYLOAD_TYPE = 100

# W3C webrtc-svc scalability modes: L (or S) spatial, T temporal, and suffixes
# (_KEY, h) that do not change the layer counts.
_SCALABILITY_MODE = re.compile(r"^[LS]([1-9]\d?)T([1-9]\d?)(?:_KEY)?(?:h)?(?:_SHIFT)?$")


def parse_scalability_mode(mode: Any) -> tuple[int, int]:
    """(spatial layers, temporal layers) of a scalabilityMode; (1, 1) when absent or unknown."""
    match = _SCALABILITY_MODE.match(mode) if isinstance(mode, str) else None
    if match is None:
        return 1, 1
    return int(match.group(1)), int(match.group(2))


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise InvalidParametersError(f"{where} must be an object")
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidParametersError(f"{where}.{key} is missing or has the wrong type")
    return value


def _is_u32(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32


def _is_rtx(codec: Json) -> bool:
    return str(codec.get("mimeType", "")).lower().endswith("/rtx")


def _h264_profile(parameters: Json) -> str:
    """The profile part of profile-level-id (RFC 6184 section 8.1).

    Constrained baseline is signalled as 42e0xx or 42c0xx or 4200xx by
    different browsers; treat the baseline family as one profile.
    """
    plid = str(parameters.get("profile-level-id", "42001f")).lower()
    profile_idc = plid[:2]
    return "baseline" if profile_idc == "42" else profile_idc


def codecs_match(a: Json, b: Json) -> bool:
    """Whether two codecs are the same media format (mediasoup ``matchCodecs``)."""
    mime = str(a.get("mimeType", "")).lower()
    if mime != str(b.get("mimeType", "")).lower():
        return False
    if a.get("clockRate") != b.get("clockRate"):
        return False
    if mime.startswith("audio/") and a.get("channels", 1) != b.get("channels", 1):
        return False
    if mime == "video/h264":
        pa, pb = a.get("parameters") or {}, b.get("parameters") or {}
        if int(pa.get("packetization-mode", 0)) != int(pb.get("packetization-mode", 0)):
            return False
        if _h264_profile(pa) != _h264_profile(pb):
            return False
    return True


def generate_router_rtp_capabilities(media_codecs: list[Json]) -> Json:
    """Router capabilities: every media codec with a payload type and its RTX."""
    codecs: list[Json] = []
    payload_type = FIRST_DYNAMIC_PAYLOAD_TYPE
    for media_codec in media_codecs:
        kind = _require(media_codec, "kind", str, "mediaCodec")
        if kind not in ("audio", "video"):
            raise InvalidParametersError("mediaCodec.kind must be audio or video")
        codec: Json = {
            "kind": kind,
            "mimeType": _require(media_codec, "mimeType", str, "mediaCodec"),
            "preferredPayloadType": payload_type,
            "clockRate": _require(media_codec, "clockRate", int, "mediaCodec"),
            "parameters": dict(media_codec.get("parameters") or {}),
            "rtcpFeedback": [] if kind == "audio" else copy.deepcopy(VIDEO_FEEDBACK),
        }
        if kind == "audio":
            codec["channels"] = media_codec.get("channels", 1)
        codecs.append(codec)
        payload_type += 1
        if kind == "video":
            codecs.append(
                {
                    "kind": "video",
                    "mimeType": "video/rtx",
                    "preferredPayloadType": payload_type,
                    "clockRate": codec["clockRate"],
                    "parameters": {"apt": codec["preferredPayloadType"]},
                    "rtcpFeedback": [],
                }
            )
            payload_type += 1
    header_extensions = [
        {"preferredEncrypt": False, "direction": "sendrecv", **ext}
        for ext in ROUTER_HEADER_EXTENSIONS
    ]
    return {"codecs": codecs, "headerExtensions": header_extensions}


@dataclass(frozen=True, slots=True)
class ProducerMapping:
    """How a producer's packets are translated into router terms."""

    payload_types: dict[int, int]
    """Producer payload type -> router payload type (media and RTX)."""
    rtx_payload_types: dict[int, int]
    """Producer RTX payload type -> producer media payload type it repairs."""
    header_extension_ids: dict[int, int]
    """Producer header extension id -> router id (unknown ids are padded out)."""
    mid_id: int | None
    """Producer's id of the MID extension, to learn SSRCs it did not signal."""
    rid_id: int | None
    rrid_id: int | None


def validate_producer_rtp_parameters(kind: str, rtp_parameters: Any) -> Json:
    """Check the shape of a producer's ``rtpParameters``; return a clean copy."""
    if not isinstance(rtp_parameters, dict):
        raise InvalidParametersError("rtpParameters must be an object")
    codecs = rtp_parameters.get("codecs")
    if not isinstance(codecs, list) or not codecs:
        raise InvalidParametersError("rtpParameters.codecs must be a non-empty array")
    for codec in codecs:
        mime = _require(codec, "mimeType", str, "rtpParameters.codecs[]")
        if not mime.lower().startswith(kind + "/"):
            raise InvalidParametersError(f"codec {mime} does not match kind {kind}")
        pt = _require(codec, "payloadType", int, "rtpParameters.codecs[]")
        if not 0 <= pt <= 127:
            raise InvalidParametersError("payloadType must be 0..127")
        _require(codec, "clockRate", int, "rtpParameters.codecs[]")
        if not isinstance(codec.get("parameters", {}), dict):
            raise InvalidParametersError("codec parameters must be an object")
    encodings = rtp_parameters.get("encodings")
    if encodings is None:
        encodings = [{}]
    if not isinstance(encodings, list) or not encodings:
        raise InvalidParametersError("rtpParameters.encodings must be a non-empty array")
    for encoding in encodings:
        if not isinstance(encoding, dict):
            raise InvalidParametersError("rtpParameters.encodings[] must be objects")
        ssrc = encoding.get("ssrc")
        if ssrc is not None and not _is_u32(ssrc):
            raise InvalidParametersError("encodings[].ssrc must be a 32-bit integer")
        rtx = encoding.get("rtx")
        if rtx is not None and not (isinstance(rtx, dict) and _is_u32(rtx.get("ssrc"))):
            raise InvalidParametersError("encodings[].rtx.ssrc must be a 32-bit integer")
        rid = encoding.get("rid")
        if rid is not None and not isinstance(rid, str):
            raise InvalidParametersError("encodings[].rid must be a string")
        if ssrc is None and rid is None and len(encodings) > 1:
            raise InvalidParametersError("simulcast encodings need an ssrc or a rid")
        mode = encoding.get("scalabilityMode")
        if mode is not None and not isinstance(mode, str):
            # An unknown mode counts as L1T1 (mediasoup's parseScalabilityMode).
            raise InvalidParametersError("encodings[].scalabilityMode must be a string")
        max_bitrate = encoding.get("maxBitrate")
        if max_bitrate is not None and (
            not isinstance(max_bitrate, int) or isinstance(max_bitrate, bool) or max_bitrate < 0
        ):
            raise InvalidParametersError("encodings[].maxBitrate must be a non-negative integer")
    rids = [e["rid"] for e in encodings if e.get("rid") is not None]
    ssrcs = [e["ssrc"] for e in encodings if e.get("ssrc") is not None]
    if len(set(rids)) != len(rids) or len(set(ssrcs)) != len(ssrcs):
        raise InvalidParametersError("encodings must have distinct rids and ssrcs")
    exts = rtp_parameters.get("headerExtensions", [])
    if not isinstance(exts, list):
        raise InvalidParametersError("rtpParameters.headerExtensions must be an array")
    for ext in exts:
        ext_id = _require(ext, "id", int, "rtpParameters.headerExtensions[]")
        if not 1 <= ext_id <= 255:
            raise InvalidParametersError("header extension id must be 1..255")
        _require(ext, "uri", str, "rtpParameters.headerExtensions[]")
    rtcp = rtp_parameters.get("rtcp", {})
    if not isinstance(rtcp, dict):
        raise InvalidParametersError("rtpParameters.rtcp must be an object")
    mid = rtp_parameters.get("mid")
    if mid is not None and not isinstance(mid, str):
        raise InvalidParametersError("rtpParameters.mid must be a string")
    return copy.deepcopy(rtp_parameters)


def get_producer_mapping(
    kind: str, rtp_parameters: Json, router_capabilities: Json
) -> ProducerMapping:
    """Map a producer's payload types and extension ids onto the router's."""
    router_codecs = [c for c in router_capabilities["codecs"] if c["kind"] == kind]
    payload_types: dict[int, int] = {}
    media_codecs = [c for c in rtp_parameters["codecs"] if not _is_rtx(c)]
    if not media_codecs:
        raise UnsupportedError("rtpParameters has no media codec")
    for codec in media_codecs:
        for router_codec in router_codecs:
            if not _is_rtx(router_codec) and codecs_match(codec, router_codec):
                payload_types[codec["payloadType"]] = router_codec["preferredPayloadType"]
                break
    if media_codecs[0]["payloadType"] not in payload_types:
        raise UnsupportedError(
            f"codec {media_codecs[0]['mimeType']} is not supported by the router"
        )
    rtx_payload_types: dict[int, int] = {}
    for codec in rtp_parameters["codecs"]:
        if not _is_rtx(codec):
            continue
        apt = (codec.get("parameters") or {}).get("apt")
        if not isinstance(apt, int) or apt not in payload_types:
            continue
        mapped = payload_types[apt]
        for router_codec in router_codecs:
            if _is_rtx(router_codec) and router_codec["parameters"].get("apt") == mapped:
                payload_types[codec["payloadType"]] = router_codec["preferredPayloadType"]
                rtx_payload_types[codec["payloadType"]] = apt
    router_ids = {
        ext["uri"]: ext["preferredId"]
        for ext in router_capabilities["headerExtensions"]
        if ext["kind"] == kind
    }
    header_extension_ids: dict[int, int] = {}
    ids_by_uri: dict[str, int] = {}
    for ext in rtp_parameters.get("headerExtensions", []):
        ids_by_uri[ext["uri"]] = ext["id"]
        router_id = router_ids.get(ext["uri"])
        if router_id is not None and ext["uri"] in CONSUMER_HEADER_EXTENSION_URIS:
            header_extension_ids[ext["id"]] = router_id
    return ProducerMapping(
        payload_types=payload_types,
        rtx_payload_types=rtx_payload_types,
        header_extension_ids=header_extension_ids,
        mid_id=ids_by_uri.get(MID_URI),
        rid_id=ids_by_uri.get(RID_URI),
        rrid_id=ids_by_uri.get(RRID_URI),
    )


def get_consumable_rtp_parameters(
    kind: str, rtp_parameters: Json, router_capabilities: Json, mapping: ProducerMapping
) -> Json:
    """The producer's stream in router terms: what consumers are offered."""
    codecs: list[Json] = []
    for codec in rtp_parameters["codecs"]:
        router_pt = mapping.payload_types.get(codec["payloadType"])
        if router_pt is None:
            continue
        router_codec = next(
            c for c in router_capabilities["codecs"] if c["preferredPayloadType"] == router_pt
        )
        codecs.append(
            {
                "mimeType": router_codec["mimeType"],
                "payloadType": router_pt,
                "clockRate": router_codec["clockRate"],
                **({"channels": router_codec["channels"]} if "channels" in router_codec else {}),
                "parameters": (
                    dict(router_codec["parameters"])
                    if _is_rtx(router_codec)
                    else dict(codec.get("parameters") or {})
                ),
                "rtcpFeedback": [
                    dict(fb) for fb in router_codec["rtcpFeedback"] if fb["type"] != "transport-cc"
                ],
            }
        )
    offered = CONSUMER_HEADER_EXTENSION_URIS | SENDER_HEADER_EXTENSION_URIS.get(kind, frozenset())
    header_extensions = [
        {"uri": ext["uri"], "id": ext["preferredId"], "encrypt": False, "parameters": {}}
        for ext in router_capabilities["headerExtensions"]
        if ext["kind"] == kind and ext["uri"] in offered
    ]
    # Consumers only need to know how many encodings there are and what their
    # layers and bitrate limits are (not the producer's SSRCs or rids).
    encodings = [
        {key: encoding[key] for key in ("scalabilityMode", "maxBitrate") if key in encoding}
        for encoding in rtp_parameters.get("encodings") or [{}]
    ]
    return {
        "codecs": codecs,
        "headerExtensions": header_extensions,
        "encodings": encodings,
        "rtcp": {
            "cname": str((rtp_parameters.get("rtcp") or {}).get("cname", "")),
            "reducedSize": True,
        },
    }


def _matching_capability(codec: Json, capabilities: Json) -> Json | None:
    for cap in capabilities.get("codecs") or []:
        if isinstance(cap, dict) and not _is_rtx(cap) and codecs_match(codec, cap):
            return cap
    return None


def can_consume(consumable: Json, rtp_capabilities: Any) -> bool:
    """Whether a client with ``rtp_capabilities`` can receive this stream."""
    if not isinstance(rtp_capabilities, dict):
        return False
    return any(
        not _is_rtx(codec) and _matching_capability(codec, rtp_capabilities) is not None
        for codec in consumable["codecs"]
    )


def random_ssrc() -> int:
    return random.randint(100_000_000, 999_999_999)


def get_consumer_rtp_parameters(
    consumable: Json, rtp_capabilities: Json, *, ssrc: int, rtx_ssrc: int
) -> Json:
    """A consumer's ``rtpParameters``: the first codec the client can decode."""
    media_codec: Json | None = None
    for codec in consumable["codecs"]:
        if not _is_rtx(codec) and _matching_capability(codec, rtp_capabilities):
            media_codec = codec
            break
    if media_codec is None:
        raise UnsupportedError("the consumer's rtpCapabilities cannot decode this stream")
    client_has_rtx = any(
        isinstance(c, dict) and _is_rtx(c) for c in rtp_capabilities.get("codecs") or []
    )
    rtx_codec = next(
        (
            c
            for c in consumable["codecs"]
            if _is_rtx(c) and c["parameters"].get("apt") == media_codec["payloadType"]
        ),
        None,
    )
    codecs = [copy.deepcopy(media_codec)]
    encoding: Json = {"ssrc": ssrc}
    if rtx_codec is not None and client_has_rtx:
        codecs.append(copy.deepcopy(rtx_codec))
        encoding["rtx"] = {"ssrc": rtx_ssrc}
    consumable_encodings = consumable.get("encodings") or [{}]
    if len(consumable_encodings) > 1:
        # mediasoup's simulcast consumer: one encoding whose spatial layers are
        # the producer's encodings, temporal layers as the producer declared them.
        temporal = max(
            parse_scalability_mode(e.get("scalabilityMode"))[1] for e in consumable_encodings
        )
        encoding["scalabilityMode"] = f"L{len(consumable_encodings)}T{temporal}"
        max_bitrate = max(e.get("maxBitrate") or 0 for e in consumable_encodings)
        if max_bitrate:
            encoding["maxBitrate"] = max_bitrate
    client_uris = {
        ext.get("uri")
        for ext in rtp_capabilities.get("headerExtensions") or []
        if isinstance(ext, dict)
    }
    header_extensions = [
        copy.deepcopy(ext) for ext in consumable["headerExtensions"] if ext["uri"] in client_uris
    ]
    return {
        "codecs": codecs,
        "headerExtensions": header_extensions,
        "encodings": [encoding],
        "rtcp": copy.deepcopy(consumable["rtcp"]),
    }
