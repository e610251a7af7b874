"""SessionLifecycle: sessions <-> peers <-> rooms, and the one way out.

A real media ``Worker``, a real ``SessionRegistry`` and real WebSocket
connections (tests/signalling/sockets.py): each test drives the lifecycle as
``Server`` does, and reads what the clients were sent and what the observer said.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from media import TransportEndReason, WebRtcTransport, Worker, WorkerSettings
from signalling.config import Config, replace
from signalling.lifecycle import CLOSE_CODES, SessionLifecycle
from signalling.liveness import EndReason, Session, SessionRegistry, SessionState
from signalling.protocol import CloseCode
from signalling.protoo_client import ProtooClient
from signalling.rooms import Peer, PeerLimits, Room

from ..media.clients import RawClient
from ..media.object_harness import wait_until
from .conftest import TEST_CONFIG, eventually
from .sockets import Sockets, closed_with, listening

CONFIG = replace(TEST_CONFIG, room_close_delay=0.2)

EVENTS = (
    "sessionstarted",
    "sessionjoined",
    "sessionresumed",
    "sessionreconnecting",
    "sessionended",
    "roomchanged",
    "seatfreed",
)


class Events:
    """Everything the lifecycle's observer announced, in order."""

    def __init__(self, lifecycle: SessionLifecycle) -> None:
        self.seen: list[tuple[str, tuple[Any, ...]]] = []
        for name in EVENTS:
            lifecycle.observer.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Any:
        return lambda *args: self.seen.append((name, args))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.seen if event == name]


@dataclass
class Member:
    """One session in the lifecycle: its peer, and the client at the other end."""

    session: Session
    peer: Peer
    client: ProtooClient

    @property
    def conn_id(self) -> int:
        assert self.peer.connection is not None
        return self.peer.connection.id


class World:
    """A lifecycle on a real worker, and the clients that enter it."""

    def __init__(self, lifecycle: SessionLifecycle, worker: Worker, sockets: Sockets) -> None:
        self.lifecycle = lifecycle
        self.worker = worker
        self.registry = lifecycle.registry
        self.sockets = sockets
        self.events = Events(lifecycle)

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def enter(self, peer_id: str, *, room: str = "room", join: bool = True) -> Member:
        """As ``Server._admit`` does: the room, the registry's admission, attach, then join."""
        side, client = await self.sockets.open()
        lifecycle = self.lifecycle
        the_room = await lifecycle.room(room)
        admission = self.registry.admit(
            room_id=room,
            user_id=peer_id,
            peer_id=peer_id,
            connection_id=side.conn.id,
            resume_token=None,
            now=self.now,
        )
        assert admission.session is not None
        session = admission.session
        peer = lifecycle.attach(session, the_room, side.conn, display_name=peer_id.title())
        if join:
            await the_room.handle(peer, "join", {})
            lifecycle.joined(session)
        return Member(session, peer, client)

    async def resume(self, member: Member) -> ProtooClient:
        """A new connection resumes ``member``'s session with its resume token."""
        side, client = await self.sockets.open()
        session = member.session
        admission = self.registry.admit(
            room_id=session.room_id,
            user_id=session.user_id,
            peer_id=session.peer_id,
            connection_id=side.conn.id,
            resume_token=session.resume_token,
            now=self.now,
        )
        assert admission.session is session
        self.lifecycle.resume(
            session, side.conn, admission.previous_connection_id, admission.was_reconnecting
        )
        return client


async def make_world(config: Config) -> AsyncIterator[World]:
    worker = Worker(WorkerSettings(listen_ip="127.0.0.1", consent_timeout=10.0))
    registry = SessionRegistry(config.liveness)
    lifecycle = SessionLifecycle(config, worker=worker, registry=registry, peer_limits=PeerLimits())
    async with listening() as sockets:
        yield World(lifecycle, worker, sockets)
        for session in list(registry.by_id.values()):
            lifecycle.end(session, EndReason.SHUTDOWN)
        await lifecycle.close()
    worker.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async for made in make_world(CONFIG):
        yield made


async def told_nothing_more(client: ProtooClient, peer: Peer) -> None:
    """Nothing reached ``client`` after what was awaited so far: a marker sent now
    through its connection is the next thing it reads."""
    assert peer.connection is not None
    peer.connection.notify("marker", {})
    method, _ = await client.next_notification(timeout=5)
    assert method == "marker"


async def settled(member: Member) -> None:
    """Skip what ``member`` was sent so far (newPeer of later joiners...)."""
    assert member.peer.connection is not None
    member.peer.connection.notify("settled", {})
    await member.client.next_notification("settled", timeout=5)


