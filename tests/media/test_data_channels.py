"""Data channel memory is bounded in both directions, with real pymediasoup clients.

Outbound (mediasoup's ``sctpSendBufferSize``): a receiver that stops reading costs
the server at most the send buffer; further messages are dropped and counted.
Inbound (``maxMessageSize``): a client that ignores the limit has its oversized
message refused while it is still arriving, and every channel -- the same one
included -- carries the next message normally.

The server-side byte counts are read from aiortc's SCTP queues directly, an
independent measure of what the bridge enforces.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc.rtcsctptransport import Chunk, DataChunk, RTCSctpTransport, crc32c

from media import Router, WebRtcTransport, Worker, WorkerSettings

from .clients import Client, join

SEND_BUFFER = 262144  # mediasoup's default sctpSendBufferSize, and ours
MAX_MESSAGE = 262144  # the transports' maxMessageSize
CHUNK = 1200  # aiortc's SCTP fragment size, roughly




async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def server_sctp(transport: WebRtcTransport | None) -> RTCSctpTransport:
    assert transport is not None and transport._dtls.sctp is not None
    return transport._dtls.sctp


def bytes_towards_client(sctp: RTCSctpTransport) -> int:
    """Everything the association holds for its peer, chunk by chunk."""
    queued = sum(len(data) for _, _, data in sctp._data_channel_queue)
    unsent = sum(len(chunk.user_data) for chunk in sctp._outbound_queue)
    unacked = sum(len(chunk.user_data) for chunk in sctp._sent_queue if not chunk._acked)
    return queued + unsent + unacked


def bytes_being_reassembled(sctp: RTCSctpTransport) -> int:
    return sum(
        len(chunk.user_data)
        for stream in sctp._inbound_streams.values()
        for chunk in stream.reassembly
    )


def client_sctp(client_transport: Any) -> RTCSctpTransport:
    sctp: RTCSctpTransport = client_transport._handler._pc.sctp
    return sctp


async def both_open(*channels: Any) -> None:
    await wait_until(lambda: all(c.readyState == "open" for c in channels))


async def test_a_receiver_that_stops_reading_costs_at_most_the_send_buffer(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    chat = await alice.produce_data("chat")
    data_producer = next(iter(alice.data_producers.values()))
    bob_chat, data_consumer = await bob.consume_data(data_producer)
    await both_open(chat, bob_chat)
    full_events: list[str] = []
    data_consumer.on("sctpsendbufferfull", lambda: full_events.append("full"))
    # Bob's SCTP stack freezes: nothing he receives is read or acknowledged.
    bob_dtls = client_sctp(bob.client_recv).transport
    bob_dtls._unregister_data_receiver(client_sctp(bob.client_recv))
    towards_bob = server_sctp(bob.recv_transport)

    message = b"x" * 16384
    count = 100  # 1.6 MB, six times the send buffer
    peak = 0
    for _ in range(count):
        chat.send(message)
        await asyncio.sleep(0.005)
        peak = max(peak, bytes_towards_client(towards_bob))
    await wait_until(lambda: data_producer.messages_received == count)
    peak = max(peak, bytes_towards_client(towards_bob))

    # Queued, in flight and awaiting retransmission, all together: one
    # message of slack for what SCTP had already taken when the limit hit.
    assert peak <= SEND_BUFFER + len(message), peak
    assert data_consumer.messages_dropped > 0
    assert data_consumer.messages_sent + data_consumer.messages_dropped == count
    assert data_consumer.messages_sent * len(message) <= SEND_BUFFER
    assert full_events == ["full"]  # once per episode, not once per message
    [stats] = await data_consumer.get_stats()
    assert stats["messagesDropped"] == data_consumer.messages_dropped
    assert stats["bytesDropped"] == data_consumer.messages_dropped * len(message)
    assert 0 < stats["bufferedAmount"] <= SEND_BUFFER
    assert stats["sctpSendBufferSize"] == SEND_BUFFER


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
async def test_an_inbound_message_over_max_message_size_is_refused_and_the_channels_go_on(
    router: Router, clients: list[Client], ordered: bool
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    assert alice.client_send is not None
    big = await alice.client_send.produceData(label="big", ordered=ordered)
    chat = await alice.produce_data("chat")
    big_producer, chat_producer = alice.data_producers.values()
    bob_big, _ = await bob.consume_data(big_producer)
    bob_chat, _ = await bob.consume_data(chat_producer)
    received: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    bob_big.on("message", lambda m: received.put_nowait(("big", m)))
    bob_chat.on("message", lambda m: received.put_nowait(("chat", m)))
    await both_open(big, chat, bob_big, bob_chat)
    # Alice's client ignores the maxMessageSize the server announced.
    client_sctp(alice.client_send)._remote_max_message_size = 0
    from_alice = server_sctp(alice.send_transport)

    big.send(b"y" * (8 * MAX_MESSAGE))  # 2 MB
    peak = 0
    for _ in range(2000):
        peak = max(peak, bytes_being_reassembled(from_alice))
        if not client_sctp(alice.client_send)._outbound_queue and not (
            client_sctp(alice.client_send)._sent_queue
        ):
            break
        await asyncio.sleep(0.002)
    big.send(b"after")
    chat.send("still here")

    got = {await asyncio.wait_for(received.get(), 10), await asyncio.wait_for(received.get(), 10)}
    assert got == {("big", b"after"), ("chat", "still here")}
    assert peak <= MAX_MESSAGE + CHUNK, peak
    assert bytes_being_reassembled(from_alice) == 0
    assert big_producer.messages_received == 1  # only "after"
    assert alice.send_transport is not None
    [stats] = await alice.send_transport.get_stats()
    assert stats["sctpMessagesTooBig"] == 1
    assert alice.send_transport.datagram_errors["sctp"] >= 1
    assert alice.send_transport.sctp_state == "connected"


def sctp_packet(verification_tag: int, *chunks: bytes) -> bytes:
    """An SCTP packet (RFC 9260 section 3) with a valid CRC32c, whatever its chunks say."""
    data = struct.pack("!HHLL", 5000, 5000, verification_tag, 0) + b"".join(chunks)
    return data[:8] + struct.pack("<L", crc32c(data)) + data[12:]


def chunk(chunk_type: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("!BBH", chunk_type, flags, 4 + len(body)) + body + bytes(-len(body) % 4)


async def test_malformed_sctp_from_a_client_is_counted_and_its_channels_go_on(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    chat = await alice.produce_data("chat")
    data_producer = next(iter(alice.data_producers.values()))
    bob_chat, _ = await bob.consume_data(data_producer)
    received: asyncio.Queue[object] = asyncio.Queue()
    bob_chat.on("message", received.put_nowait)
    await both_open(chat, bob_chat)
    sctp = client_sctp(alice.client_send)
    tag = sctp._remote_verification_tag
    transport = alice.send_transport
    assert transport is not None

    # Inside the client's real DTLS, so only the SCTP layer can object:
    # a DATA chunk too short for its header (aiortc raises struct.error while
    # parsing, which used to close the whole DTLS transport) ...
    await sctp.transport._send_data(sctp_packet(tag, chunk(0, b"\x00\x01")))
    # ... an INIT bundled with another chunk (aiortc asserts) ...
    init = chunk(1, struct.pack("!LLHHL", 1, 65536, 16, 16, 1))
    await sctp.transport._send_data(sctp_packet(0, init, chunk(11, b"")))
    # ... a string message that is not UTF-8, and a DCEP OPEN for a new channel.
    await sctp._send(data_producer.stream_id, 51, b"\xff\xfe")
    await sctp._send(100, 50, struct.pack("!BBHLHH", 3, 0, 0, 0, 0, 0))
    await wait_until(lambda: transport.datagram_errors["sctp"] == 4)
    chat.send("still here")

    assert await asyncio.wait_for(received.get(), 10) == "still here"
    assert transport.datagram_errors["internal"] == 0
    assert 100 not in server_sctp(transport)._data_channels
    assert transport.dtls_state == "connected" and transport.sctp_state == "connected"


@pytest.fixture
async def roomy_router() -> AsyncIterator[Router]:
    """Send buffers that hold a burst of large messages towards bob."""
    worker = Worker(WorkerSettings(consent_timeout=10.0, sctp_send_buffer_size=4 * SEND_BUFFER))
    yield await worker.create_router()
    worker.close()


async def test_messages_queued_behind_a_lost_fragment_are_delivered_not_refused(
    roomy_router: Router, clients: list[Client]
) -> None:
    # Over maxMessageSize waits on the stream, but in whole messages behind a
    # gap: legitimate, and every message must come out, in order.
    alice = await join(roomy_router, clients, send=True, recv=False)
    bob = await join(roomy_router, clients, send=False, recv=True)
    chat = await alice.produce_data("chat")
    data_producer = next(iter(alice.data_producers.values()))
    bob_chat, _ = await bob.consume_data(data_producer)
    received: asyncio.Queue[object] = asyncio.Queue()
    bob_chat.on("message", received.put_nowait)
    await both_open(chat, bob_chat)
    sctp = client_sctp(alice.client_send)
    send_chunk = sctp._send_chunk
    lost: list[int] = []

    async def lose_the_first_message_once(sent: Chunk) -> None:
        if isinstance(sent, DataChunk) and sent.user_data == b"first" and not lost:
            lost.append(sent.tsn)  # the network drops it; SCTP retransmits it later
            return
        await send_chunk(sent)

    sctp._send_chunk = lose_the_first_message_once  # type: ignore[method-assign]
    big = b"z" * (MAX_MESSAGE - 1000)
    messages = [b"first", big, big, big]
    for message in messages:
        chat.send(message)

    got = [await asyncio.wait_for(received.get(), 15) for _ in messages]

    assert lost and got == messages
    assert alice.send_transport is not None
    [stats] = await alice.send_transport.get_stats()
    assert stats["sctpMessagesTooBig"] == 0


async def test_an_oversized_message_behind_a_lost_fragment_is_skipped_once_reached(
    roomy_router: Router, clients: list[Client]
) -> None:
    alice = await join(roomy_router, clients, send=True, recv=False)
    bob = await join(roomy_router, clients, send=False, recv=True)
    chat = await alice.produce_data("chat")
    data_producer = next(iter(alice.data_producers.values()))
    bob_chat, _ = await bob.consume_data(data_producer)
    received: asyncio.Queue[object] = asyncio.Queue()
    bob_chat.on("message", received.put_nowait)
    await both_open(chat, bob_chat)
    sctp = client_sctp(alice.client_send)
    sctp._remote_max_message_size = 0  # this client ignores maxMessageSize
    send_chunk = sctp._send_chunk
    lost: list[int] = []

    async def lose_the_first_message_once(sent: Chunk) -> None:
        if isinstance(sent, DataChunk) and sent.user_data == b"first" and not lost:
            lost.append(sent.tsn)
            return
        await send_chunk(sent)

    sctp._send_chunk = lose_the_first_message_once  # type: ignore[method-assign]
    for message in (b"first", b"w" * (2 * MAX_MESSAGE), b"after"):
        chat.send(message)

    got = [await asyncio.wait_for(received.get(), 15) for _ in range(2)]

    assert lost and got == [b"first", b"after"]
    assert alice.send_transport is not None
    [stats] = await alice.send_transport.get_stats()
    assert stats["sctpMessagesTooBig"] == 1
    assert bytes_being_reassembled(server_sctp(alice.send_transport)) == 0
