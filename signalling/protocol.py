"""The protoo wire protocol (versatica/protoo), decoded once at the edge.

Three JSON envelopes travel over a WebSocket with subprotocol ``protoo``:

- request:      ``{"request": true, "id": 123, "method": "join", "data": {...}}``
- response:     ``{"response": true, "id": 123, "ok": true, "data": {...}}`` or
                ``{"response": true, "id": 123, "errorCode": 404, "errorReason": "..."}``
- notification: ``{"notification": true, "method": "peerClosed", "data": {...}}``

Decoding uses one msgspec decoder into a single struct, then classifies it:
malformed input raises ``ProtocolViolation`` with the close code to use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

MAX_REQUEST_ID = 2**53  # JavaScript's safe integer range, as protoo generates ids


class CloseCode(enum.IntEnum):
    """Every close code the server sends (docs/protocol.md)."""

    NORMAL = 1000  # after beforeDisconnect, or the client closed normally
    GOING_AWAY = 1001  # server shutdown
    PROTOCOL_ERROR = 1002  # not a protoo message (no request/response/notification)
    UNSUPPORTED_DATA = 1003  # a binary frame
    INVALID_PAYLOAD = 1007  # not JSON, or not a JSON object
    MESSAGE_TOO_BIG = 1009  # over max_message_size
    INTERNAL_ERROR = 1011
    BAD_REQUEST = 4400  # missing or invalid roomId / peerId in the URL
    UNAUTHORIZED = 4401  # token missing (when required), invalid, expired, or for another room
    ROOM_FULL = 4403
    SESSION_TIMEOUT = 4408  # keepalive timeout, stale sweep, inactivity limit, join timeout
    IDENTITY_IN_USE = 4409  # this identity (or this peerId, held by another user) is connected
    SESSION_REPLACED = 4410  # another connection took this session over
    SESSION_CLOSED = 4411  # the session ended for another reason (beacon, media gone)
    MEDIA_FAILED = 4412  # DTLS failed (e.g. a fingerprint mismatch): the media cannot be secured
    SLOW_READER = 4413  # the client did not read: its outbound buffer passed its bound
    ROOM_ELSEWHERE = 4421  # another live node holds this room (several nodes): retry
    RATE_LIMITED = 4429  # requests or notifications kept coming faster than allowed
    SERVER_FULL = 4503  # the process's session capacity (or its waiting queue) is full
    DIRECTORY_UNAVAILABLE = 4504  # a new room cannot be registered (Redis unreachable): retry


class ErrorCode(enum.IntEnum):
    """``errorCode`` of protoo error responses (HTTP-like, as protoo uses numbers)."""

    BAD_REQUEST = 400  # wrong or missing fields
    FORBIDDEN = 403  # not allowed (e.g. room full for a produce quota)
    NOT_FOUND = 404  # unknown id, or an id that belongs to another peer
    UNKNOWN_METHOD = 405
    CONFLICT = 409  # already joined
    NOT_JOINED = 412  # the method needs ``join`` first
    TOO_MANY_REQUESTS = 429
    INTERNAL = 500  # nothing internal is disclosed: "internal error"
    UNAVAILABLE = 503  # shutting down


class ProtocolViolation(Exception):
    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Envelope(msgspec.Struct, omit_defaults=True):
    request: bool = False
    response: bool = False
    notification: bool = False
    id: Any = None
    method: Any = None
    data: Any = None
    ok: bool = False
    errorCode: Any = None
    errorReason: Any = None


class Kind(enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"
    NOTIFICATION = "notification"


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    method: str
    id: int
    data: dict[str, Any]
    ok: bool = True
    error_code: int | None = None
    error_reason: str | None = None


_decoder = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()


def decode(raw: str | bytes) -> Message:
    """Parse one frame; raise ``ProtocolViolation`` if it is not protoo."""
    if isinstance(raw, bytes):
        raise ProtocolViolation(CloseCode.UNSUPPORTED_DATA, "binary frames are not protoo")
    try:
        envelope = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(CloseCode.INVALID_PAYLOAD, "not a protoo JSON object") from exc
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise ProtocolViolation(CloseCode.INVALID_PAYLOAD, "invalid JSON") from exc
    data = envelope.data
    if data is None:
        data = {}
    if envelope.request:
        method, request_id = envelope.method, envelope.id
        if not isinstance(method, str) or not method:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "request without a method")
        if (
            not isinstance(request_id, int)
            or isinstance(request_id, bool)
            or not 0 <= request_id <= MAX_REQUEST_ID
        ):
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "request without a valid id")
        return Message(Kind.REQUEST, method, request_id, data)
    if envelope.response:
        request_id = envelope.id
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "response without a valid id")
        code = envelope.errorCode if isinstance(envelope.errorCode, int) else None
        reason = envelope.errorReason if isinstance(envelope.errorReason, str) else None
        return Message(Kind.RESPONSE, "", request_id, data, envelope.ok, code, reason)
    if envelope.notification:
        method = envelope.method
        if not isinstance(method, str) or not method:
            raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "notification without a method")
        return Message(Kind.NOTIFICATION, method, 0, data)
    raise ProtocolViolation(CloseCode.PROTOCOL_ERROR, "neither request, response nor notification")


def encode_request(request_id: int, method: str, data: Any) -> bytes:
    return _encoder.encode({"request": True, "id": request_id, "method": method, "data": data})


def encode_response(request_id: int, data: Any) -> bytes:
    return _encoder.encode({"response": True, "id": request_id, "ok": True, "data": data})


def encode_error(request_id: int, code: ErrorCode, reason: str) -> bytes:
    return _encoder.encode(
        {
            "response": True,
            "id": request_id,
            "ok": False,
            "errorCode": int(code),
            "errorReason": reason,
        }
    )


def encode_notification(method: str, data: Any) -> bytes:
    return _encoder.encode({"notification": True, "method": method, "data": data})
