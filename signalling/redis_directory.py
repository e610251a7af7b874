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
- ``P:ip:ADDR``                hash: node -> connections from ADDR on it (cluster-wide
                               per-address limit; ``signalling.admission``)
- ``P:admitted``               hash: node -> sessions on it (``--cluster-max-sessions``)
- ``P:node:ID:ips``            set of the addresses the node has a ``P:ip`` field for
- ``P:node:ID:lobby``          hash: room -> JSON summary of the node's listed rooms
- ``P:lobby``                  pub/sub channel: ``{"node", "rooms", "replace"}`` when a
                               node's listed rooms change, ``{"node", "gone"}`` when its
                               records are removed (``signalling.lobby``)
- ``P:freed``                  pub/sub channel: a node's id when an admission call left
                               its field of ``P:admitted`` lower (one message per call,
                               not per session), or the field was removed: the queues of
                               the other nodes waiting for a cluster slot ask again

A room lease has no TTL of its own: it is bound to its node's liveness key
(it counts only while ``P:node:ID:alive`` holds the same incarnation), so a
node that dies frees all its rooms at once, when Redis expires that key.
The admission counts and the lobby are kept per node too, so that removing
a dead node's records (the reaper's one script) removes its share of them.
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
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry  # (the sync one would not retry a coroutine)
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .admission import AdmissionLedger, Batch, Request
from .directory import (
    Claim,
    ClaimOutcome,
    LeaseSchedule,
    LeaseState,
    LeaseTimings,
    RenewResult,
)
from .lease_keeper import LeaseKeeper, Outcome
from .lobby import RemoteRooms, RoomSummary, WatchSchedule

if TYPE_CHECKING:
    from .lifecycle import SessionLifecycle
    from .liveness import Session
    from .lobby import Lobby

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
  local ips = p .. ':node:' .. node .. ':ips'
  for _, ip in ipairs(redis.call('SMEMBERS', ips)) do
    redis.call('HDEL', p .. ':ip:' .. ip, node)
  end
  redis.call('DEL', ips)
  if redis.call('HDEL', p .. ':admitted', node) == 1 then
    redis.call('PUBLISH', p .. ':freed', node)
  end
  redis.call('DEL', p .. ':node:' .. node .. ':lobby')
  redis.call('PUBLISH', p .. ':lobby', cjson.encode({node = node, gone = true}))
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

ADMIT = """
-- ARGV: prefix, node, incarnation, per-address limit ('' = not counted), session limit
-- ('' = not counted), then ops: 'i' ADDR n: add n to this node's field of P:ip:ADDR;
-- 'I' ADDR n: set it; 's' '' n / 'S' '' n: the same for P:admitted; 'a' ADDR s: admit
-- a newcomer (ADDR '' = its connection is counted already; s '1': it takes a session).
-- Returns {1, cluster sessions (-1: not counted), verdict per 'a': ok, ip, full},
-- or {0} when the node's lease is not its own (nothing written).  When the call leaves
-- the node's field of P:admitted lower than it found it (sessions ended, and no
-- newcomer took their slots in the same call), the node's id is published on P:freed.
local p, node, inc = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', p .. ':node:' .. node .. ':alive') ~= inc then
  return {0}
end
local ip_limit, session_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local index = p .. ':node:' .. node .. ':ips'
local admitted = p .. ':admitted'
local function put(key, member, value)
  if value > 0 then
    redis.call('HSET', key, node, value)
    if member then redis.call('SADD', index, member) end
  else
    redis.call('HDEL', key, node)
    if member then redis.call('SREM', index, member) end
  end
end
local function field(key)
  return tonumber(redis.call('HGET', key, node) or '0')
end
local function sum(key)
  local total = 0
  for _, value in ipairs(redis.call('HVALS', key)) do
    total = total + tonumber(value)
  end
  return total
end
local sessions = nil
local before = session_limit and field(admitted)
local answer = {1, -1}
local i = 6
while i <= #ARGV do
  local op, addr, n = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = p .. ':ip:' .. addr
  if op == 'i' then
    put(key, addr, field(key) + tonumber(n))
  elseif op == 'I' then
    put(key, addr, tonumber(n))
  elseif op == 's' then
    put(admitted, nil, field(admitted) + tonumber(n))
    sessions = nil
  elseif op == 'S' then
    put(admitted, nil, tonumber(n))
    sessions = nil
  else
    local verdict = 'ok'
    if addr ~= '' and ip_limit and sum(key) >= ip_limit then
      verdict = 'ip'
    end
    local wants = n == '1' and session_limit
    if verdict == 'ok' and wants then
      sessions = sessions or sum(admitted)
      if sessions >= session_limit then
        verdict = 'full'
      end
    end
    if verdict == 'ok' then
      if addr ~= '' and ip_limit then
        put(key, addr, field(key) + 1)
      end
      if wants then
        put(admitted, nil, field(admitted) + 1)
        sessions = sessions + 1
      end
    end
    table.insert(answer, verdict)
  end
  i = i + 3
end
if session_limit then
  answer[2] = sessions or sum(admitted)
end
if before and field(admitted) < before then
  redis.call('PUBLISH', p .. ':freed', node)
end
return answer
"""

