"""What a client may send: one msgspec struct per request method, decoded once.

``decode_request`` turns a request's canonical (2024) ``data`` (after the
peer's dialect, ``signalling.dialect``) into the struct of its method, so
the handlers in ``signalling.rooms`` get typed fields and check nothing
again.  Field names are the wire's camelCase ones; fields a handler does not
use are ignored (mediasoup-client sends ``appData`` and more).

Two kinds of check happen here, in this order:

1. types and fixed bounds, declared on the fields (``msgspec.convert``);
2. bounds that depend on configuration (``PeerLimits``: display name length,
   ``device`` and ``appData`` sizes), in each struct's ``check``.

Either failure is a ``RequestError`` with ``ErrorCode.BAD_REQUEST`` whose
reason names the field (``"kind is too long"``) and never echoes what the
client sent.  ``rtpParameters``, ``dtlsParameters``, ``sctpStreamParameters``
and the capabilities stay plain objects: the media layer validates them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from .protocol import ErrorCode

Json = dict[str, Any]


class RequestError(Exception):
    """A client mistake: becomes a protoo error response with this code and reason."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """What one peer may hold and send (configuration; docs/security.md).

    Everything a peer sends that the server repeats to others (its device,
    display name, appData) is bounded, so one peer cannot make every other
    peer's join response or newConsumer request megabytes long.
    """

    display_name_length: int = 128
    device_bytes: int = 1024
    app_data_bytes: int = 4096
    transports: int = 4
    producers: int = 8
    data_producers: int = 8


# -- field types ---------------------------------------------------------------------------

Text = Annotated[str, msgspec.Meta(max_length=256)]
"""An id, a kind, a label: short text."""
Layer = Annotated[int, msgspec.Meta(ge=0, le=255)]
"""A spatial or temporal layer: mediasoup carries them as uint8."""
Priority = Annotated[int, msgspec.Meta(ge=1, le=255)]
"""A consumer priority: uint8, and 0 is not one."""
Streams = Annotated[int, msgspec.Meta(ge=1, le=65535)]
"""A number of SCTP streams (OS or MIS)."""
Flag = Any
"""Read for its truth (``"producing": 1`` produces), as Room.js reads it; a bool once decoded."""

_encoder = msgspec.json.Encoder()


def _within_bytes(value: Json | None, name: str, limit: int) -> None:
    if value is not None and len(_encoder.encode(value)) > limit:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{name} is larger than {limit} bytes")


def _within_length(value: str | None, name: str, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{name} is too long")


# -- requests ------------------------------------------------------------------------------


class Request(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    """A request's data; this base one has no fields (any object is accepted)."""

    def check(self, limits: PeerLimits) -> None:
        """Raise ``RequestError`` for what exceeds the configured ``limits``."""


class EmptyRequest(Request):
    """``getRouterRtpCapabilities``, ``getRtcStatsUrl``: nothing is read."""


class JoinRequest(Request):
    display_name: str | None = None
    device: Json | None = None
    rtp_capabilities: Json | None = None
    sctp_capabilities: Json | None = None

    def check(self, limits: PeerLimits) -> None:
        _within_length(self.display_name, "displayName", limits.display_name_length)
        _within_bytes(self.device, "device", limits.device_bytes)


class NumSctpStreams(msgspec.Struct, rename={"os": "OS", "mis": "MIS"}):
    os: Streams = 1024
    mis: Streams = 1024


class SctpCapabilities(msgspec.Struct, rename="camel"):
    num_streams: NumSctpStreams | None = None


class CreateWebRtcTransportRequest(Request):
    producing: Flag = False
    consuming: Flag = False
    force_tcp: Flag = False
    sctp_capabilities: SctpCapabilities | None = None

    def __post_init__(self) -> None:
        self.producing = bool(self.producing)
        self.consuming = bool(self.consuming)
        self.force_tcp = bool(self.force_tcp)

    @property
    def num_sctp_streams(self) -> tuple[int, int]:
        """``(OS, MIS)``: what the client asked for, else 1024 each."""
        caps = self.sctp_capabilities
        streams = (caps.num_streams if caps is not None else None) or NumSctpStreams()
        return streams.os, streams.mis


class TransportRequest(Request):
    """``restartIce``, ``getTransportStats``."""

    transport_id: Text


class ConnectWebRtcTransportRequest(TransportRequest):
    dtls_parameters: Json


class ProduceRequest(TransportRequest):
    kind: Text
    rtp_parameters: Json
    app_data: Json | None = None

    def check(self, limits: PeerLimits) -> None:
        _within_bytes(self.app_data, "appData", limits.app_data_bytes)


class ProduceDataRequest(TransportRequest):
    sctp_stream_parameters: Json
    label: Text | None = None
    protocol: Text | None = None
    app_data: Json | None = None

    def check(self, limits: PeerLimits) -> None:
        _within_bytes(self.app_data, "appData", limits.app_data_bytes)


class ProducerRequest(Request):
    """``closeProducer``, ``pauseProducer``, ``resumeProducer``, ``getProducerStats``."""

    producer_id: Text


class ConsumerRequest(Request):
    """``pauseConsumer``, ``resumeConsumer``, ``requestConsumerKeyFrame``, ``getConsumerStats``."""

    consumer_id: Text


