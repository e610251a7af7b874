"""The lobby: GET /rooms and live occupancy for room-list viewers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from signalling.protoo_client import ProtooClient
from signalling.server import Server

from .conftest import ServerFactory, url


def get_rooms(server: Server, port: int | None = None) -> dict[str, Any]:
    address = f"http://127.0.0.1:{port or server.port}/rooms"
    with urllib.request.urlopen(address, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def rooms(server: Server, port: int | None = None) -> dict[str, Any]:
    return await asyncio.to_thread(get_rooms, server, port)


async def viewer(server: Server) -> tuple[ProtooClient, list[dict[str, Any]]]:
    client = await ProtooClient.connect(f"ws://127.0.0.1:{server.port}/lobby")
    _, data = await client.next_notification("rooms")
    return client, data["rooms"]


async def next_change(client: ProtooClient, room: str, timeout: float = 2.0) -> dict[str, Any]:
    """The next roomChanged/roomClosed of ``room`` (others skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        method, data = await client.next_notification(timeout=deadline - time.monotonic())
        if data.get("roomId") == room:
            return {"event": method, **data}


async def joined(server: Server, peer: str, room: str = "lounge", **params: str) -> ProtooClient:
    client = await ProtooClient.connect(url(server, room=room, peer=peer, **params))
    await client.request("join", {"displayName": peer})
    return client


async def test_get_rooms_lists_rooms_with_their_occupancy(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=5)
    a, b = await joined(server, "a"), await joined(server, "b")
    idle = await ProtooClient.connect(url(server, room="lounge", peer="idle"))  # not joined

    listing = await rooms(server)

    assert listing["rooms"] == [
        {"roomId": "lounge", "peers": 2, "capacity": 5, "queued": 0, "listed": True}
    ]
    assert listing["sessions"] == 3
    for client in (a, b, idle):
        await client.close()


async def test_unlisted_rooms_are_hidden_from_the_public_but_not_from_operators(
    make_server: ServerFactory,
) -> None:
    server = await make_server(listed_rooms=("public-*",))
    public = await joined(server, "a", room="public-1")
    secret = await joined(server, "b", room="x7f3secret")

    assert [r["roomId"] for r in (await rooms(server))["rooms"]] == ["public-1"]
    everything = await rooms(server, port=server.metrics_port)
    assert {r["roomId"]: r["listed"] for r in everything["rooms"]} == {
        "public-1": True,
        "x7f3secret": False,
    }
    watcher, initial = await viewer(server)
    assert [r["roomId"] for r in initial] == ["public-1"]
    await joined(server, "c", room="x7f3secret")
    await asyncio.sleep(1.0)
    assert watcher.notifications.empty()  # nothing about the unlisted room
    for client in (public, secret, watcher):
        await client.close()


async def test_viewers_see_joins_leaves_kills_and_takeovers_within_a_second(
    server: Server,
) -> None:
    watcher, initial = await viewer(server)
    assert initial == []

    started = time.monotonic()
    alice = await joined(server, "alice", userId="alice")
    change = await next_change(watcher, "lounge")
    assert change["event"] == "roomChanged"
    while change["peers"] != 1:
        change = await next_change(watcher, "lounge")
    assert time.monotonic() - started < 1.5

    bob = await joined(server, "bob")
    while (await next_change(watcher, "lounge")).get("peers") != 2:
        pass

    started = time.monotonic()
    bob.abort()  # killed: reconnecting, then gone after the grace (1 s in tests)
    while (await next_change(watcher, "lounge", timeout=4)).get("peers") != 1:
        pass
    assert time.monotonic() - started < 3.5

    second_tab = await joined(server, "alice-2", userId="alice")  # takeover: still one
    await asyncio.sleep(1.2)
    assert (await rooms(server))["rooms"][0]["peers"] == 1

    await second_tab.close()
    await alice.close()
    events = [await next_change(watcher, "lounge", timeout=4)]
    while events[-1]["event"] != "roomClosed":
        events.append(await next_change(watcher, "lounge", timeout=4))
    # (Its last roomChanged may be coalesced into the roomClosed: both within an interval.)
    assert all(event.get("peers", 0) <= 1 for event in events)
    await watcher.close()


async def test_changes_are_coalesced_per_room(make_server: ServerFactory) -> None:
    server = await make_server(lobby_update_interval=0.5)
    watcher, _ = await viewer(server)

    clients = [await joined(server, f"p{i}") for i in range(20)]
    await asyncio.sleep(1.5)

    updates = []
    while not watcher.notifications.empty():
        updates.append(watcher.notifications.get_nowait())
    assert 1 <= len(updates) <= 6  # at most a few per second, not one per join
    assert updates[-1][1]["peers"] == 20
    for client in (*clients, watcher):
        await client.close()


async def test_the_lobby_shows_how_many_wait_in_the_queue(make_server: ServerFactory) -> None:
    server = await make_server(max_peers_per_room=1, when_full="queue")
    watcher, _ = await viewer(server)
    alice = await joined(server, "alice")
    bob = await ProtooClient.connect(url(server, room="lounge", peer="bob"))
    await bob.next_notification("queuePosition")

    change = await next_change(watcher, "lounge")
    while change.get("queued") != 1:
        change = await next_change(watcher, "lounge")
    assert change["peers"] == 1 and change["capacity"] == 1
    for client in (alice, bob, watcher):
        await client.close()
