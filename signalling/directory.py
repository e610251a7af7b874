"""The directory: which node holds which room, and who is where, across nodes.

``SessionLifecycle`` asks its ``Directory`` before it creates a room
(:meth:`Directory.claim_room`) and tells it when a room closes; the directory
follows the sessions through the lifecycle's observer.  Two implementations:

- ``LocalDirectory`` (this module): the embedded default, one node and no
  shared state: every claim is granted, nothing leaves the process.
- ``RedisDirectory`` (``signalling.redis_directory``): nodes, room leases with
  fencing epochs and sessions in Redis, for several nodes behind HAProxy
  (docs/scaling.md).

The directory also carries what spans nodes at the edge: the cluster-wide
admission counts (connections per address, sessions: ``admit``, ``settle``,
``release``; the policy is ``signalling.admission``) and the lobby's rooms of
the other nodes (``attach_lobby``; the merging is ``signalling.lobby``).

``LeaseSchedule`` is the sans-I/O part of the Redis directory: when the node
renews its liveness lease, when the cluster reaper runs, and what an answer
(or its absence) means; it is fed ``now`` and tested with a fake clock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .admission import Request, Verdict

if TYPE_CHECKING:
    from .lifecycle import SessionLifecycle
    from .lobby import Lobby


HOLDER_HEADER = "X-Ghostless-Holder"
"""On a node's handshake response (101): the live node that holds the room
instead of this one.  HAProxy then stores no stick entry for this node and
remembers the holder for the room's next connection (docs/scaling.md)."""


class ClaimOutcome(enum.StrEnum):
    GRANTED = "granted"  # the room is this node's: create it
    ELSEWHERE = "elsewhere"  # another live node holds it: refuse (4421), the client retries
    UNAVAILABLE = "unavailable"  # the directory cannot be reached: refuse (4504)


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to a claim: the outcome, the fencing epoch of a granted
    lease, the node that holds the room elsewhere."""

    outcome: ClaimOutcome
    epoch: int = 0
    owner: str | None = None


class RoomRefused(Exception):
    """A room this node may not create now (``Claim`` says why)."""

    def __init__(self, room_id: str, claim: Claim) -> None:
        super().__init__(f"room {room_id}: {claim.outcome.value}")
        self.room_id = room_id
        self.claim = claim


class Directory(Protocol):
    """What the lifecycle and the edge need of a directory."""

    node_id: str

    async def start(self, lifecycle: SessionLifecycle) -> None:
        """Register the node and follow ``lifecycle``'s sessions (does not fail
        when the directory is unreachable: the node starts degraded)."""

    async def claim_room(self, room_id: str) -> Claim:
        """Take the lease of ``room_id`` for this node (before creating it)."""

    async def holder(self, room_id: str) -> str | None:
        """The live node that holds ``room_id``, when it is another one than this
        (None: no other node, or the directory cannot tell now).  Only a look:
        the claim decides."""

    def room_closed(self, room_id: str) -> None:
        """``room_id`` closed here: give its lease up (in the background)."""

    async def admit(self, address: str | None, *, session: bool) -> Request:
        """Count a newcomer in the cluster-wide limits: its connection from
        ``address`` (None: already counted) and, with ``session``, a session
        slot.  The verdict says whether it may come in; an admitted request is
        given back with ``release`` when its connection closes."""

    async def admit_sessions(self, count: int) -> list[Request]:
        """``count`` session slots of the cluster for queued newcomers (their
        connections are counted already), asked for in one call: each request's
        verdict says whether it got one (in order: the first ones do)."""

    @property
    def counts_sessions(self) -> bool:
        """Whether a session needs a slot of the cluster (``admit_sessions``)."""

    def follow_releases(self, freed: Callable[[], None] | None) -> None:
        """While ``freed`` is given: call it when another node gives session
        slots back (best effort: a message may be lost); None: stop following."""

    def settle(self, request: Request) -> None:
        """The admission reached the registry (or never will): its reserved
        session slot is the registry's session from now on (or free)."""

    def release(self, request: Request) -> None:
        """The request's connection closed: give back what it holds (idempotent)."""

    def attach_lobby(self, lobby: Lobby) -> None:
        """Let ``lobby`` span the nodes (publish its rooms, merge the others')."""

    async def withdraw(self) -> None:
        """Draining: take no more rooms, give up every room and session now."""

    async def close(self) -> None:
        """Clean shutdown: remove everything of this node from the directory."""

    def status(self) -> dict[str, Any]:
        """For /readyz and /debug/stats: ``{"kind", "nodeId", "up", ...}``."""

    @property
    def up(self) -> bool:
        """Whether new rooms can be registered now (the ``ghostless_directory_up`` gauge)."""


