"""Room and Peer on a real media Worker, driven through ``Room.handle`` as the server drives them.

Peers that must hear something get a real ``Connection`` (tests/signalling/sockets.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from media import Router, Worker, WorkerSettings
from signalling.connection import Connection
from signalling.liveness import Session
from signalling.protocol import ErrorCode
from signalling.protoo_client import ProtooClient
from signalling.rooms import Peer, RequestError, Room, RoomFull

from .conftest import eventually
from .handmade import opus
from .sockets import Sockets, listening


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    worker = Worker(WorkerSettings(listen_ip="127.0.0.1", consent_timeout=10.0))
    yield worker
    worker.close()


@pytest.fixture
async def router(worker: Worker) -> Router:
    return await worker.create_router()


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    async with listening() as running:
        yield running


def make_room(router: Router, **options: Any) -> Room:
    return Room(
        "room",
        router,
        request_timeout=2.0,
        heartbeat_interval=30.0,
        speech_interval=None,
        **options,
    )


def seat(room: Room, peer_id: str, conn: Connection | None = None) -> Peer:
    """A session's peer takes its place in ``room`` (as ``SessionLifecycle.attach`` does)."""
    session = Session(room_id=room.id, user_id=peer_id, peer_id=peer_id, connection_id=0, now=0.0)
    peer = Peer(session, room)
    peer.connection = conn
    room.peers[peer.id] = peer
    return peer


