"""The directory in Redis: nodes, room leases with fencing epochs, sessions.

Keys (``P`` is ``--redis-prefix``, default ``ghostless``; docs/scaling.md):

- ``P:nodes``                  set of node ids that registered
- ``P:node:ID``                hash: incarnation, address, sessions, rooms, draining
- ``P:node:ID:alive``          the node's liveness lease: its incarnation, ``PX`` ttl,
                               renewed every ``renew_interval``; Redis expires it
- ``P:node:ID:rooms``          set of the rooms the node holds
- ``P:node:ID:sessions``       set of the ids of its sessions
- ``P:room:ROOM``              hash: node, incarnation, epoch (the room's lease)
- ``P:epoch``                  the fencing counter, INCR'd by every acquisition
- ``P:session:SID``            hash: node, room, peer, user, state, name
- ``P:reaper``                 the cluster reaper's leadership (``SET NX PX``)

A room lease has no TTL of its own: it is bound to its node's liveness key
(it counts only while ``P:node:ID:alive`` holds the same incarnation), so a
node that dies frees all its rooms at once, when Redis expires that key.
Every change is one Lua script, atomic in Redis; each checks that the
caller's liveness key is still its own, so a node whose lease expired
cannot write a record the reaper would have to find again.

The scripts build key names from the prefix: one Redis server (with replicas
or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .directory import (
    Claim,
    ClaimOutcome,
    LeaseSchedule,
    LeaseState,
    LeaseTimings,
    RenewResult,
)

if TYPE_CHECKING:
    from .lifecycle import SessionLifecycle
    from .liveness import Session

logger = logging.getLogger(__name__)

_PURGE = """
local function purge(p, node, inc)
  local rooms = p .. ':node:' .. node .. ':rooms'
  for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
    local key = p .. ':room:' .. room
    local owner = redis.call('HMGET', key, 'node', 'incarnation')
    if owner[1] == node and (inc == '' or owner[2] == inc) then
      redis.call('DEL', key)
    end
  end
  redis.call('DEL', rooms)
  local sessions = p .. ':node:' .. node .. ':sessions'
  for _, sid in ipairs(redis.call('SMEMBERS', sessions)) do
    redis.call('DEL', p .. ':session:' .. sid)
  end
  redis.call('DEL', sessions)
end
"""

RENEW = (
    _PURGE
    + """
-- ARGV: prefix, node, incarnation, ttl (ms), then field/value pairs of the node hash
local p, node, inc = ARGV[1], ARGV[2], ARGV[3]
local alive = p .. ':node:' .. node .. ':alive'
local info = p .. ':node:' .. node
local current = redis.call('GET', alive)
if current and current ~= inc then
  return 'conflict'
end
local result = 'renewed'
if not current then
  result = 'registered'
  local previous = redis.call('HGET', info, 'incarnation')
  if previous and previous ~= inc then
    purge(p, node, '')  -- what an earlier run of this node id left
  end
end
redis.call('SET', alive, inc, 'PX', ARGV[4])
redis.call('SADD', p .. ':nodes', node)
redis.call('HSET', info, 'incarnation', inc, unpack(ARGV, 5))
return result
"""
)

CLAIM = """
-- ARGV: prefix, node, incarnation, room
local p, node, inc, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('GET', p .. ':node:' .. node .. ':alive') ~= inc then
  return {'unavailable', ''}
end
local key = p .. ':room:' .. room
local owner = redis.call('HMGET', key, 'node', 'incarnation')
if owner[1] and not (owner[1] == node and owner[2] == inc) then
  if redis.call('GET', p .. ':node:' .. owner[1] .. ':alive') == owner[2] then
    return {'elsewhere', owner[1]}
  end
  redis.call('SREM', p .. ':node:' .. owner[1] .. ':rooms', room)  -- its node is gone
end
local epoch = redis.call('INCR', p .. ':epoch')
redis.call('HSET', key, 'node', node, 'incarnation', inc, 'epoch', epoch)
redis.call('SADD', p .. ':node:' .. node .. ':rooms', room)
return {'granted', tostring(epoch)}
"""

HOLDER = """
-- ARGV: prefix, room.  The node whose lease of the room is live, or ''.
local p, room = ARGV[1], ARGV[2]
local owner = redis.call('HMGET', p .. ':room:' .. room, 'node', 'incarnation')
if owner[1] and redis.call('GET', p .. ':node:' .. owner[1] .. ':alive') == owner[2] then
  return owner[1]