LOBBY = """
-- ARGV: prefix, node, incarnation, message to publish, mode ('update' or 'replace': these
-- are all the node's listed rooms), then pairs: room, JSON summary ('' = closed)
local p, node, inc = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', p .. ':node:' .. node .. ':alive') ~= inc then
  return 0
end
local key = p .. ':node:' .. node .. ':lobby'
if ARGV[5] == 'replace' then
  redis.call('DEL', key)
end
local i = 6
while i <= #ARGV do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', key, ARGV[i])
  else
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
redis.call('PUBLISH', p .. ':lobby', ARGV[4])
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
        admission: AdmissionLedger | None = None,
        lobby_linger: float = 30.0,
        lobby_max_rooms: int = 10000,
    ) -> None:
        """``admission``: the cluster-wide limits to count (by default none);
        ``lobby_linger``: how long to keep following the other nodes' rooms after
        the last lobby viewer left; ``lobby_max_rooms``: at most this many of
        them are kept."""
        self.node_id = node_id
        self.address = address
        self.timings = timings
        self.prefix = prefix
        self.incarnation = secrets.token_hex(8)
        """This run of the node: a restart under the same node id is another owner."""
        self.schedule = LeaseSchedule(timings)
        self._schedule_lock = threading.Lock()
        """The schedule is kept by the lease keeper's thread; the loop's changes
        to it take this lock too."""
        self._keeper: LeaseKeeper | None = None
        self._beat: asyncio.TimerHandle | None = None
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
        self._admit = self.redis.register_script(ADMIT)
        self._lobby_write = self.redis.register_script(LOBBY)
        self._url = url
        self.ledger = admission or AdmissionLedger(False, None, None)
        """This node's share of the cluster-wide admission counts (sans-I/O)."""
        self._waiters: dict[Request, asyncio.Future[None]] = {}
        self._pump_wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._lobby: Lobby | None = None
        self._lobby_max_rooms = lobby_max_rooms
        self._pending_lobby: dict[str, RoomSummary | None] = {}
        self._lobby_replace = False
        self._watch = WatchSchedule(lobby_linger)
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_pending = 0
        self._lobby_viewers = 0
        self._lobby_ready = asyncio.Event()
        self._subscriber: Redis | None = None
        self.lobby_errors = 0
        self._on_freed: Callable[[], None] | None = None
        self._releases_task: asyncio.Task[None] | None = None
        self.releases_heard = 0
        """Release messages of other nodes received (``P:freed``)."""
        self.releases_errors = 0
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
        if self.ledger.count_sessions:
            observer.on("sessionstarted", self._sessions_counted)
            observer.on("sessionended", self._sessions_counted)
        await self._renew_lease()  # the first one before serving; then the keeper's thread
        if not self.up:
            logger.warning(
                "directory: Redis unreachable at start (%s): serving no new room until it is",
                self.last_error,
            )
        self._start_keeper()
        self._task = asyncio.ensure_future(self._run())
        if self.ledger.enabled:
            self._pump_task = asyncio.ensure_future(self._pump())

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
        self._pending_lobby.clear()
        self._decided(self.ledger.stop())
        try:
            await self._call(self._leave, self.node_id, self.incarnation, "withdraw")
        except _ERRORS as exc:
            self._failed("withdraw", exc)

    async def close(self) -> None:
        self.draining = True
        self._on_freed = None
        if self._beat is not None:
            self._beat.cancel()
        if self._keeper is not None:
            await self._keeper.stop()
        for task in (self._task, self._pump_task, self._watch_task, self._releases_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._decided(self.ledger.stop())  # (after the pump: its call in flight too)
        try:
            await self._call(self._leave, self.node_id, self.incarnation, "close")
        except _ERRORS as exc:
            self._failed("close", exc)
        await self.redis.aclose()
        if self._subscriber is not None:
            await self._subscriber.aclose()

    @property
    def up(self) -> bool:
        state = self.schedule.state(self._loop.time())
        return self.reachable and not self.conflict and state is LeaseState.HELD

    def status(self) -> dict[str, Any]:
        ledger = self.ledger
        remote = self._lobby.remote if self._lobby is not None else None
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
            "admission": {
                "connectionsPerIp": ledger.count_connections,
                "maxSessions": ledger.max_sessions,
                "clusterSessions": ledger.cluster_sessions,
                "addresses": len(ledger.counted),
                "waiting": len(ledger.waiting),
                "resyncNeeded": ledger.resync_needed,
                "calls": ledger.calls,
                "followingReleases": self.following_releases,
                "releasesHeard": self.releases_heard,
            },
            "lobby": {
                "following": self._watch_task is not None and not self._watch_task.done(),
                "remoteRooms": len(remote) if remote is not None else 0,
                "dropped": remote.dropped if remote is not None else 0,
                "invalid": remote.invalid if remote is not None else 0,
                "errors": self.lobby_errors,
            },
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

    def _sessions_counted(self, *_: Any) -> None:
        """A session started or ended: the node's session count moved (batched)."""
        self.ledger.changed(self._loop.time())
        self._pump_wake.set()

    # -- cluster-wide admission (signalling.admission) ------------------------------------

    async def admit(self, address: str | None, *, session: bool) -> Request:
        request = self.ledger.request(address, session=session)
        await self._decide([request])
        return request

    async def admit_sessions(self, count: int) -> list[Request]:
        requests = [self.ledger.request(None, session=True) for _ in range(count)]
        await self._decide(requests)
        return requests

    @property
    def counts_sessions(self) -> bool:
        return self.ledger.count_sessions

    async def _decide(self, requests: list[Request]) -> None:
        """Verdicts for ``requests``: those with nothing to count are decided
        already; with Redis down, the node's own limits; else one call (the pump
        sends every request waiting together)."""
        ledger = self.ledger
        asked = [request for request in requests if request.verdict is None]
        if not asked:
            return  # nothing counted across the cluster
        if not self.up or self.draining:
            for request in asked:
                ledger.local(request, self._loop.time())  # the node's own limits
            return
        waiters: list[asyncio.Future[None]] = []
        for request in asked:
            waiters.append(answered := self._loop.create_future())
            self._waiters[request] = answered
            ledger.enqueue(request)
        self._pump_wake.set()
        try:
            for answered in waiters:
                await answered
        except asyncio.CancelledError:
            for request in asked:
                self._waiters.pop(request, None)
                ledger.abandon(request, self._loop.time())
            self._pump_wake.set()
            raise

    def settle(self, request: Request) -> None:
        self.ledger.settle(request)

    def follow_releases(self, freed: Callable[[], None] | None) -> None:
        self._on_freed = freed
        following = self._releases_task is not None and not self._releases_task.done()
        if freed is not None and not following and not self.draining:
            self._releases_task = asyncio.ensure_future(self._follow_releases())

    @property
    def following_releases(self) -> bool:
        return self._releases_task is not None and not self._releases_task.done()

    async def _follow_releases(self) -> None:
        """While the queue waits for a cluster slot: the other nodes' release
        messages (``P:freed``), each a reason to ask again.  Subscribed afresh
        after a lost connection; once subscribed, one call is worth making (a
        release before the subscription was not heard)."""
        channel = f"{self.prefix}:freed"
        while self._on_freed is not None and not self.draining:
            if not self.reachable:
                await asyncio.sleep(0.25)  # (the queue's backstop asks meanwhile)
                continue
            pubsub = self._subscriber_client().pubsub()
            try:
                await self._subscribe(pubsub, channel)
                self._slots_freed()
                while self._on_freed is not None and self.reachable and not self.draining:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                    if message is None or message["type"] != "message":
                        continue
                    if message["data"] != self.node_id:  # our own releases are known here
                        self.releases_heard += 1
                        self._slots_freed()
            except _ERRORS as exc:
                self.releases_errors += 1
                logger.info("directory: release subscription lost (%s): again", exc)
                await asyncio.sleep(0.25)
            finally:
                with contextlib.suppress(*_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _slots_freed(self) -> None:
        callback = self._on_freed
        if callback is not None:
            callback()

    def release(self, request: Request) -> None:
        if request.counted or request.reserved:
            self.ledger.release(request, self._loop.time())
            self._pump_wake.set()

    def _decided(self, requests: list[Request]) -> None:
        for request in requests:
            waiter = self._waiters.pop(request, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _pump(self) -> None:
        """The admission calls: one in flight at a time (so the node knows which of
        its writes Redis applied), each carrying every newcomer waiting and the
        changes of the node's share made since the last one."""
        ledger = self.ledger
        while True:
            self._pump_wake.clear()
            try:
                await self._pump_once()
            except Exception:  # never let the pump die
                logger.exception("admission pump failed")
                self._decided(ledger.failed(self._loop.time()))
            now = self._loop.time()
            deadline = ledger.next_deadline(now)
            timeout = None if deadline is None else deadline - now
            if timeout is not None and (not self.up or ledger.resync_needed):
                timeout = max(timeout, 0.25)  # Redis away: retry on a slower clock
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pump_wake.wait(), timeout)

    async def _pump_once(self) -> None:
        ledger = self.ledger
        while True:
            now = self._loop.time()
            if self.draining:
                self._decided(ledger.stop())
                return
            if not self.up:
                self._decided(ledger.fall_back(now))
                return
            if ledger.resync_needed:
                if not await self._resync_admission():
                    return
                continue
            lifecycle = self._lifecycle
            sessions = len(lifecycle.registry) if lifecycle is not None else 0
            batch = ledger.next_batch(now, sessions)
            if batch is None or not await self._send_admission(batch):
                return

    async def _resync_admission(self) -> bool:
        """Write this node's share again, as absolute values from its live state."""
        ledger = self.ledger
        listed: set[str] = set()
        try:
            if ledger.count_connections:
                index = f"{self.prefix}:node:{self.node_id}:ips"
                listed = set(await self._op(self.redis.smembers(index)))
        except _ERRORS as exc:
            self._failed("admission resync", exc)
            self._decided(ledger.failed(self._loop.time()))
            return False
        lifecycle = self._lifecycle
        sessions = len(lifecycle.registry) if lifecycle is not None else 0
        for batch in ledger.resync_batches(listed, sessions):
            ledger.sending(batch)
            if not await self._send_admission(batch):
                return False
        ledger.resynced(self._loop.time())
        logger.info("directory: admission counts written again (%d addresses)", len(listed))
        return True

    async def _send_admission(self, batch: Batch) -> bool:
        ledger = self.ledger
        args: list[Any] = [
            self.node_id,
            self.incarnation,
            ledger.max_connections_per_ip if ledger.count_connections else "",
            ledger.max_sessions if ledger.max_sessions is not None else "",
        ]
        for kind, address, n in batch.ops:
            args += (kind, address, n)
        for request in batch.acquire:
            args += ("a", request.address or "", int(request.session))
        try:
            answer = await self._call(self._admit, *args)
        except _ERRORS as exc:
            self._failed("admit", exc)
            answer = None
        now = self._loop.time()
        if not answer or not answer[0]:  # no answer, or our lease is not ours any more
            self._decided(ledger.failed(now, batch))
            return False
        total = int(answer[1])
        verdicts = [str(verdict) for verdict in answer[2:]]
        self._decided(ledger.answered(batch, verdicts, total if total >= 0 else None, now))
        return True

    # -- the lobby across nodes (signalling.lobby) ----------------------------------------

    def attach_lobby(self, lobby: Lobby) -> None:
        self._lobby = lobby
        lobby.share(self, RemoteRooms(self.node_id, self._lobby_max_rooms))

    def lobby_publish(self, rooms: dict[str, RoomSummary | None]) -> None:
        if not self.draining:
            self._pending_lobby.update(rooms)
            self._wake.set()

    def lobby_watch(self, viewers: int) -> None:
        self._lobby_viewers = viewers
        now = self._loop.time()
        self._watch.viewers_changed(viewers + self._watch_pending, now)
        if self._watch.wanted(now) and (self._watch_task is None or self._watch_task.done()):
            self._lobby_ready.clear()
            self._watch_task = asyncio.ensure_future(self._follow_lobby())

    async def lobby_ready(self) -> None:
        """Follow the other nodes' rooms, and wait (a bounded time) until their
        current state is loaded: a new viewer's first list is the whole cluster's."""
        self._watch_pending += 1
        try:
            self.lobby_watch(self._lobby_viewers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lobby_ready.wait(), self.timings.timeout * 2)
        finally:
            self._watch_pending -= 1
            self.lobby_watch(self._lobby_viewers)

    async def _write_lobby(self) -> None:
        """This node's listed rooms that changed (or all of them, after Redis lost
        them), into its hash and onto the channel, in one script."""
        lobby = self._lobby
        replace = self._lobby_replace and lobby is not None
        rooms: dict[str, RoomSummary | None]
        if replace and lobby is not None:
            rooms = dict(lobby.local_listing())
            self._pending_lobby.clear()
        else:
            rooms, self._pending_lobby = self._pending_lobby, {}
        message = orjson.dumps({"node": self.node_id, "rooms": rooms, "replace": replace})
        args: list[Any] = [self.node_id, self.incarnation, message, "update"]
        if replace:
            args[3] = "replace"
        for room_id, summary in rooms.items():
            args += (room_id, orjson.dumps(summary) if summary is not None else "")
        try:
            written = await self._call(self._lobby_write, *args)
        except _ERRORS as exc:
            self._failed("lobby write", exc)
            written = None
        if written:
            if replace:
                self._lobby_replace = False
            return
        if not replace:  # again later, unless something newer is queued
            for room_id, summary in rooms.items():
                self._pending_lobby.setdefault(room_id, summary)

    async def _subscribe(self, pubsub: Any, channel: str) -> None:
        """Subscribe ``pubsub`` to ``channel`` and wait for Redis to confirm it
        (a message published before the confirmation may not be heard)."""
        timeout = self.timings.timeout * 2
        await asyncio.wait_for(pubsub.subscribe(channel), timeout)
        while True:
            message = await pubsub.get_message(timeout=timeout)
            if message is None:
                raise TimeoutError("no subscription confirmation")
            if message["type"] == "subscribe":
                return

    def _subscriber_client(self) -> Redis:
        """A client of its own for pub/sub: no read timeout (a quiet channel is fine)."""
        if self._subscriber is None:
            self._subscriber = Redis.from_url(
                self._url,
                decode_responses=True,
                socket_connect_timeout=self.timings.timeout,
                socket_keepalive=True,
            )
        return self._subscriber

    async def _follow_lobby(self) -> None:
        """While the lobby has viewers (and ``linger`` after): the other nodes'
        rooms, loaded once, then followed on the channel.  After a lost
        connection (Redis away) it subscribes and loads them again."""
        lobby = self._lobby
        if lobby is None or lobby.remote is None:
            return
        remote = lobby.remote
        channel = f"{self.prefix}:lobby"
        lost = False
        try:
            while self._watch.wanted(self._loop.time()) and not self.draining:
                if not self.reachable:
                    self._lobby_ready.set()  # viewers see this node's rooms meanwhile
                    await asyncio.sleep(0.25)
                    continue
                if lost:
                    # After an outage the other nodes write their rooms again within
                    # one renewal: loading before would close them for a moment.
                    lost = False
                    await asyncio.sleep(self.timings.renew_interval)
                    continue
                pubsub = self._subscriber_client().pubsub()
                try:
                    # Loaded only once subscribed: no change falls between the two.
                    await self._subscribe(pubsub, channel)
                    lobby.remote_changed(remote.load(await self._lobby_snapshot()))
                    self._lobby_ready.set()
                    while self._watch.wanted(self._loop.time()) and self.reachable:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=0.25
                        )
                        if message is not None and message["type"] == "message":
                            lobby.remote_changed(remote.message(message["data"]))
                except _ERRORS as exc:
                    self.lobby_errors += 1
                    logger.info("directory: lobby subscription lost (%s): again", exc)
                    self._lobby_ready.set()
                    lost = True
                    await asyncio.sleep(0.25)
                finally:
                    with contextlib.suppress(*_ERRORS):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            self._watch.stopped()
            self._lobby_ready.clear()
            lobby.remote_changed(remote.clear())

    async def _lobby_snapshot(self) -> dict[str, dict[str, RoomSummary]]:
        """Every other node's listed rooms, as Redis has them now (two round trips)."""
        nodes = [
            node
            for node in await self._op(self.redis.smembers(f"{self.prefix}:nodes"))
            if node != self.node_id
        ]
        pipeline = self.redis.pipeline(transaction=False)
        for node in nodes:
            pipeline.hgetall(f"{self.prefix}:node:{node}:lobby")
        hashes = await self._op(pipeline.execute()) if nodes else []
        snapshot: dict[str, dict[str, RoomSummary]] = {}
        for node, rooms in zip(nodes, hashes, strict=True):
            decoded = {}
            for room_id, raw in rooms.items():
                with contextlib.suppress(orjson.JSONDecodeError):
                    summary = orjson.loads(raw)
                    if isinstance(summary, dict):
                        decoded[room_id] = summary
            snapshot[node] = decoded
        return snapshot

    # -- the loop: renew, reconcile, reap, write ------------------------------------------

    async def _run(self) -> None:
        schedule = self.schedule
        while True:
            try:
                if schedule.reconcile_needed and self.up:
                    await self._reconcile()
                if schedule.reap_due(self._loop.time()):
                    await self._run_reaper()
                if self._writes_pending and self.up:
                    await self._flush()
            except Exception:  # never let the directory's loop die
                logger.exception("directory loop failed")
            self._wake.clear()
            now = self._loop.time()
            delay = schedule.next_deadline(now) - now
            if self._writes_pending and not self.up:
                delay = min(delay, 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))

    def _start_keeper(self) -> None:
        """The lease from now on renewed by a thread (``lease_keeper``)."""
        self._keeper = LeaseKeeper(
            url=self._url,
            script=RENEW,
            schedule=self.schedule,
            lock=self._schedule_lock,
            arguments=self._renew_arguments,
            on_outcome=self._lease_outcome,
            loop=self._loop,
            stall_limit=self.timings.stall_limit,
            name=f"lease-{self.node_id}",
        )
        self._keeper.start()
        if self._beat is None:
            self._loop_alive()

    def _loop_alive(self) -> None:
        """Tell the lease keeper the loop runs, every renewal interval (a timer:
        the loop's tasks may sit in long Redis exchanges meanwhile)."""
        if self._keeper is not None:
            self._keeper.loop_alive()
        self._beat = self._loop.call_later(self.timings.renew_interval, self._loop_alive)

    def _renew_arguments(self) -> list[Any]:
        """The renewal script's arguments (read by the keeper's thread: plain
        attributes and ``len`` only)."""
        lifecycle = self._lifecycle
        sessions = len(lifecycle.registry) if lifecycle is not None else 0
        rooms = len(lifecycle.rooms) if lifecycle is not None else 0
        return [
            self.prefix,
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
        ]

    async def _renew_lease(self) -> None:
        """Renew from the loop: only at start, before the keeper's thread runs."""
        with self._schedule_lock:
            self.schedule.renewing(self._loop.time())
            was_held = self.schedule.state(self._loop.time()) is LeaseState.HELD
        outcome: Outcome
        try:
            outcome = RenewResult(await self._op(self._renew(args=self._renew_arguments())))
        except _ERRORS as exc:
            outcome = exc
        with self._schedule_lock:
            if isinstance(outcome, RenewResult):
                self.schedule.renewed(self._loop.time(), outcome)
            else:
                self.schedule.failed(self._loop.time())
        self._lease_outcome(outcome, was_held)

    def _lease_outcome(self, outcome: Outcome, was_held: bool) -> None:
        """What follows from a renewal (on the loop; the schedule has it already)."""
        if not isinstance(outcome, RenewResult):
            self._failed("renew", outcome)
            return
        if not self.reachable:
            logger.info("directory: Redis reachable")
        was_up = was_held and self.reachable and not self.conflict
        self.reachable = True
        if outcome is RenewResult.CONFLICT:
            if not self.conflict:
                logger.error(
                    "directory: node id %s is in use by another live process: no room is"
                    " claimed here until it is free (set a unique --node-id)",
                    self.node_id,
                )
            self.conflict = True
            return
        self.conflict = False
        if self.schedule.reconcile_needed:
            # Our records may be gone: no increment of the admission counts
            # before they are written again whole (the reconcile follows).
            self.ledger.lost()
            self._pump_wake.set()
            self._wake.set()
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
        # The admission counts and the lobby listing are written again from the
        # node's live state (absolute values: what Redis had of them may be gone).
        self.ledger.lost()
        self._pump_wake.set()
        self._lobby_replace = self._lobby is not None
        with self._schedule_lock:
            self.schedule.reconciled()
        self._wake.set()

    async def _run_reaper(self) -> None:
        with self._schedule_lock:
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

    @property
    def _writes_pending(self) -> bool:
        return bool(
            self._pending_sessions
            or self._pending_releases
            or self._pending_lobby
            or self._lobby_replace
        )

    async def _flush(self) -> None:
        if self._pending_lobby or self._lobby_replace:
            await self._write_lobby()
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
