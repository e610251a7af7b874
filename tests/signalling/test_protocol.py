"""The protoo wire protocol (signalling/protocol.py): decoding at the edge, encoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalling.protocol import (
    MAX_REQUEST_ID,
    CloseCode,
    ErrorCode,
    Kind,
    Message,
    ProtocolViolation,
    decode,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
)


def violation(raw: str | bytes) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as caught:
        decode(raw)
    return caught.value


def frame(**fields: Any) -> str:
    return json.dumps(fields)


# -- valid messages --------------------------------------------------------------------------


def test_a_request_is_decoded() -> None:
    message = decode(frame(request=True, id=12, method="join", data={"displayName": "A"}))

    assert message == Message(Kind.REQUEST, "join", 12, {"displayName": "A"})
    assert message.ok is True and message.error_code is None


def test_a_request_without_data_gets_an_empty_dict() -> None:
    for raw in (
        frame(request=True, id=1, method="ping"),
        frame(request=True, id=1, method="ping", data=None),
    ):
        assert decode(raw).data == {}


@pytest.mark.parametrize("request_id", [0, 1, MAX_REQUEST_ID])
def test_request_ids_from_zero_to_the_javascript_safe_range_are_valid(request_id: int) -> None:
    assert decode(frame(request=True, id=request_id, method="m")).id == request_id


def test_a_successful_response_is_decoded() -> None:
    message = decode(frame(response=True, id=7, ok=True, data={"x": 1}))

    assert message.kind is Kind.RESPONSE
    assert (message.id, message.ok, message.data) == (7, True, {"x": 1})
    assert message.method == ""
    assert message.error_code is None and message.error_reason is None


def test_an_error_response_is_decoded_with_its_code_and_reason() -> None:
    message = decode(frame(response=True, id=7, ok=False, errorCode=404, errorReason="no such"))

    assert message.kind is Kind.RESPONSE
    assert message.ok is False
    assert (message.error_code, message.error_reason) == (404, "no such")
    assert message.data == {}


def test_an_error_response_with_odd_error_fields_keeps_only_what_is_well_typed() -> None:
    message = decode(frame(response=True, id=7, ok=False, errorCode="404", errorReason=5))

    assert message.ok is False
    assert message.error_code is None and message.error_reason is None


def test_a_notification_is_decoded_with_id_zero() -> None:
    message = decode(frame(notification=True, method="activity", data={"type": "interaction"}))

    assert message == Message(Kind.NOTIFICATION, "activity", 0, {"type": "interaction"})


def test_unknown_fields_are_ignored() -> None:
    message = decode(frame(request=True, id=3, method="m", extra={"deep": [1, 2]}))

    assert (message.kind, message.id, message.method) == (Kind.REQUEST, 3, "m")


# -- violations and their close codes -----------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{}", frame(request=True, id=1, method="m").encode()])
def test_a_binary_frame_is_unsupported_data(raw: bytes) -> None:
    assert violation(raw).code is CloseCode.UNSUPPORTED_DATA
    assert int(CloseCode.UNSUPPORTED_DATA) == 1003


@pytest.mark.parametrize("raw", ["", "{", "not json", '{"request": true,}', "{}}", "\x00"])
def test_invalid_json_is_an_invalid_payload(raw: str) -> None:
    assert violation(raw).code is CloseCode.INVALID_PAYLOAD
    assert int(CloseCode.INVALID_PAYLOAD) == 1007


@pytest.mark.parametrize("raw", ["[]", "[1, 2]", '"request"', "1", "null", "true"])
def test_json_that_is_not_an_object_is_an_invalid_payload(raw: str) -> None:
    assert violation(raw).code is CloseCode.INVALID_PAYLOAD


@pytest.mark.parametrize(
    "raw",
    [
        frame(request=True, id=1),
        frame(request=True, id=1, method=""),
        frame(request=True, id=1, method=5),
        frame(request=True, id=1, method=None),
        frame(request=True, id=1, method=["join"]),
    ],
    ids=["missing", "empty", "number", "null", "list"],
)
def test_a_request_without_a_method_is_a_protocol_error(raw: str) -> None:
    error = violation(raw)
    assert error.code is CloseCode.PROTOCOL_ERROR
    assert int(CloseCode.PROTOCOL_ERROR) == 1002
    assert "method" in error.reason


@pytest.mark.parametrize(
    "request_id",
    [None, "1", 1.5, 1.0, True, False, -1, MAX_REQUEST_ID + 1, 10**30, [1], {"id": 1}],
    ids=repr,
)
def test_a_request_without_a_valid_id_is_a_protocol_error(request_id: Any) -> None:
    raw = frame(request=True, method="m", **({} if request_id is None else {"id": request_id}))

    error = violation(raw)
    assert error.code is CloseCode.PROTOCOL_ERROR
    assert "id" in error.reason


@pytest.mark.parametrize("response_id", [None, "1", 1.5, True], ids=repr)
def test_a_response_without_a_valid_id_is_a_protocol_error(response_id: Any) -> None:
    raw = frame(response=True, ok=True, **({} if response_id is None else {"id": response_id}))

    assert violation(raw).code is CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "raw",
    [
        frame(notification=True),
        frame(notification=True, method=""),
        frame(notification=True, method=1),
    ],
)
def test_a_notification_without_a_method_is_a_protocol_error(raw: str) -> None:
    assert violation(raw).code is CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "raw",
    [
        "{}",
        frame(id=1, method="join", data={}),
        frame(request=False, id=1, method="join"),
        frame(response=False, notification=False, id=1),
    ],
)
def test_an_object_that_is_neither_request_response_nor_notification_is_a_protocol_error(
    raw: str,
) -> None:
    error = violation(raw)
    assert error.code is CloseCode.PROTOCOL_ERROR
    assert "neither" in error.reason


def test_a_violation_carries_its_reason_as_the_exception_message() -> None:
    error = violation("[]")

    assert str(error) == error.reason
    assert error.reason


def test_deeply_nested_data_is_a_violation_not_a_crash() -> None:
    # About 20 kB, well under max_message_size: a client can send it.
    depth = 10_000
    raw = '{"request": true, "id": 1, "method": "m", "data": ' + "[" * depth + "]" * depth + "}"

    assert violation(raw).code in (CloseCode.INVALID_PAYLOAD, CloseCode.MESSAGE_TOO_BIG)


def test_text_with_a_lone_surrogate_is_a_violation_not_a_crash() -> None:
    assert violation('{"notification": true, "method": "\ud800"}').code is (
        CloseCode.INVALID_PAYLOAD
    )


# -- properties ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ENVELOPE = st.dictionaries(
    st.sampled_from(
        [
            "request",
            "response",
            "notification",
            "id",
            "method",
            "data",
            "ok",
            "errorCode",
            "errorReason",
        ]
    ),
    JSON | st.booleans() | st.integers(min_value=-1, max_value=2**54),
    max_size=9,
)


def decodes_or_violates(raw: str | bytes) -> None:
    try:
        message = decode(raw)
    except ProtocolViolation as error:
        assert error.code in (
            CloseCode.UNSUPPORTED_DATA,
            CloseCode.INVALID_PAYLOAD,
            CloseCode.PROTOCOL_ERROR,
        )
    else:
        assert isinstance(message, Message)
        assert isinstance(message.id, int) and not isinstance(message.id, bool)
        if message.kind is not Kind.RESPONSE:
            assert isinstance(message.method, str) and message.method


@given(st.text())
def test_decode_never_raises_anything_but_a_violation_on_arbitrary_text(raw: str) -> None:
    decodes_or_violates(raw)


@given(st.binary())
def test_decode_refuses_arbitrary_bytes_as_unsupported_data(raw: bytes) -> None:
    assert violation(raw).code is CloseCode.UNSUPPORTED_DATA


@settings(max_examples=150)
@given(ENVELOPE)
def test_decode_never_raises_anything_but_a_violation_on_envelope_like_objects(
    envelope: dict[str, Any],
) -> None:
    decodes_or_violates(json.dumps(envelope))


@given(JSON)
def test_decode_never_raises_anything_but_a_violation_on_arbitrary_json(value: Any) -> None:
    decodes_or_violates(json.dumps(value))


@given(
    st.integers(min_value=0, max_value=MAX_REQUEST_ID),
    st.text(min_size=1),
    st.dictionaries(st.text(), JSON, max_size=4),
)
def test_an_encoded_request_decodes_to_itself(
    request_id: int, method: str, data: dict[str, Any]
) -> None:
    message = decode(encode_request(request_id, method, data).decode())

    assert message == Message(Kind.REQUEST, method, request_id, data)


# -- encoding ---------------------------------------------------------------------------------


def test_an_encoded_request_uses_the_protoo_field_names() -> None:
    assert json.loads(encode_request(5, "newConsumer", {"id": "c"})) == {
        "request": True,
        "id": 5,
        "method": "newConsumer",
        "data": {"id": "c"},
    }


def test_an_encoded_response_uses_the_protoo_field_names() -> None:
    raw = encode_response(5, {"peers": []})

    assert json.loads(raw) == {"response": True, "id": 5, "ok": True, "data": {"peers": []}}
    assert decode(raw.decode()) == Message(Kind.RESPONSE, "", 5, {"peers": []}, True)


def test_an_encoded_error_response_carries_ok_false_an_error_code_and_a_reason() -> None:
    raw = encode_error(5, ErrorCode.NOT_JOINED, "join first")

    assert json.loads(raw) == {
        "response": True,
        "id": 5,
        "ok": False,
        "errorCode": 412,
        "errorReason": "join first",
    }
    message = decode(raw.decode())
    assert (message.ok, message.error_code, message.error_reason) == (False, 412, "join first")


def test_an_encoded_notification_uses_the_protoo_field_names() -> None:
    raw = encode_notification("peerClosed", {"peerId": "a", "reason": "graceful"})

    assert json.loads(raw) == {
        "notification": True,
        "method": "peerClosed",
        "data": {"peerId": "a", "reason": "graceful"},
    }
    assert decode(raw.decode()) == Message(
        Kind.NOTIFICATION, "peerClosed", 0, {"peerId": "a", "reason": "graceful"}
    )


def test_encoders_return_bytes_ready_for_the_socket() -> None:
    for raw in (
        encode_request(1, "m", {}),
        encode_response(1, {}),
        encode_error(1, ErrorCode.INTERNAL, "internal error"),
        encode_notification("m", {}),
    ):
        assert isinstance(raw, bytes)
        json.loads(raw)


def test_the_close_and_error_codes_are_the_documented_numbers() -> None:
    assert {c.name: c.value for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "INVALID_PAYLOAD": 1007,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "BAD_REQUEST": 4400,
        "UNAUTHORIZED": 4401,
        "ROOM_FULL": 4403,
        "SESSION_TIMEOUT": 4408,
        "IDENTITY_IN_USE": 4409,
        "SESSION_REPLACED": 4410,
        "SESSION_CLOSED": 4411,
        "MEDIA_FAILED": 4412,
        "SLOW_READER": 4413,
        "ROOM_ELSEWHERE": 4421,
        "RATE_LIMITED": 4429,
        "SERVER_FULL": 4503,
        "DIRECTORY_UNAVAILABLE": 4504,
    }
    assert int(ErrorCode.NOT_FOUND) == 404 and int(ErrorCode.UNKNOWN_METHOD) == 405
