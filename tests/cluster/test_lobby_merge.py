"""The lobby across nodes, sans-I/O: RemoteRooms (the other nodes' rooms as
their messages said), the Lobby merging them with this node's and handing its
own changes to the directory coalesced, and the WatchSchedule on a fake clock."""

from __future__ import annotations

from typing import Any

import orjson

from signalling.lobby import Lobby, RemoteRooms, RoomSummary, WatchSchedule


def room(room_id: str, peers: int) -> RoomSummary:
    return {"roomId": room_id, "peers": peers, "capacity": None, "queued": 0, "listed": True}


def message(node: str, **body: Any) -> bytes:
    return orjson.dumps({"node": node, **body})


def test_remote_rooms_follow_updates_replacements_and_departures() -> None:
    remote = RemoteRooms("a")
    assert remote.message(message("b", rooms={"x": room("x", 1), "y": room("y", 2)})) == {"x", "y"}
    assert remote.message(message("b", rooms={"x": room("x", 1)})) == set()  # unchanged
    assert remote.message(message("b", rooms={"x": room("x", 3), "y": None})) == {"x", "y"}
    assert remote.get("x") == room("x", 3) and remote.get("y") is None
    assert remote.message(message("c", rooms={"z": room("z", 1)})) == {"z"}
    # replace: everything b has (a room it does not name is gone).
    replaced = remote.message(message("b", rooms={"w": room("w", 1)}, replace=True))
    assert replaced == {"w", "x"}
    # The reaper removed c's records.
    assert remote.message(message("c", gone=True)) == {"z"}
    assert dict(remote.items()) == {"w": room("w", 1)} and remote.nodes == 1
    assert remote.message(message("b", gone=True)) == {"w"}
    assert len(remote) == 0 and remote.nodes == 0


def test_a_moving_room_is_the_last_senders_and_only_its_holder_closes_it() -> None:
    remote = RemoteRooms("a")
    remote.update("b", {"call": room("call", 2)})
    remote.update("c", {"call": room("call", 1)})  # it moved to c
    assert remote.get("call") == room("call", 1)
    assert remote.update("b", {"call": None}) == set()  # b closes its old copy: nothing
    assert remote.node_gone("b") == set()
    assert remote.update("c", {"call": None}) == {"call"}


def test_own_messages_are_ignored_and_malformed_ones_counted() -> None:
    remote = RemoteRooms("a")
    assert remote.message(message("a", rooms={"x": room("x", 1)})) == set()
    for bad in (b"not json", b"[]", b'{"node": 1}', b'{"node": "b"}', message("b", rooms=[])):
        assert remote.message(bad) == set()
    assert remote.message(message("b", rooms={"x": "peers"})) == set()
    assert remote.invalid == 6 and len(remote) == 0


def test_remote_rooms_are_bounded() -> None:
    remote = RemoteRooms("a", max_rooms=2)
    remote.update("b", {f"r{i}": room(f"r{i}", 1) for i in range(3)})
    assert len(remote) == 2 and remote.dropped == 1
    remote.update("b", {"r0": None})
    assert remote.update("b", {"r2": room("r2", 1)}) == {"r2"}  # room again


def test_a_load_replaces_every_node_and_reports_what_differs() -> None:
    remote = RemoteRooms("a")
    remote.update("b", {"x": room("x", 1)})
    remote.update("dead", {"d": room("d", 1)})
    changed = remote.load({"a": {"own": room("own", 1)}, "b": {"x": room("x", 2)}, "c": {}})
    assert changed == {"x", "d"} and set(dict(remote.items())) == {"x"}


class Shared:
    """The directory's side, recorded."""

    def __init__(self) -> None:
        self.published: list[dict[str, RoomSummary | None]] = []
        self.watching: list[int] = []

    def lobby_publish(self, rooms: dict[str, RoomSummary | None]) -> None:
        self.published.append(rooms)

    def lobby_watch(self, viewers: int) -> None:
        self.watching.append(viewers)

    async def lobby_ready(self) -> None:
        return None


class Viewer:
    _ids = iter(range(1, 1 << 30))

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.frames: list[tuple[str, Any]] = []

    def notify(self, method: str, data: Any) -> None:
        self.frames.append((method, data))

    def send(self, frame: bytes) -> bool:
        decoded = orjson.loads(frame)
        self.frames.append((decoded["method"], decoded["data"]))
        return True


def shared_lobby() -> tuple[Lobby, dict[str, RoomSummary], Shared, RemoteRooms]:
    local: dict[str, RoomSummary] = {}
    lobby = Lobby(("public-*",), local.get, lambda: local.keys())
    shared, remote = Shared(), RemoteRooms("a")
    lobby.share(shared, remote)
    return lobby, local, shared, remote


def test_changes_of_listed_rooms_are_published_once_per_flush_even_without_viewers() -> None:
    lobby, local, shared, _ = shared_lobby()
    local["public-1"] = room("public-1", 1)
    local["secret"] = room("secret", 1)
    for room_id in ("public-1", "public-1", "secret"):
        lobby.changed(room_id)
    local["public-1"] = room("public-1", 2)
    lobby.flush()
    del local["public-1"]
    lobby.changed("public-1")
    lobby.flush()
    lobby.flush()
    assert shared.published == [{"public-1": room("public-1", 2)}, {"public-1": None}]


def test_viewers_see_this_nodes_rooms_and_the_others_merged() -> None:
    lobby, local, shared, remote = shared_lobby()
    local["public-1"] = room("public-1", 1)
    lobby.remote_changed(remote.update("b", {"public-2": room("public-2", 4)}))
    viewer = Viewer()

    lobby.add(viewer)  # type: ignore[arg-type]

    assert viewer.frames == [("rooms", {"rooms": [room("public-1", 1), room("public-2", 4)]})]
    assert shared.watching == [1]
    lobby.remote_changed(remote.update("b", {"public-2": room("public-2", 5)}))
    lobby.remote_changed(remote.update("b", {"public-3": room("public-3", 1)}))
    lobby.flush()
    assert viewer.frames[1:] == [
        ("roomChanged", room("public-2", 5)),
        ("roomChanged", room("public-3", 1)),
    ]
    # A room that moved: it closes here while another node holds it now.
    local["public-4"] = room("public-4", 1)
    lobby.remote_changed(remote.update("c", {"public-4": room("public-4", 2)}))
    del local["public-4"]
    lobby.changed("public-4")
    lobby.flush()
    assert viewer.frames[3:] == [("roomChanged", room("public-4", 2))]
    # Node b's records were reaped: its rooms close for viewers.
    lobby.remote_changed(remote.node_gone("b"))
    lobby.flush()
    assert viewer.frames[4:] == [
        ("roomClosed", {"roomId": "public-2"}),
        ("roomClosed", {"roomId": "public-3"}),
    ]
    lobby.remove(viewer)  # type: ignore[arg-type]
    assert shared.watching == [1, 0]


def test_the_subscription_lingers_after_the_last_viewer() -> None:
    schedule = WatchSchedule(linger=30.0)
    assert not schedule.wanted(0.0)
    schedule.viewers_changed(2, 0.0)
    schedule.viewers_changed(0, 10.0)
    assert schedule.wanted(39.9) and not schedule.wanted(40.0)
    schedule.viewers_changed(1, 20.0)  # back before the end: stays
    assert schedule.wanted(100.0)
    schedule.viewers_changed(0, 100.0)
    schedule.stopped()
    assert not schedule.wanted(100.0)
    assert not WatchSchedule(linger=0.0).wanted(0.0)