end
return ''
"""

RELEASE = """
-- ARGV: prefix, node, room, epoch ('*': whichever epoch this node holds)
local p, node, room, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p .. ':room:' .. room
local owner = redis.call('HMGET', key, 'node', 'epoch')
local ours = owner[1] == node
if ours and (epoch == '*' or owner[2] == epoch) then
  redis.call('DEL', key)
  ours = false
end
if not ours then
  redis.call('SREM', p .. ':node:' .. node .. ':rooms', room)
end
return 1
"""

SESSIONS = """
-- ARGV: prefix, node, incarnation, then ops: 'set' sid room peer user state name | 'del' sid
local p, node, inc = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', p .. ':node:' .. node .. ':alive') ~= inc then
  return 0
end
local index = p .. ':node:' .. node .. ':sessions'
local i = 4
while i <= #ARGV do
  local key = p .. ':session:' .. ARGV[i + 1]
  if ARGV[i] == 'set' then
    redis.call('HSET', key, 'node', node, 'room', ARGV[i + 2], 'peer', ARGV[i + 3],
               'user', ARGV[i + 4], 'state', ARGV[i + 5], 'name', ARGV[i + 6])
    redis.call('SADD', index, ARGV[i + 1])
    i = i + 7
  else
    redis.call('DEL', key)
    redis.call('SREM', index, ARGV[i + 1])
    i = i + 2
  end
end
return 1
"""

LEAVE = (
    _PURGE
    + """
-- ARGV: prefix, node, incarnation, mode ('withdraw': rooms and sessions; 'close': everything)
local p, node, inc, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local info = p .. ':node:' .. node
local alive = info .. ':alive'
if redis.call('HGET', info, 'incarnation') ~= inc then
  return 0  -- reaped already, or another run of this node id took over
end
purge(p, node, inc)
if mode == 'close' then
  if redis.call('GET', alive) == inc then
    redis.call('DEL', alive)
  end
  redis.call('DEL', info)
  redis.call('SREM', p .. ':nodes', node)
  if redis.call('GET', p .. ':reaper') == node then
    redis.call('DEL', p .. ':reaper')
  end
else
  redis.call('HSET', info, 'draining', '1')
end
return 1
"""
)

REAP = (
    _PURGE
    + """
-- ARGV: prefix, node, leadership ttl (ms).  Returns {leader (0/1), reaped node ids...}
local p, node = ARGV[1], ARGV[2]
local lock = p .. ':reaper'
local holder = redis.call('GET', lock)
if holder and holder ~= node then
  return {0}
end
redis.call('SET', lock, node, 'PX', ARGV[3])
local answer = {1}
for _, other in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if redis.call('EXISTS', p .. ':node:' .. other .. ':alive') == 0 then
    purge(p, other, '')
    redis.call('DEL', p .. ':node:' .. other)
    redis.call('SREM', p .. ':nodes', other)
    table.insert(answer, other)
  end