async def refused(room: Room, peer: Peer, method: str, data: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as error:
        await room.handle(peer, method, data)
    return error.value


async def forever() -> None:
    await asyncio.Event().wait()


# -- requests --------------------------------------------------------------------------------------


async def test_an_unknown_method_is_refused_with_its_name_cut_short_and_printable(
    router: Router,
) -> None:
    room = make_room(router)
    alice = seat(room, "alice")

    error = await refused(room, alice, "fly\n" + "x" * 100, {})

    assert error.code is ErrorCode.UNKNOWN_METHOD
    assert error.reason == "unknown method 'fly?xxxxxxxxxxxxxxxxxxxxxxxxxxxx...'"


@pytest.mark.parametrize("method", sorted(set(Room.HANDLERS) - Room.BEFORE_JOIN))
async def test_a_method_that_needs_join_is_refused_before_it(router: Router, method: str) -> None:
    room = make_room(router)
    alice = seat(room, "alice")

    error = await refused(room, alice, method, {})

    assert error.code is ErrorCode.NOT_JOINED
    assert error.reason == f"{method} needs join first"


async def test_capabilities_and_transports_are_available_before_join(
    router: Router, worker: Worker
) -> None:
    room = make_room(router)
    alice = seat(room, "alice")

    caps = await room.handle(alice, "getRouterRtpCapabilities", {})
    created = await room.handle(alice, "createWebRtcTransport", {"producing": True})

    assert caps == router.rtp_capabilities
    assert list(alice.transports) == [created["id"]]
    assert worker.resource_counts()["transports"] == 1
    assert not alice.joined


async def test_a_transport_offers_udp_then_tcp_and_force_tcp_offers_tcp_only(
    router: Router, worker: Worker
) -> None:
    """mediasoup-demo's Room.js: ``forceTcp`` is enableUdp false, enableTcp true."""
    room = make_room(router)
    alice = seat(room, "alice")

    both = await room.handle(alice, "createWebRtcTransport", {"producing": True})
    tcp = await room.handle(alice, "createWebRtcTransport", {"consuming": True, "forceTcp": True})

    assert [c["protocol"] for c in both["iceCandidates"]] == ["udp", "tcp"]
    [candidate] = tcp["iceCandidates"]
    assert (candidate["protocol"], candidate["tcpType"]) == ("tcp", "passive")
    assert candidate["port"] == alice.transports[tcp["id"]].tcp_port
    assert worker.port_allocator.udp_in_use() == 1  # the forceTcp one has no UDP socket


async def test_join_answers_with_the_peers_already_there_and_a_second_join_is_refused(
    router: Router,
) -> None:
    room = make_room(router)
    alice, bob = seat(room, "alice"), seat(room, "bob")
    await room.handle(alice, "join", {"displayName": "Alice", "device": {"name": "test"}})

    joined = await room.handle(bob, "join", {"displayName": "Bob"})
    again = await refused(room, bob, "join", {"displayName": "Bobby"})

    assert [p["id"] for p in joined["peers"]] == ["alice"]
    assert joined["peers"][0]["displayName"] == "Alice"
    assert joined["resumeToken"] == bob.session.resume_token
    assert joined["heartbeatInterval"] == 30.0
    assert again.code is ErrorCode.CONFLICT
    assert bob.display_name == "Bob"  # the refused join changed nothing


# -- seats -----------------------------------------------------------------------------------------


async def test_without_held_seats_only_joined_open_peers_take_a_seat(router: Router) -> None:
    room = make_room(router, max_peers=2)
    alice, bob, carol = seat(room, "alice"), seat(room, "bob"), seat(room, "carol")
    assert room.occupancy() == 0  # connected is not seated

    await room.handle(alice, "join", {})
    await room.handle(bob, "join", {})

    assert room.occupancy() == 2 and room.full()
    with pytest.raises(RoomFull) as full:
        await room.handle(carol, "join", {})
    assert full.value.code is ErrorCode.FORBIDDEN and not carol.joined

    bob.close()
    assert room.occupancy() == 1 and not room.full()  # a closed peer frees its seat at once
    await room.handle(carol, "join", {})
    assert carol.joined


async def test_with_held_seats_every_open_peer_takes_a_seat_from_admission(
    router: Router,
) -> None:
    room = make_room(router, max_peers=2, hold_seats=True)
    alice, bob = seat(room, "alice"), seat(room, "bob")

    assert room.occupancy() == 2 and room.full()  # neither has joined yet
    await room.handle(alice, "join", {})  # a held seat is not refused for a full room
    await room.handle(bob, "join", {})
    assert room.occupancy() == 2

    alice.close()
    assert room.occupancy() == 1 and not room.full()


async def test_a_room_without_a_limit_is_never_full(router: Router) -> None:
    room = make_room(router)
    for index in range(20):
        await room.handle(seat(room, f"p{index}"), "join", {})
    assert room.occupancy() == 20 and not room.full()


# -- telling peers ---------------------------------------------------------------------------------


async def test_a_broadcast_reaches_the_joined_peers_only_and_spares_the_excluded(
    router: Router, sockets: Sockets
) -> None:
    room = make_room(router)
    clients: dict[str, ProtooClient] = {}
    peers: dict[str, Peer] = {}
    for name in ("alice", "bob", "carol", "dave"):
        side, clients[name] = await sockets.open()
        peers[name] = seat(room, name, side.conn)
    for name in ("alice", "bob", "dave"):
        await room.handle(peers[name], "join", {})
    peers["dave"].close()  # joined, then its session ended
    for name, peer in peers.items():  # past the newPeer of the later joiners
        peer.notify("ready", {})
        await clients[name].next_notification("ready", timeout=5)

    room.broadcast("peerDisplayNameChanged", {"peerId": "alice"}, exclude=peers["alice"])
    for peer in peers.values():
        peer.notify("marker", {})  # sent to each after the broadcast, on the same socket

    assert await clients["bob"].next_notification(timeout=5) == (
        "peerDisplayNameChanged",
        {"peerId": "alice"},
    )
    for name in ("alice", "carol", "dave"):  # excluded, not joined, closed
        method, _ = await clients[name].next_notification(timeout=5)
        assert method == "marker", name


async def test_a_joining_peer_is_announced_to_the_others_as_a_new_peer(
    router: Router, sockets: Sockets
) -> None:
    room = make_room(router)
    side, alice_client = await sockets.open()
    alice = seat(room, "alice", side.conn)
    await room.handle(alice, "join", {})

    await room.handle(seat(room, "bob"), "join", {"displayName": "Bob", "device": {"flag": "x"}})

    method, data = await alice_client.next_notification(timeout=5)
    assert (method, data["id"], data["displayName"]) == ("newPeer", "bob", "Bob")
    assert data["device"] == {"flag": "x"}


# -- media ownership -------------------------------------------------------------------------------


async def test_remove_closes_the_peers_transports_and_gives_up_its_seat(
    router: Router, worker: Worker
) -> None:
    room = make_room(router)
    alice = seat(room, "alice")
    await room.handle(alice, "join", {})
    for direction in ("producing", "consuming"):
        await room.handle(alice, "createWebRtcTransport", {direction: True})
    transports = list(alice.transports.values())
    alice.spawn(forever())

    tasks = room.remove(alice)

    assert all(t.closed for t in transports) and len(transports) == 2
    assert alice.closed and alice.transports == {} and "alice" not in room.peers
    assert worker.resource_counts()["transports"] == 0
    assert len(tasks) == 1
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[0].cancelled()
    assert room.remove(alice) == []  # idempotent


async def test_removing_a_peer_replaced_under_its_id_leaves_its_successor_seated(
    router: Router,
) -> None:
    room = make_room(router)
    old = seat(room, "alice")
    new = seat(room, "alice")  # a takeover: the new session's peer, same peer id

    room.remove(old)

    assert room.peers == {"alice": new} and not new.closed


async def test_a_peers_producers_and_consumers_are_read_through_its_transports(
    router: Router, sockets: Sockets
) -> None:
    room = make_room(router)
    alice = seat(room, "alice")
    side, bob_client = await sockets.open()
    bob = seat(room, "bob", side.conn)

    async def accept(method: str, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    bob_client.on_request = accept
    await room.handle(bob, "createWebRtcTransport", {"consuming": True})
    await room.handle(bob, "join", {"rtpCapabilities": router.rtp_capabilities})
    await room.handle(alice, "join", {})
    sending = (await room.handle(alice, "createWebRtcTransport", {"producing": True}))["id"]

    produced = await room.handle(
        alice, "produce", {"transportId": sending, "kind": "audio", "rtpParameters": opus()}
    )
    await eventually(lambda: len(bob.consumers) == 1)

    producer = alice.transports[sending].producers[produced["id"]]
    assert alice.producers == {producer.id: producer}
    (receiving,) = bob.transports.values()
    (consumer,) = receiving.consumers.values()
    assert bob.consumers == {consumer.id: consumer}
    assert consumer.producer_id == producer.id

    producer.close()  # closed in the media layer, behind the room's back

    assert alice.producers == {}  # nothing kept a stale copy
    await eventually(lambda: bob.consumers == {})
    assert consumer.closed


async def test_spawn_on_a_closed_peer_starts_nothing(router: Router) -> None:
    room = make_room(router)
    alice = seat(room, "alice")
    alice.close()

    alice.spawn(forever())  # closed, not left "never awaited"

    assert alice.tasks == set()


async def test_close_returns_every_peers_cancelled_tasks_and_closes_the_router(
    router: Router, worker: Worker
) -> None:
    room = make_room(router)
    for name in ("alice", "bob"):
        peer = seat(room, name)
        await room.handle(peer, "createWebRtcTransport", {"producing": True})
        peer.spawn(forever())
        peer.spawn(forever())
    fired: list[str] = []
    room.close_timer = asyncio.get_running_loop().call_later(5, fired.append, "timer")
    timer = room.close_timer

    tasks = room.close()

    assert len(tasks) == 4
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(task.cancelled() for task in tasks)
    assert room.closed and room.peers == {} and room.close_timer is None
    assert timer.cancelled()
    assert router.closed and worker.resource_counts() == dict.fromkeys(worker.resource_counts(), 0)
    assert room.close() == []  # idempotent
