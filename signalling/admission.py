"""Cluster-wide admission counts: this node's share, and when to tell Redis.

With several nodes (docs/scaling.md) two limits hold across the cluster: the
connections of one client address (``--max-connections-per-ip``) and the
sessions of the deployment (``--cluster-max-sessions``).  Each node keeps its
*own share* in Redis, one hash field per node:

- ``P:ip:ADDR``    node -> connections from ADDR on that node
- ``P:admitted``   node -> sessions on that node (and admissions on their way in)
- ``P:node:ID:ips`` the addresses the node has a field for (for the reaper)

so a count is never decremented by a node that did not increment it, and a
node's death removes exactly its share: the reaper deletes its fields with
the rest of its records.  A newcomer is checked and counted in one Lua script
(the sum of every node's field against the limit, then this node's field +1).

``AdmissionLedger`` is the sans-I/O part, fed ``now`` and tested with a fake
clock.  It knows what the node counts (``counted``: its live connections per
address; the sessions are the registry's size, given by the caller) and what
Redis holds for it as far as it knows (``applied``).  The difference is sent
as increments, so releases cost nothing per connection: they are batched
(``release_delay``) and ride along with the next admission.  Only one call is
in flight at a time, so the node always knows which of its writes Redis
applied; a call whose outcome is unknown (a timeout), and a lease found lost
(Redis restarted empty, the reaper removed the node), switch to a *resync*:
absolute values of everything the node counts, from its live state.

When Redis does not answer, or the directory is down, a newcomer is admitted
under the node's local limits alone (``Verdict.LOCAL``); it is still counted
here, and reaches Redis with the next resync or increment, so the cluster
counts converge to the live state once Redis is back.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class Verdict(enum.StrEnum):
    GRANTED = "granted"  # counted in Redis, within the cluster-wide limits
    LOCAL = "local"  # Redis not asked (down, or nothing to count): the node's own limits only
    CONNECTIONS_PER_IP = "connections_per_ip"  # the address has its connections: refuse (4429)
    FULL = "full"  # the cluster has its sessions: refuse (4503)


@dataclass(eq=False, slots=True)
class Request:
    """One newcomer's admission: its connection (``address``; None when an
    earlier request of the same connection counts it) and/or a session."""

    address: str | None
    session: bool
    verdict: Verdict | None = None
    counted: bool = False
    """Its connection is in ``AdmissionLedger.counted`` (until ``release``)."""
    reserved: bool = False
    """Its session slot is held in Redis until ``settle`` (the session is then
    in the registry, which counts it) or ``release``."""
    abandoned: bool = False
    """Its connection went away while Redis was asked: undo whatever comes back."""

    @property
    def admitted(self) -> bool:
        return self.verdict in (Verdict.GRANTED, Verdict.LOCAL)


@dataclass(frozen=True, slots=True)
class Batch:
    """One admission call: this node's field changes, then acquisitions in order.

    ``ops`` are ``(kind, address, n)``: ``"i"`` add n to this node's field of
    ``P:ip:ADDR``, ``"I"`` set it to n (0 removes it), ``"s"``/``"S"`` the same
    for its field of ``P:admitted`` (address empty).
    """

    ops: tuple[tuple[str, str, int], ...]
    acquire: tuple[Request, ...] = ()
    resync: bool = False


@dataclass
class AdmissionLedger:
    """This node's share of the cluster-wide counts (see the module docstring)."""

    count_connections: bool
    """Connections per address are counted across the cluster."""
    max_connections_per_ip: int | None
    max_sessions: int | None
    """Sessions of the whole cluster; None: not counted."""
    release_delay: float = 0.1
    """Changes with no admission waiting are sent at most this late (batched)."""
    batch_size: int = 500

    counted: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    sessions_applied: int = 0
    reservations: int = 0
    waiting: deque[Request] = field(default_factory=deque)
    in_flight: Batch | None = None
    resync_needed: bool = False
    changed_since: float | None = None
    """When the oldest change not yet sent was made (None: none)."""
    cluster_sessions: int | None = None
    """The cluster's session count, as the last answer said."""
    calls: int = 0
    _dirty: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.max_connections_per_ip is None:
            self.count_connections = False

    @property
    def count_sessions(self) -> bool:
        return self.max_sessions is not None

    @property
    def enabled(self) -> bool:
        return self.count_connections or self.count_sessions

    # -- newcomers ------------------------------------------------------------------------

    def request(self, address: str | None, *, session: bool) -> Request:
        """A newcomer to admit.  Its verdict is set at once (LOCAL) when there is
        nothing to ask Redis; otherwise the caller either ``enqueue``s it or,
        with Redis down, answers it ``local``."""
        counts_address = address is not None and self.count_connections
        request = Request(address if counts_address else None, session and self.count_sessions)
        if request.address is None and not request.session:
            request.verdict = Verdict.LOCAL
        return request

    def enqueue(self, request: Request) -> None:
        self.waiting.append(request)

    def local(self, request: Request, now: float) -> None:
        """Admit under the node's own limits (Redis down): still counted here, so
        Redis learns of it once it is back."""
        request.verdict = Verdict.LOCAL
        if request.address is not None:
            self._count(request.address, 1)
            request.counted = True
            self.changed(now)

    def abandon(self, request: Request, now: float) -> None:
        """Its connection is gone before the answer: whatever it gets is undone."""
        request.abandoned = True
        if request in self.waiting:
            self.waiting.remove(request)
            request.verdict = Verdict.LOCAL
            return
        if request.verdict is not None:
            self.release(request, now)

    def settle(self, request: Request) -> None:
        """The admission reached the registry (which counts its session from now
        on), or did not: either way its reserved slot is no longer needed."""
        if request.reserved:
            request.reserved = False
            self.reservations -= 1

    def release(self, request: Request, now: float) -> None:
        """Its connection closed: give back what it holds."""
        if request.counted and request.address is not None:
            request.counted = False
            self._count(request.address, -1)
            self.changed(now)
        if request.reserved:
            self.settle(request)
            self.changed(now)

    def changed(self, now: float) -> None:
        """Something this node counts changed (a session ended...): send it soon."""
        if self.changed_since is None:
            self.changed_since = now

    # -- calls ----------------------------------------------------------------------------

    def next_batch(self, now: float, sessions: int) -> Batch | None:
        """The next call to make, or None (one in flight, a resync first, or only
        changes younger than ``release_delay``).  ``sessions``: the registry's size."""
        if self.in_flight is not None or self.resync_needed:
            return None
        acquire = tuple(
            self.waiting.popleft() for _ in range(min(len(self.waiting), self.batch_size))
        )
        due = self.changed_since is not None and now >= self.changed_since + self.release_delay
        if not acquire and not due:
            return None
        ops: list[tuple[str, str, int]] = []
        if self.count_sessions:
            delta = sessions + self.reservations - self.sessions_applied
            if delta:
                ops.append(("s", "", delta))
        for address in list(self._dirty):
            if len(ops) >= self.batch_size:
                break
            self._dirty.discard(address)
            delta = self.counted.get(address, 0) - self.applied.get(address, 0)
            if delta:
                ops.append(("i", address, delta))
        if len(ops) < self.batch_size and not self._dirty:
            self.changed_since = None
        if not ops and not acquire:
            return None
        self.in_flight = Batch(tuple(ops), acquire)
        self.calls += 1
        return self.in_flight

    def resync_batches(self, listed: set[str], sessions: int) -> list[Batch]:
        """Absolute values of everything this node counts (``listed``: the
        addresses Redis has a field of this node for, to remove the stale ones)."""
        ops: list[tuple[str, str, int]] = []
        if self.count_sessions:
            ops.append(("S", "", sessions + self.reservations))
        if self.count_connections:
            ops += [("I", address, count) for address, count in self.counted.items()]
            ops += [("I", address, 0) for address in listed if address not in self.counted]
        size = self.batch_size
        return [Batch(tuple(ops[i : i + size]), resync=True) for i in range(0, len(ops), size)]

    def sending(self, batch: Batch) -> None:
        """A resync batch leaves now (counted as a call)."""
        self.in_flight = batch
        self.calls += 1

    def resynced(self, now: float) -> None:
        """Every resync batch was applied: increments again (what changed meanwhile
        is sent at once)."""
        self.resync_needed = False
        self.changed(now)

    def answered(
        self, batch: Batch, verdicts: list[str], cluster_sessions: int | None, now: float
    ) -> list[Request]:
        """Redis applied ``batch``: its ops, then its acquisitions with these
        verdicts.  Returns the requests decided."""
        self.in_flight = None
        if cluster_sessions is not None:
            self.cluster_sessions = cluster_sessions
        for kind, address, n in batch.ops:
            if kind == "i":
                self._applied(address, self.applied.get(address, 0) + n)
            elif kind == "I":
                self._applied(address, n)
            elif kind == "s":
                self.sessions_applied += n
            else:
                self.sessions_applied = n
        for request, verdict in zip(batch.acquire, verdicts, strict=True):
            if request.verdict is not None:
                continue  # decided meanwhile (draining): Redis's share is being removed
            if verdict == "ok":
                request.verdict = Verdict.GRANTED
                if request.address is not None:
                    self._count(request.address, 1)
                    self._applied(request.address, self.applied.get(request.address, 0) + 1)
                    request.counted = True
                if request.session:
                    request.reserved = True
                    self.reservations += 1
                    self.sessions_applied += 1
                if request.abandoned:
                    self.release(request, now)
            elif verdict == "ip":
                request.verdict = Verdict.CONNECTIONS_PER_IP
            else:
                request.verdict = Verdict.FULL
        return list(batch.acquire)

    def failed(self, now: float, batch: Batch | None = None) -> list[Request]:
        """A call (``batch``, by default the one in flight) did not get an answer,
        or found the node's lease lost: what it wrote is unknown, so the next
        call is a resync; the newcomers in it and those waiting are admitted
        under local limits.  Returns them."""
        batch = batch or self.in_flight
        self.in_flight = None
        self.resync_needed = True
        decided = [*(batch.acquire if batch is not None else ()), *self.waiting]
        self.waiting.clear()
        for request in decided:
            self.local(request, now)
            if request.abandoned:
                self.release(request, now)
        return decided

    def fall_back(self, now: float) -> list[Request]:
        """Redis is away: the newcomers waiting are admitted under local limits
        (and counted here).  Returns them."""
        decided = list(self.waiting)
        self.waiting.clear()
        for request in decided:
            self.local(request, now)
        return decided

    def lost(self) -> None:
        """Redis may have lost this node's records (re-registered after its lease
        expired, or an empty Redis): resync before the next increment."""
        self.resync_needed = True

    def stop(self) -> list[Request]:
        """Draining: Redis is left alone from now on (the leave script removes the
        node's share); newcomers, waiting or in a call that will not be
        answered, are admitted locally.  Returns them."""
        decided = [*(self.in_flight.acquire if self.in_flight is not None else ()), *self.waiting]
        self.in_flight = None
        self.waiting.clear()
        for request in decided:
            request.verdict = Verdict.LOCAL
        self.count_connections = False
        self.max_sessions = None
        return decided

    def next_deadline(self, now: float) -> float | None:
        """When changes are due to be sent (None: nothing pending)."""
        if self.waiting:
            return now
        if self.changed_since is None:
            return None
        return max(now, self.changed_since + self.release_delay)

    @property
    def pending(self) -> bool:
        """Anything not yet in Redis (for tests: the ledger is back to rest)."""
        return bool(self.waiting or self._dirty or self.in_flight or self.changed_since is not None)

    # -- internals ------------------------------------------------------------------------

    def _count(self, address: str, n: int) -> None:
        value = self.counted.get(address, 0) + n
        if value > 0:
            self.counted[address] = value
        else:
            self.counted.pop(address, None)
        self._dirty.add(address)

    def _applied(self, address: str, value: int) -> None:
        if value > 0:
            self.applied[address] = value
        else:
            self.applied.pop(address, None)
        if self.counted.get(address, 0) != value:
            self._dirty.add(address)
        else:
            self._dirty.discard(address)
