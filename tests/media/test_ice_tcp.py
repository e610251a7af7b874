"""ICE-TCP (RFC 6544): the framer (media/ice_tcp.py), and a transport's passive TCP
candidate over real sockets (media/tcp_listener.py, media/webrtc_transport.py).

The framer is sans-I/O and tested on bytes.  The listener is tested with raw
client sockets speaking RFC 4571 framing: STUN checks built with aioice, and a
DTLS-SRTP client (aiortc's DTLS on a framed TCP stream) for media both ways.
Hostile connections (silent, not STUN, wrong credentials, too many, never
reading) are closed or bounded; closing the transport frees everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aioice import stun
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from media import (
    InvalidParametersError,
    NoFreePortError,
    Router,
    WebRtcTransport,
    Worker,
    WorkerSettings,
)
from media.ice_tcp import (
    MAX_FRAME_SIZE,
    UNVALIDATED_MAX_FRAME,
    FrameDecoder,
    FramingError,
    frame,
)
from media.tcp_listener import TcpConnection
from media.webrtc_transport import candidate_priority, candidate_protocols

from .object_harness import rtp, video_parameters, wait_until
from .resources import ProcessResources
from .test_ports import free_udp_range

# -- the framer ------------------------------------------------------------------------


def test_a_frame_is_the_payload_after_its_big_endian_length() -> None:
    assert frame(b"abc") == b"\x00\x03abc"
    assert frame(b"x" * 300)[:2] == b"\x01\x2c"
    assert FrameDecoder().feed(frame(b"abc")) == [b"abc"]


def test_frames_carry_1_to_65535_bytes() -> None:
    assert len(frame(b"x" * MAX_FRAME_SIZE)) == MAX_FRAME_SIZE + 2
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(b"x" * (MAX_FRAME_SIZE + 1))
    assert FrameDecoder().feed(frame(b"y" * MAX_FRAME_SIZE)) == [b"y" * MAX_FRAME_SIZE]


def test_a_frame_split_over_reads_comes_out_once_whole() -> None:
    decoder = FrameDecoder()
    stream = frame(b"hello") + frame(b"world!")
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 2 + 6
    assert out == [b"hello", b"world!"]
    assert decoder.buffered == 0


def test_coalesced_frames_come_out_in_order_and_a_tail_waits() -> None:
    decoder = FrameDecoder()
    stream = frame(b"one") + frame(b"two") + frame(b"three")
    assert decoder.feed(stream + b"\x00\x05fo") == [b"one", b"two", b"three"]
    assert decoder.buffered == 4
    assert decoder.feed(b"ur!" + frame(b"five")) == [b"four!", b"five"]


def test_zero_length_frames_are_counted_and_skipped() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00" + frame(b"a") + b"\x00\x00\x00\x00") == [b"a"]
    assert decoder.empty == 3


def test_a_frame_over_max_frame_is_a_framing_error_before_its_bytes_arrive() -> None:
    decoder = FrameDecoder(max_frame=UNVALIDATED_MAX_FRAME)
    with pytest.raises(FramingError):
        decoder.feed(struct.pack("!H", UNVALIDATED_MAX_FRAME + 1))
    decoder = FrameDecoder(max_frame=UNVALIDATED_MAX_FRAME)
    assert decoder.feed(frame(b"s" * UNVALIDATED_MAX_FRAME)) == [b"s" * UNVALIDATED_MAX_FRAME]
    decoder.max_frame = MAX_FRAME_SIZE  # validated: any frame
    assert decoder.feed(frame(b"d" * 5000)) == [b"d" * 5000]
    with pytest.raises(ValueError):
        decoder.max_frame = MAX_FRAME_SIZE + 1


def test_garbage_is_frames_of_garbage_and_the_buffer_stays_within_one_frame() -> None:
    decoder = FrameDecoder()
    garbage = os.urandom(1 << 20)
    out = []
    for start in range(0, len(garbage), 7919):
        out += decoder.feed(garbage[start : start + 7919])
        assert decoder.buffered <= 2 + MAX_FRAME_SIZE
    assert sum(len(f) + 2 for f in out) + decoder.empty * 2 + decoder.buffered == len(garbage)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=3000), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=70000), max_size=30),
)
def test_any_split_of_a_stream_gives_back_its_frames(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    assert out == payloads and decoder.buffered == 0


# -- candidates and options -----------------------------------------------------------


def test_candidate_priorities_are_mediasoups() -> None:
    # type preference 64 (host), local preference 10000 then 100 less, component 1
    assert candidate_priority(0) == 1076302079
    assert candidate_priority(1) == 1076276479


@pytest.mark.parametrize(
    ("udp", "tcp", "prefer_udp", "prefer_tcp", "expected"),
    [
        (True, True, False, False, ("udp", "tcp")),
        (True, True, True, False, ("udp", "tcp")),
        (True, True, False, True, ("tcp", "udp")),
        (True, True, True, True, ("udp", "tcp")),
        (True, False, False, True, ("udp",)),
        (False, True, True, False, ("tcp",)),
    ],
)
def test_candidate_order_follows_enable_and_prefer(
    udp: bool, tcp: bool, prefer_udp: bool, prefer_tcp: bool, expected: tuple[str, ...]
) -> None:
    assert (
        candidate_protocols(
            enable_udp=udp, enable_tcp=tcp, prefer_udp=prefer_udp, prefer_tcp=prefer_tcp
        )
        == expected
    )


async def test_prefer_tcp_puts_the_tcp_candidate_first(router: Router) -> None:
    transport = await router.create_webrtc_transport(prefer_tcp=True)
    tcp, udp = transport.ice_candidates
    assert (tcp["protocol"], tcp["priority"], tcp["foundation"]) == (
        "tcp",
        1076302079,
        "tcpcandidate",
    )
    assert (udp["protocol"], udp["priority"], udp["foundation"]) == (
        "udp",
        1076276479,
        "udpcandidate",
    )


async def test_tcp_only_transport_has_one_passive_candidate_and_no_udp_socket(
    worker: Worker, router: Router
) -> None:
    before = ProcessResources.now().udp_sockets
    transport = await router.create_webrtc_transport(enable_udp=False, enable_tcp=True)
    [candidate] = transport.ice_candidates
    assert candidate == {
        "foundation": "tcpcandidate",
        "priority": 1076302079,
        "ip": "127.0.0.1",
        "address": "127.0.0.1",
        "protocol": "tcp",
        "port": transport.tcp_port,
        "type": "host",
        "tcpType": "passive",
    }
    assert transport.port == transport.tcp_port
    assert ProcessResources.now().udp_sockets == before
    assert worker.port_allocator.tcp_in_use() == 1 and worker.port_allocator.udp_in_use() == 0
    transport.close()
    assert worker.port_usage()[0] == 0


async def test_udp_only_and_neither(router: Router) -> None:
    transport = await router.create_webrtc_transport(enable_tcp=False)
    assert [c["protocol"] for c in transport.ice_candidates] == ["udp"]
    assert transport.tcp_port is None
    with pytest.raises(InvalidParametersError):
        await router.create_webrtc_transport(enable_udp=False, enable_tcp=False)
    with pytest.raises(InvalidParametersError):
        await router.create_webrtc_transport(enable_tcp=1)  # type: ignore[arg-type]


async def test_the_worker_setting_decides_tcp_by_default() -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, enable_tcp=False))
    try:
        router = await worker.create_router()
        assert [c["protocol"] for c in (await router.create_webrtc_transport()).ice_candidates] == [
            "udp"
        ]
        transport = await router.create_webrtc_transport(enable_tcp=True)
        assert [c["protocol"] for c in transport.ice_candidates] == ["udp", "tcp"]
    finally:
        worker.close()


async def test_the_tcp_listener_takes_the_udp_port_number_when_free(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    assert transport.tcp_port == transport.port


async def test_the_tcp_listener_takes_another_port_of_the_range_when_its_number_is_taken() -> None:
    for _ in range(20):  # a range whose low port is free in TCP's space too
        port_range = free_udp_range(2)
        low, high = port_range.min_port, port_range.max_port
        holder = socket.socket()  # someone else listens on ``low`` in TCP's space
        try:
            holder.bind(("127.0.0.1", low))
            break
        except OSError:
            holder.close()
    else:
        raise AssertionError("no port range with a free TCP port in 20 tries")
    holder.listen()
    worker = Worker(WorkerSettings(consent_timeout=10.0, port_range=port_range))
    try:
        router = await worker.create_router()
        first = await router.create_webrtc_transport()
        assert first.tcp_port == high  # its own UDP number, or the other one if that was ``low``
        # The second gets the last UDP port, but no TCP port is left: refused, nothing held.
        with pytest.raises(NoFreePortError):
            await router.create_webrtc_transport()
        await wait_until(lambda: worker.port_allocator.udp_in_use() == 1)  # closed, not leaked
        first.close()
        await wait_until(lambda: worker.port_usage()[0] == 0)
    finally:
        worker.close()
        holder.close()


# -- a raw ICE-TCP client ----------------------------------------------------------------


def binding_request(
    transport: WebRtcTransport,
    *,
    use_candidate: bool = True,
    password: str | None = None,
) -> bytes:
    params = transport.ice_parameters
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{params['usernameFragment']}:client"
    request.attributes["PRIORITY"] = 1853817087
    request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    request.add_message_integrity(str(password or params["password"]).encode())
    return bytes(request)


class TcpClient:
    """One framed ICE-TCP connection to a transport's passive candidate."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def connect(cls, transport: WebRtcTransport) -> TcpClient:
        assert transport.tcp_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", transport.tcp_port)
        return cls(reader, writer)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, payload: bytes) -> None:
        self.writer.write(frame(payload))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> bytes:
        header = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        return await asyncio.wait_for(self.reader.readexactly(struct.unpack("!H", header)[0]), 5)

    async def check(self, transport: WebRtcTransport, **kwargs: Any) -> stun.Message:
        self.send(binding_request(transport, **kwargs))
        return stun.parse_message(await self.recv())

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closed the connection (EOF or reset) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def tcp_clients() -> AsyncIterator[list[TcpClient]]:
    made: list[TcpClient] = []
    yield made
    for client in made:
        client.close()
        with contextlib.suppress(Exception):
            await client.writer.wait_closed()