# -- rooms -----------------------------------------------------------------------------------------


async def test_a_room_asked_for_by_many_at_once_is_created_once(world: World) -> None:
    lifecycle = world.lifecycle

    rooms = await asyncio.gather(*(lifecycle.room("lounge") for _ in range(10)))

    assert all(room is rooms[0] for room in rooms)
    assert lifecycle.rooms == {"lounge": rooms[0]}
    (router,) = world.worker.routers.values()
    assert router is rooms[0].router and router.app_data == {"roomId": "lounge"}
    assert world.events.of("roomchanged") == [("lounge",)]
    assert await lifecycle.room("lounge") is rooms[0]
    assert len(world.worker.routers) == 1


async def test_a_room_takes_its_seat_policy_and_limits_from_the_config() -> None:
    config = replace(CONFIG, max_peers_per_room=3, when_full="queue", request_timeout=1.5)
    async for world in make_world(config):
        room = await world.lifecycle.room("r")
        assert (room.max_peers, room.hold_seats, room.request_timeout) == (3, True, 1.5)


async def test_attach_seats_the_peer_in_its_room_and_announces_the_session(
    world: World,
) -> None:
    alice = await world.enter("alice", join=False)
    room = world.lifecycle.rooms["room"]

    assert room.peers == {"alice": alice.peer}
    assert alice.session.data is alice.peer and alice.peer.room is room
    assert world.lifecycle.connections == {alice.conn_id: alice.peer.connection}
    assert alice.session.display_name == "Alice"
    assert world.events.seen == [
        ("roomchanged", ("room",)),  # created
        ("roomchanged", ("room",)),  # its occupancy moved
        ("sessionstarted", (alice.session,)),
    ]


async def test_a_display_name_given_at_attach_is_cut_to_the_configured_length(
    world: World,
) -> None:
    side, _ = await world.sockets.open()
    room = await world.lifecycle.room("room")
    admission = world.registry.admit(
        room_id="room",
        user_id="u",
        peer_id="u",
        connection_id=side.conn.id,
        resume_token=None,
        now=world.now,
    )
    assert admission.session is not None

    world.lifecycle.attach(admission.session, room, side.conn, display_name="n" * 500)

    assert admission.session.display_name == "n" * CONFIG.max_display_name_length


async def test_joined_marks_the_session_joined_and_announces_it(world: World) -> None:
    alice = await world.enter("alice")

    assert alice.session.state is SessionState.JOINED
    assert world.events.of("sessionjoined") == [(alice.session,)]


async def test_attach_cancels_the_pending_close_of_an_empty_room(world: World) -> None:
    alice = await world.enter("alice")
    room = world.lifecycle.rooms["room"]
    world.lifecycle.end(alice.session, EndReason.GRACEFUL)
    assert room.close_timer is not None

    await world.enter("bob")

    assert room.close_timer is None
    await asyncio.sleep(CONFIG.room_close_delay * 2)
    assert world.lifecycle.rooms["room"] is room and not room.closed


async def test_the_last_one_out_closes_the_room_after_the_close_delay(world: World) -> None:
    alice = await world.enter("alice")
    room = world.lifecycle.rooms["room"]
    ended = time.monotonic()

    world.lifecycle.end(alice.session, EndReason.GRACEFUL)

    assert world.lifecycle.rooms["room"] is room and not room.closed  # not at once
    await eventually(lambda: "room" not in world.lifecycle.rooms)
    assert time.monotonic() - ended >= CONFIG.room_close_delay * 0.9
    assert room.closed and room.router.closed and world.worker.routers == {}
    assert world.events.seen[-1] == ("roomchanged", ("room",))


# -- ending: the one teardown ----------------------------------------------------------------------