class LocalDirectory:
    """One node, no shared state: the embedded default (``scripts/serve``)."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._epoch = 0

    async def start(self, lifecycle: SessionLifecycle) -> None:
        return None

    async def claim_room(self, room_id: str) -> Claim:
        self._epoch += 1
        return Claim(ClaimOutcome.GRANTED, self._epoch)

    async def holder(self, room_id: str) -> str | None:
        return None

    def room_closed(self, room_id: str) -> None:
        return None

    async def admit(self, address: str | None, *, session: bool) -> Request:
        return Request(None, False, Verdict.LOCAL)  # one node: its own limits are all

    async def admit_sessions(self, count: int) -> list[Request]:
        return [Request(None, False, Verdict.LOCAL) for _ in range(count)]

    @property
    def counts_sessions(self) -> bool:
        return False

    def follow_releases(self, freed: Callable[[], None] | None) -> None:
        return None

    def settle(self, request: Request) -> None:
        return None

    def release(self, request: Request) -> None:
        return None

    def attach_lobby(self, lobby: Lobby) -> None:
        return None

    async def withdraw(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"kind": "local", "nodeId": self.node_id, "up": True}

    @property
    def up(self) -> bool:
        return True


# -- the sans-I/O lease schedule ---------------------------------------------------------------


@dataclass(frozen=True)
class LeaseTimings:
    """How long a node's liveness lease lasts in Redis, how often it is renewed,
    how often the cluster reaper runs, and how long one Redis call may take."""

    ttl: float = 3.0
    renew_interval: float = 1.0
    reaper_interval: float = 1.0
    timeout: float = 0.5
    stall_limit: float = 15.0
    """The lease is renewed from a thread (``lease_keeper``), while the event
    loop has run within this many seconds: a wedged loop lets it expire."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.ttl:
            raise ValueError("lease_renew_interval must be positive and shorter than lease_ttl")
        if self.reaper_interval <= 0:
            raise ValueError("reaper_interval must be positive")
        if not 0 < self.timeout <= self.renew_interval:
            raise ValueError("redis_timeout must be positive and at most lease_renew_interval")
        if not self.stall_limit >= self.renew_interval:
            raise ValueError("lease_stall_limit must be at least lease_renew_interval")

    @property
    def reaper_ttl(self) -> float:
        """The reaper's leadership lease: a few of its intervals."""
        return 3 * self.reaper_interval


class LeaseState(enum.StrEnum):
    UNREGISTERED = "unregistered"  # never renewed yet (Redis unreachable since the start)
    HELD = "held"  # renewed less than ``ttl`` ago (measured from when the call was sent)
    LOST = "lost"  # Redis may have expired it: the node's rooms may be taken elsewhere


class RenewResult(enum.StrEnum):
    """What the renewal script found in Redis."""

    RENEWED = "renewed"  # our key was there: extended
    REGISTERED = "registered"  # no key (first time, expired, or Redis lost its data): set anew
    CONFLICT = "conflict"  # another live process uses this node id


class LeaseSchedule:
    """When to renew the node's lease and run the reaper; what the answers mean.

    Pure: every method takes ``now`` (the node's monotonic clock).  The lease
    itself expires in Redis (``PX``): the only thing this clock decides is a
    lower bound of that expiry, ``sent + ttl`` for the last renewal Redis
    answered, because Redis set the new TTL after the call was sent.  No clock
    of another machine is ever compared with this one.
    """

    def __init__(self, timings: LeaseTimings) -> None:
        self.timings = timings
        self.valid_until: float | None = None
        self.next_renewal = 0.0
        self.next_reap = 0.0
        self._sent_at: float | None = None
        self._ever_held = False
        self.reconcile_needed = False
        """Set when Redis shows our records may be gone (registered anew after
        having held the lease): re-claim the rooms, rewrite the sessions."""

    def state(self, now: float) -> LeaseState:
        if self.valid_until is None:
            return LeaseState.UNREGISTERED
        return LeaseState.HELD if now < self.valid_until else LeaseState.LOST

    def renewal_due(self, now: float) -> bool:
        return self._sent_at is None and now >= self.next_renewal

    def renewing(self, now: float) -> None:
        """A renewal call leaves now."""
        self._sent_at = now

    def renewed(self, now: float, result: RenewResult) -> None:
        """Redis answered the renewal sent at ``renewing``'s ``now``."""
        sent = self._sent_at if self._sent_at is not None else now
        self._sent_at = None
        self.next_renewal = sent + self.timings.renew_interval
        if result is RenewResult.CONFLICT:
            self.valid_until = None  # not ours: claim nothing
            return
        if result is RenewResult.REGISTERED and self._ever_held:
            self.reconcile_needed = True
        self._ever_held = True
        self.valid_until = sent + self.timings.ttl

    def failed(self, now: float) -> None:
        """The renewal got no answer (Redis down, timeout): retry soon."""
        self._sent_at = None
        self.next_renewal = now + min(self.timings.renew_interval, 0.5)

    def reconciled(self) -> None:
        self.reconcile_needed = False

    def reap_due(self, now: float) -> bool:
        return now >= self.next_reap

    def reaped(self, now: float) -> None:
        """The reaper ran (or tried): the next run is one interval away."""
        self.next_reap = now + self.timings.reaper_interval

    def next_deadline(self, now: float) -> float:
        """When something is next due (the directory's loop sleeps until then)."""
        deadlines = [self.next_reap]
        if self._sent_at is None:
            deadlines.append(self.next_renewal)
        return max(now, min(deadlines))
