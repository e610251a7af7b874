"""The bandwidth loops on real ICE, DTLS-SRTP and clients.

Uplink: a pymediasoup (aiortc) sender negotiates abs-send-time and goog-remb
from the router's capabilities, gets our REMBs, and its VP8 encoder obeys
them.  Downlink: a pymediasoup receiver's receiver reports, and a raw
client's REMB, move ``transport.available_outgoing_bitrate``, which is shared
out to the consumers and traced.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from media import Router
from media.rtp_packet import abs_send_time, build_remb, iter_rtcp
from media.rtp_parameters import ABS_SEND_TIME_URI, TRANSPORT_CC_URI
from media.transport_cc import parse_feedback

from .clients import Client, RawClient, count_frames, join
from .test_ice_tcp import binding_request
from .test_leaks import video_parameters

INITIAL_INCOMING = 1_000_000  # TransportSettings.initial_incoming_bitrate
AST_ID = 4
INITIAL_OUTGOING = 600_000  # TransportSettings.initial_outgoing_bitrate


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


def spy_on_rembs(client: Client) -> tuple[Any, list[tuple[int, list[int]]]]:
    """The client's aiortc video sender, and every REMB routed to it (as it gets them)."""
    assert client.client_send is not None
    [sender] = client.client_send._handler._pc.getSenders()
    rembs: list[tuple[int, list[int]]] = []
    handle = sender._handle_rtcp_packet

    async def record(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            rembs.append(unpack_remb_fci(packet.fci))
        await handle(packet)

    sender._handle_rtcp_packet = record
    return sender, rembs


async def test_a_sender_gets_rembs_and_its_encoder_obeys_them(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    _, producer = await alice.produce(VideoStreamTrack())
    transport = alice.send_transport
    assert transport is not None
    uris = {ext["uri"] for ext in producer.rtp_parameters["headerExtensions"]}
    assert ABS_SEND_TIME_URI in uris
    feedback = {fb["type"] for fb in producer.rtp_parameters["codecs"][0]["rtcpFeedback"]}
    assert "goog-remb" in feedback
    sender, rembs = spy_on_rembs(alice)

    await wait_until(lambda: len(rembs) >= 2, 10, "two REMBs at the client")

    for bitrate, ssrcs in rembs:
        # aiortc's VP8 of its flat test picture is ~30 kbit/s: the estimate
        # stays at the initial one unless the loopback itself looked congested
        # (then 0.85 x what arrived).
        assert 10_000 <= bitrate <= INITIAL_INCOMING
        assert sender._ssrc in ssrcs  # how aiortc (and Chrome) know it is theirs
    assert transport.rembs_sent >= len(rembs)
    [stats] = await transport.get_stats()
    assert stats["availableIncomingBitrate"] == transport.available_incoming_bitrate
    encoder = sender._RTCRtpSender__encoder
    assert encoder.target_bitrate == min(1_500_000, max(250_000, rembs[-1][0]))

    # A cap below what the client was told goes out at once.
    sent = len(rembs)
    await transport.set_max_incoming_bitrate(300_000)
    await wait_until(lambda: len(rembs) > sent, 2, "the capped REMB")
    assert rembs[-1][0] == 300_000
    assert encoder.target_bitrate == 300_000
    assert transport.max_incoming_bitrate == 300_000


async def test_a_receivers_reports_raise_the_downlink_estimate_and_it_is_traced(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=False, recv=True)
    _, video = await alice.produce(VideoStreamTrack())
    transport = bob.recv_transport
    assert transport is not None
    traces: list[dict[str, Any]] = []
    transport.on("trace", traces.append)
    assert transport.available_outgoing_bitrate == INITIAL_OUTGOING

    bob_video, consumer = await bob.consume(video)
    assert len(await count_frames(bob_video.track, 5, timeout=10)) == 5
    # aiortc reports every 0.5-1.5 s and sees no loss on loopback: +8 %/s.
    await wait_until(
        lambda: transport.available_outgoing_bitrate > INITIAL_OUTGOING, 8, "a higher estimate"
    )

    assert consumer.available_bitrate is not None
    assert 0 < consumer.available_bitrate <= transport.available_outgoing_bitrate
    assert traces, "no bwe trace"
    trace = traces[-1]
    assert (trace["type"], trace["direction"]) == ("bwe", "out")
    info = trace["info"]
    assert {"desiredBitrate", "effectiveDesiredBitrate", "availableBitrate"} <= info.keys()
    assert INITIAL_OUTGOING <= info["availableBitrate"] <= transport.available_outgoing_bitrate
    [stats] = await transport.get_stats()
    assert stats["availableOutgoingBitrate"] == transport.available_outgoing_bitrate


async def test_a_receivers_remb_is_its_downlink_estimate(router: Router) -> None:
    send_transport = await router.create_webrtc_transport()
    recv_transport = await router.create_webrtc_transport()
    producer = await send_transport.produce(kind="video", rtp_parameters=video_parameters(0x1111))
    consumer = await recv_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    traces: list[dict[str, Any]] = []
    recv_transport.on("trace", traces.append)
    receiver = RawClient()
    try:
        await asyncio.wait_for(receiver.connect(recv_transport), 10)
        await wait_until(lambda: recv_transport.dtls_state == "connected", 5, "DTLS")

        await receiver.send_srtp(build_remb(0x2222, 2_500_000, [consumer.ssrc]))
        await wait_until(
            lambda: recv_transport.available_outgoing_bitrate == 2_500_000, 5, "the REMB"
        )
        assert consumer.available_bitrate == 2_500_000  # the only consumer: all of it
        assert traces[-1]["info"]["availableBitrate"] == 2_500_000

        await receiver.send_srtp(build_remb(0x2222, 400_000, [consumer.ssrc]))
        await wait_until(lambda: consumer.available_bitrate == 400_000, 5, "the lower REMB")
        assert recv_transport.available_outgoing_bitrate == 400_000
        assert traces[-1]["info"]["availableBitrate"] == 400_000
        assert recv_transport.rembs_received == 2
    finally:
        await receiver.close()
        send_transport.close()
        recv_transport.close()


def producer_parameters(kind: str, ssrc: int) -> dict[str, Any]:
    codec = (
        {"mimeType": "audio/opus", "clockRate": 48000, "channels": 2, "payloadType": 111}
        if kind == "audio"
        else {"mimeType": "video/VP8", "clockRate": 90000, "payloadType": 96}
    )
    return {
        "mid": "0" if kind == "audio" else "1",
        "codecs": [{**codec, "parameters": {}, "rtcpFeedback": []}],
        "headerExtensions": [{"uri": ABS_SEND_TIME_URI, "id": AST_ID}],
        "encodings": [{"ssrc": ssrc}],
        "rtcp": {"cname": "bwe"},
    }


def rtp_with_send_time(pt: int, ssrc: int, seq: int, sent: float) -> bytes:
    value = int(sent * (1 << 18)) & 0xFFFFFF
    block = struct.pack("!HHI", 0xBEDE, 1, (AST_ID << 4 | 2) << 24 | value)
    return struct.pack("!BBHII", 0x90, pt, seq, seq * 960, ssrc) + block + bytes(200)


async def test_video_with_abs_send_time_is_answered_with_remb_and_audio_only_counted(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    audio = await transport.produce(kind="audio", rtp_parameters=producer_parameters("audio", 0xA))
    await transport.produce(kind="video", rtp_parameters=producer_parameters("video", 0xB))
    sender = RawClient()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(sender.connect(transport), 10)
        await wait_until(lambda: transport.dtls_state == "connected", 5, "DTLS")

        for seq in range(20):
            await sender.send_srtp(rtp_with_send_time(111, 0xA, seq, loop.time()))
            await asyncio.sleep(0.01)
        await wait_until(lambda: audio.packet_count == 20, 2, "the audio")
        assert transport.rembs_sent == 0 and transport.available_incoming_bitrate is None

        await sender.send_srtp(rtp_with_send_time(96, 0xB, 0, loop.time()))
        await wait_until(lambda: transport.rembs_sent == 1, 2, "a REMB for the video")
        assert transport.available_incoming_bitrate == INITIAL_INCOMING
    finally:
        await sender.close()
        transport.close()


TCC_ID = 5  # the router's preferred id for the transport-wide extension


def rtp_with_transport_cc(ssrc: int, seq: int, wide_seq: int, sent: float) -> bytes:
    """A video packet as Chrome sends it with transport-cc: abs-send-time and the wide number."""
    value = int(sent * (1 << 18)) & 0xFFFFFF
    block = struct.pack(
        "!HHIBHB", 0xBEDE, 2, (AST_ID << 4 | 2) << 24 | value, TCC_ID << 4 | 1, wide_seq, 0
    )
    return struct.pack("!BBHII", 0x90, 96, seq, seq * 3000, ssrc) + block + bytes(800)


def transport_cc_parameters() -> dict[str, Any]:
    """A video producer's parameters with the transport-wide number and its feedback."""
    params = producer_parameters("video", 0xB)
    params["headerExtensions"].append({"uri": TRANSPORT_CC_URI, "id": TCC_ID})
    params["codecs"][0]["rtcpFeedback"] = [{"type": "transport-cc", "parameter": ""}]
    return params


def feedback_arrivals(rtcp: list[bytes]) -> dict[int, int | None]:
    """Every transport-wide number the transport-cc feedback in ``rtcp`` reports,
    with its arrival time (None: reported not received)."""
    out: dict[int, int | None] = {}
    for packet in rtcp:
        if packet[1] == 205 and packet[0] & 0x1F == 15:
            base, arrivals = parse_feedback(packet)
            out.update({base + i: a for i, a in enumerate(arrivals)})
    return out


def spy_on_rtcp(client: RawClient) -> list[bytes]:
    """Every decrypted RTCP packet the raw client receives, split."""
    received: list[bytes] = []
    handle = client.dtls._handle_rtcp_data

    async def record(data: bytes) -> None:
        received.extend(packet for _, _, packet in iter_rtcp(data))
        await handle(data)

    client.dtls._handle_rtcp_data = record
    return received


async def test_a_sender_with_transport_cc_gets_arrival_feedback_and_no_remb(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=transport_cc_parameters())
    sender = RawClient()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(sender.connect(transport), 10)
        await wait_until(lambda: transport.dtls_state == "connected", 5, "DTLS")
        rtcp = spy_on_rtcp(sender)

        lost = {7, 8, 30}
        for seq in range(60):
            if seq not in lost:  # the wide numbers a lossy path did not deliver
                await sender.send_srtp(rtp_with_transport_cc(0xB, seq, 1000 + seq, loop.time()))
            await asyncio.sleep(0.005)
        await wait_until(lambda: producer.packet_count == 60 - len(lost), 2, "the video")

        await wait_until(lambda: 1059 in feedback_arrivals(rtcp), 2, "feedback for the last packet")
        got = feedback_arrivals(rtcp)
        assert sorted(got) == list(range(1000, 1060))
        assert {seq for seq, arrival in got.items() if arrival is None} == {1000 + s for s in lost}
        times = [arrival for arrival in got.values() if arrival is not None]
        assert times == sorted(times)  # sent 5 ms apart, in order
        # The sender estimates from these itself: no REMB, although abs-send-time is there too.
        assert transport.rembs_sent == 0
    finally:
        await sender.close()
        transport.close()
    assert transport._transport_cc_timer is None


async def test_a_sender_that_moves_is_not_told_its_old_path_lost_what_it_sent_there(
    router: Router,
) -> None:
    """An address change: the client sent numbers 1020-1399 into a path that
    no longer delivers, then checks (USE-CANDIDATE) and sends from a new
    address.  The feedback, sent there, reports the new path's packets and
    says nothing of 1020-1399 (TransportCcFeedback.new_path)."""
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=transport_cc_parameters())
    sender = RawClient()
    loop = asyncio.get_running_loop()
    moved: asyncio.DatagramTransport | None = None
    try:
        await asyncio.wait_for(sender.connect(transport), 10)
        await wait_until(lambda: transport.dtls_state == "connected", 5, "DTLS")
        old_path = spy_on_rtcp(sender)
        for seq in range(20):
            await sender.send_srtp(rtp_with_transport_cc(0xB, seq, 1000 + seq, loop.time()))
            await asyncio.sleep(0.005)

        await wait_until(lambda: 1019 in feedback_arrivals(old_path), 2, "the old path's feedback")

        new_path: list[bytes] = []
        rx = sender.dtls._rx_srtp

        class NewAddress(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if 127 < data[0] < 192 and 191 < data[1] < 224:
                    new_path.extend(packet for _, _, packet in iter_rtcp(rx.unprotect_rtcp(data)))

        candidate = transport.ice_candidates[0]
        server = (candidate["ip"], candidate["port"])
        moved, _ = await loop.create_datagram_endpoint(
            NewAddress, local_addr=(sender.address[0], 0)
        )
        moved.sendto(binding_request(transport), server)
        address = moved.get_extra_info("sockname")[:2]
        await wait_until(
            lambda: (transport.ice_selected_tuple or {}).get("remotePort") == address[1],
            2,
            "the server on the new address",
        )
        for i in range(20):  # RTP 400-419: 380 went into the old path
            packet = sender.protect(rtp_with_transport_cc(0xB, 400 + i, 1400 + i, loop.time()))
            assert packet is not None
            moved.sendto(packet, server)
            await asyncio.sleep(0.005)
        await wait_until(lambda: producer.packet_count == 40, 2, "the new path's video")
        await wait_until(lambda: 1419 in feedback_arrivals(new_path), 2, "the new path's feedback")

        got = feedback_arrivals(new_path)
        assert sorted(got) == list(range(1400, 1420))  # nothing about 1020-1399
        assert all(arrival is not None for arrival in got.values())
        assert not set(feedback_arrivals(old_path)) & set(range(1020, 1420))
    finally:
        if moved is not None:
            moved.close()
        await sender.close()
        transport.close()


async def test_packets_sent_before_produce_are_reported_once_the_extension_id_is_known(
    router: Router,
) -> None:
    """Chrome probes its bandwidth as soon as DTLS is up, a round trip before
    ``produce`` tells the server which id the transport-wide number has."""
    transport = await router.create_webrtc_transport()
    sender = RawClient()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(sender.connect(transport), 10)
        await wait_until(lambda: transport.dtls_state == "connected", 5, "DTLS")
        rtcp = spy_on_rtcp(sender)
        for seq in range(10):  # the start-up probe: nobody knows the ids yet
            await sender.send_srtp(rtp_with_transport_cc(0xB, seq, 500 + seq, loop.time()))
        await wait_until(lambda: transport.bytes_received > 10 * 800, 2, "the probe")

        params = producer_parameters("video", 0xB)
        params["headerExtensions"].append({"uri": TRANSPORT_CC_URI, "id": TCC_ID})
        await transport.produce(kind="video", rtp_parameters=params)

        def reported() -> set[int]:
            return {seq for seq, arrival in feedback_arrivals(rtcp).items() if arrival is not None}

        await wait_until(lambda: reported() == set(range(500, 510)), 2, "the probe's feedback")
    finally:
        await sender.close()
        transport.close()


def simulcast_parameters() -> dict[str, Any]:
    """Three VP8 encodings with RTX, as mediasoup-client sends a webcam."""
    params = video_parameters(0x3000)
    params["headerExtensions"].append({"uri": ABS_SEND_TIME_URI, "id": AST_ID})
    params["encodings"] = [
        {"ssrc": 0x3000 + 2 * i, "rtx": {"ssrc": 0x3001 + 2 * i}, "rid": f"r{i}"} for i in range(3)
    ]
    return params


def spy_on_rtp(client: RawClient) -> list[tuple[float, bytes]]:
    """Every decrypted RTP packet the raw client receives, with when."""
    received: list[tuple[float, bytes]] = []
    handle = client.dtls._handle_rtp_data
    loop = asyncio.get_running_loop()

    async def record(data: bytes, arrival_time_ms: int) -> None:
        received.append((loop.time(), data))
        await handle(data, arrival_time_ms)

    client.dtls._handle_rtp_data = record  # type: ignore[method-assign]
    return received


async def test_a_simulcast_receiver_is_probed_then_padded_until_its_first_remb(
    router: Router,
) -> None:
    send_transport = await router.create_webrtc_transport()
    recv_transport = await router.create_webrtc_transport()
    producer = await send_transport.produce(kind="video", rtp_parameters=simulcast_parameters())
    consumer = await recv_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert consumer.type == "simulcast" and consumer.rtx_ssrc is not None
    offered = [ext["uri"] for ext in consumer.rtp_parameters["headerExtensions"]]
    assert ABS_SEND_TIME_URI in offered
    receiver = RawClient()
    received = spy_on_rtp(receiver)
    try:
        await asyncio.wait_for(receiver.connect(recv_transport), 10)
        await wait_until(lambda: len(received) >= 60, 5, "the probe and padding")

        # Nothing to forward yet, and still: padding-only RTX packets with our
        # abs-send-time, 275 bytes, the first 30 in three clusters 1 ms apart.
        for _, packet in received:
            assert struct.unpack_from("!I", packet, 8)[0] == consumer.rtx_ssrc
            assert packet[0] & 0x20 and packet[-1] == 255 and len(packet) == 275
            assert abs_send_time(packet, AST_ID) >= 0
        times = [t for t, _ in received[:30]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert sum(gap > 0.1 for gap in gaps) == 2  # the clusters, 0.2 s apart
        assert abs_send_time(received[-1][1], AST_ID) != abs_send_time(received[0][1], AST_ID)
        # Padding goes on at about the downlink estimate (600 kbit/s), until a REMB.
        await asyncio.sleep(0.5)
        padded = [t for t, _ in received if t > received[29][0] + 0.05]
        rate = len(padded) * 275 * 8 / (padded[-1] - padded[0])
        assert 0.5 * INITIAL_OUTGOING < rate < 1.5 * INITIAL_OUTGOING, rate

        await receiver.send_srtp(build_remb(0x2222, 2_000_000, [consumer.ssrc]))
        await wait_until(lambda: recv_transport.rembs_received == 1, 5, "the REMB")
        await asyncio.sleep(0.1)
        count = len(received)
        await asyncio.sleep(0.3)
        assert len(received) == count  # the receiver has its estimate: no more padding
        [stats] = await recv_transport.get_stats()
        assert stats["paddingPacketsSent"] == count
    finally:
        await receiver.close()
        send_transport.close()
        recv_transport.close()