class SetConsumerPreferredLayersRequest(ConsumerRequest):
    spatial_layer: Layer
    temporal_layer: Layer | None = None


class SetConsumerPriorityRequest(ConsumerRequest):
    priority: Priority


class DataProducerRequest(Request):
    """``getDataProducerStats``."""

    data_producer_id: Text


class DataConsumerRequest(Request):
    """``getDataConsumerStats``."""

    data_consumer_id: Text


class ChangeDisplayNameRequest(Request):
    display_name: str

    def check(self, limits: PeerLimits) -> None:
        _within_length(self.display_name, "displayName", limits.display_name_length)


REQUESTS: dict[str, type[Request]] = {
    "getRouterRtpCapabilities": EmptyRequest,
    "join": JoinRequest,
    "createWebRtcTransport": CreateWebRtcTransportRequest,
    "connectWebRtcTransport": ConnectWebRtcTransportRequest,
    "restartIce": TransportRequest,
    "produce": ProduceRequest,
    "closeProducer": ProducerRequest,
    "pauseProducer": ProducerRequest,
    "resumeProducer": ProducerRequest,
    "pauseConsumer": ConsumerRequest,
    "resumeConsumer": ConsumerRequest,
    "setConsumerPreferredLayers": SetConsumerPreferredLayersRequest,
    "setConsumerPriority": SetConsumerPriorityRequest,
    "requestConsumerKeyFrame": ConsumerRequest,
    "produceData": ProduceDataRequest,
    "changeDisplayName": ChangeDisplayNameRequest,
    "getTransportStats": TransportRequest,
    "getProducerStats": ProducerRequest,
    "getConsumerStats": ConsumerRequest,
    "getDataProducerStats": DataProducerRequest,
    "getDataConsumerStats": DataConsumerRequest,
    "getRtcStatsUrl": EmptyRequest,
}
"""The struct of each request method (``signalling.rooms.Room.HANDLERS`` has the same keys)."""

_DEFAULT_LIMITS = PeerLimits()


def decode_request(method: str, data: Any, limits: PeerLimits = _DEFAULT_LIMITS) -> Request:
    """``data`` of a ``method`` request as its struct, checked against ``limits``.

    Raises ``RequestError``: ``UNKNOWN_METHOD`` for a method with no struct,
    ``BAD_REQUEST`` for data that does not fit it.
    """
    kind = REQUESTS.get(method)
    if kind is None:
        raise RequestError(ErrorCode.UNKNOWN_METHOD, "unknown method")
    try:
        request = msgspec.convert(data, type=kind)
    except msgspec.ValidationError as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, _reason(kind, str(exc))) from None
    request.check(limits)
    return request


# -- reasons -------------------------------------------------------------------------------

# msgspec says "Expected `int` <= 255 - at `$.spatialLayer`" or "Object missing
# required field `kind`"; the reason keeps only the field's (our own) name.
_AT = re.compile(r" - at `\$((?:\.\w+)+)`$")
_MISSING = re.compile(r"^Object missing required field `(\w+)`")


def _reason(kind: type[Request], error: str) -> str:
    """A short reason naming the field, from msgspec's validation error text."""
    at = _AT.search(error)
    path = at.group(1)[1:] if at else ""
    missing = _MISSING.match(error)
    if missing is not None:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    if not path:
        return "data must be an object" if error.startswith("Expected `object`") else "bad data"
    if "` of length <= " in error:
        return f"{path} is too long"
    bounds = _int_bounds(kind, path)
    if bounds is not None and ("` >= " in error or "` <= " in error):
        return f"{path} must be {bounds[0]}..{bounds[1]}"
    return f"{path} is missing or has the wrong type"


@functools.lru_cache(maxsize=128)
def _int_bounds(kind: type[Request], path: str) -> tuple[int, int] | None:
    """The ``(ge, le)`` declared on the integer field at ``path`` (wire names) of ``kind``."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(kind)
    for name in path.split("."):
        info = _unwrap_optional(info)
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        field = next((f for f in info.fields if f.encode_name == name), None)
        if field is None:
            return None
        info = field.type
    info = _unwrap_optional(info)
    if isinstance(info, msgspec.inspect.IntType) and info.ge is not None and info.le is not None:
        return info.ge, info.le
    return None


def _unwrap_optional(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    if isinstance(info, msgspec.inspect.UnionType):
        kept = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(kept) == 1:
            return kept[0]
    return info


__all__ = [
    "REQUESTS",
    "ChangeDisplayNameRequest",
    "ConnectWebRtcTransportRequest",
    "ConsumerRequest",
    "CreateWebRtcTransportRequest",
    "DataConsumerRequest",
    "DataProducerRequest",
    "EmptyRequest",
    "JoinRequest",
    "NumSctpStreams",
    "PeerLimits",
    "ProduceDataRequest",
    "ProduceRequest",
    "ProducerRequest",
    "Request",
    "RequestError",
    "SctpCapabilities",
    "SetConsumerPreferredLayersRequest",
    "SetConsumerPriorityRequest",
    "TransportRequest",
    "decode_request",
]
