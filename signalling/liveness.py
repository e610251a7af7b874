"""Session liveness: a sans-I/O state machine fed with ``now``.

Nothing here touches a socket, a clock or a task.  The asyncio layer feeds
events in (``admit``, ``heard``, ``seen``, ``connection_lost``, ...), calls
``tick(now)`` about once a second and ``sweep(now)`` every sweep interval, and
carries out the decisions they return (send a keepalive probe, end a session
with a reason).  Tests drive it with a fake clock.

Which signal detects what (docs/liveness.md has the full table):

- graceful leave (``beforeDisconnect``, ``POST /leave``, close frame 1000/1001,
  DTLS close_notify): ended at once by the caller through ``end``;
- socket lost without a close frame: ``reconnecting`` for ``grace_period``,
  then ``socket_lost``; a resume with the resume token in between keeps it;
- silent loss: what is heard on every plane (WebSocket frames including
  keepalive pongs, ICE consent checks, RTP/RTCP through ``media_activity``) is
  combined, and a session silent on all of them for ``silence_timeout`` ends as
  ``keepalive_timeout``; a keepalive probe goes out after ``probe_after`` of
  WebSocket silence so a healthy idle client is heard before that;
- a dead WebSocket while media still flows (a probe unanswered for
  ``silence_timeout - probe_after``): ``SocketDead``, which the caller treats
  as a lost socket (``reconnecting``, then the grace period);
- app-level stale: ``sweep`` ends sessions whose last application message (or
  media) is older than ``stale_after``; it costs O(expired sessions);
- optional inactivity limit: connected, no interaction and no media.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .buckets import TimeBuckets

logger = logging.getLogger(__name__)


class SessionState(enum.StrEnum):
    CONNECTING = "connecting"  # socket open, not joined yet
    JOINED = "joined"
    RECONNECTING = "reconnecting"  # socket lost; media kept for the grace period
    CLOSED = "closed"


TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CONNECTING: frozenset({SessionState.JOINED, SessionState.CLOSED}),
    SessionState.JOINED: frozenset({SessionState.RECONNECTING, SessionState.CLOSED}),
    SessionState.RECONNECTING: frozenset({SessionState.JOINED, SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}
"""The only ways a session's state may change (a resume keeps the state it resumes)."""


class InvalidTransition(RuntimeError):
    """A state change ``TRANSITIONS`` does not allow: a bug, never a client's doing."""


class EndReason(enum.StrEnum):
    """Why a session ended: the ``reason`` of ``peerClosed`` and of the metrics."""

    GRACEFUL = "graceful"  # beforeDisconnect, close frame 1000/1001, DTLS close_notify
    BEACON = "beacon"  # POST /leave (navigator.sendBeacon on pagehide)
    SOCKET_LOST = "socket_lost"  # socket lost, not resumed within the grace period
    KEEPALIVE_TIMEOUT = "keepalive_timeout"  # nothing heard on any plane
    CONSENT_EXPIRED = "consent_expired"  # the media layer's ICE consent expired
    STALE_SWEEP = "stale_sweep"  # no application message for stale_after
    INACTIVE = "inactive"  # the optional inactivity limit
    JOIN_TIMEOUT = "join_timeout"  # connected but never joined within join_timeout
    DTLS_FAILED = "dtls_failed"  # the media could not be secured (e.g. fingerprint mismatch)
    SLOW_READER = "slow_reader"  # closed for not reading (4413), then not resumed
    RATE_LIMITED = "rate_limited"  # closed for flooding (4429)
    REPLACED = "replaced"  # another connection took the session over
    REJECTED = "rejected"  # a newcomer refused (reject policy, room full)
    SHUTDOWN = "shutdown"
    ROOM_MOVED = "room_moved"  # another node holds the room now (the directory said so)
    ERROR = "error"