async def connect(transport: WebRtcTransport, made: list[TcpClient]) -> TcpClient:
    client = await TcpClient.connect(transport)
    made.append(client)
    return client


async def test_a_binding_request_over_tcp_gets_a_framed_success_with_the_mapped_address(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    changes: list[Any] = []
    transport.on("iceselectedtuplechange", changes.append)
    client = await connect(transport, tcp_clients)

    response = await client.check(transport)

    assert response.message_class is stun.Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.address
    assert response.check_message_integrity(str(transport.ice_parameters["password"]).encode())
    assert transport.ice_state == "completed"
    selected = {
        "localIp": "127.0.0.1",
        "localPort": transport.tcp_port,
        "remoteIp": client.address[0],
        "remotePort": client.address[1],
        "protocol": "tcp",
    }
    assert transport.ice_selected_tuple == selected and changes == [selected]
    stats = (await transport.get_stats())[0]
    assert stats["iceSelectedTuple"] == selected
    assert stats["iceTcp"] == {
        "port": transport.tcp_port,
        "connections": 1,
        "refused": 0,
        "framesDropped": 0,
    }


async def test_a_tcp_path_and_a_udp_address_are_never_confused(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    """The same (ip, port) over UDP is another path than the TCP connection."""
    transport = await router.create_webrtc_transport()
    client = await connect(transport, tcp_clients)
    await client.check(transport)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            udp.bind(client.address)  # same number, UDP's space
        udp.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(
            udp, binding_request(transport, use_candidate=False), ("127.0.0.1", transport.port)
        )
        await asyncio.wait_for(loop.sock_recv(udp, 2048), 5)
        # A plain check on another path does not move the selection.
        assert transport.ice_selected_tuple is not None
        assert transport.ice_selected_tuple["protocol"] == "tcp"
        # Nominating the UDP path moves it there, and back to TCP again.
        await loop.sock_sendto(udp, binding_request(transport), ("127.0.0.1", transport.port))
        await asyncio.wait_for(loop.sock_recv(udp, 2048), 5)
        assert transport.ice_selected_tuple["protocol"] == "udp"
        await client.check(transport)
        assert transport.ice_selected_tuple["protocol"] == "tcp"
    finally:
        udp.close()


async def test_a_non_stun_talker_is_closed_and_counted(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    dtls_like = await connect(transport, tcp_clients)
    dtls_like.send(b"\x16\xfe\xfd" + b"\x00" * 50)
    http = await connect(transport, tcp_clients)
    http.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # declares a 18245-byte frame

    assert await dtls_like.closed_by_server()
    assert await http.closed_by_server()
    assert transport.datagram_errors["tcp"] == 2
    await wait_until(lambda: transport.tcp_connections == 0)
    assert transport.ice_selected_tuple is None


async def test_wrong_credentials_get_the_error_then_the_connection_is_closed(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    client = await connect(transport, tcp_clients)
    response = await client.check(transport, password="not-the-password-at-all-0000")
    assert response.message_class is stun.Class.ERROR
    assert response.attributes["ERROR-CODE"][0] == 401
    assert await client.closed_by_server()
    assert transport.ice_state == "new"


async def test_garbage_stun_closes_an_unvalidated_connection(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    client = await connect(transport, tcp_clients)
    client.send(b"\x00\x01\x00\x00garbage")
    assert await client.closed_by_server()
    assert transport.datagram_errors["stun"] == 1


async def test_a_silent_connection_is_closed_after_the_stun_timeout(
    tcp_clients: list[TcpClient],
) -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, tcp_stun_timeout=0.3))
    try:
        router = await worker.create_router()
        transport = await router.create_webrtc_transport()
        silent = await connect(transport, tcp_clients)
        partial = await connect(transport, tcp_clients)
        partial.send_raw(frame(binding_request(transport))[:-5])  # never completed
        good = await connect(transport, tcp_clients)
        await good.check(transport)

        assert await silent.closed_by_server(timeout=3)
        assert await partial.closed_by_server(timeout=3)
        assert transport.datagram_errors["tcp"] == 2
        # The validated one stays (consent governs it, as a UDP path).
        await asyncio.sleep(0.3)
        assert transport.tcp_connections == 1
        assert (await good.check(transport)).message_class is stun.Class.RESPONSE
    finally:
        worker.close()


async def test_an_oversized_first_frame_is_refused_at_once(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    client = await connect(transport, tcp_clients)
    client.send_raw(struct.pack("!H", UNVALIDATED_MAX_FRAME + 1))
    assert await client.closed_by_server(timeout=2)
    assert transport.datagram_errors["tcp"] == 1


async def test_connections_beyond_the_limit_are_closed_on_arrival(
    tcp_clients: list[TcpClient],
) -> None:
    worker = Worker(WorkerSettings(consent_timeout=10.0, max_tcp_connections=2))
    try:
        router = await worker.create_router()
        transport = await router.create_webrtc_transport()
        first = await connect(transport, tcp_clients)
        second = await connect(transport, tcp_clients)
        await first.check(transport)
        await second.check(transport, use_candidate=False)
        third = await connect(transport, tcp_clients)

        assert await third.closed_by_server()
        assert transport.tcp_connections == 2
        assert (await transport.get_stats())[0]["iceTcp"]["refused"] == 1
        # A slot freed is a slot for the next one.
        second.close()
        await wait_until(lambda: transport.tcp_connections == 1)
        fourth = await connect(transport, tcp_clients)
        assert (await fourth.check(transport)).message_class is stun.Class.RESPONSE
    finally:
        worker.close()


async def test_a_client_that_does_not_read_gets_media_dropped_not_buffered(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    client = await connect(transport, tcp_clients)
    await client.check(transport)
    [connection] = cast(Any, transport)._tcp.connections
    assert isinstance(connection, TcpConnection)
    limit = transport.settings.tcp_write_limit
    packet = b"\x80" + b"m" * 1199
    sent = 0
    for _ in range(20):  # the kernel's buffers fill, then ours, then it drops
        for _ in range(1000):
            connection.send_media(packet)
            sent += 1
        await asyncio.sleep(0.01)
    buffered = connection._transport.get_write_buffer_size()  # type: ignore[union-attr]
    assert buffered <= limit + len(packet) + 2
    assert connection.frames_dropped > 0
    for _ in range(1000):  # control packets get twice the room, then drop too
        connection.send(packet)
    assert connection._transport.get_write_buffer_size() <= 2 * limit + len(packet) + 2  # type: ignore[union-attr]
    assert (await transport.get_stats())[0]["iceTcp"]["framesDropped"] == connection.frames_dropped


async def test_closing_the_transport_closes_every_connection_and_frees_the_port(
    worker: Worker, router: Router, tcp_clients: list[TcpClient]
) -> None:
    before = ProcessResources.now()
    transport = await router.create_webrtc_transport(enable_udp=False, enable_tcp=True)
    port = transport.tcp_port
    assert port is not None
    clients = [await connect(transport, tcp_clients) for _ in range(3)]
    await clients[0].check(transport)
    await wait_until(lambda: transport.tcp_connections == 3)

    transport.close()

    for client in clients:
        assert await client.closed_by_server()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert worker.port_usage()[0] == 0 and worker.port_allocator.tcp_in_use() == 0
    for client in clients:
        client.close()
        with contextlib.suppress(Exception):
            await client.writer.wait_closed()
    await asyncio.sleep(0.05)
    after = ProcessResources.now()
    assert (after.file_descriptors, after.tcp_sockets) == (
        before.file_descriptors,
        before.tcp_sockets,
    )


async def test_losing_the_selected_tcp_connection_disconnects_until_a_check_comes_back(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport()
    states: list[str] = []
    transport.on("icestatechange", states.append)
    first = await connect(transport, tcp_clients)
    await first.check(transport)
    first.close()
    await wait_until(lambda: transport.ice_state == "disconnected")
    assert transport.ice_selected_tuple is None and not transport.closed

    again = await connect(transport, tcp_clients)
    await again.check(transport)
    assert transport.ice_state == "completed"
    assert transport.ice_selected_tuple is not None
    assert transport.ice_selected_tuple["remotePort"] == again.address[1]
    assert states == ["completed", "disconnected", "completed"]


# -- DTLS and SRTP over TCP -------------------------------------------------------------


class FramedIceTransport:
    """What aiortc's RTCDtlsTransport needs of an ICE transport, over one framed
    TCP connection (non-STUN frames are DTLS and SRTP)."""

    role = "controlling"  # a full-ICE client facing ICE-lite

    def __init__(self, client: TcpClient) -> None:
        self.client = client

    async def _send(self, data: bytes) -> None:
        self.client.send(data)

    async def _recv(self) -> bytes:
        while True:
            try:
                data = await self.client.recv(timeout=3600)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise ConnectionError("closed") from exc
            if data[0] > 3:  # STUN answers are not for DTLS
                return data


async def test_dtls_and_srtp_both_ways_over_ice_tcp(
    router: Router, tcp_clients: list[TcpClient]
) -> None:
    transport = await router.create_webrtc_transport(enable_udp=False, enable_tcp=True)
    client = await connect(transport, tcp_clients)
    await client.check(transport)
    dtls = RTCDtlsTransport(
        cast(Any, FramedIceTransport(client)), [RTCCertificate.generateCertificate()]
    )
    fingerprints = dtls.getLocalParameters().fingerprints
    await transport.connect(
        {
            "role": "server",
            "fingerprints": [{"algorithm": f.algorithm, "value": f.value} for f in fingerprints],
        }
    )
    try:
        await asyncio.wait_for(
            dtls.start(
                RTCDtlsParameters(
                    fingerprints=[
                        RTCDtlsFingerprint(algorithm=f["algorithm"], value=f["value"])
                        for f in transport.dtls_parameters["fingerprints"]
                    ]
                )
            ),
            10,
        )
        await wait_until(lambda: transport.dtls_state == "connected")

        # Up: the client's SRTP reaches a producer.
        producer = await transport.produce(kind="video", rtp_parameters=video_parameters(0x1111))
        for seq in range(20):
            await dtls._send_rtp(rtp(0x1111, seq))
        await wait_until(lambda: producer.packet_count == 20)

        # Down: what the server sends arrives framed, and decrypts.
        sent = transport.bytes_sent
        transport.send_rtcp(struct.pack("!BBHI", 0x80, 201, 1, 0x4242))  # an empty RR
        await wait_until(lambda: transport.bytes_sent > sent)
        assert transport.ice_selected_tuple is not None
        assert transport.ice_selected_tuple["protocol"] == "tcp"
    finally:
        await dtls.stop()


# -- fuzz: no byte stream makes a transport raise ---------------------------------------------


class FakeStream:
    """An asyncio transport that only records (for feeding a TcpConnection by hand)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def draw_streams(size: int, random_seed: int) -> list[tuple[bool, list[bytes]]]:
    """``size`` byte streams, cut in reads: garbage, frames of garbage, framing edge cases;
    each sent on a fresh connection or after a valid check (generated, not shrunk)."""
    corpus: list[tuple[bool, list[bytes]]] = []

    @seed(random_seed)
    @settings(
        max_examples=size,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        validated=st.booleans(),
        chunks=st.lists(
            st.one_of(
                st.binary(max_size=600),
                st.binary(min_size=1, max_size=300).map(frame),
                st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x00\x01\x80", b"\x00\x02\x16\xfe"]),
            ),
            max_size=25,
        ),
    )
    def collect(validated: bool, chunks: list[bytes]) -> None:
        corpus.append((validated, chunks))

    collect()
    return corpus


async def test_fuzz_no_byte_stream_on_a_tcp_connection_escapes_or_leaks(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    listener = cast(Any, transport)._tcp
    for validated, chunks in draw_streams(300, random_seed=6544):
        connection = TcpConnection(listener)
        stream = FakeStream()
        connection.connection_made(cast(Any, stream))
        if validated:
            connection.data_received(frame(binding_request(transport)))
            assert connection.validated and not stream.aborted
        for chunk in chunks:
            connection.data_received(chunk)
        if not connection.validated and any(chunks):
            # Whatever an unproven connection sent was not a valid check: closed, or
            # still waiting for the rest of a frame (the timeout closes it).
            assert stream.aborted or connection._decoder.buffered > 0
        connection.connection_lost(None)
        assert connection not in listener.connections
    assert transport.datagram_errors["internal"] == 0
    assert transport.tcp_connections == 0
    transport.close()
