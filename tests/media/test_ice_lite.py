"""Unit tests of media/ice_lite.py: the sans-I/O ICE-lite responder and its consent timer.

Every check is a real STUN binding request built with aioice, fed to the server with a
fake ``now``; no socket is opened and nothing sleeps.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from media.ice_lite import (
    Address,
    BindingResult,
    ConsentWatch,
    IceChange,
    IceLiteServer,
    IceState,
    Path,
)

TIMEOUT = 30.0
CLIENT: Address = ("192.0.2.10", 50000)
OTHER_CLIENT: Address = ("198.51.100.7", 40000)
REMOTE_UFRAG = "remote"


def make_server() -> IceLiteServer:
    return IceLiteServer(consent_timeout=TIMEOUT)


def binding_request(
    server: IceLiteServer,
    *,
    ufrag: str | None = None,
    password: str | None = None,
    use_candidate: bool = False,
    role: str = "ICE-CONTROLLING",
    username: bool = True,
    integrity: bool = True,
    message_class: stun.Class = stun.Class.REQUEST,
    message_method: stun.Method = stun.Method.BINDING,
) -> stun.Message:
    """A connectivity check as a full-ICE controlling client sends it to ``server``."""
    request = stun.Message(message_method=message_method, message_class=message_class)
    if username:
        local = server.username_fragment if ufrag is None else ufrag
        request.attributes["USERNAME"] = f"{local}:{REMOTE_UFRAG}"
    request.attributes["PRIORITY"] = 1853817087
    request.attributes[role] = 0x1122334455667788
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    if integrity:
        key = server.password if password is None else password
        request.add_message_integrity(key.encode())
    else:
        request.add_fingerprint()
    return request


def check(
    server: IceLiteServer,
    now: float,
    addr: Path = CLIENT,
    **kwargs: Any,
) -> BindingResult:
    return server.handle_binding(bytes(binding_request(server, **kwargs)), addr, now)


def parse_response(result: BindingResult) -> stun.Message:
    assert result.response is not None
    return stun.parse_message(result.response)


def error_code(result: BindingResult) -> int:
    response = parse_response(result)
    assert response.message_class is stun.Class.ERROR
    code = response.error_code
    assert code is not None
    return code


# -- credentials ------------------------------------------------------------------------


def test_a_new_server_is_new_and_advertises_random_ice_lite_credentials() -> None:
    server, other = make_server(), make_server()

    assert server.state is IceState.NEW
    assert server.selected_tuple is None
    assert server.parameters == {
        "usernameFragment": server.username_fragment,
        "password": server.password,
        "iceLite": True,
    }
    assert len(server.username_fragment) == 16
    assert len(server.password) == 32
    assert (server.username_fragment, server.password) != (other.username_fragment, other.password)


# -- valid checks -------------------------------------------------------------------------


def test_a_valid_check_is_answered_with_a_success_response_mapping_the_source_address() -> None:
    server = make_server()
    request = binding_request(server)

    result = server.handle_binding(bytes(request), CLIENT, now=1.0)

    response = parse_response(result)
    assert response.message_method is stun.Method.BINDING
    assert response.message_class is stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT


def test_the_success_response_is_signed_with_the_server_password() -> None:
    server = make_server()

    response = parse_response(check(server, now=1.0))

    assert "FINGERPRINT" in response.attributes
    assert response.check_message_integrity(server.password.encode())
    assert not response.check_message_integrity(b"not-the-password")


def test_the_first_valid_check_selects_its_tuple_and_connects() -> None:
    server = make_server()

    result = check(server, now=1.0)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.CONNECTED
    assert server.selected_tuple == CLIENT


class Connection:
    """A stream path (ICE-TCP): equal only to itself."""

    def __init__(self, remote: Address) -> None:
        self.remote_address = remote


def test_a_check_on_a_connection_is_answered_with_its_remote_address_and_selects_it() -> None:
    server = make_server()
    connection = Connection(CLIENT)

    result = check(server, now=1.0, addr=connection, use_candidate=True)

    assert result.authenticated and result.change is IceChange.TUPLE_SELECTED
    assert parse_response(result).attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert server.selected_tuple is connection
    # The same (ip, port) over UDP is another path: nominating it moves the selection.
    assert (
        check(server, now=2.0, addr=CLIENT, use_candidate=True).change is IceChange.TUPLE_SELECTED
    )
    assert server.selected_tuple == CLIENT and server.selected_tuple is not connection


def test_an_unauthenticated_check_is_not_authenticated() -> None:
    server = make_server()
    assert not check(server, now=1.0, password="wrong-password-wrong-password").authenticated


def test_losing_the_selected_connection_disconnects_until_the_next_check() -> None:
    server = make_server()
    first, second = Connection(CLIENT), Connection(OTHER_CLIENT)
    check(server, now=1.0, addr=first, use_candidate=True)

    assert not server.path_lost(second)  # not the selected one: nothing changes
    assert server.state is IceState.COMPLETED
    assert server.path_lost(first)
    assert (server.state, server.selected_tuple) == (IceState.DISCONNECTED, None)
    assert server.consent_deadline() is None

    # A plain check on any path selects it again.
    assert check(server, now=2.0, addr=second).change is IceChange.TUPLE_SELECTED
    assert (server.state, server.selected_tuple) == (IceState.CONNECTED, second)


def test_a_first_check_with_use_candidate_completes_at_once() -> None:
    server = make_server()

    result = check(server, now=1.0, use_candidate=True)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT


def test_repeating_a_plain_check_on_the_selected_tuple_changes_nothing() -> None:
    server = make_server()
    check(server, now=1.0)

    result = check(server, now=2.0)

    assert result.response is not None
    assert result.change is IceChange.NONE
    assert server.state is IceState.CONNECTED
    assert server.selected_tuple == CLIENT


def test_a_plain_check_from_another_address_does_not_move_the_selected_tuple() -> None:
    server = make_server()
    check(server, now=1.0)

    result = check(server, now=2.0, addr=OTHER_CLIENT)

    assert parse_response(result).attributes["XOR-MAPPED-ADDRESS"] == OTHER_CLIENT
    assert result.change is IceChange.NONE
    assert server.state is IceState.CONNECTED
    assert server.selected_tuple == CLIENT


def test_nominating_the_selected_tuple_completes_without_moving_it() -> None:
    server = make_server()
    check(server, now=1.0)

    result = check(server, now=2.0, use_candidate=True)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT


def test_nominating_another_address_while_connected_moves_the_selected_tuple() -> None:
    server = make_server()
    check(server, now=1.0)

    result = check(server, now=2.0, addr=OTHER_CLIENT, use_candidate=True)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == OTHER_CLIENT


def test_nominating_another_address_after_completion_moves_the_selected_tuple() -> None:
    server = make_server()
    check(server, now=1.0, use_candidate=True)

    result = check(server, now=2.0, addr=OTHER_CLIENT, use_candidate=True)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == OTHER_CLIENT


def test_renominating_the_selected_tuple_after_completion_changes_nothing() -> None:
    server = make_server()
    check(server, now=1.0, use_candidate=True)

    result = check(server, now=2.0, use_candidate=True)

    assert result.response is not None
    assert result.change is IceChange.NONE
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT


# -- refused checks -----------------------------------------------------------------------


def assert_untouched(server: IceLiteServer) -> None:
    assert server.state is IceState.NEW
    assert server.selected_tuple is None
    assert server.last_consent is None
    assert server.consent_deadline() is None


def test_a_check_with_the_wrong_ufrag_is_refused_with_401() -> None:
    server = make_server()

    result = check(server, now=1.0, ufrag="someone-else")

    assert error_code(result) == 401
    assert result.change is IceChange.NONE
    assert_untouched(server)


def test_a_check_naming_the_server_ufrag_as_the_remote_half_is_refused_with_401() -> None:
    server = make_server()
    request = binding_request(server)
    request.attributes["USERNAME"] = f"{REMOTE_UFRAG}:{server.username_fragment}"
    request.add_message_integrity(server.password.encode())

    result = server.handle_binding(bytes(request), CLIENT, now=1.0)

    assert error_code(result) == 401
    assert_untouched(server)


def test_a_check_with_the_wrong_password_is_refused_with_401() -> None:
    server = make_server()

    result = check(server, now=1.0, password="x" * 32)

    assert error_code(result) == 401
    assert result.change is IceChange.NONE
    assert_untouched(server)


def test_an_error_response_echoes_the_request_transaction_id() -> None:
    server = make_server()
    request = binding_request(server, password="wrong")

    result = server.handle_binding(bytes(request), CLIENT, now=1.0)

    assert parse_response(result).transaction_id == request.transaction_id


def test_a_refused_check_leaves_an_established_tuple_and_its_consent_alone() -> None:
    server = make_server()
    check(server, now=1.0, use_candidate=True)

    result = check(server, now=5.0, addr=OTHER_CLIENT, use_candidate=True, password="wrong")

    assert error_code(result) == 401
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT
    assert server.consent_deadline() == 1.0 + TIMEOUT


@pytest.mark.parametrize(
    ("username", "integrity"),
    [(False, True), (True, False), (False, False)],
    ids=["no-username", "no-message-integrity", "neither"],
)
def test_a_check_missing_username_or_message_integrity_is_refused_with_400(
    username: bool, integrity: bool
) -> None:
    server = make_server()

    result = check(server, now=1.0, username=username, integrity=integrity)

    assert error_code(result) == 400
    assert result.change is IceChange.NONE
    assert_untouched(server)


def test_a_request_of_another_method_is_refused_with_400() -> None:
    server = make_server()

    result = check(server, now=1.0, message_method=stun.Method.ALLOCATE)

    assert error_code(result) == 400
    assert_untouched(server)


def test_a_peer_claiming_the_controlled_role_gets_a_487_role_conflict() -> None:
    server = make_server()

    result = check(server, now=1.0, role="ICE-CONTROLLED", use_candidate=True)

    assert error_code(result) == 487
    assert result.change is IceChange.NONE
    assert_untouched(server)


def test_the_487_role_conflict_is_signed_with_the_server_password() -> None:
    # RFC 8489 section 9.1.3 (RFC 5389 section 10.1.2): once a request has been
    # authenticated, every response but 400/401 carries MESSAGE-INTEGRITY; aioice and
    # libwebrtc drop unsigned responses to a signed check, so an unsigned 487 is never seen.
    server = make_server()

    response = parse_response(check(server, now=1.0, role="ICE-CONTROLLED"))

    assert response.check_message_integrity(server.password.encode())


@pytest.mark.parametrize(
    "message_class",
    [stun.Class.INDICATION, stun.Class.RESPONSE, stun.Class.ERROR],
    ids=lambda c: c.name.lower(),
)
def test_a_message_that_is_not_a_request_gets_no_answer(message_class: stun.Class) -> None:
    server = make_server()

    result = check(server, now=1.0, message_class=message_class)

    assert result == BindingResult(None, IceChange.NONE)
    assert_untouched(server)


def _with_bad_fingerprint() -> bytes:
    data = bytearray(bytes(binding_request(make_server())))
    data[-1] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00",
        b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + bytes(12),  # length says 8, body is empty
        _with_bad_fingerprint(),
    ],
    ids=["empty", "short-header", "length-mismatch", "bad-fingerprint"],
)
def test_garbage_bytes_get_no_answer(data: bytes) -> None:
    server = make_server()

    result = server.handle_binding(data, CLIENT, now=1.0)

    assert (result.response, result.change) == (None, IceChange.NONE)
    assert isinstance(result.error, ValueError)
    assert_untouched(server)


def with_attribute(message: bytes, attr_type: int, value: bytes) -> bytes:
    """``message`` with one more raw attribute appended and the header length fixed up."""
    attribute = struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    body = message[20:] + attribute
    return message[:2] + struct.pack("!H", len(body)) + message[4:20] + body


def test_a_2_byte_priority_attribute_is_reported_as_malformed_not_raised() -> None:
    # aioice unpacks PRIORITY with struct ("!I"): two bytes raise struct.error,
    # which used to escape from the UDP callback with a traceback per packet.
    server = make_server()
    bare = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    data = with_attribute(bare, 0x0024, b"\x01\x02")  # PRIORITY

    result = server.handle_binding(data, CLIENT, now=1.0)

    assert (result.response, result.change) == (None, IceChange.NONE)
    assert isinstance(result.error, struct.error)
    assert_untouched(server)


@pytest.mark.parametrize(
    ("attr_type", "value"),
    [
        (0x8029, b"\x01"),  # ICE-CONTROLLED, struct "!Q"
        (0x802A, b"\x01\x02\x03"),  # ICE-CONTROLLING
        (0x0020, b"\x00\x01"),  # XOR-MAPPED-ADDRESS, too short
        (0x0006, b"\xff\xfe"),  # USERNAME that is not UTF-8
        (0x0009, b"\x00"),  # ERROR-CODE under 4 bytes
    ],
    ids=["ice-controlled", "ice-controlling", "xor-mapped-address", "username", "error-code"],
)
def test_an_attribute_of_the_wrong_shape_is_reported_as_malformed(
    attr_type: int, value: bytes
) -> None:
    server = make_server()
    bare = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))

    result = server.handle_binding(with_attribute(bare, attr_type, value), CLIENT, now=1.0)

    assert result.response is None and result.error is not None
    assert_untouched(server)


def stun_like_datagrams() -> st.SearchStrategy[bytes]:
    """Bytes with a STUN header (so the parser gets past framing) and random attributes."""
    attribute = st.tuples(
        st.sampled_from(
            [0x0006, 0x0008, 0x0009, 0x0020, 0x0024, 0x0025, 0x8028, 0x8029, 0x802A, 0x0001, 0xC057]
        ),
        st.binary(max_size=24),
        st.integers(min_value=-4, max_value=4),
    )

    def build(method: int, attributes: list[tuple[int, bytes, int]]) -> bytes:
        body = b""
        for attr_type, value, skew in attributes:
            declared = max(0, len(value) + skew)
            body += struct.pack("!HH", attr_type, declared) + value + bytes(-len(value) % 4)
        return struct.pack("!HHI", method, len(body), stun.COOKIE) + bytes(12) + body

    return st.builds(build, st.integers(0, 0x3FFF), st.lists(attribute, max_size=6))


@settings(max_examples=300, deadline=None)
@given(data=stun_like_datagrams() | st.binary(max_size=64))
def test_no_datagram_makes_the_ice_agent_raise(data: bytes) -> None:
    server = make_server()

    result = server.handle_binding(data, CLIENT, now=1.0)

    assert result.change is IceChange.NONE
    assert server.last_consent is None and server.selected_tuple is None


# -- consent (RFC 7675) -------------------------------------------------------------------


def test_there_is_no_consent_deadline_before_the_first_valid_check() -> None:
    server = make_server()

    assert server.consent_deadline() is None
    assert not server.consent_expired(now=1e9)
    assert server.state is IceState.NEW


def test_the_consent_deadline_is_the_last_valid_check_plus_the_timeout() -> None:
    server = make_server()
    check(server, now=100.0)

    assert server.consent_deadline() == 100.0 + TIMEOUT


def test_every_valid_check_pushes_the_consent_deadline_back() -> None:
    server = make_server()
    check(server, now=100.0)

    check(server, now=112.5, addr=OTHER_CLIENT)

    assert server.consent_deadline() == 112.5 + TIMEOUT


def test_consent_still_holds_just_before_the_deadline() -> None:
    server = make_server()
    check(server, now=100.0, use_candidate=True)

    assert not server.consent_expired(now=100.0 + TIMEOUT - 0.001)
    assert server.state is IceState.COMPLETED


def test_consent_expires_at_the_deadline_and_disconnects() -> None:
    server = make_server()
    check(server, now=100.0, use_candidate=True)

    assert server.consent_expired(now=100.0 + TIMEOUT)
    assert server.state is IceState.DISCONNECTED
    assert server.consent_deadline() is None


def test_a_valid_check_after_expiry_reconnects_and_selects_its_tuple_again() -> None:
    server = make_server()
    check(server, now=100.0, use_candidate=True)
    server.consent_expired(now=200.0)

    result = check(server, now=300.0, addr=OTHER_CLIENT)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.CONNECTED
    assert server.selected_tuple == OTHER_CLIENT
    assert server.consent_deadline() == 300.0 + TIMEOUT
    assert not server.consent_expired(now=300.0 + TIMEOUT - 0.001)


def test_a_nomination_after_expiry_completes_again() -> None:
    server = make_server()
    check(server, now=100.0)
    server.consent_expired(now=200.0)

    result = check(server, now=300.0, use_candidate=True)

    assert result.change is IceChange.TUPLE_SELECTED
    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT


# -- restart and close --------------------------------------------------------------------


def test_restart_changes_the_credentials_and_the_new_ones_pass() -> None:
    server = make_server()
    old_ufrag, old_password = server.username_fragment, server.password

    server.restart()

    assert server.username_fragment != old_ufrag
    assert server.password != old_password
    assert server.parameters["usernameFragment"] == server.username_fragment
    assert server.parameters["password"] == server.password
    result = check(server, now=2.0, use_candidate=True)
    assert parse_response(result).check_message_integrity(server.password.encode())
    assert server.state is IceState.COMPLETED


def test_after_restart_the_new_ufrag_with_the_old_password_is_refused_with_401() -> None:
    server = make_server()
    old_password = server.password

    server.restart()

    assert error_code(check(server, now=1.0, password=old_password)) == 401
    assert_untouched(server)


def test_after_restart_the_old_credentials_pass_until_the_client_uses_the_new_ones() -> None:
    # As mediasoup: checks in flight, or from a client yet to apply the restart, keep
    # consent; the response is signed with the password the check was made with.
    server = make_server()
    old_ufrag, old_password = server.username_fragment, server.password
    check(server, now=1.0, use_candidate=True)
    server.restart()

    result = check(server, now=2.0, ufrag=old_ufrag, password=old_password)

    assert parse_response(result).check_message_integrity(old_password.encode())
    assert server.consent_deadline() == 2.0 + TIMEOUT
    assert server.state is IceState.COMPLETED

    check(server, now=3.0)  # the client moves to the new credentials

    result = check(server, now=4.0, ufrag=old_ufrag, password=old_password)
    assert error_code(result) == 401
    assert server.consent_deadline() == 3.0 + TIMEOUT


def test_after_restart_the_old_ufrag_with_a_wrong_password_is_refused_with_401() -> None:
    server = make_server()
    old_ufrag = server.username_fragment
    server.restart()

    assert error_code(check(server, now=1.0, ufrag=old_ufrag, password="wrong")) == 401
    assert_untouched(server)


def test_a_second_restart_retires_the_first_credentials() -> None:
    server = make_server()
    first_ufrag, first_password = server.username_fragment, server.password
    server.restart()
    second_ufrag, second_password = server.username_fragment, server.password

    server.restart()

    assert error_code(check(server, now=1.0, ufrag=first_ufrag, password=first_password)) == 401
    assert_untouched(server)
    result = check(server, now=2.0, ufrag=second_ufrag, password=second_password)
    assert parse_response(result).message_class is stun.Class.RESPONSE
    assert server.state is IceState.CONNECTED


def test_restart_does_not_drop_the_selected_tuple() -> None:
    server = make_server()
    check(server, now=1.0, use_candidate=True)

    server.restart()

    assert server.state is IceState.COMPLETED
    assert server.selected_tuple == CLIENT


def test_a_closed_server_ignores_even_valid_checks() -> None:
    server = make_server()
    server.close()

    assert check(server, now=1.0, use_candidate=True) == BindingResult(None, IceChange.NONE)
    assert check(server, now=1.0, password="wrong") == BindingResult(None, IceChange.NONE)
    assert server.handle_binding(b"garbage", CLIENT, 1.0) == BindingResult(None, IceChange.NONE)
    assert server.handle_binding(b"garbage", CLIENT, 1.0).error is None
    assert server.state is IceState.CLOSED
    assert server.selected_tuple is None


def test_a_closed_server_has_no_consent_deadline_and_never_expires() -> None:
    server = make_server()
    check(server, now=1.0)

    server.close()

    assert server.consent_deadline() is None
    assert not server.consent_expired(now=1e9)
    assert server.state is IceState.CLOSED


# -- consent after a server stall (ConsentWatch) -----------------------------------------
#
# The transport arms a timer for ``watch.due`` and calls ``watch.fired(now)`` when it
# runs; here ``now`` is a fake clock, so a "stall" is a timer that runs late.

TOLERANCE = 1.0
RESYNC = 6.0


def watched(last_check: float = 100.0) -> tuple[IceLiteServer, ConsentWatch]:
    server = make_server()
    check(server, now=last_check, use_candidate=True)
    watch = ConsentWatch(server, stall_tolerance=TOLERANCE, resync_window=RESYNC)
    assert watch.start() == last_check + TIMEOUT
    return server, watch


def test_a_timer_that_fires_on_time_with_no_check_expires_consent() -> None:
    server, watch = watched()

    assert watch.fired(now=100.0 + TIMEOUT + 0.01) is None
    assert server.state is IceState.DISCONNECTED
    assert watch.stalls == 0


def test_a_timer_that_fires_after_a_newer_check_is_re_armed_for_its_deadline() -> None:
    server, watch = watched()
    check(server, now=120.0)

    assert watch.fired(now=100.0 + TIMEOUT) == 120.0 + TIMEOUT
    assert watch.due == 120.0 + TIMEOUT
    assert server.state is IceState.COMPLETED


def test_a_timer_late_within_the_tolerance_still_expires_consent() -> None:
    server, watch = watched()

    assert watch.fired(now=100.0 + TIMEOUT + TOLERANCE) is None
    assert server.state is IceState.DISCONNECTED


def test_a_timer_late_beyond_the_tolerance_waits_a_resync_window_instead_of_expiring() -> None:
    server, watch = watched()
    woke = 100.0 + TIMEOUT + 35.0  # the process was stopped for 35 s

    assert watch.fired(now=woke) == woke + RESYNC
    assert server.state is IceState.COMPLETED
    assert watch.stalls == 1


def test_checks_received_within_the_resync_window_keep_consent() -> None:
    server, watch = watched()
    woke = 100.0 + TIMEOUT + 35.0
    resync = watch.fired(now=woke)
    assert resync is not None
    # The checks the client sent during the stall are read right after the timer.
    check(server, now=woke + 0.001)

    assert watch.fired(now=resync) == woke + 0.001 + TIMEOUT
    assert server.state is IceState.COMPLETED


def test_no_check_within_the_resync_window_expires_consent_then() -> None:
    server, watch = watched()
    woke = 100.0 + TIMEOUT + 35.0
    resync = watch.fired(now=woke)
    assert resync is not None

    assert watch.fired(now=resync + 0.01) is None
    assert server.state is IceState.DISCONNECTED


def test_a_second_stall_during_the_resync_window_grants_another_window() -> None:
    server, watch = watched()
    resync = watch.fired(now=200.0)
    assert resync == 200.0 + RESYNC

    assert watch.fired(now=resync + 10.0) == resync + 10.0 + RESYNC
    assert watch.stalls == 2
    assert server.state is IceState.COMPLETED


def test_without_a_stall_tolerance_a_late_timer_expires_consent() -> None:
    server = make_server()
    check(server, now=100.0)
    watch = ConsentWatch(server, stall_tolerance=None, resync_window=RESYNC)
    watch.start()

    assert watch.fired(now=100.0 + TIMEOUT + 35.0) is None
    assert server.state is IceState.DISCONNECTED


def test_a_closed_agent_stops_the_watch_without_expiring() -> None:
    server, watch = watched()
    server.close()

    assert watch.fired(now=1e9) is None
    assert server.state is IceState.CLOSED


@pytest.mark.parametrize(
    ("tolerance", "window"), [(-1.0, 6.0), (1.0, 0.0)], ids=["negative-tolerance", "no-window"]
)
def test_a_consent_watch_refuses_nonsense_settings(tolerance: float, window: float) -> None:
    with pytest.raises(ValueError):
        ConsentWatch(make_server(), stall_tolerance=tolerance, resync_window=window)