async def test_end_tells_the_joined_peers_once_closes_with_the_code_and_frees_everything(
    world: World,
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    carol = await world.enter("carol", join=False)
    await settled(bob)
    await settled(carol)
    detected_at = world.now - 0.5
    peer, session, conn_id = alice.peer, alice.session, alice.conn_id

    world.lifecycle.end(session, EndReason.KEEPALIVE_TIMEOUT, detected_at=detected_at)

    assert await bob.client.next_notification(timeout=5) == (
        "peerClosed",
        {"peerId": "alice", "reason": "keepalive_timeout"},
    )
    await told_nothing_more(carol.client, carol.peer)  # not joined: not told
    assert await closed_with(alice.client) == (4408, "keepalive_timeout")
    assert world.events.of("sessionended") == [(session, EndReason.KEEPALIVE_TIMEOUT, detected_at)]
    assert world.events.of("seatfreed") == [()]
    # No registry entry, no seat, no connection, no Session <-> Peer link is left.
    assert session.id not in world.registry.by_id
    assert ("room", "alice") not in world.registry.by_identity
    assert ("room", "alice") not in world.registry.by_peer
    assert session.leave_token not in world.registry.by_leave_token
    assert conn_id not in world.lifecycle.connections
    assert "alice" not in world.lifecycle.rooms["room"].peers
    assert peer.closed and session.data is None and peer.connection is None
    assert session.end_reason is EndReason.KEEPALIVE_TIMEOUT

    events = len(world.events.seen)
    world.lifecycle.end(session, EndReason.ERROR)  # again, for another reason
    world.lifecycle.end(session, EndReason.KEEPALIVE_TIMEOUT)

    assert len(world.events.seen) == events
    assert session.end_reason is EndReason.KEEPALIVE_TIMEOUT
    await told_nothing_more(bob.client, bob.peer)  # one peerClosed, not three


@pytest.mark.parametrize("reason", list(EndReason))
async def test_every_end_reason_closes_the_connection_with_its_documented_code(
    world: World, reason: EndReason
) -> None:
    alice = await world.enter("alice")

    world.lifecycle.end(alice.session, reason)

    assert await closed_with(alice.client) == (CLOSE_CODES[reason], reason.value)


async def test_a_close_code_given_to_end_overrides_the_reasons_own(world: World) -> None:
    alice = await world.enter("alice")

    world.lifecycle.end(alice.session, EndReason.REJECTED, close_code=CloseCode.ROOM_FULL)

    assert await closed_with(alice.client) == (4403, "rejected")


async def test_a_replaced_session_is_told_so_before_its_connection_closes(world: World) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")

    world.lifecycle.end(alice.session, EndReason.REPLACED)

    assert await alice.client.next_notification("sessionReplaced", timeout=5) == (
        "sessionReplaced",
        {"reason": "another connection took over"},
    )
    assert (await closed_with(alice.client))[0] == CloseCode.SESSION_REPLACED
    assert (await bob.client.next_notification("peerClosed", timeout=5))[1]["reason"] == (
        "replaced"
    )


async def test_on_shutdown_each_is_told_when_to_come_back_and_no_peer_closes_are_sent(
    world: World,
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    await settled(alice)
    await settled(bob)

    world.lifecycle.end(alice.session, EndReason.SHUTDOWN)

    assert await alice.client.next_notification(timeout=5) == (
        "serverShutdown",
        {"reconnectDelay": int(CONFIG.reconnect_delay * 1000)},
    )
    assert (await closed_with(alice.client))[0] == CloseCode.GOING_AWAY
    await told_nothing_more(bob.client, bob.peer)


async def test_a_peer_that_never_joined_leaves_without_a_peer_closed(world: World) -> None:
    alice = await world.enter("alice")
    await settled(alice)
    carol = await world.enter("carol", join=False)

    world.lifecycle.end(carol.session, EndReason.JOIN_TIMEOUT)

    assert await closed_with(carol.client) == (4408, "join_timeout")
    await told_nothing_more(alice.client, alice.peer)
    assert world.events.of("seatfreed") == [()]


async def test_the_leave_beacon_ends_its_session_once(world: World) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    token = alice.session.leave_token

    assert world.lifecycle.leave_with_token(token) is True
    assert world.lifecycle.leave_with_token(token) is False
    assert world.lifecycle.leave_with_token("forged") is False

    assert (await bob.client.next_notification("peerClosed", timeout=5))[1] == {
        "peerId": "alice",
        "reason": "beacon",
    }
    assert [args[1] for args in world.events.of("sessionended")] == [EndReason.BEACON]


# -- losing the socket, resuming -------------------------------------------------------------------


async def test_a_lost_socket_holds_a_joined_session_reconnecting_until_it_ends(
    world: World,
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    await settled(bob)
    assert alice.peer.connection is not None
    conn = alice.peer.connection

    world.lifecycle.connection_lost(alice.session, conn, clean=False)

    assert await bob.client.next_notification(timeout=5) == (
        "peerReconnecting",
        {"peerId": "alice"},
    )
    assert alice.session.state is SessionState.RECONNECTING
    assert alice.peer.connection is None and conn.id not in world.lifecycle.connections
    assert world.events.of("sessionreconnecting") == [(alice.session,)]
    assert world.events.of("sessionended") == []

    world.lifecycle.end(alice.session, EndReason.SOCKET_LOST)  # the grace period ran out

    assert (await bob.client.next_notification(timeout=5))[1] == {
        "peerId": "alice",
        "reason": "socket_lost",
    }
    assert [args[1] for args in world.events.of("sessionended")] == [EndReason.SOCKET_LOST]


async def test_a_clean_close_of_the_socket_ends_the_session_gracefully(world: World) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    assert alice.peer.connection is not None

    world.lifecycle.connection_lost(alice.session, alice.peer.connection, clean=True)

    assert (await bob.client.next_notification("peerClosed", timeout=5))[1]["reason"] == (
        "graceful"
    )
    assert [args[1] for args in world.events.of("sessionended")] == [EndReason.GRACEFUL]


async def test_a_session_resumed_after_a_lost_socket_is_told_and_its_peers_too(
    world: World,
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    assert alice.peer.connection is not None
    world.lifecycle.connection_lost(alice.session, alice.peer.connection, clean=False)
    await bob.client.next_notification("peerReconnecting", timeout=5)

    resumed = await world.resume(alice)

    _, data = await resumed.next_notification("sessionResumed", timeout=5)
    assert data == {
        "resumeToken": alice.session.resume_token,
        "heartbeatInterval": CONFIG.liveness.heartbeat_interval,
        "joined": True,
    }
    assert await bob.client.next_notification(timeout=5) == ("peerResumed", {"peerId": "alice"})
    assert world.events.of("sessionresumed") == [(alice.session,)]
    assert alice.session.state is SessionState.JOINED
    assert alice.peer.connection is not None
    assert world.lifecycle.connections == {
        alice.peer.connection.id: alice.peer.connection,
        bob.conn_id: bob.peer.connection,
    }


async def test_a_resume_on_a_second_connection_closes_the_first(world: World) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    await settled(bob)
    first = alice.conn_id

    await world.resume(alice)  # the first socket never dropped

    assert await closed_with(alice.client) == (4410, "resumed on another connection")
    assert first not in world.lifecycle.connections
    await told_nothing_more(bob.client, bob.peer)  # not reconnecting: no peerResumed
    assert alice.session.open and world.events.of("sessionended") == []


# -- media that ends by itself ---------------------------------------------------------------------


async def transport_of(world: World, member: Member) -> WebRtcTransport:
    room = world.lifecycle.rooms[member.session.room_id]
    created = await room.handle(member.peer, "createWebRtcTransport", {"producing": True})
    transport = member.peer.transports[created["id"]]
    assert isinstance(transport, WebRtcTransport)  # the embedded SFU's
    return transport


async def connect_with_a_wrong_fingerprint(client: RawClient, server: WebRtcTransport) -> None:
    """``RawClient.connect``, but the server is told another certificate's fingerprint."""
    wrong = [{"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}]
    with contextlib.suppress(Exception):  # the server refuses us: the point
        await client.connect(server, fingerprints=wrong)


@pytest.fixture
async def raw_client() -> AsyncIterator[RawClient]:
    client = RawClient()
    yield client
    await client.close()


async def test_a_client_closing_its_dtls_ends_its_session_gracefully(
    world: World, raw_client: RawClient
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    transport = await transport_of(world, alice)
    await asyncio.wait_for(raw_client.connect(transport), 10)
    await wait_until(lambda: transport.dtls_state == "connected", 10, "DTLS connected")

    await raw_client.dtls.stop()  # close_notify: the page went away

    assert (await bob.client.next_notification("peerClosed", timeout=5))[1] == {
        "peerId": "alice",
        "reason": "graceful",
    }
    assert transport.end_reason is TransportEndReason.DTLS_CLOSED
    assert await closed_with(alice.client) == (1000, "graceful")
    assert not alice.session.open and alice.peer.closed


async def test_a_failed_dtls_handshake_ends_its_session_as_dtls_failed(
    world: World, raw_client: RawClient
) -> None:
    alice, bob = await world.enter("alice"), await world.enter("bob")
    transport = await transport_of(world, alice)

    await asyncio.wait_for(connect_with_a_wrong_fingerprint(raw_client, transport), 10)

    assert (await bob.client.next_notification("peerClosed", timeout=10))[1] == {
        "peerId": "alice",
        "reason": "dtls_failed",
    }
    assert transport.end_reason is TransportEndReason.DTLS_FAILED
    assert await closed_with(alice.client) == (4412, "dtls_failed")


async def test_an_expired_ice_consent_ends_its_session_as_consent_expired(world: World) -> None:
    alice = await world.enter("alice")
    transport = await transport_of(world, alice)
    detected = world.now

    # What the consent timer calls once consent expired (10 s at the least for real:
    # tests/media/test_call.py waits for that one).
    transport._end(TransportEndReason.CONSENT_EXPIRED)

    assert await closed_with(alice.client) == (4411, "consent_expired")
    ((session, reason, detected_at),) = world.events.of("sessionended")
    assert (session, reason) == (alice.session, EndReason.CONSENT_EXPIRED)
    assert detected_at >= detected


async def test_a_transport_the_server_closes_itself_ends_no_session(world: World) -> None:
    alice = await world.enter("alice")
    transport = await transport_of(world, alice)

    transport.close()

    assert transport.end_reason is TransportEndReason.CLOSED_BY_APP
    assert alice.peer.transports == {}
    assert alice.session.open and not alice.peer.closed
    assert world.events.of("sessionended") == []


# -- seats -----------------------------------------------------------------------------------------


async def test_without_limits_nobody_is_ever_refused() -> None:
    async for world in make_world(CONFIG):
        await world.enter("alice")
        assert world.lifecycle.full("room") is None
        assert world.lifecycle.free_sessions() is None
        assert world.lifecycle.free_seats("room") >= 1 << 20


async def test_held_seats_count_against_the_room_until_taken() -> None:
    async for world in make_world(replace(CONFIG, max_peers_per_room=2)):
        lifecycle = world.lifecycle
        assert lifecycle.free_seats("room") == 2  # no room yet

        lifecycle.hold_seat("room")
        await world.enter("alice")

        assert lifecycle.free_seats("room") == 0 and lifecycle.admitting == 1
        assert lifecycle.full("room") == "room_full"
        assert lifecycle.full("elsewhere") is None
        lifecycle.seat_taken("room")
        assert lifecycle.free_seats("room") == 1 and lifecycle.admitting == 0
        assert lifecycle.full("room") is None
        lifecycle.seat_taken("room")  # once too often: nothing goes negative
        assert lifecycle.free_seats("room") == 1 and lifecycle.admitting == 0


async def test_held_seats_count_against_the_servers_sessions() -> None:
    async for world in make_world(replace(CONFIG, max_sessions=2)):
        lifecycle = world.lifecycle
        await world.enter("alice", room="a")
        assert lifecycle.free_sessions() == 1 and lifecycle.full("b") is None

        lifecycle.hold_seat("b")

        assert lifecycle.free_sessions() == 0
        assert lifecycle.full("c") == "server_full"
        lifecycle.seat_taken("b")
        assert lifecycle.full("c") is None


async def test_an_ended_session_frees_its_seat() -> None:
    async for limited in make_world(replace(CONFIG, max_peers_per_room=1)):
        alice = await limited.enter("alice")
        assert limited.lifecycle.full("room") == "room_full"

        limited.lifecycle.end(alice.session, EndReason.GRACEFUL)

        assert limited.lifecycle.full("room") is None
        assert limited.events.of("seatfreed") == [()]


async def test_seated_recognises_an_identity_or_peer_id_already_in_the_room(
    world: World,
) -> None:
    await world.enter("alice")

    assert world.lifecycle.seated("room", "alice", "another-tab")  # the same user
    assert world.lifecycle.seated("room", "someone", "alice")  # the same peer id
    assert not world.lifecycle.seated("room", "bob", "bob")
    assert not world.lifecycle.seated("other", "alice", "alice")


# -- closing ---------------------------------------------------------------------------------------


async def test_close_awaits_the_cancelled_tasks_of_ended_sessions(world: World) -> None:
    alice = await world.enter("alice")
    unwound = asyncio.Event()

    async def slow_to_unwind() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleaning up takes a while
            unwound.set()
            raise

    alice.peer.spawn(slow_to_unwind())
    await asyncio.sleep(0)  # the task starts
    world.lifecycle.end(alice.session, EndReason.GRACEFUL)
    assert world.lifecycle.pending_tasks == 1

    await asyncio.wait_for(world.lifecycle.close(), 5)

    assert unwound.is_set() and world.lifecycle.pending_tasks == 0
    assert world.lifecycle.rooms == {} and world.worker.routers == {}


async def test_close_closes_every_room_and_cancels_room_creations_in_flight(
    world: World,
) -> None:
    await world.enter("alice")
    room: Room = world.lifecycle.rooms["room"]
    world.lifecycle.end(next(iter(world.registry.by_id.values())), EndReason.SHUTDOWN)
    creating = asyncio.ensure_future(world.lifecycle.room("late"))
    await asyncio.sleep(0)  # asked for, not created yet

    await world.lifecycle.close()

    with pytest.raises(asyncio.CancelledError):
        await creating
    assert room.closed and world.lifecycle.rooms == {}
    assert world.worker.routers == {}  # no router made for "late"
