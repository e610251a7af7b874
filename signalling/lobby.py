"""The lobby: live room occupancy for people browsing the room list.

Viewers subscribe over a WebSocket (``/lobby``, protoo framing) and get the
listed rooms once (``rooms``), then a ``roomChanged`` or ``roomClosed`` for
each room whose occupancy changed.  Changes are coalesced: a room that
changes a hundred times within ``update_interval`` is sent once, with its
state at flush time, so a busy room costs viewers a few messages a second at
most, and a lobby never shows a ghost for longer than one interval.

Which rooms are listed is configuration (``--listed-rooms``, glob patterns):
room ids can be secrets (mediasoup-demo uses random ones), so an operator may
list none, some or all.

With several nodes (docs/scaling.md) the lobby spans the cluster: the
``Lobby`` is *shared* through the directory.  At each flush it hands the
directory the summaries of its listed rooms that changed (coalesced per
interval, like its viewers'), which writes them to Redis and publishes them;
while it has viewers the node follows the other nodes' messages into
``RemoteRooms``, and its viewers see the merged list with the same
notifications.  The merging and the schedule are here, sans-I/O; the Redis
side is ``signalling.redis_directory``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from .connection import Connection
from .protocol import encode_notification

logger = logging.getLogger(__name__)

RoomSummary = dict[str, Any]


class SharedLobby(Protocol):
    """The directory's side of a shared lobby (``RedisDirectory``)."""

    def lobby_publish(self, rooms: dict[str, RoomSummary | None]) -> None:
        """These listed rooms of this node changed (None: closed): tell the others."""

    def lobby_watch(self, viewers: int) -> None:
        """The lobby has this many viewers now: follow the other nodes' rooms or not."""

    async def lobby_ready(self) -> None:
        """Follow the other nodes' rooms and wait (bounded) until they are loaded."""


