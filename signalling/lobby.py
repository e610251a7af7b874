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
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from .connection import Connection
from .protocol import encode_notification

RoomSummary = dict[str, Any]


class Lobby:
    """Viewers and the rooms that changed since the last flush."""

    __slots__ = ("_dirty", "_patterns", "_summary", "viewers")

    def __init__(
        self, patterns: tuple[str, ...], summary: Callable[[str], RoomSummary | None]
    ) -> None:
        """``summary(room_id)``: the room's state now, or None if it is closed."""
        self._patterns = patterns
        self._summary = summary
        self._dirty: set[str] = set()
        self.viewers: dict[int, Connection] = {}

    def listed(self, room_id: str) -> bool:
        return any(fnmatch.fnmatchcase(room_id, pattern) for pattern in self._patterns)

    def changed(self, room_id: str) -> None:
        """The occupancy of ``room_id`` changed (cheap: sent at the next flush)."""
        if self.viewers and self.listed(room_id):
            self._dirty.add(room_id)

    def add(self, conn: Connection, rooms: list[RoomSummary]) -> None:
        self.viewers[conn.id] = conn
        conn.notify("rooms", {"rooms": [room for room in rooms if room["listed"]]})

    def remove(self, conn: Connection) -> None:
        self.viewers.pop(conn.id, None)

    def flush(self) -> int:
        """Send what changed to every viewer; how many rooms were sent."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        frames: list[bytes] = []
        for room_id in sorted(dirty):
            summary = self._summary(room_id)
            if summary is None:
                frames.append(encode_notification("roomClosed", {"roomId": room_id}))
            else:
                frames.append(encode_notification("roomChanged", summary))
        for conn in list(self.viewers.values()):  # encoded once, sent to each viewer
            for frame in frames:
                conn.send(frame)
        return len(frames)
