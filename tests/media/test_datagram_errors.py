"""Malformed datagrams are dropped, counted by kind, and logged at a bounded rate.

The first half drives ``DatagramErrors`` with a fake clock.  The second half sends
real datagrams over loopback to a live transport: from a plain UDP socket, and from
the address of a ``RawClient`` (real ICE and DTLS-SRTP) for what only the selected
tuple may send.  In no case may an exception reach the event loop's handler
("Exception in callback ...").
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aioice import stun

from media import Producer, Router, WebRtcTransport, Worker
from media.datagram_errors import ERROR_KINDS, DatagramErrors, new_error_counts

from .clients import RawClient
from .test_leaks import video_parameters

SSRC = 0x1111
RTX_SSRC = SSRC + 1
VP8_PT = 97
RTX_PT = 98


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def error_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "media.datagram_errors"]


def loop_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What asyncio's default exception handler logged (a callback that raised)."""
    return [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


# -- counting and the log rate limit (fake clock) ----------------------------------------


def make_errors(clock: FakeClock, interval: float = 60.0) -> tuple[DatagramErrors, dict[str, int]]:
    worker_counts = new_error_counts()
    errors = DatagramErrors(
        owner="transport T", worker_counts=worker_counts, interval=interval, clock=clock
    )
    return errors, worker_counts


def test_every_kind_starts_at_zero_so_metrics_export_each_one() -> None:
    assert new_error_counts() == dict.fromkeys(
        ("stun", "dtls", "srtp", "rtp", "rtcp", "sctp", "tcp", "internal"), 0
    )
    assert tuple(new_error_counts()) == ERROR_KINDS


def test_an_error_is_counted_for_the_transport_and_for_its_worker() -> None:
    errors, worker_counts = make_errors(FakeClock())

    errors.record("stun", "bad")
    errors.record("stun", "bad")
    errors.record("rtcp", "bad")

    assert errors.counts["stun"] == 2 and errors.counts["rtcp"] == 1
    assert worker_counts["stun"] == 2 and worker_counts["rtcp"] == 1


def test_a_flood_logs_one_line_per_interval_and_then_says_how_many_were_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    errors, _ = make_errors(clock, interval=60.0)
    caplog.set_level(logging.INFO)

    for _ in range(20_000):
        errors.record("stun", struct.error("unpack requires a buffer of 4 bytes"))
    clock.now += 59.9
    errors.record("stun", "still inside the interval")
    clock.now += 0.2
    errors.record("dtls", "next interval")

    lines = error_lines(caplog)
    assert len(lines) == 2
    assert all(line.levelno == logging.WARNING and not line.exc_info for line in lines)
    assert "malformed stun datagram" in lines[0].getMessage()
    assert "error: unpack requires" in lines[0].getMessage()
    assert "held back" not in lines[0].getMessage()
    assert "20000 more held back" in lines[1].getMessage()
    assert errors.counts["stun"] == 20_001


def test_an_internal_error_is_logged_with_its_traceback_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    errors, _ = make_errors(clock, interval=60.0)

    for _ in range(3):
        try:
            raise RuntimeError("a bug")
        except RuntimeError as exc:
            errors.record("internal", exc)
    errors.record("stun", "garbage")  # its own rate limit: still logged

    lines = error_lines(caplog)
    internal = [line for line in lines if line.levelno == logging.ERROR]
    assert len(internal) == 1 and internal[0].exc_info is not None
    assert len(lines) == 2
    assert errors.counts["internal"] == 3


def test_closing_reports_what_the_last_interval_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors, _ = make_errors(FakeClock())
    for _ in range(5):
        errors.record("srtp", "auth failed")

    errors.flush()
    errors.flush()  # nothing more to say

    lines = error_lines(caplog)
    assert len(lines) == 2
    assert "4 more malformed datagrams" in lines[1].getMessage()
    assert "srtp 5" in lines[1].getMessage()


def test_an_interval_of_zero_logs_every_error(caplog: pytest.LogCaptureFixture) -> None:
    errors, _ = make_errors(FakeClock(), interval=0.0)

    for _ in range(3):
        errors.record("rtp", "bad")

    assert len(error_lines(caplog)) == 3


# -- real datagrams on a live transport ---------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@dataclass
class Call:
    worker: Worker
    transport: WebRtcTransport
    producer: Producer
    client: RawClient

    @property
    def server_address(self) -> tuple[str, int]:
        return self.transport.ice_candidates[0]["ip"], self.transport.port


@pytest.fixture
async def call(worker: Worker, router: Router) -> AsyncIterator[Call]:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    client = RawClient()
    await asyncio.wait_for(client.connect(transport), 10)
    await wait_until(lambda: transport.dtls_state == "connected")
    yield Call(worker, transport, producer, client)
    await client.close()
    transport.close()


def rtp(
    seq: int,
    *,
    ssrc: int = SSRC,
    pt: int = VP8_PT,
    payload: bytes = b"\x90\x80" + bytes(20),
    padding_count: int | None = None,
) -> bytes:
    first = 0x80
    if padding_count is not None:
        first |= 0x20
        payload = payload + bytes([padding_count])
    return struct.pack("!BBHII", first, pt, seq, 90000 + seq, ssrc) + payload


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def stun_with_2_byte_priority() -> bytes:
    request = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    attribute = struct.pack("!HH", 0x0024, 2) + b"\x01\x02\x00\x00"
    return request[:2] + struct.pack("!H", len(attribute)) + request[4:20] + attribute


async def test_a_flood_of_stun_with_a_2_byte_priority_is_counted_and_logged_once(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    data = stun_with_2_byte_priority()
    with udp_socket() as sock:
        for i in range(500):
            sock.sendto(data, call.server_address)
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the server read, so no datagram is lost

    await wait_until(lambda: call.transport.datagram_errors["stun"] >= 500)

    assert call.worker.datagram_errors["stun"] == 500
    assert loop_errors(caplog) == []
    assert len(error_lines(caplog)) == 1
    assert not call.transport.closed and call.transport.ice_state == "completed"


async def test_a_one_byte_srtp_datagram_from_the_client_is_counted_not_raised(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    # Reading the second byte of b"\x80" used to raise IndexError in the UDP callback.
    await call.client.send_datagram(b"\x80")
    await call.client.send_datagram(b"\x80\xc8" + bytes(30))  # SRTCP that fails authentication
    await call.client.send_datagram(b"\x80\x60" + bytes(40))  # SRTP that fails authentication

    await wait_until(lambda: call.transport.datagram_errors["srtp"] >= 3)

    assert loop_errors(caplog) == []
    assert not call.transport.closed


@pytest.mark.parametrize(
    "datagram",
    [
        b"\x16\xfe",  # shorter than a record header
        b"\x17\xfe\xfd" + bytes(8) + b"\x04\x00" + bytes(10),  # length overruns the datagram
        b"\x1a\xfe\xfd" + bytes(8) + b"\x00\x00",  # no such content type
        b"\x16\x03\x03" + bytes(8) + b"\x00\x00",  # a TLS version, not DTLS
    ],
    ids=["short", "overrun", "content-type", "version"],
)
async def test_a_malformed_dtls_datagram_from_the_client_is_counted_and_dropped(
    call: Call, caplog: pytest.LogCaptureFixture, datagram: bytes
) -> None:
    await call.client.send_datagram(datagram)

    await wait_until(lambda: call.transport.datagram_errors["dtls"] == 1)

    await call.client.send_srtp(rtp(1))
    await wait_until(lambda: call.producer.packet_count == 1)
    assert call.transport.dtls_state == "connected"
    assert loop_errors(caplog) == []


async def test_authenticated_rtp_that_does_not_hold_together_is_counted_and_the_stream_goes_on(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    # libsrtp checks the header's CSRC and extension lengths, not the padding.
    await call.client.send_srtp(rtp(1, padding_count=200))
    await call.client.send_srtp(rtp(2, ssrc=RTX_SSRC, pt=RTX_PT, payload=b"", padding_count=9))

    await wait_until(lambda: call.transport.datagram_errors["rtp"] == 2)
    await call.client.send_srtp(rtp(3))
    await wait_until(lambda: call.producer.packet_count == 1)
    assert loop_errors(caplog) == []


async def test_truncated_or_misframed_rtcp_is_counted_and_the_rest_of_the_compound_is_read(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    truncated_pli = struct.pack("!BBHI", 0x81, 206, 1, 0xABCD)  # no media SSRC
    await call.client.send_srtp(truncated_pli)
    overrun = struct.pack("!BBHI", 0x80, 201, 9, 0xABCD)  # says 40 bytes, has 8
    await call.client.send_srtp(overrun)

    await wait_until(lambda: call.transport.datagram_errors["rtcp"] == 2)
    assert loop_errors(caplog) == []
    assert not call.transport.closed


async def test_an_unexpected_error_is_contained_counted_as_internal_and_logged_with_traceback(
    call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    # A valid check handed to the socket's protocol with an address no socket
    # reports: answering it fails deep in the STUN encoder, as a bug would.
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{call.transport.ice_parameters['usernameFragment']}:x"
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(call.transport.ice_parameters["password"].encode())
    protocol = call.transport._endpoint

    for _ in range(3):
        protocol.datagram_received(bytes(request), ("not an address", -1))

    assert call.transport.datagram_errors["internal"] == 3
    internal = [r for r in error_lines(caplog) if r.levelno == logging.ERROR]
    assert len(internal) == 1 and internal[0].exc_info is not None
    assert loop_errors(caplog) == []


async def test_transport_stats_carry_the_error_counts(call: Call) -> None:
    await call.client.send_datagram(b"\x80")
    await wait_until(lambda: call.transport.datagram_errors["srtp"] == 1)

    [stats] = await call.transport.get_stats()

    assert stats["datagramErrors"]["srtp"] == 1
    assert set(stats["datagramErrors"]) == set(ERROR_KINDS)
