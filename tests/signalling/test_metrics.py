"""Metrics: counters fed by the lifecycle's and the server's observer events, on a real server.

Every value is read back the way Prometheus reads it: ``render()``, parsed by
prometheus_client's own text parser.
"""

from __future__ import annotations

import math

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from media import ERROR_KINDS
from signalling.liveness import ActivityLevel, EndReason, SessionState
from signalling.metrics import MEDIA_KINDS, REFUSAL_REASONS
from signalling.protoo_client import ProtooClient, ProtooError
from signalling.quality import Quality
from signalling.rate_limit import RateLimit
from signalling.rooms import Room
from signalling.server import Server

from .conftest import ClientFactory, ServerFactory, eventually, url
from .sockets import closed_with

Labels = frozenset[tuple[str, str]]

REQUEST_METHODS = (*Room.HANDLERS, "ping", "beforeDisconnect", "unknown")


def scrape(server: Server) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, by name and labels."""
    body, _ = server.metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(server: Server, name: str, **labels: str) -> float:
    return scrape(server)[(name, frozenset(labels.items()))]


def ended(server: Server, reason: EndReason) -> float:
    return value(server, "ghostless_sessions_ended_total", reason=reason.value)


def ended_total(server: Server) -> float:
    return sum(
        v for (name, _), v in scrape(server).items() if name == "ghostless_sessions_ended_total"
    )


def refusals(server: Server, reason: str) -> float:
    return value(server, "ghostless_refusals_total", reason=reason)


def requests(server: Server, method: str, outcome: str) -> float:
    return value(server, "ghostless_requests_total", method=method, outcome=outcome)


def timed(server: Server, method: str) -> float:
    return value(server, "ghostless_request_duration_seconds_count", method=method)


# -- the exposition --------------------------------------------------------------------------------


async def test_the_exposition_parses_and_declares_every_family_once(server: Server) -> None:
    body, content_type = server.metrics.render()

    families = list(text_string_to_metric_families(body.decode()))

    assert content_type == CONTENT_TYPE_LATEST
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    ghostless = [family for family in families if family.name.startswith("ghostless_")]
    assert len(ghostless) >= 20
    assert all(family.type != "unknown" and family.documentation for family in ghostless)
    assert all(math.isfinite(s.value) for family in families for s in family.samples)


async def test_every_labelled_series_exists_at_zero_from_the_start(server: Server) -> None:
    samples = scrape(server)

    def zero(name: str, **labels: str) -> bool:
        return samples.get((name, frozenset(labels.items()))) == 0.0

    missing = [
        *(r for r in EndReason if not zero("ghostless_sessions_ended_total", reason=r.value)),
        *(
            r
            for r in EndReason
            if not zero("ghostless_detection_to_cleanup_seconds_count", reason=r.value)
        ),
        *(r for r in REFUSAL_REASONS if not zero("ghostless_refusals_total", reason=r)),
        *(
            (m, o)
            for m in REQUEST_METHODS
            for o in ("ok", "error", "failed")
            if not zero("ghostless_requests_total", method=m, outcome=o)
        ),
        *(
            m
            for m in REQUEST_METHODS
            if m != "ping" and not zero("ghostless_request_duration_seconds_count", method=m)
        ),
        *(
            k
            for k in ("request", "notification", "response")
            if not zero("ghostless_rate_limited_messages_total", kind=k)
        ),
        *(
            o
            for o in ("admitted", "timeout", "left")
            if not zero("ghostless_queue_wait_seconds_count", outcome=o)
        ),
        *(k for k in MEDIA_KINDS if not zero("ghostless_media_objects", kind=k)),
        *(
            s
            for s in SessionState
            if s is not SessionState.CLOSED and not zero("ghostless_sessions", state=s.value)
        ),
        *(a for a in ActivityLevel if not zero("ghostless_sessions_by_activity", level=a.value)),
        *(k for k in ERROR_KINDS if not zero("ghostless_datagram_errors_total", kind=k)),
        *(q for q in Quality if not zero("ghostless_peers_by_quality", quality=q.value)),
    ]
    assert missing == []
    assert ("ghostless_sessions", frozenset({("state", "closed")})) not in samples


# -- sessions --------------------------------------------------------------------------------------


async def test_a_session_that_leaves_counts_once_under_its_reason(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    await connect("bob")

    await alice.notify("beforeDisconnect")
    await closed_with(alice)

    await eventually(lambda: ended(server, EndReason.GRACEFUL) == 1)
    assert ended_total(server) == 1
    assert value(server, "ghostless_detection_to_cleanup_seconds_count", reason="graceful") == 1
    assert value(server, "ghostless_sessions", state="joined") == 1


async def test_a_socket_lost_before_join_counts_as_socket_lost(
    server: Server, connect: ClientFactory
) -> None:
    carol = await connect("carol", join=False)
    await eventually(lambda: value(server, "ghostless_sessions", state="connecting") == 1)

    carol.abort()

    await eventually(lambda: ended(server, EndReason.SOCKET_LOST) == 1)
    assert ended_total(server) == 1
    assert value(server, "ghostless_sessions", state="connecting") == 0


async def test_an_end_announced_by_the_lifecycle_is_counted_with_its_detection_delay(
    server: Server, connect: ClientFactory
) -> None:
    await connect("alice")
    (session,) = server.registry.by_id.values()

    server.lifecycle.end(session, EndReason.INACTIVE, detected_at=server.loop.time() - 2.0)

    assert ended(server, EndReason.INACTIVE) == 1
    count = "ghostless_detection_to_cleanup_seconds_count"
    assert value(server, count, reason="inactive") == 1
    assert value(server, "ghostless_detection_to_cleanup_seconds_sum", reason="inactive") >= 2.0
    bucket = "ghostless_detection_to_cleanup_seconds_bucket"
    assert value(server, bucket, reason="inactive", le="1.0") == 0


async def test_a_resumed_session_is_counted_as_resumed_and_not_as_ended(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    token = alice.join_data["resumeToken"]  # type: ignore[attr-defined]
    alice.abort()
    await eventually(lambda: value(server, "ghostless_sessions", state="reconnecting") == 1)

    again = await ProtooClient.connect(url(server, peer="alice", resumeToken=token))
    await again.next_notification("sessionResumed", timeout=5)

    assert value(server, "ghostless_sessions_resumed_total") == 1
    assert ended_total(server) == 0
    await again.close()


async def test_gauges_are_read_from_the_server_at_scrape_time(
    server: Server, connect: ClientFactory
) -> None:
    alice = await connect("alice")
    await connect("bob")
    await alice.request("createWebRtcTransport", {"producing": True})

    assert value(server, "ghostless_peers") == 2
    assert value(server, "ghostless_rooms") == 1
    assert value(server, "ghostless_connections") == 2
    assert value(server, "ghostless_media_objects", kind="routers") == 1
    assert value(server, "ghostless_media_objects", kind="transports") == 1
    assert value(server, "ghostless_orphaned_transports") == 0

    await alice.notify("beforeDisconnect")
    await eventually(lambda: value(server, "ghostless_peers") == 1)
    assert value(server, "ghostless_media_objects", kind="transports") == 0


# -- the edge --------------------------------------------------------------------------------------


async def test_a_connection_without_a_peer_id_is_counted_as_a_bad_request(server: Server) -> None:
    client = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/?roomId=r")

    assert (await closed_with(client))[0] == 4400
    assert refusals(server, "bad_request") == 1
    assert sum(refusals(server, r) for r in REFUSAL_REASONS) == 1


async def test_a_newcomer_to_a_full_room_is_counted_as_refused_for_room_full(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_peers_per_room=1)
    alice = await ProtooClient.connect(url(server, peer="alice"))
    await alice.request("join", {})

    bob = await ProtooClient.connect(url(server, peer="bob"))

    assert (await closed_with(bob))[0] == 4403
    assert refusals(server, "room_full") == 1
    assert ended_total(server) == 0  # refused before it was a session
    await alice.close()


async def test_requests_are_counted_by_method_and_outcome_and_timed_except_pings(
    server: Server, connect: ClientFactory
) -> None:
    client = await connect("alice", join=False)

    await client.request("ping", {})
    await client.request("getRouterRtpCapabilities")
    for method in ("produce", "fly"):
        try:
            await client.request(method, {})
        except ProtooError:
            pass
        else:
            raise AssertionError(f"{method} succeeded")

    assert requests(server, "ping", "ok") == 1
    assert ("ghostless_request_duration_seconds_count", frozenset({("method", "ping")})) not in (
        scrape(server)
    )
    assert requests(server, "getRouterRtpCapabilities", "ok") == 1
    assert timed(server, "getRouterRtpCapabilities") == 1
    assert requests(server, "produce", "error") == 1  # needs join first
    assert requests(server, "unknown", "error") == 1  # no label per made-up name
    made_up = frozenset({("method", "fly"), ("outcome", "error")})
    assert ("ghostless_requests_total", made_up) not in scrape(server)


async def test_a_client_reported_round_trip_is_observed(
    server: Server, connect: ClientFactory
) -> None:
    client = await connect("alice")

    await client.request("ping", {"rtt": 42})

    assert value(server, "ghostless_ping_rtt_seconds_count", source="client") == 1
    assert value(server, "ghostless_ping_rtt_seconds_sum", source="client") == 0.042


async def test_a_protocol_violation_is_counted_and_ends_the_session_as_error(
    server: Server, connect: ClientFactory
) -> None:
    client = await connect("alice")

    await client.ws.send(b"\x00binary")

    assert (await closed_with(client))[0] == 1003
    await eventually(lambda: ended(server, EndReason.ERROR) == 1)
    assert value(server, "ghostless_protocol_violations_total") == 1


async def test_a_flood_is_counted_as_rate_limited_then_refused_and_ended(
    make_server: ServerFactory,
) -> None:
    server = await make_server(message_rate=RateLimit(0.01, 2), refusal_rate=RateLimit(0.01, 1))
    client = await ProtooClient.connect(url(server, peer="mallory"))
    await client.request("join", {})
    await client.request("getRouterRtpCapabilities")  # the burst is spent

    await client.notify("changeDisplayName", {"displayName": "m"})  # refused: dropped
    await client.ws.send('{"request":true,"id":99,"method":"getRouterRtpCapabilities"}')

    assert (await closed_with(client))[0] == 4429  # refused once too often
    assert value(server, "ghostless_rate_limited_messages_total", kind="notification") == 1
    assert value(server, "ghostless_rate_limited_messages_total", kind="request") == 1
    assert refusals(server, "rate_limited") == 1
    assert ended(server, EndReason.RATE_LIMITED) == 1


async def test_every_sweep_is_timed(make_server: ServerFactory) -> None:
    server = await make_server(sweep_interval=0.2)

    await eventually(
        lambda: value(server, "ghostless_sweep_duration_seconds_count") >= 2, timeout=3
    )

    assert value(server, "ghostless_sweep_duration_seconds_sum") < 1.0


async def test_one_servers_metrics_are_its_own(make_server: ServerFactory) -> None:
    first, second = await make_server(), await make_server()
    client = await ProtooClient.connect(f"ws://127.0.0.1:{first.port}/?roomId=r")
    await closed_with(client)

    assert refusals(first, "bad_request") == 1
    assert refusals(second, "bad_request") == 0