end
return answer
"""
)

_ERRORS = (RedisError, OSError, TimeoutError)
_SESSION_BATCH = 500


class RedisDirectory:
    """Nodes, room leases and sessions of a deployment, in one Redis."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        address: str,
        timings: LeaseTimings,
        prefix: str = "ghostless",
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.timings = timings
        self.prefix = prefix
        self.incarnation = secrets.token_hex(8)
        """This run of the node: a restart under the same node id is another owner."""
        self.schedule = LeaseSchedule(timings)
        self.redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timings.timeout,
            socket_connect_timeout=timings.timeout,
            # One immediate retry: a pooled connection that Redis dropped (a restart)
            # fails once, then reconnects.  Longer outages are the schedule's to
            # retry, on its own clock; a call never waits more than 2 timeouts.
            retry=Retry(NoBackoff(), 1),
        )
        self._renew = self.redis.register_script(RENEW)
        self._claim = self.redis.register_script(CLAIM)
        self._holder = self.redis.register_script(HOLDER)
        self._release = self.redis.register_script(RELEASE)
        self._sessions = self.redis.register_script(SESSIONS)
        self._leave = self.redis.register_script(LEAVE)
        self._reap = self.redis.register_script(REAP)
        self.held: dict[str, int] = {}
        """Rooms this node holds, and the fencing epoch of each lease."""
        self._pending_sessions: dict[str, Session | None] = {}
        """Session id -> the session to write (its state at flush time), or None: delete."""
        self._pending_releases: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lifecycle: SessionLifecycle | None = None
        self.reachable = False
        self.conflict = False
        self.draining = False
        self.errors = 0
        self.last_error: str | None = None
        self.reaped_nodes = 0
        self._loop = asyncio.get_running_loop()

    # -- the Directory protocol ---------------------------------------------------------

    async def start(self, lifecycle: SessionLifecycle) -> None:
        self._lifecycle = lifecycle
        observer = lifecycle.observer
        for event in ("sessionstarted", "sessionjoined", "sessionresumed", "sessionreconnecting"):
            observer.on(event, self._session_changed)
        observer.on("sessionended", self._session_ended)
        await self._renew_lease()
        if not self.up:
            logger.warning(
                "directory: Redis unreachable at start (%s): serving no new room until it is",
                self.last_error,
            )
        self._task = asyncio.ensure_future(self._run())

    async def claim_room(self, room_id: str) -> Claim:
        if self.draining or self.conflict:
            return Claim(ClaimOutcome.UNAVAILABLE)
        self._pending_releases.pop(room_id, None)
        try:
            answer = await self._call(self._claim, self.node_id, self.incarnation, room_id)
        except _ERRORS as exc:
            self._failed("claim", exc)
            return Claim(ClaimOutcome.UNAVAILABLE)
        outcome, detail = answer[0], answer[1]
        if outcome == "granted":
            epoch = int(detail)
            self.held[room_id] = epoch
            return Claim(ClaimOutcome.GRANTED, epoch)
        if outcome == "elsewhere":
            return Claim(ClaimOutcome.ELSEWHERE, owner=str(detail))
        return Claim(ClaimOutcome.UNAVAILABLE)

    async def holder(self, room_id: str) -> str | None:
        if room_id in self.held or not self.reachable:
            return None  # ours, or Redis known away: no wait for an answer
        try:
            node = await self._call(self._holder, room_id)
        except _ERRORS as exc:
            self._failed("holder", exc)
            return None
        return str(node) if node and node != self.node_id else None

    def room_closed(self, room_id: str) -> None:
        epoch = self.held.pop(room_id, None)
        if epoch is not None and not self.draining:
            self._pending_releases[room_id] = str(epoch)
            self._wake.set()

    async def withdraw(self) -> None:
        self.draining = True
        self.held.clear()
        self._pending_sessions.clear()
        self._pending_releases.clear()
        try:
            await self._call(self._leave, self.node_id, self.incarnation, "withdraw")
        except _ERRORS as exc:
            self._failed("withdraw", exc)

    async def close(self) -> None:
        self.draining = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._call(self._leave, self.node_id, self.incarnation, "close")
        except _ERRORS as exc:
            self._failed("close", exc)
        await self.redis.aclose()

    @property
    def up(self) -> bool:
        state = self.schedule.state(self._loop.time())
        return self.reachable and not self.conflict and state is LeaseState.HELD

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "nodeId": self.node_id,
            "up": self.up,
            "lease": self.schedule.state(self._loop.time()).value,
            "reachable": self.reachable,
            "conflict": self.conflict,
            "draining": self.draining,
            "rooms": len(self.held),
            "pendingWrites": len(self._pending_sessions) + len(self._pending_releases),
            "errors": self.errors,
            "lastError": self.last_error,
        }

    # -- sessions, through the lifecycle's observer ---------------------------------------

    def _session_changed(self, session: Session) -> None:
        if not self.draining:
            self._pending_sessions[session.id] = session
            self._wake.set()

    def _session_ended(self, session: Session, *_: Any) -> None:
        if not self.draining:
            self._pending_sessions[session.id] = None
            self._wake.set()

    # -- the loop: renew, reconcile, reap, write ------------------------------------------

    async def _run(self) -> None:
        schedule = self.schedule
        while True:
            try:
                now = self._loop.time()
                if schedule.renewal_due(now):
                    await self._renew_lease()
                if schedule.reconcile_needed and self.up:
                    await self._reconcile()
                if schedule.reap_due(self._loop.time()):
                    await self._run_reaper()
                if (self._pending_sessions or self._pending_releases) and self.up:
                    await self._flush()
            except Exception:  # never let the directory's loop die
                logger.exception("directory loop failed")
            self._wake.clear()
            now = self._loop.time()
            delay = schedule.next_deadline(now) - now
            if (self._pending_sessions or self._pending_releases) and not self.up:
                delay = min(delay, 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))

    async def _renew_lease(self) -> None:
        schedule = self.schedule
        schedule.renewing(self._loop.time())
        lifecycle = self._lifecycle
        sessions = len(lifecycle.registry) if lifecycle is not None else 0
        rooms = len(lifecycle.rooms) if lifecycle is not None else 0
        try:
            answer = await self._call(
                self._renew,
                self.node_id,
                self.incarnation,
                int(self.timings.ttl * 1000),
                "address",
                self.address,
                "sessions",
                sessions,
                "rooms",
                rooms,
                "draining",
                int(self.draining),
            )
        except _ERRORS as exc:
            schedule.failed(self._loop.time())
            self._failed("renew", exc)
            return
        result = RenewResult(answer)
        was_up = self.up
        schedule.renewed(self._loop.time(), result)
        if result is RenewResult.CONFLICT:
            if not self.conflict:
                logger.error(
                    "directory: node id %s is in use by another live process: no room is"
                    " claimed here until it is free (set a unique --node-id)",
                    self.node_id,
                )
            self.conflict = True
            return
        self.conflict = False
        if not was_up and self.up:
            logger.info("directory: registered as %s in Redis", self.node_id)

    async def _reconcile(self) -> None:
        """Our records may be gone (our lease expired, or Redis lost its data):
        claim the rooms we serve again, drop those another node took meanwhile,
        release what Redis lists but we closed, and rewrite every session."""
        lifecycle = self._lifecycle
        if lifecycle is None:
            return
        logger.warning("directory: lease was lost; reconciling %d rooms", len(lifecycle.rooms))
        node_key = f"{self.prefix}:node:{self.node_id}"
        try:
            listed_rooms = await self._op(self.redis.smembers(f"{node_key}:rooms"))
            listed_sessions = await self._op(self.redis.smembers(f"{node_key}:sessions"))
        except _ERRORS as exc:
            self._failed("reconcile", exc)
            return
        for room_id in set(listed_rooms) - set(lifecycle.rooms):
            self._pending_releases[room_id] = "*"
        for room_id in list(lifecycle.rooms):
            claim = await self.claim_room(room_id)
            if claim.outcome is ClaimOutcome.UNAVAILABLE:
                return  # again at the next renewal
            if claim.outcome is ClaimOutcome.ELSEWHERE:
                logger.warning(
                    "directory: room %s is held by %s now: its sessions here are ended",
                    room_id,
                    claim.owner,
                )
                lifecycle.room_lost(room_id)
        registry = lifecycle.registry
        for session in registry.by_id.values():
            if session.open:
                self._pending_sessions[session.id] = session
        for session_id in set(listed_sessions) - set(registry.by_id):
            self._pending_sessions.setdefault(session_id, None)
        self.schedule.reconciled()
        self._wake.set()

    async def _run_reaper(self) -> None:
        self.schedule.reaped(self._loop.time())
        try:
            answer = await self._call(self._reap, self.node_id, int(self.timings.reaper_ttl * 1000))
        except _ERRORS as exc:
            self._failed("reap", exc)
            return
        dead = [str(node) for node in answer[1:]]
        if dead:
            self.reaped_nodes += len(dead)
            logger.warning("directory: reaped the records of dead nodes %s", ", ".join(dead))

    async def _flush(self) -> None:
        batch, self._pending_sessions = self._pending_sessions, {}
        releases, self._pending_releases = self._pending_releases, {}
        items = list(batch.items())
        try:
            for start in range(0, len(items), _SESSION_BATCH):
                ops: list[str] = []
                for session_id, session in items[start : start + _SESSION_BATCH]:
                    if session is None or not session.open:
                        ops += ("del", session_id)
                    else:
                        ops += (
                            "set",
                            session_id,
                            session.room_id,
                            session.peer_id,
                            session.user_id,
                            session.state.value,
                            session.display_name,
                        )
                if not await self._call(self._sessions, self.node_id, self.incarnation, *ops):
                    raise _NotRegistered
                for session_id, _ in items[start : start + _SESSION_BATCH]:
                    batch.pop(session_id, None)
            for room_id, epoch in list(releases.items()):
                await self._call(self._release, self.node_id, room_id, epoch)
                del releases[room_id]
        except (*_ERRORS, _NotRegistered) as exc:
            if not isinstance(exc, _NotRegistered):
                self._failed("write", exc)
            # Keep what was not written, unless something newer is queued.
            for session_id, value in batch.items():
                self._pending_sessions.setdefault(session_id, value)
            for room_id, epoch in releases.items():
                if room_id not in self.held:
                    self._pending_releases.setdefault(room_id, epoch)

    # -- Redis calls ----------------------------------------------------------------------

    async def _call(self, script: Any, *args: Any) -> Any:
        return await self._op(script(args=[self.prefix, *args]))

    async def _op(self, awaitable: Any) -> Any:
        answer = await asyncio.wait_for(awaitable, self.timings.timeout * 2)
        if not self.reachable:
            logger.info("directory: Redis reachable")
        self.reachable = True
        return answer

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        if self.reachable:
            logger.warning("directory: Redis unreachable (%s)", self.last_error)
        self.reachable = False


class _NotRegistered(Exception):
    """The node's liveness key is not its own (expired): writes wait for the reconcile."""
