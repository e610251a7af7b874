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

With several nodes and ``--cluster-max-sessions`` a ticket also needs a
session slot of the cluster, which only Redis can grant (``ClusterSlots``
decides when to ask for them; docs/scaling.md, "Cluster-wide admission").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


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
        admitted = list(self._eligible(room_seats, free_sessions))
        for ticket in admitted:
            ticket.admitted = True
            self.remove(ticket)
        return admitted

    def admissible(self, *, room_seats: Callable[[str], int], free_sessions: int | None) -> int:
        """How many tickets ``admit`` would let in now (none is removed)."""
        return sum(1 for _ in self._eligible(room_seats, free_sessions))

    def _eligible(
        self, room_seats: Callable[[str], int], free_sessions: int | None
    ) -> Iterator[Ticket]:
        seats: dict[str, int] = {}
        for ticket in list(self._tickets):
            if free_sessions is not None and free_sessions <= 0:
                return
            free = seats.get(ticket.room_id)
            if free is None:
                free = room_seats(ticket.room_id)
            if free <= 0:
                seats[ticket.room_id] = 0
                continue
            seats[ticket.room_id] = free - 1
            if free_sessions is not None:
                free_sessions -= 1
            yield ticket

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


@dataclass
class ClusterSlots(Generic[T]):
    """When a node's queue asks the cluster for session slots (sans-I/O, fed ``now``).

    With ``--cluster-max-sessions`` a queued ticket goes in only with a slot
    Redis granted (a ``T``: the admission ledger's request, which holds it
    until the session reaches the registry or the connection closes).  The
    node asks for as many slots as it has tickets its own limits would admit,
    in one call; Redis grants them in order until the cluster is full, so the
    node's queue stays first in, first out.

    Once the cluster was found full (``full``), the node does not ask again
    until a slot may have freed: a session ended here (``slot_freed``), or
    another node's release message came (``slot_freed``), or the backstop
    ``retry_interval`` passed since the last call (release messages are
    lossy).  At most one call is in flight; messages received meanwhile make
    one more call after it, not one each.
    """

    retry_interval: float
    full: bool = False
    """The cluster had no slot for this queue at the last answer."""
    freed: bool = False
    """A slot may have freed since the last call left."""
    in_flight: int = 0
    """Slots asked for in the call in flight (0: none)."""
    retry_at: float | None = None
    """While ``full``: when to ask again even if no release was heard."""
    attempts: int = 0
    slots: deque[T] = field(default_factory=deque)
    """Granted and not yet given to a ticket."""

    def refused(self, now: float) -> None:
        """A newcomer found the cluster full: the queue waits for a slot."""
        self.full = True
        if self.retry_at is None:
            self.retry_at = now + self.retry_interval

    def slot_freed(self) -> None:
        """A session ended somewhere: worth one more call (if the queue waits)."""
        if self.full or self.in_flight:
            self.freed = True

    def ask(self, now: float, candidates: int) -> int:
        """How many slots to ask for now (0: no call): ``candidates`` tickets
        would be admitted by the node's own limits."""
        if self.in_flight:
            return 0
        wanted = candidates - len(self.slots)
        if wanted <= 0:
            if self.full:  # no ticket could take a slot now: look again later
                self.freed = False
                self.retry_at = now + self.retry_interval
            return 0
        if self.full and not self.freed and (self.retry_at is None or now < self.retry_at):
            return 0
        self.in_flight = wanted
        self.freed = False
        self.attempts += 1
        self.retry_at = now + self.retry_interval
        return wanted

    def answered(self, granted: list[T], refused: int) -> None:
        """The call came back: ``granted`` slots, ``refused`` asks found it full."""
        self.in_flight = 0
        self.slots.extend(granted)
        if refused:
            self.full = True
        else:
            self.full = False
            self.retry_at = None

    def failed(self) -> None:
        """The call did not come back (cancelled): ask again at ``retry_at``."""
        self.in_flight = 0

    def take(self) -> T:
        """A granted slot, for the ticket admitted now."""
        return self.slots.popleft()

    def surplus(self) -> list[T]:
        """The granted slots no ticket can take now (their tickets left while the
        call was in flight): removed, for the caller to give back at once."""
        spare = list(self.slots)
        self.slots.clear()
        return spare

    def idle(self) -> None:
        """The queue is empty: nothing waits for the cluster any more."""
        self.full = self.freed = False
        self.retry_at = None

    @property
    def waiting(self) -> bool:
        """The queue waits for a slot to free (follow the release messages)."""
        return self.full

    def due(self, now: float) -> bool:
        """A call would be made now if a ticket could take its slot."""
        if not self.full or self.in_flight:
            return False
        return self.freed or (self.retry_at is not None and now >= self.retry_at)