class ActivityLevel(enum.StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    BACKGROUND = "background"


class TakeoverPolicy(enum.StrEnum):
    TAKEOVER = "takeover"  # the newest connection wins; the old tab is told why
    REJECT = "reject"  # the session in place wins; the newcomer is refused


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """Every timing, in seconds; ``None`` switches a mechanism off."""

    heartbeat_interval: float = 30.0
    """Told to clients in the ``join`` response: how often to send ``ping``."""
    grace_period: float = 10.0
    """How long a session whose socket was lost may be resumed."""
    silence_timeout: float | None = 15.0
    """End a session without media that nothing has been heard from for this long
    (its keepalive probe unanswered): a frozen or blackholed WebSocket-only client."""
    probe_after: float = 10.0
    """Without media: send a keepalive probe after this much WebSocket silence."""
    socket_probe_after: float = 15.0
    """With media flowing: probe the WebSocket after this much of its own silence
    anyway, to find a socket that died while the media lives on (``SocketDead``).
    Longer than ``probe_after``: the media already proves the client is there."""
    media_probe_after: float = 6.0
    """With media transports: probe the WebSocket once nothing has been heard on
    any plane for this long.  A live client is heard at least every 6 s: ICE
    consent checks every 5 s +/- 20 % (RFC 7675 section 5.1), besides its
    RTP and RTCP."""
    media_silence_timeout: float | None = 10.0
    """With media transports: end a session nothing has been heard from on any
    plane (WebSocket, RTP/RTCP, consent, DTLS) for this long, its probe
    unanswered (None: the WebSocket-only rule applies to everyone)."""
    stale_after: float | None = 120.0
    """The sweeper ends sessions with no application message for this long."""
    sweep_interval: float = 30.0
    inactivity_limit: float | None = None
    """End sessions with no interaction and no media for this long (off by default)."""
    idle_after: float = 120.0
    background_after: float = 600.0
    join_timeout: float | None = 30.0
    """End a connection that has not joined within this long (its transports too)."""
    stall_tolerance: float = 1.0
    """A liveness tick this late means the server itself stalled (SIGSTOP, a long pause)."""
    stall_resync: float = 5.0
    """After a stall, judge nobody for this long: first read what the clients sent."""
    takeover: TakeoverPolicy = TakeoverPolicy.TAKEOVER

    def __post_init__(self) -> None:
        # Accept the policy's name too ("reject"), as configuration gives it.
        object.__setattr__(self, "takeover", TakeoverPolicy(self.takeover))

        def positive(name: str, value: float | None) -> None:
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive")

        for field in dataclasses.fields(self):
            if field.name != "takeover":  # every other field is a timing in seconds
                positive(field.name, getattr(self, field.name))
        if self.silence_timeout is not None and self.probe_after >= self.silence_timeout:
            raise ValueError("probe_after must be shorter than silence_timeout")
        if (
            self.media_silence_timeout is not None
            and self.media_probe_after >= self.media_silence_timeout
        ):
            raise ValueError("media_probe_after must be shorter than media_silence_timeout")
        if self.background_after <= self.idle_after:
            raise ValueError("background_after must be longer than idle_after")


Identity = tuple[str, str]  # (room id, user key)


class Session:
    """One participant's presence in one room, across reconnections."""

    __slots__ = (
        "_state",
        "connection_id",
        "created_at",
        "data",
        "display_name",
        "end_reason",
        "grace_deadline",
        "hidden",
        "id",
        "identity",
        "last_heard",
        "last_interaction",
        "last_seen",
        "leave_token",
        "lost_for",
        "peer_id",
        "probed_at",
        "reported_dead",
        "resume_token",
        "room_id",
        "user_id",
    )

    def __init__(
        self, *, room_id: str, user_id: str, peer_id: str, connection_id: int, now: float
    ) -> None:
        self.id = str(uuid.uuid4())
        self.room_id = room_id
        self.user_id = user_id
        self.identity: Identity = (room_id, user_id)
        self.peer_id = peer_id
        self.display_name = ""
        self._state = SessionState.CONNECTING
        self.connection_id: int | None = connection_id
        self.resume_token = secrets.token_urlsafe(24)
        self.leave_token = secrets.token_urlsafe(24)
        self.created_at = now
        self.last_heard = now  # any WebSocket frame, keepalive pongs included
        self.last_seen = now  # application messages (what the sweeper reads)
        self.last_interaction = now
        self.hidden = False
        self.probed_at: float | None = None
        self.reported_dead = False
        self.grace_deadline: float | None = None
        self.lost_for = EndReason.SOCKET_LOST  # the end reason if the grace runs out
        self.end_reason: EndReason | None = None
        self.data: Any = None  # the I/O layer's per-session state

    def __repr__(self) -> str:
        return f"<Session {self.room_id}/{self.peer_id} {self.state.value}>"

    @property
    def state(self) -> SessionState:
        return self._state

    @state.setter
    def state(self, new: SessionState) -> None:
        """The one place the state changes (as websockets' ``Protocol.state``):
        logged ``old -> new``, and refused when ``TRANSITIONS`` does not allow it."""
        old = self._state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(f"session {self.room_id}/{self.peer_id}: {old} -> {new}")
        logger.debug("session %s/%s: %s -> %s", self.room_id, self.peer_id, old, new)
        self._state = new

    @property
    def open(self) -> bool:
        return self._state is not SessionState.CLOSED


class AdmissionOutcome(enum.StrEnum):
    NEW = "new"
    RESUMED = "resumed"  # the same peer came back with its resume token
    REPLACED = "replaced"  # the newcomer took over (``previous`` must be torn down)
    REJECTED = "rejected"  # the newcomer is refused (``refusal`` says why); nothing changed


class Refusal(enum.StrEnum):
    IDENTITY_IN_USE = "identity_in_use"  # the reject policy: the session in place wins
    PEER_ID_IN_USE = "peer_id_in_use"  # another user's session holds this peerId
    RESUME_TOKEN_INVALID = "resume_token_invalid"  # a wrong or used token for a live session


@dataclass(slots=True)
class Admission:
    outcome: AdmissionOutcome
    session: Session | None
    """The session the new connection drives (None when rejected)."""
    previous: Session | None = None
    """The session taken over (already ended as ``replaced``), when replaced."""
    previous_connection_id: int | None = None
    """A connection that no longer drives its session and must be closed."""
    was_reconnecting: bool = False
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Probe:
    session: Session


@dataclass(frozen=True, slots=True)
class SocketDead:
    """The WebSocket left a probe unanswered while media still flows: drop the
    socket and treat it as lost (the session becomes ``reconnecting``)."""

    session: Session


@dataclass(frozen=True, slots=True)
class End:
    session: Session
    reason: EndReason


Decision = Probe | SocketDead | End


def _never(_: Session) -> float | None:
    return None


class SessionRegistry:
    """All sessions of the process, keyed by identity and by (room, peer id).

    Handover between tabs is one synchronous transition (``admit``) that says
    what to close, so two connections racing for one identity cannot both win.
    """

    def __init__(
        self,
        policy: LivenessPolicy,
        media_activity: Callable[[Session], float | None] = _never,
        *,
        tick_interval: float = 1.0,
    ) -> None:
        """``tick_interval``: how often the caller calls ``tick``; silence
        deadlines are bucketed that finely, so each tick's work stays small."""
        self.policy = policy
        self.media_activity = media_activity
        self.by_identity: dict[Identity, Session] = {}
        self.by_peer: dict[tuple[str, str], Session] = {}
        self.by_id: dict[str, Session] = {}
        self.by_leave_token: dict[str, Session] = {}
        self._heard: TimeBuckets[Session] = TimeBuckets(tick_interval)
        self._seen: TimeBuckets[Session] = TimeBuckets(
            max(1.0, min(policy.sweep_interval, policy.stale_after or policy.sweep_interval) / 6)
        )
        self._interaction: TimeBuckets[Session] = TimeBuckets(
            max(1.0, (policy.inactivity_limit or 60.0) / 10)
        )
        self._joining: TimeBuckets[Session] = TimeBuckets(
            max(tick_interval, (policy.join_timeout or 10.0) / 10)
        )
        self._grace: list[tuple[float, int, Session]] = []
        self._grace_counter = itertools.count()
        self._resync_until = float("-inf")
        self.stalls = 0

    def __len__(self) -> int:
        return len(self.by_id)

    # -- admission (multi-tab handover) ------------------------------------------

    def admit(
        self,
        *,
        room_id: str,
        user_id: str,
        peer_id: str,
        connection_id: int,
        resume_token: str | None,
        now: float,
    ) -> Admission:
        """A new connection for (room, user, peer): new, resumed, replaced or rejected."""
        existing = self.by_identity.get((room_id, user_id))
        peer_holder = self.by_peer.get((room_id, peer_id))
        if peer_holder is not None and peer_holder is not existing:
            # A peerId is shown to everyone as who is talking: only its own user
            # may take it over, never another identity.
            return Admission(AdmissionOutcome.REJECTED, None, refusal=Refusal.PEER_ID_IN_USE)

        if resume_token is not None and existing is not None:
            if (
                secrets.compare_digest(resume_token, existing.resume_token)
                and existing.peer_id == peer_id
            ):
                return self._resume(existing, connection_id, now)
            # A replayed, used or guessed token never displaces anybody: the
            # client is told its session expired and may join afresh.
            return Admission(AdmissionOutcome.REJECTED, None, refusal=Refusal.RESUME_TOKEN_INVALID)

        if existing is not None:
            if self.policy.takeover is TakeoverPolicy.REJECT:
                return Admission(AdmissionOutcome.REJECTED, None, refusal=Refusal.IDENTITY_IN_USE)
            previous_connection_id = existing.connection_id
            self.end(existing, EndReason.REPLACED)
            session = self._create(room_id, user_id, peer_id, connection_id, now)
            return Admission(
                AdmissionOutcome.REPLACED,
                session,
                previous=existing,
                previous_connection_id=previous_connection_id,
            )
        return Admission(
            AdmissionOutcome.NEW, self._create(room_id, user_id, peer_id, connection_id, now)
        )

    def _create(
        self, room_id: str, user_id: str, peer_id: str, connection_id: int, now: float
    ) -> Session:
        session = Session(
            room_id=room_id, user_id=user_id, peer_id=peer_id, connection_id=connection_id, now=now
        )
        self.by_identity[session.identity] = session
        self.by_peer[(room_id, peer_id)] = session
        self.by_id[session.id] = session
        self.by_leave_token[session.leave_token] = session
        self._heard.touch(session, now)
        self._seen.touch(session, now)
        self._interaction.touch(session, now)
        if self.policy.join_timeout is not None:
            self._joining.touch(session, now)
        return session

    def _resume(self, session: Session, connection_id: int, now: float) -> Admission:
        previous_connection_id = session.connection_id
        was_reconnecting = session.state is SessionState.RECONNECTING
        session.connection_id = connection_id
        session.grace_deadline = None
        if was_reconnecting:
            session.state = SessionState.JOINED  # (one that never joined stays connecting)
        # A resume token is good for one resume: a copied token cannot follow.
        session.resume_token = secrets.token_urlsafe(24)
        session.probed_at = None
        self.seen(session, now)
        return Admission(
            AdmissionOutcome.RESUMED,
            session,
            previous_connection_id=previous_connection_id,
            was_reconnecting=was_reconnecting,
        )

    def joined(self, session: Session, now: float) -> None:
        if session.state is SessionState.CONNECTING:
            session.state = SessionState.JOINED
            self._joining.remove(session)
        self.seen(session, now)

    # -- what is heard ------------------------------------------------------------

    def heard(self, session: Session, now: float) -> None:
        """Any WebSocket frame, keepalive pongs included."""
        if not session.open:
            return
        session.last_heard = now
        session.reported_dead = False
        self._heard.touch(session, now)

    def seen(self, session: Session, now: float) -> None:
        """An application message (request, notification, app ping)."""
        if not session.open:
            return
        session.last_heard = session.last_seen = now
        session.reported_dead = False
        self._heard.touch(session, now)
        self._seen.touch(session, now)

    def interacted(self, session: Session, now: float, *, hidden: bool | None = None) -> None:
        """An ``activity`` notification: user interaction or a visibility change."""
        if not session.open:
            return
        if hidden is not None:
            session.hidden = hidden
        if not hidden:
            session.last_interaction = now
            self._interaction.touch(session, now)
        self.seen(session, now)

    def activity_level(self, session: Session, now: float) -> ActivityLevel:
        idle_for = now - session.last_interaction
        if session.hidden or idle_for >= self.policy.background_after:
            return ActivityLevel.BACKGROUND
        if idle_for >= self.policy.idle_after:
            return ActivityLevel.IDLE
        return ActivityLevel.ACTIVE

    # -- connection loss and ending ---------------------------------------------------

    def connection_lost(
        self,
        session: Session,
        connection_id: int,
        now: float,
        *,
        clean: bool,
        lost_for: EndReason = EndReason.SOCKET_LOST,
    ) -> End | None:
        """The socket of connection ``connection_id`` closed.

        A clean close (1000/1001) ends the session; a lost one keeps a joined
        session ``reconnecting`` for the grace period, and ends it for
        ``lost_for`` if it is not resumed by then (``slow_reader`` when the
        server closed the socket because the client stopped reading).  A
        connection that no longer drives the session (replaced, resumed
        elsewhere) changes nothing.
        """
        if not session.open or session.connection_id != connection_id:
            return None
        session.connection_id = None
        if clean:
            return End(session, EndReason.GRACEFUL)
        if session.state is not SessionState.JOINED:
            return End(session, lost_for)
        session.lost_for = lost_for
        session.state = SessionState.RECONNECTING
        session.grace_deadline = now + self.policy.grace_period
        heapq.heappush(self._grace, (session.grace_deadline, next(self._grace_counter), session))
        self._heard.remove(session)
        return None

    def end(self, session: Session, reason: EndReason) -> bool:
        """Close ``session`` for ``reason``; False if it was already closed."""
        if not session.open:
            return False
        session.state = SessionState.CLOSED
        session.end_reason = reason
        session.connection_id = None
        session.grace_deadline = None
        if self.by_identity.get(session.identity) is session:
            del self.by_identity[session.identity]
        if self.by_peer.get((session.room_id, session.peer_id)) is session:
            del self.by_peer[(session.room_id, session.peer_id)]
        self.by_id.pop(session.id, None)
        self.by_leave_token.pop(session.leave_token, None)
        self._heard.remove(session)
        self._seen.remove(session)
        self._interaction.remove(session)
        self._joining.remove(session)
        return True

    # -- timers ----------------------------------------------------------------------

    def stalled(self, now: float) -> None:
        """The caller's loop was stalled (its tick came ``stall_tolerance`` late or more).

        Whatever the clients sent meanwhile is still waiting in socket buffers:
        a deadline that passed during the stall says nothing about them.  For
        ``stall_resync`` nobody is ended (probes still go out); after that,
        deadlines are judged on what was received.
        """
        self.stalls += 1
        self._resync_until = now + self.policy.stall_resync

    def judging(self, now: float) -> bool:
        """False while resynchronising after a stall."""
        return now >= self._resync_until

    def tick(self, now: float) -> list[Decision]:
        """Grace expiries, silence probes and timeouts, join timeouts, inactivity:
        call every ``tick_interval``."""
        decisions: list[Decision] = []
        judging = self.judging(now)
        grace = self._grace
        while judging and grace and grace[0][0] <= now:
            deadline, _, session = heapq.heappop(grace)
            if session.state is SessionState.RECONNECTING and session.grace_deadline == deadline:
                decisions.append(End(session, session.lost_for))

        policy = self.policy
        if policy.silence_timeout is not None:
            decisions.extend(self._judge_silence(now, judging))

        if policy.join_timeout is not None and judging:
            cutoff = now - policy.join_timeout
            for session in self._joining.candidates(cutoff):
                if session.state is SessionState.CONNECTING and session.created_at <= cutoff:
                    self._joining.remove(session)
                    decisions.append(End(session, EndReason.JOIN_TIMEOUT))

        if policy.inactivity_limit is not None and judging:
            cutoff = now - policy.inactivity_limit
            for session in self._interaction.candidates(cutoff):
                if not session.open or session.last_interaction > cutoff:
                    continue
                media = self.media_activity(session)
                if media is not None and media > cutoff:
                    self._interaction.touch(session, media)
                else:
                    decisions.append(End(session, EndReason.INACTIVE))
        return decisions

    def _judge_silence(self, now: float, judging: bool) -> list[Decision]:
        """Probes and keepalive timeouts for sessions silent long enough to look at.

        Two rules, by what the session has (docs/liveness.md, "Silence"):
        without media, the WebSocket alone (probe after ``probe_after``, end
        after ``silence_timeout``); with media transports, every plane (probe
        after ``media_probe_after`` of total silence, end after
        ``media_silence_timeout``), and the WebSocket is also probed after
        ``socket_probe_after`` of its own silence, which finds a socket that
        died while media still flows (``SocketDead``).

        The ``_heard`` index is keyed by when a session is next worth looking
        at: a session whose media keeps it alive is put back for later rather
        than looked at every tick.
        """
        policy = self.policy
        assert policy.silence_timeout is not None
        media_rule = policy.media_silence_timeout is not None
        look_after = (
            min(policy.probe_after, policy.media_probe_after)
            if media_rule
            else (policy.probe_after)
        )
        decisions: list[Decision] = []
        heard_index = self._heard
        for session in heard_index.candidates(now - look_after):
            if not session.open or session.state is SessionState.RECONNECTING:
                continue
            last_heard = session.last_heard
            waiting = session.probed_at is not None and session.probed_at > last_heard
            # (>: a pong can arrive within the same clock tick as its probe)
            media: float | None = None
            if media_rule or waiting:
                media = self.media_activity(session)  # (answered probes never ask)
            if media is None or not media_rule:
                timeout = policy.silence_timeout
                pong_wait = policy.silence_timeout - policy.probe_after
            else:
                assert policy.media_silence_timeout is not None
                timeout = policy.media_silence_timeout
                pong_wait = policy.media_silence_timeout - policy.media_probe_after
            if not waiting:
                if media is not None and media_rule:
                    probe_at = min(
                        last_heard + policy.socket_probe_after,
                        max(last_heard, media) + policy.media_probe_after,
                    )
                else:
                    probe_at = last_heard + policy.probe_after
                if now < probe_at:
                    heard_index.touch(session, probe_at - look_after)  # not due yet
                    continue
                session.probed_at = now
                decisions.append(Probe(session))
                continue
            assert session.probed_at is not None
            if now - session.probed_at < pong_wait or not judging:
                continue  # waiting for the pong
            heard = last_heard if media is None else max(last_heard, media)
            if now - heard >= timeout:
                decisions.append(End(session, EndReason.KEEPALIVE_TIMEOUT))
            elif media is not None and media > session.probed_at and not session.reported_dead:
                # Media arrived after the probe, the pong did not: the client
                # is alive, its WebSocket is not.  (Media that stopped before
                # the probe proves nothing: that client may be frozen.)
                session.reported_dead = True
                decisions.append(SocketDead(session))
        return decisions

    def sweep(self, now: float) -> list[End]:
        """The backstop: sessions with no application message for ``stale_after``."""
        if self.policy.stale_after is None or not self.judging(now):
            return []
        cutoff = now - self.policy.stale_after
        stale: list[End] = []
        for session in self._seen.candidates(cutoff):
            if not session.open:
                continue
            media = self.media_activity(session)
            last = session.last_seen if media is None else max(session.last_seen, media)
            if last > cutoff:
                self._seen.touch(session, last)
            else:
                stale.append(End(session, EndReason.STALE_SWEEP))
        return stale

    # -- introspection ------------------------------------------------------------------

    def count_by_state(self) -> dict[SessionState, int]:
        counts = dict.fromkeys(SessionState, 0)
        for session in self.by_id.values():
            counts[session.state] += 1
        return counts

    def index_sizes(self) -> dict[str, int]:
        return {
            "sessions": len(self.by_id),
            "identities": len(self.by_identity),
            "peers": len(self.by_peer),
            "leave_tokens": len(self.by_leave_token),
            "heard_index": len(self._heard),
            "seen_index": len(self._seen),
            "interaction_index": len(self._interaction),
            "joining_index": len(self._joining),
            "grace_heap": len(self._grace),
        }
