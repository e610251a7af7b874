"""Capacity and the waiting queue, over real WebSockets."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable

import pytest

from signalling.protoo_client import ProtooClient, ProtooError
from signalling.server import Server

from .conftest import ServerFactory, eventually, url


async def closed_with(client: ProtooClient, timeout: float = 5) -> tuple[int | None, str]:
    return await asyncio.wait_for(client.closed, timeout)


async def position(client: ProtooClient) -> int:
    _, data = await client.next_notification("queuePosition")
    return int(data["position"])


async def joined(server: Server, peer: str, room: str = "room") -> ProtooClient:
    client = await ProtooClient.connect(url(server, room=room, peer=peer))
    await client.request("join", {"displayName": peer})
    return client


def queue_waits(server: Server, outcome: str) -> float:
    return server.metrics.queue_wait.labels(outcome)._sum.get()  # type: ignore[no-any-return]


def queue_count(server: Server, outcome: str) -> float:
    for metric in server.metrics.queue_wait.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("outcome") == outcome:
                return sample.value
    return 0.0


async def test_a_full_server_refuses_with_4503(make_server: ServerFactory) -> None:
    server = await make_server(max_sessions=2)
    first, second = await joined(server, "a"), await joined(server, "b", room="other")

    third = await ProtooClient.connect(url(server, peer="c", room="third"))

    assert (await closed_with(third))[0] == 4503
    assert "third" not in server.rooms  # a refused newcomer creates nothing
    for client in (first, second):
        await client.close()


@pytest.fixture
async def one_seat(make_server: ServerFactory) -> Server:
    return await make_server(max_peers_per_room=1, when_full="queue")


async def test_queued_clients_wait_in_order_and_are_admitted_as_seats_free(
    one_seat: Server,
) -> None:
    alice = await joined(one_seat, "alice")
    bob = await ProtooClient.connect(url(one_seat, peer="bob"))
    assert await position(bob) == 1
    carol = await ProtooClient.connect(url(one_seat, peer="carol"))
    assert await position(carol) == 2

    await alice.request("beforeDisconnect")

    method, _ = await bob.next_notification("queueAdmitted")
    assert method == "queueAdmitted"
    await bob.request("join", {"displayName": "bob"})
    assert await position(carol) == 1
    await bob.close()
    await carol.next_notification("queueAdmitted")
    await carol.request("join", {"displayName": "carol"})
    assert len(one_seat.queue) == 0 and queue_count(one_seat, "admitted") == 2
    await carol.close()


async def test_a_queued_client_holds_no_media_and_may_only_ping(one_seat: Server) -> None:
    alice = await joined(one_seat, "alice")
    bob = await ProtooClient.connect(url(one_seat, peer="bob"))
    await position(bob)

    assert (await bob.request("ping", {}))["serverTime"] > 0
    for method in ("getRouterRtpCapabilities", "createWebRtcTransport", "join"):
        with pytest.raises(ProtooError) as queued:
            await bob.request(method, {"producing": True})
        assert queued.value.code == 503 and queued.value.reason == "queued"
    assert one_seat.worker.resource_counts()["transports"] == 0
    assert len(one_seat.registry) == 1  # only alice has a session
    await alice.close()
    await bob.close()


async def test_leaving_the_queue_frees_the_place(one_seat: Server) -> None:
    alice = await joined(one_seat, "alice")
    bob = await ProtooClient.connect(url(one_seat, peer="bob"))
    await position(bob)
    carol = await ProtooClient.connect(url(one_seat, peer="carol"))
    assert await position(carol) == 2

    await bob.close()

    assert await position(carol) == 1
    await eventually(lambda: queue_count(one_seat, "left") == 1)
    assert len(one_seat.queue) == 1
    await alice.close()
    await carol.next_notification("queueAdmitted")
    await carol.close()


async def test_a_client_waiting_past_the_queue_timeout_is_closed(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue", queue_timeout=1.0)
    alice = await joined(server, "alice")
    bob = await ProtooClient.connect(url(server, peer="bob"))

    code, reason = await closed_with(bob, timeout=5)

    assert (code, reason) == (4408, "queue_timeout")
    assert len(server.queue) == 0 and queue_count(server, "timeout") == 1
    await alice.close()


async def test_a_full_queue_refuses_with_4503(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue", max_queue_length=1)
    alice = await joined(server, "alice")
    bob = await ProtooClient.connect(url(server, peer="bob"))
    await position(bob)

    carol = await ProtooClient.connect(url(server, peer="carol"))

    assert (await closed_with(carol))[0] == 4503
    for client in (alice, bob):
        await client.close()


async def test_the_server_capacity_queues_across_rooms_in_arrival_order(
    make_server: ServerFactory,
) -> None:
    server = await make_server(max_sessions=1, when_full="queue")
    alice = await joined(server, "alice", room="r1")
    bob = await ProtooClient.connect(url(server, peer="bob", room="r2"))
    assert await position(bob) == 1
    carol = await ProtooClient.connect(url(server, peer="carol", room="r3"))
    assert await position(carol) == 2  # the server is full: behind bob, another room or not

    await alice.close()

    await bob.next_notification("queueAdmitted")
    assert await position(carol) == 1
    assert carol.notifications.empty()
    await bob.close()
    await carol.next_notification("queueAdmitted")
    await carol.close()


async def _leave_gracefully(server: Server, client: ProtooClient) -> None:
    await client.request("beforeDisconnect")


async def _beacon(server: Server, client: ProtooClient) -> None:
    token = client.join_data["leaveToken"]  # type: ignore[attr-defined]
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/leave?token={token}", method="POST", data=b""
    )
    await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)


async def _lose_socket(server: Server, client: ProtooClient) -> None:
    client.abort()  # socket_lost after the grace period (1 s in tests)


async def _violate_protocol(server: Server, client: ProtooClient) -> None:
    await client.ws.send(b"\x00binary")  # error (1003)


async def _close_normally(server: Server, client: ProtooClient) -> None:
    await client.close()


@pytest.mark.parametrize(
    "leave",
    [_leave_gracefully, _beacon, _lose_socket, _violate_protocol, _close_normally],
    ids=["graceful", "beacon", "socket_lost", "error", "close_frame"],
)
async def test_a_seat_is_freed_by_every_end_reason(
    one_seat: Server, leave: Callable[[Server, ProtooClient], Awaitable[None]]
) -> None:
    alice = await ProtooClient.connect(url(one_seat, peer="alice"))
    alice.join_data = await alice.request("join", {})  # type: ignore[attr-defined]
    bob = await ProtooClient.connect(url(one_seat, peer="bob"))
    await position(bob)

    await leave(one_seat, alice)

    await bob.next_notification("queueAdmitted", timeout=10)
    await bob.request("join", {})
    await bob.close()


async def test_a_seat_is_freed_by_the_join_timeout(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue", join_timeout=1.0)
    idle = await ProtooClient.connect(url(server, peer="idle"))  # takes the seat, never joins
    bob = await ProtooClient.connect(url(server, peer="bob"))
    await position(bob)

    assert (await closed_with(idle))[0] == 4408

    await bob.next_notification("queueAdmitted", timeout=5)
    await bob.request("join", {})
    await bob.close()


async def test_a_takeover_keeps_its_seat_and_skips_the_queue(one_seat: Server) -> None:
    tab1 = await ProtooClient.connect(url(one_seat, peer="tab1", userId="alice"))
    await tab1.request("join", {})

    tab2 = await ProtooClient.connect(url(one_seat, peer="tab2", userId="alice"))
    await tab2.request("join", {})

    assert (await closed_with(tab1))[0] == 4410
    assert len(one_seat.queue) == 0
    await tab2.close()
