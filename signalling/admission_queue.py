"""The waiting queue for a full server or a full room (sans-I/O).

When the process's session capacity or a room's capacity is reached and the
server is configured to queue (``--when-full queue``), a newcomer waits here
instead of being refused: first in, first out, told its position, and
admitted as soon as a seat it can take is free.  A queued client holds no
session and no media, only its WebSocket.

One queue serves both capacities, in arrival order: a ticket is admitted when
its room has a free seat *and* the server has a free session slot, so a
newcomer to an empty room never overtakes earlier arrivals while the server is
full, and a full room never blocks the tickets of other rooms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class Ticket:
    """One queued connection."""

    room_id: str
    enqueued_at: float
    position: int = 0
    """The position last told to the client (0: not told yet)."""
    admitted: bool = False
    removed: bool = False


class AdmissionQueue:
    __slots__ = ("_tickets", "max_length", "timeout")

    def __init__(self, *, max_length: int, timeout: float) -> None:
        self.max_length = max_length
        self.timeout = timeout
        self._tickets: dict[Ticket, None] = {}  # insertion-ordered: FIFO

    def __len__(self) -> int:
        return len(self._tickets)

    def waiting_for(self, room_id: str) -> int:
        return sum(1 for ticket in self._tickets if ticket.room_id == room_id)

    def enqueue(self, room_id: str, now: float) -> Ticket | None:
        """A new ticket at the end of the queue; None when the queue is full."""
        if len(self._tickets) >= self.max_length:
            return None
        ticket = Ticket(room_id, now)
        self._tickets[ticket] = None
        return ticket

    def remove(self, ticket: Ticket) -> None:
        """The client left (or was admitted, or timed out): forget the ticket."""
        ticket.removed = True
        self._tickets.pop(ticket, None)

    def admit(self, *, room_seats: Callable[[str], int], free_sessions: int | None) -> list[Ticket]:
        """Tickets that may go in now, in arrival order.

        ``room_seats(room_id)``: free seats in that room (a large number when
        it has no capacity); ``free_sessions``: free session slots of the
        process (None: no limit).
        """
        admitted: list[Ticket] = []
        seats: dict[str, int] = {}
        for ticket in list(self._tickets):
            if free_sessions is not None and free_sessions <= 0:
                break
            free = seats.get(ticket.room_id)
            if free is None:
                free = room_seats(ticket.room_id)
            if free <= 0:
                seats[ticket.room_id] = 0
                continue
            seats[ticket.room_id] = free - 1
            if free_sessions is not None:
                free_sessions -= 1
            ticket.admitted = True
            self.remove(ticket)
            admitted.append(ticket)
        return admitted

    def expired(self, now: float) -> list[Ticket]:
        """Tickets that waited ``timeout``: removed, for the caller to close."""
        gone = [t for t in self._tickets if now - t.enqueued_at >= self.timeout]
        for ticket in gone:
            self.remove(ticket)
        return gone

    def moved(self, *, server_full: bool) -> list[tuple[Ticket, int]]:
        """Tickets whose position changed since they were last told, with the new one.

        A ticket's position counts the tickets it waits behind: those of its
        own room, and, while the server is full, every earlier one.
        """
        changes: list[tuple[Ticket, int]] = []
        ahead_in_room: dict[str, int] = {}
        for index, ticket in enumerate(self._tickets):
            same_room = ahead_in_room.get(ticket.room_id, 0)
            ahead_in_room[ticket.room_id] = same_room + 1
            position = 1 + (index if server_full else same_room)
            if position != ticket.position:
                ticket.position = position
                changes.append((ticket, position))
        return changes
