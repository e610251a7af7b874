"""The sans-I/O liveness state machine (signalling/liveness.py), driven by a fake clock.

``now`` is a float passed in; media activity comes from a fake media clock (a dict
session -> last media time) that also counts how often the registry consults it,
which is how the cost of ``tick`` and ``sweep`` is measured.  Decisions are carried
out as the server does: an ``End`` is applied with ``registry.end``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import pytest

from signalling.liveness import (
    ActivityLevel,
    Admission,
    AdmissionOutcome,
    Decision,
    End,
    EndReason,
    InvalidTransition,
    LivenessPolicy,
    Probe,
    Refusal,
    Session,
    SessionRegistry,
    SessionState,
    SocketDead,
    TakeoverPolicy,
)

# Small, distinct values so every row of the policy is visible in the timings.
# The media rule (media_probe_after / media_silence_timeout) is off here, so
# these tests read the WebSocket rule; the media rule has its own tests below.
POLICY = LivenessPolicy(
    grace_period=10,
    silence_timeout=20,
    probe_after=15,
    media_silence_timeout=None,
    stale_after=120,
    sweep_interval=30,
)
T0 = 1000.5  # not on a bucket boundary on purpose


class MediaClock:
    """The media plane as the registry sees it: last RTP/RTCP/consent time per session."""

    def __init__(self) -> None:
        self.last: dict[Session, float] = {}
        self.calls = 0

    def __call__(self, session: Session) -> float | None:
        self.calls += 1
        return self.last.get(session)


def make_registry(**changes: Any) -> tuple[SessionRegistry, MediaClock]:
    media = MediaClock()
    return SessionRegistry(dataclasses.replace(POLICY, **changes), media), media


def admit(
    registry: SessionRegistry,
    now: float,
    *,
    room: str = "room",
    user: str = "alice",
    peer: str | None = None,
    conn: int = 1,
    token: str | None = None,
) -> Admission:
    return registry.admit(
        room_id=room,
        user_id=user,
        peer_id=user if peer is None else peer,
        connection_id=conn,
        resume_token=token,
        now=now,
    )


def new_session(
    registry: SessionRegistry,
    now: float,
    *,
    joined: bool = True,
    room: str = "room",
    user: str = "alice",
    peer: str | None = None,
    conn: int = 1,
) -> Session:
    admission = admit(registry, now, room=room, user=user, peer=peer, conn=conn)
    assert admission.outcome is AdmissionOutcome.NEW
    assert admission.session is not None
    if joined:
        registry.joined(admission.session, now)
    return admission.session


def carry_out(registry: SessionRegistry, decisions: Iterable[Decision]) -> None:
    for decision in decisions:
        if isinstance(decision, End):
            registry.end(decision.session, decision.reason)


def tick_every_second(
    registry: SessionRegistry, start: float, stop: float
) -> list[tuple[float, Decision]]:
    """Tick at start, start+1, ... up to stop (inclusive), carrying out every decision."""
    seen: list[tuple[float, Decision]] = []
    steps = round(stop - start)
    for i in range(steps + 1):
        now = start + i
        decisions = registry.tick(now)
        carry_out(registry, decisions)
        seen.extend((now, d) for d in decisions)
    return seen


def sessions_in(admission: Admission) -> list[Session]:
    """Every session an Admission mentions, whatever the field (for teardown checks)."""
    found: list[Session] = []
    for field in dataclasses.fields(admission):
        value = getattr(admission, field.name)
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        found.extend(v for v in values if isinstance(v, Session))
    return found


# -- admission ------------------------------------------------------------------------------


def test_a_first_connection_creates_a_new_connecting_session_indexed_everywhere() -> None:
    registry, _ = make_registry()

    admission = admit(registry, T0, user="alice", peer="a1", conn=7)

    session = admission.session
    assert admission.outcome is AdmissionOutcome.NEW
    assert session is not None
    assert admission.previous is None and admission.previous_connection_id is None
    assert session.state is SessionState.CONNECTING
    assert session.connection_id == 7
    assert (session.room_id, session.user_id, session.peer_id) == ("room", "alice", "a1")
    assert session.created_at == session.last_heard == session.last_seen == T0
    assert session.last_interaction == T0
    assert registry.by_identity[("room", "alice")] is session
    assert registry.by_peer[("room", "a1")] is session
    assert registry.by_id[session.id] is session
    assert registry.by_leave_token[session.leave_token] is session
    assert session.resume_token and session.leave_token != session.resume_token
    assert len(registry) == 1


def test_the_same_identity_again_takes_over_and_ends_the_previous_session_as_replaced() -> None:
    registry, _ = make_registry()
    first = new_session(registry, T0, conn=1)

    admission = admit(registry, T0 + 5, conn=2)

    second = admission.session
    assert admission.outcome is AdmissionOutcome.REPLACED
    assert second is not None and second is not first
    assert admission.previous is first
    assert admission.previous_connection_id == 1
    assert first.state is SessionState.CLOSED
    assert first.end_reason is EndReason.REPLACED
    assert second.state is SessionState.CONNECTING and second.connection_id == 2
    assert registry.by_identity[("room", "alice")] is second
    assert registry.by_peer[("room", "alice")] is second
    assert first.id not in registry.by_id
    assert first.leave_token not in registry.by_leave_token
    assert len(registry) == 1


def test_with_the_reject_policy_a_second_connection_for_an_identity_is_refused() -> None:
    registry, _ = make_registry(takeover=TakeoverPolicy.REJECT)
    first = new_session(registry, T0, conn=1)
    before = registry.index_sizes()

    admission = admit(registry, T0 + 5, conn=2)

    assert admission.outcome is AdmissionOutcome.REJECTED
    assert admission.session is None and admission.previous is None
    assert admission.previous_connection_id is None
    assert first.state is SessionState.JOINED and first.connection_id == 1
    assert registry.by_identity[("room", "alice")] is first
    assert registry.index_sizes() == before


def test_another_user_reusing_a_live_peer_id_in_the_room_is_refused() -> None:
    # A peerId is what everyone else sees as "who": only its own user may take
    # it over, whatever the takeover policy.
    registry, _ = make_registry()
    holder = new_session(registry, T0, user="alice", peer="p", conn=1)
    before = registry.index_sizes()

    admission = admit(registry, T0 + 1, user="mallory", peer="p", conn=2)

    assert admission.outcome is AdmissionOutcome.REJECTED and admission.session is None
    assert admission.refusal is Refusal.PEER_ID_IN_USE
    assert holder.open and holder.connection_id == 1
    assert registry.by_peer[("room", "p")] is holder
    assert ("room", "mallory") not in registry.by_identity
    assert registry.index_sizes() == before


def test_with_the_reject_policy_another_user_reusing_a_live_peer_id_is_refused() -> None:
    registry, _ = make_registry(takeover=TakeoverPolicy.REJECT)
    holder = new_session(registry, T0, user="alice", peer="p", conn=1)

    admission = admit(registry, T0 + 1, user="mallory", peer="p", conn=2)

    assert admission.outcome is AdmissionOutcome.REJECTED and admission.session is None
    assert admission.refusal is Refusal.PEER_ID_IN_USE
    assert holder.open and registry.by_peer[("room", "p")] is holder
    assert ("room", "mallory") not in registry.by_identity


def test_a_user_coming_back_under_another_users_peer_id_is_refused_and_nobody_is_ended() -> None:
    # alice holds peer "a", bob holds peer "b"; alice comes back as peer "b".
    registry, _ = make_registry()
    alice = new_session(registry, T0, user="alice", peer="a", conn=1)
    bob = new_session(registry, T0, user="bob", peer="b", conn=2)

    admission = admit(registry, T0 + 1, user="alice", peer="b", conn=3)

    assert admission.outcome is AdmissionOutcome.REJECTED
    assert admission.refusal is Refusal.PEER_ID_IN_USE
    assert alice.open and bob.open
    assert sessions_in(admission) == []


def test_a_user_may_take_its_own_session_over_under_a_new_peer_id() -> None:
    registry, _ = make_registry()
    old = new_session(registry, T0, user="alice", peer="tab1", conn=1)

    admission = admit(registry, T0 + 1, user="alice", peer="tab2", conn=2)

    assert admission.outcome is AdmissionOutcome.REPLACED
    assert admission.previous is old and old.end_reason is EndReason.REPLACED
    assert registry.by_peer.get(("room", "tab1")) is None
    assert registry.by_peer[("room", "tab2")] is admission.session


def test_a_resume_with_the_right_token_drives_the_same_session_from_the_new_connection() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    token = session.resume_token

    admission = admit(registry, T0 + 3, conn=2, token=token)

    assert admission.outcome is AdmissionOutcome.RESUMED
    assert admission.session is session
    assert admission.previous is None
    assert admission.previous_connection_id == 1  # still open: the caller closes it
    assert admission.was_reconnecting is False
    assert session.state is SessionState.JOINED and session.connection_id == 2
    assert session.last_seen == session.last_heard == T0 + 3
    assert session.resume_token != token
    assert registry.by_identity[("room", "alice")] is session
    assert len(registry) == 1


def test_a_resume_of_a_reconnecting_session_says_it_was_reconnecting() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    registry.connection_lost(session, 1, T0 + 1, clean=False)

    admission = admit(registry, T0 + 2, conn=2, token=session.resume_token)

    assert admission.outcome is AdmissionOutcome.RESUMED and admission.session is session
    assert admission.was_reconnecting is True
    assert admission.previous_connection_id is None
    assert session.state is SessionState.JOINED
    assert session.grace_deadline is None and session.connection_id == 2


def test_a_resume_token_is_good_for_one_resume_only() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    old_token = session.resume_token
    assert admit(registry, T0 + 1, conn=2, token=old_token).outcome is AdmissionOutcome.RESUMED

    again = admit(registry, T0 + 2, conn=3, token=old_token)

    assert again.outcome is AdmissionOutcome.REJECTED and again.session is None
    assert again.refusal is Refusal.RESUME_TOKEN_INVALID
    assert session.open and session.connection_id == 2


def test_a_resume_with_a_wrong_token_displaces_nobody() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    before = registry.index_sizes()

    admission = admit(registry, T0 + 1, conn=2, token="not-" + session.resume_token)

    assert admission.outcome is AdmissionOutcome.REJECTED
    assert admission.refusal is Refusal.RESUME_TOKEN_INVALID
    assert session.open and session.connection_id == 1
    assert registry.index_sizes() == before


def test_a_resume_token_for_a_session_that_is_gone_admits_a_new_session() -> None:
    # The grace period is over: the caller tells the client sessionExpired.
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    registry.end(session, EndReason.SOCKET_LOST)

    admission = admit(registry, T0 + 30, conn=2, token=session.resume_token)

    assert admission.outcome is AdmissionOutcome.NEW
    assert admission.session is not None and admission.session is not session


def test_with_the_reject_policy_a_wrong_token_is_refused_and_the_right_one_resumes() -> None:
    registry, _ = make_registry(takeover=TakeoverPolicy.REJECT)
    session = new_session(registry, T0, conn=1)

    wrong = admit(registry, T0 + 1, conn=2, token="wrong")
    right = admit(registry, T0 + 2, conn=3, token=session.resume_token)

    assert wrong.outcome is AdmissionOutcome.REJECTED
    assert right.outcome is AdmissionOutcome.RESUMED and right.session is session
    assert session.connection_id == 3


def test_a_resume_token_only_resumes_for_the_same_peer_id_and_user() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, user="alice", peer="a", conn=1)

    other_peer = admit(
        registry, T0 + 1, user="alice", peer="a2", conn=2, token=session.resume_token
    )
    other_user = admit(registry, T0 + 2, user="bob", peer="a", conn=3, token=session.resume_token)

    assert other_peer.outcome is AdmissionOutcome.REJECTED
    assert other_peer.refusal is Refusal.RESUME_TOKEN_INVALID
    assert other_user.outcome is AdmissionOutcome.REJECTED
    assert other_user.refusal is Refusal.PEER_ID_IN_USE
    assert session.open and session.connection_id == 1


def test_the_same_user_in_different_rooms_has_independent_sessions() -> None:
    registry, _ = make_registry(takeover=TakeoverPolicy.REJECT)
    one = admit(registry, T0, room="one", user="alice", conn=1)
    two = admit(registry, T0, room="two", user="alice", conn=2)

    assert one.outcome is AdmissionOutcome.NEW and two.outcome is AdmissionOutcome.NEW
    assert one.session is not None and two.session is not None
    assert one.session.open and two.session.open
    assert len(registry) == 2
    registry.end(one.session, EndReason.GRACEFUL)
    assert registry.by_identity[("two", "alice")] is two.session


# -- joined, heard, seen, interacted ---------------------------------------------------------


def test_joined_moves_a_connecting_session_to_joined_and_counts_as_an_app_message() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, joined=False)

    registry.joined(session, T0 + 2)

    assert session.state is SessionState.JOINED
    assert session.last_seen == session.last_heard == T0 + 2


def test_heard_refreshes_only_last_heard() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    registry.heard(session, T0 + 4)

    assert session.last_heard == T0 + 4
    assert session.last_seen == T0
    assert session.last_interaction == T0


def test_seen_refreshes_last_heard_and_last_seen_but_not_last_interaction() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    registry.seen(session, T0 + 4)

    assert session.last_heard == session.last_seen == T0 + 4
    assert session.last_interaction == T0


def test_an_interaction_refreshes_last_interaction_and_counts_as_seen() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    registry.interacted(session, T0 + 4)

    assert session.last_interaction == session.last_seen == session.last_heard == T0 + 4
    assert session.hidden is False


def test_becoming_hidden_is_seen_but_is_not_an_interaction() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    registry.interacted(session, T0 + 4, hidden=True)

    assert session.hidden is True
    assert session.last_seen == T0 + 4
    assert session.last_interaction == T0


def test_becoming_visible_again_is_an_interaction() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.interacted(session, T0 + 1, hidden=True)

    registry.interacted(session, T0 + 4, hidden=False)

    assert session.hidden is False
    assert session.last_interaction == T0 + 4


def test_an_interaction_without_visibility_keeps_the_hidden_flag() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.interacted(session, T0 + 1, hidden=True)

    registry.interacted(session, T0 + 4)

    assert session.hidden is True
    assert session.last_interaction == T0 + 4


# -- connection loss -----------------------------------------------------------------------


@pytest.mark.parametrize("joined", [True, False], ids=["joined", "not-joined"])
def test_a_clean_close_ends_the_session_gracefully(joined: bool) -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, joined=joined, conn=4)

    decision = registry.connection_lost(session, 4, T0 + 1, clean=True)

    assert decision == End(session, EndReason.GRACEFUL)
    assert session.connection_id is None
    assert registry.index_sizes()["grace_heap"] == 0


def test_a_lost_socket_keeps_a_joined_session_reconnecting_for_the_grace_period() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=4)
    lost_at = T0 + 2

    assert registry.connection_lost(session, 4, lost_at, clean=False) is None

    assert session.state is SessionState.RECONNECTING and session.open
    assert session.connection_id is None
    assert session.grace_deadline == lost_at + 10
    assert registry.count_by_state()[SessionState.RECONNECTING] == 1
    assert registry.tick(lost_at + 5) == []
    assert registry.tick(lost_at + 10 - 1e-6) == []
    assert registry.tick(lost_at + 10) == [End(session, EndReason.SOCKET_LOST)]


def test_grace_expiry_is_reported_by_the_first_tick_at_or_after_the_deadline() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=4)
    registry.connection_lost(session, 4, T0, clean=False)

    decisions = tick_every_second(registry, T0 + 1, T0 + 30)

    assert decisions == [(T0 + 10, End(session, EndReason.SOCKET_LOST))]
    assert session.end_reason is EndReason.SOCKET_LOST


def test_a_socket_closed_for_not_reading_ends_as_slow_reader_when_not_resumed() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=4)
    never_joined = new_session(registry, T0, joined=False, conn=5, user="u5")

    registry.connection_lost(session, 4, T0, clean=False, lost_for=EndReason.SLOW_READER)
    at_once = registry.connection_lost(
        never_joined, 5, T0, clean=False, lost_for=EndReason.SLOW_READER
    )

    assert session.state is SessionState.RECONNECTING  # it may still resume
    assert at_once == End(never_joined, EndReason.SLOW_READER)
    assert registry.tick(T0 + 10) == [End(session, EndReason.SLOW_READER)]


def test_a_session_resumed_after_a_slow_read_and_lost_again_ends_as_socket_lost() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    registry.connection_lost(session, 1, T0, clean=False, lost_for=EndReason.SLOW_READER)
    admit(registry, T0 + 1, conn=2, token=session.resume_token)

    registry.connection_lost(session, 2, T0 + 2, clean=False)

    assert registry.tick(T0 + 12) == [End(session, EndReason.SOCKET_LOST)]


def test_a_lost_socket_of_a_session_that_never_joined_ends_it_at_once() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, joined=False, conn=4)

    decision = registry.connection_lost(session, 4, T0 + 1, clean=False)

    assert decision == End(session, EndReason.SOCKET_LOST)
    assert session.state is SessionState.CONNECTING  # the caller carries the End out
    assert registry.index_sizes()["grace_heap"] == 0


def test_the_replaced_connection_losing_its_socket_changes_nothing() -> None:
    registry, _ = make_registry()
    first = new_session(registry, T0, conn=1)
    second = admit(registry, T0 + 1, conn=2).session
    assert second is not None
    registry.joined(second, T0 + 1)
    before = registry.index_sizes()

    assert registry.connection_lost(first, 1, T0 + 2, clean=False) is None
    assert registry.connection_lost(second, 1, T0 + 2, clean=False) is None
    assert registry.connection_lost(second, 1, T0 + 2, clean=True) is None

    assert first.state is SessionState.CLOSED and first.end_reason is EndReason.REPLACED
    assert second.state is SessionState.JOINED and second.connection_id == 2
    assert registry.index_sizes() == before


def test_the_previous_connection_closing_after_a_resume_changes_nothing() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    admit(registry, T0 + 1, conn=2, token=session.resume_token)

    assert registry.connection_lost(session, 1, T0 + 2, clean=False) is None
    assert registry.connection_lost(session, 1, T0 + 2, clean=True) is None

    assert session.state is SessionState.JOINED and session.connection_id == 2
    assert tick_every_second(registry, T0 + 3, T0 + 15) == []


def test_a_resume_while_reconnecting_cancels_the_grace_expiry() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    registry.connection_lost(session, 1, T0, clean=False)

    admission = admit(registry, T0 + 5, conn=2, token=session.resume_token)
    assert admission.outcome is AdmissionOutcome.RESUMED

    assert registry.tick(T0 + 10) == []
    assert registry.tick(T0 + 11) == []
    assert session.state is SessionState.JOINED
    assert registry.index_sizes()["grace_heap"] == 0  # the stale entry was popped


def test_a_second_loss_after_a_resume_gets_a_full_grace_period_of_its_own() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, conn=1)
    registry.connection_lost(session, 1, T0, clean=False)
    admit(registry, T0 + 5, conn=2, token=session.resume_token)
    registry.connection_lost(session, 2, T0 + 6, clean=False)

    assert registry.tick(T0 + 10) == []  # the first deadline no longer counts
    assert registry.tick(T0 + 16 - 1e-6) == []
    assert registry.tick(T0 + 16) == [End(session, EndReason.SOCKET_LOST)]


# -- silence: probes and keepalive timeout ---------------------------------------------------


def test_a_silent_joined_session_is_probed_exactly_probe_after_its_last_frame() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    assert registry.tick(T0 + 14.999) == []
    assert registry.tick(T0 + 15) == [Probe(session)]
    assert session.probed_at == T0 + 15


def test_a_silent_session_is_probed_once_per_silence() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    decisions = tick_every_second(registry, T0 + 1, T0 + 19)

    assert decisions == [(T0 + 15, Probe(session))]


def test_a_silent_session_ends_as_keepalive_timeout_exactly_silence_timeout_after_last_frame() -> (
    None
):
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.heard(session, T0 + 3)

    assert registry.tick(T0 + 18) == [Probe(session)]
    assert registry.tick(T0 + 23 - 1e-6) == []
    assert registry.tick(T0 + 23) == [End(session, EndReason.KEEPALIVE_TIMEOUT)]


def test_with_ticks_every_second_a_silent_session_is_probed_then_ended() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    decisions = tick_every_second(registry, T0 + 1, T0 + 60)

    assert decisions == [
        (T0 + 15, Probe(session)),
        (T0 + 20, End(session, EndReason.KEEPALIVE_TIMEOUT)),
    ]
    assert session.state is SessionState.CLOSED


def test_a_pong_after_the_probe_keeps_the_session() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    assert registry.tick(T0 + 15) == [Probe(session)]

    registry.heard(session, T0 + 15.05)  # the pong

    assert tick_every_second(registry, T0 + 16, T0 + 29) == []
    assert registry.tick(T0 + 30.05) == [Probe(session)]  # the next silence, probed again
    assert registry.tick(T0 + 35.05) == [End(session, EndReason.KEEPALIVE_TIMEOUT)]


def test_a_healthy_idle_client_answering_every_probe_is_never_ended() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    probes = 0
    for i in range(1, 301):
        now = T0 + i
        for decision in registry.tick(now):
            assert isinstance(decision, Probe), decision
            probes += 1
            registry.heard(session, now + 0.05)  # the pong comes back

    assert session.state is SessionState.JOINED
    assert 300 / 17 <= probes <= 300 / 15 + 1  # one probe every 15-16 s of silence


def test_media_keeps_a_session_alive_but_a_dead_websocket_is_reported_once() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)

    decisions = []
    for i in range(1, 301):
        now = T0 + i
        media.last[session] = now  # RTP keeps flowing; the WebSocket never answers
        decisions += [(now, d) for d in registry.tick(now)]

    # Probed after 15 s of WebSocket silence; the pong never came within the
    # remaining 5 s: the socket is reported dead (once) instead of ending a
    # session whose media is alive.
    assert decisions == [(T0 + 15, Probe(session)), (T0 + 20, SocketDead(session))]
    assert session.state is SessionState.JOINED


def test_media_and_answered_probes_keep_a_session_at_little_cost() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)

    probes = 0
    for i in range(1, 301):
        now = T0 + i
        media.last[session] = now
        for decision in registry.tick(now):
            assert isinstance(decision, Probe), decision
            probes += 1
            registry.heard(session, now + 0.05)  # the pong

    assert session.state is SessionState.JOINED
    assert probes <= 300 / 15 + 1
    assert media.calls == 0  # answered probes never need the media plane


def test_silence_is_measured_from_the_last_thing_heard_on_any_plane() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)  # last WebSocket frame at T0
    media.last[session] = T0 + 30  # media went silent at T0 + 30

    decisions = tick_every_second(registry, T0 + 1, T0 + 80)

    # The WebSocket is dead at T0 + 20 while media flows; everything is silent
    # from T0 + 30, so the session ends 20 s later (combined, not added).
    assert decisions == [
        (T0 + 15, Probe(session)),
        (T0 + 20, SocketDead(session)),
        (T0 + 50, End(session, EndReason.KEEPALIVE_TIMEOUT)),
    ]


def test_media_older_than_the_websocket_does_not_shorten_the_silence() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)
    media.last[session] = T0 - 100

    decisions = tick_every_second(registry, T0 + 1, T0 + 30)

    assert decisions == [
        (T0 + 15, Probe(session)),
        (T0 + 20, End(session, EndReason.KEEPALIVE_TIMEOUT)),
    ]


def test_a_reconnecting_session_is_neither_probed_nor_timed_out_for_silence() -> None:
    registry, _ = make_registry(grace_period=100)
    session = new_session(registry, T0, conn=1)
    registry.connection_lost(session, 1, T0 + 1, clean=False)

    decisions = tick_every_second(registry, T0 + 2, T0 + 120)

    assert decisions == [(T0 + 101, End(session, EndReason.SOCKET_LOST))]


def test_a_session_that_never_joins_is_also_timed_out_for_silence() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0, joined=False)

    decisions = tick_every_second(registry, T0 + 1, T0 + 30)

    assert decisions == [
        (T0 + 15, Probe(session)),
        (T0 + 20, End(session, EndReason.KEEPALIVE_TIMEOUT)),
    ]


def test_a_session_ended_elsewhere_gets_no_more_silence_decisions() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.end(session, EndReason.BEACON)

    assert tick_every_second(registry, T0 + 1, T0 + 60) == []


def test_silence_timeout_none_switches_probes_and_keepalive_timeouts_off() -> None:
    registry, media = make_registry(silence_timeout=None, stale_after=None)
    session = new_session(registry, T0)

    assert tick_every_second(registry, T0 + 1, T0 + 600) == []
    assert session.state is SessionState.JOINED
    assert media.calls == 0


# -- the sweeper ---------------------------------------------------------------------------


def test_the_sweeper_ends_a_session_with_no_application_message_for_stale_after() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    assert registry.sweep(T0 + 119.9) == []
    assert registry.sweep(T0 + 120) == [End(session, EndReason.STALE_SWEEP)]


def test_a_stale_session_is_swept_by_the_first_sweep_at_or_after_stale_after() -> None:
    registry, _ = make_registry()
    session = new_session(registry, 3.0)

    swept: list[tuple[int, End]] = []
    for now in range(30, 301, 30):  # a sweep every sweep_interval
        ends = registry.sweep(float(now))
        carry_out(registry, ends)
        swept.extend((now, end) for end in ends)

    assert swept == [(150, End(session, EndReason.STALE_SWEEP))]


def test_pongs_alone_do_not_keep_a_session_from_the_sweeper() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    for i in range(1, 121):
        registry.heard(session, T0 + i)

    assert registry.sweep(T0 + 120) == [End(session, EndReason.STALE_SWEEP)]


def test_application_messages_keep_a_session_from_the_sweeper() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.seen(session, T0 + 100)

    assert registry.sweep(T0 + 120) == []
    assert registry.sweep(T0 + 219.9) == []
    assert registry.sweep(T0 + 220) == [End(session, EndReason.STALE_SWEEP)]


def test_media_activity_keeps_a_session_from_the_sweeper_and_rebuckets_it() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)
    media.last[session] = T0 + 100

    assert registry.sweep(T0 + 120) == []
    calls = media.calls
    assert registry.sweep(T0 + 150) == []
    assert registry.sweep(T0 + 180) == []
    assert media.calls == calls  # not re-examined until its media time is near the cutoff
    assert registry.sweep(T0 + 220) == [End(session, EndReason.STALE_SWEEP)]


def test_a_sweep_costs_o_of_the_stale_sessions_not_of_all_sessions() -> None:
    registry, media = make_registry()
    stale = [new_session(registry, 0.0, user=f"stale{i}", conn=i) for i in range(100)]
    fresh = [new_session(registry, 0.0, user=f"fresh{i}", conn=1000 + i) for i in range(10_000)]
    for session in fresh:
        registry.seen(session, 100.0)

    ends = registry.sweep(125.0)

    assert {end.session for end in ends} == set(stale)
    assert all(end.reason is EndReason.STALE_SWEEP for end in ends)
    # The stale sessions, plus at most one boundary bucket: nowhere near 10,100.
    assert media.calls <= 200
    carry_out(registry, ends)
    media.calls = 0
    assert registry.sweep(155.0) == []
    assert media.calls == 0


def test_stale_after_none_switches_the_sweeper_off() -> None:
    registry, media = make_registry(stale_after=None)
    session = new_session(registry, T0)

    assert registry.sweep(T0 + 100_000) == []
    assert session.open and media.calls == 0


# -- the inactivity limit ---------------------------------------------------------------------


def test_the_inactivity_limit_is_off_by_default() -> None:
    assert LivenessPolicy().inactivity_limit is None
    registry, media = make_registry(silence_timeout=None, stale_after=None)
    session = new_session(registry, T0)

    assert registry.tick(T0 + 100_000) == []
    assert session.open and media.calls == 0


def test_no_interaction_and_no_media_for_the_inactivity_limit_ends_a_session_as_inactive() -> None:
    registry, _ = make_registry(silence_timeout=None, stale_after=None, inactivity_limit=1800)
    session = new_session(registry, T0)
    registry.seen(session, T0 + 1000)  # messages are not interaction

    assert registry.tick(T0 + 1799.9) == []
    assert registry.tick(T0 + 1800) == [End(session, EndReason.INACTIVE)]


def test_media_activity_prevents_the_inactivity_end() -> None:
    registry, media = make_registry(silence_timeout=None, stale_after=None, inactivity_limit=1800)
    session = new_session(registry, T0)
    media.last[session] = T0 + 1000

    assert registry.tick(T0 + 1800) == []
    assert registry.tick(T0 + 2799.9) == []
    assert registry.tick(T0 + 2800) == [End(session, EndReason.INACTIVE)]


def test_an_interaction_prevents_the_inactivity_end() -> None:
    registry, _ = make_registry(silence_timeout=None, stale_after=None, inactivity_limit=1800)
    session = new_session(registry, T0)
    registry.interacted(session, T0 + 1000)

    assert registry.tick(T0 + 1800) == []
    assert registry.tick(T0 + 2799.9) == []
    assert registry.tick(T0 + 2800) == [End(session, EndReason.INACTIVE)]


def test_a_hidden_page_is_not_kept_alive_by_becoming_hidden() -> None:
    registry, _ = make_registry(silence_timeout=None, stale_after=None, inactivity_limit=1800)
    session = new_session(registry, T0)
    registry.interacted(session, T0 + 1000, hidden=True)

    assert registry.tick(T0 + 1800) == [End(session, EndReason.INACTIVE)]


def test_with_ticks_every_second_media_keeps_a_session_active_at_little_cost() -> None:
    registry, media = make_registry(silence_timeout=None, stale_after=None, inactivity_limit=1800)
    session = new_session(registry, T0)

    for i in range(1, 5401):
        media.last[session] = T0 + i
        assert registry.tick(T0 + i) == []

    assert session.open
    assert media.calls <= 5400 / 180 + 2


# -- activity level -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("idle_for", "level"),
    [
        (0.0, ActivityLevel.ACTIVE),
        (119.9, ActivityLevel.ACTIVE),
        (120.0, ActivityLevel.IDLE),
        (599.9, ActivityLevel.IDLE),
        (600.0, ActivityLevel.BACKGROUND),
        (10_000.0, ActivityLevel.BACKGROUND),
    ],
)
def test_the_activity_level_follows_the_time_since_the_last_interaction(
    idle_for: float, level: ActivityLevel
) -> None:
    registry, _ = make_registry(idle_after=120, background_after=600)
    session = new_session(registry, T0)

    assert registry.activity_level(session, T0 + idle_for) is level


def test_a_hidden_page_is_in_the_background_however_recent_its_interaction() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)
    registry.interacted(session, T0 + 1, hidden=True)

    assert registry.activity_level(session, T0 + 1) is ActivityLevel.BACKGROUND
    registry.interacted(session, T0 + 2, hidden=False)
    assert registry.activity_level(session, T0 + 2) is ActivityLevel.ACTIVE


# -- ending and the indexes -------------------------------------------------------------------


def test_ending_a_session_is_idempotent() -> None:
    registry, _ = make_registry()
    session = new_session(registry, T0)

    assert registry.end(session, EndReason.BEACON) is True
    assert registry.end(session, EndReason.GRACEFUL) is False

    assert session.state is SessionState.CLOSED and not session.open
    assert session.end_reason is EndReason.BEACON  # the first reason sticks
    assert session.connection_id is None and session.grace_deadline is None


def test_ending_every_session_empties_every_index_and_the_grace_heap_empties_lazily() -> None:
    registry, _ = make_registry(inactivity_limit=1800)
    sessions = [
        new_session(registry, T0, user=f"u{i}", conn=i, joined=i % 3 != 0) for i in range(30)
    ]
    for session in sessions[1::3]:  # joined ones lose their socket: reconnecting
        registry.connection_lost(session, session.connection_id or 0, T0 + 1, clean=False)
    assert registry.count_by_state()[SessionState.RECONNECTING] == 10

    for session in sessions:
        assert registry.end(session, EndReason.SHUTDOWN)

    sizes = registry.index_sizes()
    assert sizes.pop("grace_heap") == 10
    assert set(sizes.values()) == {0}
    assert len(registry) == 0
    assert registry.tick(T0 + 11) == []  # past every deadline: nothing to report
    assert registry.index_sizes()["grace_heap"] == 0


def test_count_by_state_counts_the_open_sessions_by_state() -> None:
    registry, _ = make_registry()
    connecting = new_session(registry, T0, user="c", joined=False, conn=1)
    new_session(registry, T0, user="j", conn=2)
    lost = new_session(registry, T0, user="r", conn=3)
    registry.connection_lost(lost, 3, T0, clean=False)
    gone = new_session(registry, T0, user="x", conn=4)
    registry.end(gone, EndReason.GRACEFUL)

    assert registry.count_by_state() == {
        SessionState.CONNECTING: 1,
        SessionState.JOINED: 1,
        SessionState.RECONNECTING: 1,
        SessionState.CLOSED: 0,
    }
    assert connecting.open


# -- races -------------------------------------------------------------------------------------


def test_two_connections_for_one_identity_admitted_back_to_back_leave_only_the_second() -> None:
    registry, _ = make_registry()

    first = admit(registry, T0, conn=1)
    second = admit(registry, T0, conn=2)

    assert first.outcome is AdmissionOutcome.NEW
    assert second.outcome is AdmissionOutcome.REPLACED
    assert second.previous is first.session and second.previous_connection_id == 1
    assert first.session is not None and not first.session.open
    assert registry.by_identity[("room", "alice")] is second.session
    assert len(registry) == 1


def test_a_replaced_sessions_late_socket_loss_resurrects_nothing() -> None:
    registry, _ = make_registry()
    first = new_session(registry, T0, conn=1)
    second = admit(registry, T0 + 1, conn=2).session
    assert second is not None
    registry.end(second, EndReason.GRACEFUL)

    assert registry.connection_lost(first, 1, T0 + 2, clean=False) is None

    assert first.state is SessionState.CLOSED
    assert set(registry.index_sizes().values()) == {0}
    assert tick_every_second(registry, T0 + 3, T0 + 200) == []


def test_a_replaced_sessions_late_messages_resurrect_nothing() -> None:
    # The old tab's socket may still deliver a frame or a pong after the takeover.
    registry, _ = make_registry(inactivity_limit=1800)
    first = new_session(registry, T0, conn=1)
    second = admit(registry, T0 + 1, conn=2).session
    assert second is not None
    registry.end(second, EndReason.GRACEFUL)

    registry.heard(first, T0 + 2)
    registry.seen(first, T0 + 2)
    registry.interacted(first, T0 + 2)
    registry.joined(first, T0 + 2)

    assert first.state is SessionState.CLOSED
    assert registry.index_sizes() == dict.fromkeys(registry.index_sizes(), 0)


def test_ending_a_session_that_was_already_replaced_returns_false() -> None:
    registry, _ = make_registry()
    first = new_session(registry, T0, conn=1)
    second = admit(registry, T0 + 1, conn=2).session

    assert registry.end(first, EndReason.GRACEFUL) is False
    assert first.end_reason is EndReason.REPLACED
    assert second is not None and second.open
    assert registry.by_identity[("room", "alice")] is second


@pytest.mark.parametrize(
    "changes",
    [{}, {"silence_timeout": None}, {"stale_after": None}, {"inactivity_limit": 1800.0}],
    ids=["defaults", "silence-off", "sweeper-off", "inactivity-on"],
)
def test_a_long_run_does_not_grow_the_registrys_internal_indexes(changes: dict[str, Any]) -> None:
    # A session interacting every second for about 5.5 hours, ticked every second and
    # swept every sweep interval.  The defaults have the inactivity limit off: its
    # index is touched but never asked, which must not make it grow either.
    registry = SessionRegistry(dataclasses.replace(LivenessPolicy(), **changes))
    session = new_session(registry, 0.0)

    for i in range(1, 20_001):
        now = float(i)
        registry.interacted(session, now)
        assert registry.tick(now) == []
        if i % 30 == 0:
            assert registry.sweep(now) == []

    heaps = {
        name: len(getattr(registry, name)._heap) for name in ("_heard", "_seen", "_interaction")
    }
    assert all(size <= 64 for size in heaps.values()), heaps


# -- the policy itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "heartbeat_interval",
        "grace_period",
        "silence_timeout",
        "probe_after",
        "stale_after",
        "sweep_interval",
        "inactivity_limit",
        "idle_after",
        "background_after",
    ],
)
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_every_timing_of_the_policy_must_be_positive(name: str, value: float) -> None:
    changes: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=f"{name} must be positive"):
        LivenessPolicy(**changes)


@pytest.mark.parametrize("probe_after", [20.0, 25.0])
def test_the_probe_must_go_out_before_the_silence_timeout(probe_after: float) -> None:
    with pytest.raises(ValueError, match="probe_after must be shorter than silence_timeout"):
        LivenessPolicy(silence_timeout=20, probe_after=probe_after)


def test_any_probe_delay_is_fine_when_the_silence_timeout_is_off() -> None:
    policy = LivenessPolicy(silence_timeout=None, probe_after=500)
    assert policy.probe_after == 500


@pytest.mark.parametrize("background_after", [120.0, 60.0])
def test_background_must_come_after_idle(background_after: float) -> None:
    with pytest.raises(ValueError, match="background_after must be longer than idle_after"):
        LivenessPolicy(idle_after=120, background_after=background_after)


def test_optional_mechanisms_may_be_switched_off_with_none() -> None:
    policy = LivenessPolicy(silence_timeout=None, stale_after=None, inactivity_limit=None)
    assert (policy.silence_timeout, policy.stale_after, policy.inactivity_limit) == (
        None,
        None,
        None,
    )
    assert SessionRegistry(policy).sweep(1e9) == []


def test_media_that_stopped_before_the_probe_does_not_make_a_frozen_client_a_dead_socket() -> None:
    registry, media = make_registry()
    session = new_session(registry, T0)
    registry.heard(session, T0 + 10)  # the last pong
    media.last[session] = T0 + 11.5  # RTP until the process froze at T0 + 11.5

    decisions = tick_every_second(registry, T0 + 11, T0 + 40)

    # Probed at +25 (15 s after the last pong); nothing on any plane since the
    # freeze: ended 20 s after the last packet, never reported as a dead socket.
    assert decisions == [
        (T0 + 25, Probe(session)),
        (T0 + 32, End(session, EndReason.KEEPALIVE_TIMEOUT)),
    ]


# -- join timeout ------------------------------------------------------------------------------


def test_a_connection_that_never_joins_ends_after_the_join_timeout() -> None:
    # (A connection that pings keeps the keepalive happy: here, no silence timeout.)
    registry, _ = make_registry(join_timeout=30, silence_timeout=None)
    session = new_session(registry, T0, joined=False)

    decisions = tick_every_second(registry, T0 + 1, T0 + 40)

    ends = [(now, d) for now, d in decisions if isinstance(d, End)]
    assert len(ends) == 1
    ended_at, end = ends[0]
    assert end.session is session and end.reason is EndReason.JOIN_TIMEOUT
    assert T0 + 30 <= ended_at < T0 + 30 + 4  # within the bucket width of 3 s
    assert registry.index_sizes()["joining_index"] == 0


def test_a_joined_session_is_never_ended_by_the_join_timeout() -> None:
    registry, media = make_registry(join_timeout=30)
    session = new_session(registry, T0, joined=False)
    registry.joined(session, T0 + 29)
    media.last[session] = T0 + 60  # media keeps it alive past the silence checks

    decisions = tick_every_second(registry, T0 + 1, T0 + 45)

    assert not [d for _, d in decisions if isinstance(d, End)]
    assert registry.index_sizes()["joining_index"] == 0


def test_without_a_join_timeout_an_unjoined_connection_is_left_to_the_other_checks() -> None:
    registry, _ = make_registry(join_timeout=None, silence_timeout=None)
    new_session(registry, T0, joined=False)

    decisions = tick_every_second(registry, T0 + 1, T0 + 100)

    assert not [d for _, d in decisions if isinstance(d, End)]


# -- server stalls ---------------------------------------------------------------------------


def test_after_a_stall_nobody_is_ended_until_the_clients_could_be_heard() -> None:
    # The server froze for 35 s: every deadline passed while the clients' frames
    # waited in socket buffers.  During the resync window only probes go out.
    registry, _ = make_registry(stall_resync=5)
    talking = new_session(registry, T0, user="talking")
    silent = new_session(registry, T0, user="silent")
    lost = new_session(registry, T0, user="lost", conn=3)
    registry.connection_lost(lost, 3, T0, clean=False)  # grace ends at T0 + 10

    resumed_at = T0 + 35
    registry.stalled(resumed_at)
    during = registry.tick(resumed_at) + registry.tick(resumed_at + 1)
    assert all(isinstance(d, Probe) for d in during)
    assert registry.sweep(resumed_at + 2) == []
    registry.seen(talking, resumed_at + 0.2)  # its queued frames are read

    after = registry.tick(resumed_at + 5)

    # The grace really is over; the silent one was probed at the resume and
    # did not answer within the pong timeout (5 s); the talking one was heard.
    ended = {d.session: d.reason for d in after if isinstance(d, End)}
    assert ended == {lost: EndReason.SOCKET_LOST, silent: EndReason.KEEPALIVE_TIMEOUT}
    assert talking.open
    assert registry.stalls == 1


def test_a_session_heard_after_the_stall_is_not_ended() -> None:
    registry, _ = make_registry(stall_resync=5)
    session = new_session(registry, T0)
    registry.tick(T0 + 16)  # probed before the stall, pong still in flight
    registry.stalled(T0 + 50)
    assert not [d for d in registry.tick(T0 + 50) if isinstance(d, End)]

    registry.heard(session, T0 + 50.1)  # the pong, read after the stall

    decisions = registry.tick(T0 + 56)
    assert not [d for d in decisions if isinstance(d, End)]
    assert session.open


def test_a_session_state_changes_only_along_the_allowed_transitions() -> None:
    registry = SessionRegistry(LivenessPolicy())
    session = registry.admit(
        room_id="r", user_id="u", peer_id="p", connection_id=1, resume_token=None, now=0.0
    ).session
    assert session is not None

    with pytest.raises(InvalidTransition):
        session.state = SessionState.RECONNECTING  # a session that never joined cannot
    registry.joined(session, 1.0)
    registry.connection_lost(session, 1, 2.0, clean=False)
    assert session.state is SessionState.RECONNECTING
    registry.end(session, EndReason.SOCKET_LOST)
    with pytest.raises(InvalidTransition):
        session.state = SessionState.JOINED  # closed is final
    assert session.state is SessionState.CLOSED


def test_resuming_a_session_that_never_joined_leaves_it_connecting() -> None:
    registry = SessionRegistry(LivenessPolicy())
    session = registry.admit(
        room_id="r", user_id="u", peer_id="p", connection_id=1, resume_token=None, now=0.0
    ).session
    assert session is not None

    resumed = registry.admit(
        room_id="r",
        user_id="u",
        peer_id="p",
        connection_id=2,
        resume_token=session.resume_token,
        now=1.0,
    )

    assert resumed.session is session and session.connection_id == 2
    assert session.state is SessionState.CONNECTING


# -- the default policy: media makes a frozen client quick to find (issue 12) ---------


def default_registry() -> tuple[SessionRegistry, MediaClock]:
    media = MediaClock()
    return SessionRegistry(LivenessPolicy(), media, tick_interval=0.1), media


def run(
    registry: SessionRegistry,
    media: MediaClock,
    session: Session,
    start: float,
    stop: float,
    *,
    media_until: float | None = None,
    media_every: float = 0.02,
    answers_until: float = float("inf"),
) -> list[tuple[float, Decision]]:
    """Tick every 0.1 s; media arrives every ``media_every`` until ``media_until``,
    probes are answered 50 ms later until ``answers_until``."""
    seen: list[tuple[float, Decision]] = []
    pong_at: float | None = None
    steps = round((stop - start) * 10)
    for i in range(steps + 1):
        now = round(start + i / 10, 3)
        if media_until is not None and now <= media_until:
            last = media.last.get(session, start)
            if now - last >= media_every - 1e-9:
                media.last[session] = now
        if pong_at is not None and now >= pong_at:
            registry.heard(session, pong_at)
            pong_at = None
        decisions = registry.tick(now)
        for decision in decisions:
            if isinstance(decision, Probe) and now < answers_until:
                pong_at = now + 0.05
            if isinstance(decision, End):
                registry.end(decision.session, decision.reason)
        seen.extend((now, d) for d in decisions)
    return seen


def test_a_frozen_client_with_media_is_released_ten_seconds_after_its_last_packet() -> None:
    registry, media = default_registry()
    session = new_session(registry, T0)
    frozen = T0 + 40.0  # media flowed, pongs came; then the process froze

    seen = run(registry, media, session, T0, T0 + 70, media_until=frozen, answers_until=frozen)

    ends = [(now, d) for now, d in seen if isinstance(d, End)]
    assert ends == [(ends[0][0], End(session, EndReason.KEEPALIVE_TIMEOUT))]
    assert 10.0 <= ends[0][0] - frozen <= 10.3
    assert not any(isinstance(d, SocketDead) for _, d in seen)


def test_a_websocket_only_client_is_released_fifteen_seconds_after_it_was_last_heard() -> None:
    registry, media = default_registry()
    session = new_session(registry, T0)

    seen = run(registry, media, session, T0, T0 + 30, answers_until=T0)

    assert seen[0] == (T0 + 10, Probe(session))
    assert seen[-1][1] == End(session, EndReason.KEEPALIVE_TIMEOUT)
    assert 15.0 <= seen[-1][0] - T0 <= 15.2


def test_a_live_client_that_sends_only_consent_checks_is_never_released() -> None:
    # Alone in the room and muted: ICE consent every 5 s +/- 20 %, nothing else;
    # a lost check makes a 10-12 s gap, which the answered probe bridges.
    registry, media = default_registry()
    session = new_session(registry, T0)
    media.last[session] = T0
    seen: list[Decision] = []
    checks = iter([6.0, 4.0, 12.0, 5.5, 11.0, 4.1, 6.0] * 10)
    next_check = T0 + next(checks)
    for i in range(1, 3001):
        now = T0 + i / 10
        if now >= next_check:
            media.last[session] = now
            next_check = now + next(checks)
        for decision in registry.tick(now):
            seen.append(decision)
            if isinstance(decision, Probe):
                registry.heard(session, now + 0.05)
    assert session.open
    assert not any(isinstance(d, (End, SocketDead)) for d in seen)


def test_flowing_media_keeps_keepalive_probes_as_rare_as_before() -> None:
    # A joined client sending media and its 30 s app pings: probed only after
    # 15 s of WebSocket silence, once per ping interval, as before the media rule.
    registry, media = default_registry()
    session = new_session(registry, T0)
    probes = 0
    for i in range(1, 3001):
        now = T0 + i / 10
        media.last[session] = now
        if i % 300 == 0:
            registry.seen(session, now)  # the app's ping every 30 s
        for decision in registry.tick(now):
            assert isinstance(decision, Probe), decision
            probes += 1
            registry.heard(session, now + 0.05)
    assert probes == 10  # one per 30 s ping interval, at 15 s of silence
    assert media.calls <= 3000 / 10  # not looked at every tick
