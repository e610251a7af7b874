"""WebRtcTransport: one client's ICE-lite UDP socket, DTLS-SRTP, and what rides on it.

Real transports of a real router; clients are raw ones (real ICE and DTLS-SRTP,
``object_harness``) where the client side matters.  ICE-lite itself is
unit-tested in test_ice_lite.py, malformed datagrams in test_datagram_errors.py,
consent expiry and an ICE restart under real pymediasoup clients in test_call.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest

from media import (
    InvalidParametersError,
    InvalidStateError,
    Router,
    UnsupportedError,
    Worker,
    WorkerSettings,
)

from .clients import RawClient
from .object_harness import (
    RawClients,
    audio_parameters,
    bye,
    record,
    rtp,
    rtp_with_mid,
    video_parameters,
    wait_until,
)

SSRC = 0x1111
FINGERPRINT = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2})+$")


def client_dtls_parameters(client: RawClient) -> dict[str, Any]:
    """What a client sends in connectWebRtcTransport (its DTLS role is client)."""
    local = client.dtls.getLocalParameters()
    return {
        "role": "client",
        "fingerprints": [{"algorithm": f.algorithm, "value": f.value} for f in local.fingerprints],
    }


# -- what a client is told ---------------------------------------------------------------------


async def test_a_new_transport_is_an_ice_lite_controlled_agent_not_yet_connected(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    ice = transport.ice_parameters

    assert set(ice) == {"usernameFragment", "password", "iceLite"} and ice["iceLite"] is True
    # RFC 8445 section 5.3: at least 24 bits of ufrag and 128 bits of password.
    assert len(ice["usernameFragment"]) >= 4 and len(ice["password"]) >= 22
    assert transport.ice_role == "controlled"
    assert (transport.ice_state, transport.dtls_state) == ("new", "new")
    assert transport.ice_selected_tuple is None
    assert transport.end_reason is None and not transport.closed


async def test_the_candidates_are_udp_then_passive_tcp_host_candidates_on_the_transports_port(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()

    udp, tcp = (
        transport.ice_candidates
    )  # the worker's enable_tcp default (tests/media/test_ice_tcp.py)

    assert udp["protocol"] == "udp" and udp["type"] == "host"
    assert (udp["ip"], udp["port"]) == ("127.0.0.1", transport.port)
    assert isinstance(udp["priority"], int) and udp["priority"] > tcp["priority"] > 0
    assert (tcp["protocol"], tcp["tcpType"], tcp["port"]) == ("tcp", "passive", transport.tcp_port)


async def test_dtls_parameters_carry_the_workers_certificate_fingerprints_and_role_auto(
    worker: Worker, router: Router
) -> None:
    first = await router.create_webrtc_transport()
    second = await router.create_webrtc_transport()
    other_worker = Worker(WorkerSettings(consent_timeout=10.0))
    try:
        elsewhere = await (await other_worker.create_router()).create_webrtc_transport()

        params = first.dtls_parameters
        assert params["role"] == "auto"
        sha256 = [f["value"] for f in params["fingerprints"] if f["algorithm"] == "sha-256"]
        assert len(sha256) == 1 and FINGERPRINT.match(sha256[0])
        assert len(sha256[0].split(":")) == 32
        # One certificate per worker, as mediasoup has.
        assert second.dtls_parameters == params
        assert elsewhere.dtls_parameters["fingerprints"] != params["fingerprints"]
    finally:
        other_worker.close()


async def test_sctp_parameters_are_offered_only_when_sctp_is_enabled(router: Router) -> None:
    plain = await router.create_webrtc_transport()
    with_sctp = await router.create_webrtc_transport(enable_sctp=True)

    assert plain.sctp_parameters is None and plain.sctp_state is None
    assert with_sctp.sctp_parameters == {
        "port": 5000,
        "OS": 1024,
        "MIS": 1024,
        "mctp": False,
        "maxMessageSize": 262144,
    }
    assert with_sctp.sctp_state == "new"  # the association starts once DTLS is up
    with pytest.raises(UnsupportedError):
        await plain.produce_data(sctp_stream_parameters={"streamId": 0})
    chat = await with_sctp.produce_data(sctp_stream_parameters={"streamId": 0})
    with pytest.raises(UnsupportedError):
        await plain.consume_data(data_producer_id=chat.id)


# -- connect and restart -----------------------------------------------------------------------


VALID_FINGERPRINT = {"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}


@pytest.mark.parametrize(
    "dtls_parameters",
    [
        "not an object",
        {"role": "client"},
        {"role": "client", "fingerprints": []},
        {"role": "client", "fingerprints": [{"algorithm": "sha-256"}]},
        {"role": "client", "fingerprints": [VALID_FINGERPRINT, "AB:CD"]},
        {"role": "sideways", "fingerprints": [VALID_FINGERPRINT]},
    ],
    ids=[
        "not-an-object",
        "no-fingerprints",
        "empty-fingerprints",
        "fingerprint-without-value",
        "fingerprint-not-an-object",
        "unknown-role",
    ],
)
async def test_malformed_dtls_parameters_are_refused_and_the_transport_stays_connectable(
    router: Router, dtls_parameters: Any
) -> None:
    transport = await router.create_webrtc_transport()
    events = record(transport, "dtlsstatechange")

    with pytest.raises(InvalidParametersError):
        await transport.connect(dtls_parameters)

    assert transport.dtls_state == "new" and events == []
    await transport.connect({"role": "client", "fingerprints": [VALID_FINGERPRINT]})
    assert transport.dtls_state == "connecting"
    assert events == [("dtlsstatechange", ("connecting",))]


async def test_connecting_twice_is_refused(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    params = {"role": "auto", "fingerprints": [VALID_FINGERPRINT]}
    await transport.connect(params)

    with pytest.raises(InvalidStateError):
        await transport.connect(params)

    assert transport.dtls_state == "connecting"


async def test_a_client_connects_ice_then_dtls_and_its_address_is_the_selected_tuple(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    events = record(transport, "icestatechange", "iceselectedtuplechange", "dtlsstatechange")

    client, _ = await raw_clients.connect(transport)

    remote_ip, remote_port = client.address
    tuple_ = {
        "localIp": "127.0.0.1",
        "localPort": transport.port,
        "remoteIp": remote_ip,
        "remotePort": remote_port,
        "protocol": "udp",
    }
    assert transport.ice_selected_tuple == tuple_
    assert (transport.ice_state, transport.dtls_state) == ("completed", "connected")
    ice_states = [args[0] for event, args in events if event == "icestatechange"]
    assert ice_states[-1] == "completed"
    assert ("iceselectedtuplechange", (tuple_,)) in events
    dtls_states = [args[0] for event, args in events if event == "dtlsstatechange"]
    assert dtls_states == ["connecting", "connected"]
    [stats] = await transport.get_stats()
    assert stats["iceSelectedTuple"] == tuple_ and stats["bytesReceived"] > 0


async def test_restarting_ice_gives_new_credentials_each_time(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    first = transport.ice_parameters

    second = await transport.restart_ice()
    assert transport.ice_parameters == second
    third = await transport.restart_ice()

    assert transport.ice_parameters == third and third["iceLite"] is True
    assert len({p["usernameFragment"] for p in (first, second, third)}) == 3
    assert len({p["password"] for p in (first, second, third)}) == 3


# -- how it ends -------------------------------------------------------------------------------


async def test_closing_a_transport_twice_closes_it_once_frees_its_port_and_refuses_calls(
    worker: Worker, router: Router
) -> None:
    transport = await router.create_webrtc_transport(enable_sctp=True)
    closed = record(transport.observer, "close")
    ended = record(transport, "ended", "routerclose")
    assert worker.port_usage()[0] == 1

    transport.close()
    transport.close()

    assert transport.closed and transport.end_reason == "closed_by_app"
    assert closed == [("close", ())] and ended == []  # the app knows: no "ended"
    assert router.transports == {}
    await wait_until(lambda: worker.port_usage()[0] == 0, 2, "the port freed")
    calls: list[Any] = [
        transport.connect({"role": "auto", "fingerprints": [VALID_FINGERPRINT]}),
        transport.restart_ice(),
        transport.get_stats(),
        transport.produce(kind="video", rtp_parameters=video_parameters(SSRC)),
        transport.consume(producer_id="any", rtp_capabilities=router.rtp_capabilities),
        transport.produce_data(sctp_stream_parameters={"streamId": 0}),
        transport.set_max_incoming_bitrate(100_000),
        transport.set_max_outgoing_bitrate(100_000),
    ]
    for call in calls:
        with pytest.raises(InvalidStateError):
            await call


async def test_a_client_sending_close_notify_ends_the_transport_as_dtls_closed(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    client, _ = await raw_clients.connect(transport)
    events = record(transport, "ended", "dtlsstatechange")

    await client.close()  # DTLS close_notify

    await wait_until(lambda: transport.closed, 5, "the transport to end")
    assert transport.end_reason == "dtls_closed"
    assert events == [("dtlsstatechange", ("closed",)), ("ended", ("dtls_closed",))]
    assert producer.closed and router.transports == {}


async def test_rtcp_bye_for_every_stream_the_client_sends_ends_the_transport_as_dtls_closed(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    video = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    await transport.produce(kind="audio", rtp_parameters=audio_parameters(0x2222))
    client, _ = await raw_clients.connect(transport)
    ended = record(transport, "ended")

    await client.send_srtp(bye(SSRC, 0x9999))  # one of its streams, and one it never sent
    await client.send_srtp(rtp(SSRC, 0))  # sent after the BYE: read after it
    await wait_until(lambda: video.packet_count == 1, what="the packet after the BYE")
    assert not transport.closed and ended == []

    await client.send_srtp(bye(0x2222))

    await wait_until(lambda: transport.closed, 5, "the transport to end")
    assert ended == [("ended", ("dtls_closed",))] and transport.end_reason == "dtls_closed"


async def test_a_client_whose_certificate_does_not_match_its_fingerprint_fails_dtls(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    events = record(transport, "dtlsstatechange", "ended")
    client = RawClient()
    try:
        # The server is told another certificate's fingerprint than the one presented.
        with contextlib.suppress(Exception):  # the handshake fails: the point
            await asyncio.wait_for(client.connect(transport, fingerprints=[VALID_FINGERPRINT]), 10)

        await wait_until(lambda: transport.closed, 5, "the transport to end")
    finally:
        await client.close()

    assert transport.end_reason == "dtls_failed"
    assert events == [
        ("dtlsstatechange", ("connecting",)),
        ("dtlsstatechange", ("failed",)),
        ("ended", ("dtls_failed",)),
    ]
    assert router.transports == {}


# -- bitrates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bitrate", [-1, 1.5, True, "100000", None, 2**53])
async def test_a_bitrate_limit_must_be_a_non_negative_integer(router: Router, bitrate: Any) -> None:
    transport = await router.create_webrtc_transport()

    for setter in (
        transport.set_max_incoming_bitrate,
        transport.set_max_outgoing_bitrate,
        transport.set_min_outgoing_bitrate,
    ):
        with pytest.raises(InvalidParametersError):
            await setter(bitrate)

    assert transport.max_incoming_bitrate == 0
    assert transport.available_outgoing_bitrate == 600_000


async def test_the_max_incoming_bitrate_is_kept_and_reported_and_0_lifts_it(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()

    await transport.set_max_incoming_bitrate(1_500_000)
    [capped] = await transport.get_stats()
    await transport.set_max_incoming_bitrate(0)
    [lifted] = await transport.get_stats()

    assert capped["maxIncomingBitrate"] == 1_500_000
    assert lifted["maxIncomingBitrate"] is None and transport.max_incoming_bitrate == 0


async def test_outgoing_limits_bound_the_downlink_estimate_and_must_not_cross(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()  # estimated at 600 kbit/s to start

    await transport.set_max_outgoing_bitrate(300_000)
    assert transport.available_outgoing_bitrate == 300_000
    with pytest.raises(InvalidParametersError):
        await transport.set_min_outgoing_bitrate(400_000)  # above the maximum
    with pytest.raises(InvalidParametersError):
        await transport.set_min_outgoing_bitrate(0)
    await transport.set_max_outgoing_bitrate(0)  # no maximum
    await transport.set_min_outgoing_bitrate(800_000)
    assert transport.available_outgoing_bitrate == 800_000
    with pytest.raises(InvalidParametersError):
        await transport.set_max_outgoing_bitrate(700_000)  # below the minimum

    [stats] = await transport.get_stats()
    assert stats["availableOutgoingBitrate"] == 800_000


# -- stats -------------------------------------------------------------------------------------


async def test_stats_of_a_fresh_transport_describe_an_idle_unconnected_one(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()

    [stats] = await transport.get_stats()

    assert stats["type"] == "webrtc-transport" and stats["transportId"] == transport.id
    assert stats["iceRole"] == "controlled"
    assert (stats["iceState"], stats["dtlsState"], stats["sctpState"]) == ("new", "new", None)
    assert stats["iceSelectedTuple"] is None and stats["iceConsentGap"] is None
    counters = (
        "bytesReceived",
        "bytesSent",
        "rtpPacketsReceived",
        "rtpPacketsSent",
        "srtpErrors",
        "rembsSent",
        "rembsReceived",
    )
    assert {name: stats[name] for name in counters} == dict.fromkeys(counters, 0)
    assert set(stats["datagramErrors"].values()) == {0}
    assert stats["linkSample"] is None
    assert stats["availableOutgoingBitrate"] == 600_000
    assert stats["availableIncomingBitrate"] is None and stats["maxIncomingBitrate"] is None
    assert isinstance(stats["timestamp"], float)


# -- producing on a transport ------------------------------------------------------------------


async def test_a_producer_reusing_an_ssrc_in_use_on_the_transport_is_refused(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    first = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    announced = record(transport.observer, "newproducer")

    with pytest.raises(InvalidParametersError):
        await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC, mid="1"))
    # The RTX SSRC is taken too.
    with pytest.raises(InvalidParametersError):
        await transport.produce(kind="audio", rtp_parameters=audio_parameters(SSRC + 1, mid="2"))

    assert transport.producers == {first.id: first} and announced == []
    assert router.producer_count == 1
    elsewhere = await router.create_webrtc_transport()
    other = await elsewhere.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    assert other.ssrc == SSRC  # SSRCs are per transport: another client may pick the same


async def test_a_producer_reusing_a_mid_in_use_on_the_transport_is_refused(
    router: Router,
) -> None:
    transport = await router.create_webrtc_transport()
    await transport.produce(kind="video", rtp_parameters=video_parameters(None))

    with pytest.raises(InvalidParametersError):
        await transport.produce(kind="video", rtp_parameters=video_parameters(None))


async def test_a_track_found_by_its_mid_reaches_the_producer_with_that_mid(
    router: Router, raw_clients: RawClients
) -> None:
    transport = await router.create_webrtc_transport()
    camera = await transport.produce(kind="video", rtp_parameters=video_parameters(None, mid="0"))
    screen = await transport.produce(kind="video", rtp_parameters=video_parameters(None, mid="1"))
    client, _ = await raw_clients.connect(transport)

    await client.send_srtp(rtp_with_mid(0xCCCC, 0, "7"))  # nobody's
    for seq in range(3):
        await client.send_srtp(rtp_with_mid(0xAAAA, seq, "1"))
    await client.send_srtp(rtp_with_mid(0xBBBB, 0, "0"))

    await wait_until(lambda: (camera.packet_count, screen.packet_count) == (1, 3), what="routing")
    assert (camera.ssrc, screen.ssrc) == (0xBBBB, 0xAAAA)
    [stats] = await transport.get_stats()
    assert stats["rtpPacketsReceived"] == 4


async def test_its_producers_and_consumers_are_kept_until_they_close(router: Router) -> None:
    transport = await router.create_webrtc_transport()
    producer = await transport.produce(kind="video", rtp_parameters=video_parameters(SSRC))
    consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert transport.producers == {producer.id: producer}
    assert transport.consumers == {consumer.id: consumer}

    consumer.close()
    assert transport.consumers == {} and transport.producers == {producer.id: producer}
    producer.close()

    assert transport.producers == {} and not transport.closed