class Lobby:
    """Viewers and the rooms that changed since the last flush."""

    __slots__ = (
        "_dirty",
        "_patterns",
        "_room_ids",
        "_summary",
        "_unpublished",
        "remote",
        "shared",
        "viewers",
    )

    def __init__(
        self,
        patterns: tuple[str, ...],
        summary: Callable[[str], RoomSummary | None],
        room_ids: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        """``summary(room_id)``: the room's state now, or None if it is closed;
        ``room_ids()``: the rooms open on this node."""
        self._patterns = patterns
        self._summary = summary
        self._room_ids = room_ids
        self._dirty: set[str] = set()
        self._unpublished: set[str] = set()
        self.viewers: dict[int, Connection] = {}
        self.remote: RemoteRooms | None = None
        """The other nodes' listed rooms (None: not shared, one node)."""
        self.shared: SharedLobby | None = None

    def share(self, shared: SharedLobby, remote: RemoteRooms) -> None:
        """Span the cluster: publish through ``shared``, merge ``remote``."""
        self.shared = shared
        self.remote = remote

    def listed(self, room_id: str) -> bool:
        return any(fnmatch.fnmatchcase(room_id, pattern) for pattern in self._patterns)

    def changed(self, room_id: str) -> None:
        """The occupancy of ``room_id`` changed (cheap: sent at the next flush)."""
        if (self.viewers or self.shared is not None) and self.listed(room_id):
            if self.viewers:
                self._dirty.add(room_id)
            if self.shared is not None:
                self._unpublished.add(room_id)

    def remote_changed(self, room_ids: Iterable[str]) -> None:
        """Rooms of other nodes changed (``remote`` holds their state)."""
        if self.viewers:
            self._dirty.update(room_ids)

    def summary(self, room_id: str) -> RoomSummary | None:
        """What viewers see of ``room_id``: this node's room, else another node's."""
        local = self._summary(room_id)
        if local is not None:
            return local
        return self.remote.get(room_id) if self.remote is not None else None

    def local_listing(self) -> dict[str, RoomSummary]:
        """This node's listed rooms (what it publishes when it writes them all)."""
        rooms = {}
        for room_id in self._room_ids():
            if self.listed(room_id):
                summary = self._summary(room_id)
                if summary is not None:
                    rooms[room_id] = summary
        return rooms

    def listing(self) -> list[RoomSummary]:
        """Every listed room viewers may see (this node's and the others'), by id."""
        rooms = self.local_listing()
        if self.remote is not None:
            for room_id, summary in self.remote.items():
                rooms.setdefault(room_id, summary)
        return [rooms[room_id] for room_id in sorted(rooms)]

    async def prepare(self) -> None:
        """Before ``add``: with several nodes, have the other nodes' rooms loaded
        (a bounded wait), so that a new viewer's first list is the cluster's."""
        if self.shared is not None:
            await self.shared.lobby_ready()

    def add(self, conn: Connection) -> None:
        self.viewers[conn.id] = conn
        conn.notify("rooms", {"rooms": self.listing()})
        if self.shared is not None:
            self.shared.lobby_watch(len(self.viewers))

    def remove(self, conn: Connection) -> None:
        if self.viewers.pop(conn.id, None) is not None and self.shared is not None:
            self.shared.lobby_watch(len(self.viewers))

    def flush(self) -> int:
        """Send what changed to every viewer, and hand this node's changes to
        the directory; how many rooms were sent to viewers."""
        if self._unpublished and self.shared is not None:
            unpublished, self._unpublished = self._unpublished, set()
            self.shared.lobby_publish({room_id: self._summary(room_id) for room_id in unpublished})
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        frames: list[bytes] = []
        for room_id in sorted(dirty):
            summary = self.summary(room_id)
            if summary is None:
                frames.append(encode_notification("roomClosed", {"roomId": room_id}))
            else:
                frames.append(encode_notification("roomChanged", summary))
        for conn in list(self.viewers.values()):  # encoded once, sent to each viewer
            for frame in frames:
                conn.send(frame)
        return len(frames)


class RemoteRooms:
    """The other nodes' listed rooms, as their messages said.

    Each node publishes ``{"node", "rooms": {id: summary or null}, "replace"}``
    when its listed rooms change (``replace``: this is all of them), and the
    reaper (or the node itself, leaving) ``{"node", "gone": true}`` when its
    records are removed.  A room lives on one node, but while it moves two
    nodes may list it for a moment: the last message wins, and a node closing
    a room it no longer holds here closes nothing.

    Bounded: at most ``max_rooms`` rooms (beyond, new rooms are left out and
    counted in ``dropped`` until some close); messages that are not what a
    node sends are ignored and counted in ``invalid``.
    """

    __slots__ = ("_by_node", "_rooms", "dropped", "invalid", "max_rooms", "node_id")

    def __init__(self, node_id: str, max_rooms: int = 10000) -> None:
        self.node_id = node_id
        self.max_rooms = max_rooms
        self._rooms: dict[str, tuple[str, RoomSummary]] = {}
        self._by_node: dict[str, set[str]] = {}
        self.dropped = 0
        self.invalid = 0

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, room_id: str) -> RoomSummary | None:
        entry = self._rooms.get(room_id)
        return entry[1] if entry is not None else None

    def items(self) -> Iterable[tuple[str, RoomSummary]]:
        return ((room_id, summary) for room_id, (_, summary) in self._rooms.items())

    @property
    def nodes(self) -> int:
        return len(self._by_node)

    def message(self, raw: str | bytes) -> set[str]:
        """Apply one pub/sub message; the rooms whose state changed."""
        try:
            message = orjson.loads(raw)
            node = message["node"]
            if not isinstance(node, str):
                raise TypeError("node")
            if node == self.node_id:
                return set()
            if message.get("gone"):
                return self.node_gone(node)
            rooms = message["rooms"]
            if not isinstance(rooms, dict):
                raise TypeError("rooms")
            return self.update(node, rooms, replace=bool(message.get("replace")))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.invalid += 1
            return set()

    def update(
        self, node: str, rooms: Mapping[str, RoomSummary | None], *, replace: bool = False
    ) -> set[str]:
        """``node`` says these rooms changed (None: closed); with ``replace``, it
        has no other room."""
        changed: set[str] = set()
        held = self._by_node.setdefault(node, set())
        if replace:
            for room_id in held - rooms.keys():
                changed |= self._remove(node, room_id)
        for room_id, summary in rooms.items():
            if summary is None:
                changed |= self._remove(node, room_id)
            elif isinstance(summary, dict) and isinstance(room_id, str):
                changed |= self._put(node, room_id, summary)
            else:
                self.invalid += 1
        if not held:
            self._by_node.pop(node, None)
        return changed

    def node_gone(self, node: str) -> set[str]:
        """``node``'s records were removed (it died and was reaped, or left)."""
        changed: set[str] = set()
        for room_id in list(self._by_node.get(node, ())):
            changed |= self._remove(node, room_id)
        self._by_node.pop(node, None)
        return changed

    def load(self, snapshot: Mapping[str, Mapping[str, RoomSummary]]) -> set[str]:
        """Every node's rooms as Redis has them now (after a (re)subscription)."""
        changed: set[str] = set()
        for node in list(self._by_node):
            if node not in snapshot:
                changed |= self.node_gone(node)
        for node, rooms in snapshot.items():
            if node != self.node_id:
                changed |= self.update(node, rooms, replace=True)
        return changed

    def clear(self) -> set[str]:
        changed = set(self._rooms)
        self._rooms.clear()
        self._by_node.clear()
        return changed

    def _put(self, node: str, room_id: str, summary: RoomSummary) -> set[str]:
        entry = self._rooms.get(room_id)
        if entry is None and len(self._rooms) >= self.max_rooms:
            self.dropped += 1
            return set()
        if entry is not None and entry[0] != node:
            self._by_node.get(entry[0], set()).discard(room_id)
        summary = {**summary, "roomId": room_id}
        self._rooms[room_id] = (node, summary)
        self._by_node.setdefault(node, set()).add(room_id)
        return {room_id} if entry is None or entry[1] != summary else set()

    def _remove(self, node: str, room_id: str) -> set[str]:
        held = self._by_node.get(node)
        if held is not None:
            held.discard(room_id)
        entry = self._rooms.get(room_id)
        if entry is None or entry[0] != node:
            return set()
        del self._rooms[room_id]
        return {room_id}


class WatchSchedule:
    """Whether to follow the other nodes' rooms: while the lobby has viewers,
    and ``linger`` seconds after the last one left, so a page reload costs no
    unsubscription, subscription and reload of every node's rooms.  Sans-I/O."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.viewers = 0
        self._idle_since: float | None = None

    def viewers_changed(self, viewers: int, now: float) -> None:
        if viewers and not self.viewers:
            self._idle_since = None
        elif not viewers and self.viewers:
            self._idle_since = now
        self.viewers = viewers

    def wanted(self, now: float) -> bool:
        if self.viewers:
            return True
        return self._idle_since is not None and now < self._idle_since + self.linger

    def stopped(self) -> None:
        """The subscription ended (not wanted any more)."""
        self._idle_since = None
