"""The waiting queue (signalling/admission_queue.py): FIFO, two capacities, positions."""

from __future__ import annotations

from signalling.admission_queue import AdmissionQueue, ClusterSlots, Ticket

T0 = 100.0


def seats(**free: int) -> object:
    return lambda room_id: free.get(room_id, 1 << 30)


def test_tickets_are_admitted_first_in_first_out() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    first, second, third = (queue.enqueue("a", T0 + i) for i in range(3))

    admitted = queue.admit(room_seats=seats(a=2), free_sessions=None)  # type: ignore[arg-type]

    assert admitted == [first, second]
    assert all(t.admitted for t in admitted) and not third.admitted  # type: ignore[union-attr]
    assert len(queue) == 1


def test_a_full_room_does_not_block_the_tickets_of_other_rooms() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    blocked = queue.enqueue("full", T0)
    other = queue.enqueue("free", T0 + 1)

    admitted = queue.admit(room_seats=seats(full=0), free_sessions=None)  # type: ignore[arg-type]

    assert admitted == [other]
    assert blocked is not None and not blocked.admitted


def test_while_the_server_is_full_nobody_overtakes() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    early = queue.enqueue("a", T0)
    late = queue.enqueue("b", T0 + 1)

    assert queue.admit(room_seats=seats(), free_sessions=0) == []  # type: ignore[arg-type]
    assert queue.admit(room_seats=seats(), free_sessions=1) == [early]  # type: ignore[arg-type]
    assert queue.admit(room_seats=seats(), free_sessions=1) == [late]  # type: ignore[arg-type]


def test_a_full_queue_refuses_more() -> None:
    queue = AdmissionQueue(max_length=2, timeout=60)
    assert queue.enqueue("a", T0) is not None
    assert queue.enqueue("a", T0) is not None

    assert queue.enqueue("a", T0) is None


def test_a_ticket_that_waited_the_timeout_expires() -> None:
    queue = AdmissionQueue(max_length=10, timeout=30)
    old = queue.enqueue("a", T0)
    young = queue.enqueue("a", T0 + 20)

    assert queue.expired(T0 + 29) == []
    assert queue.expired(T0 + 30) == [old]
    assert len(queue) == 1 and young is not None and not young.removed


def test_leaving_moves_everyone_behind_up() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    tickets = [queue.enqueue("a", T0 + i) for i in range(3)]
    assert [p for _, p in queue.moved(server_full=False)] == [1, 2, 3]

    queue.remove(tickets[0])  # type: ignore[arg-type]

    assert queue.moved(server_full=False) == [(tickets[1], 1), (tickets[2], 2)]
    assert queue.moved(server_full=False) == []  # told once


def test_positions_count_only_the_same_room_unless_the_server_is_full() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    a1 = queue.enqueue("a", T0)
    b1 = queue.enqueue("b", T0 + 1)
    a2 = queue.enqueue("a", T0 + 2)

    assert dict(queue.moved(server_full=False)) == {a1: 1, b1: 1, a2: 2}
    assert dict(queue.moved(server_full=True)) == {b1: 2, a2: 3}


def test_a_removed_ticket_is_marked_so() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    ticket = queue.enqueue("a", T0)
    assert isinstance(ticket, Ticket)

    queue.remove(ticket)
    queue.remove(ticket)  # idempotent

    assert ticket.removed and len(queue) == 0 and queue.waiting_for("a") == 0


def test_admissible_counts_what_admit_would_let_in_without_removing_anything() -> None:
    queue = AdmissionQueue(max_length=10, timeout=60)
    for room in ("full", "a", "a", "b"):
        queue.enqueue(room, T0)

    count = queue.admissible(room_seats=seats(full=0, a=1), free_sessions=None)  # type: ignore[arg-type]

    assert count == 2 and len(queue) == 4
    assert queue.admissible(room_seats=seats(), free_sessions=1) == 1  # type: ignore[arg-type]


# -- ClusterSlots: when a queue asks the cluster for session slots --------------------------

RETRY = 1.0


def cluster_full_at(now: float) -> ClusterSlots[str]:
    """A node's queue that found the cluster full at ``now``."""
    slots: ClusterSlots[str] = ClusterSlots(RETRY)
    slots.refused(now)
    return slots


def test_while_the_cluster_has_room_a_queue_asks_for_its_tickets_at_once() -> None:
    slots: ClusterSlots[str] = ClusterSlots(RETRY)

    assert slots.ask(T0, candidates=2) == 2
    assert slots.ask(T0, candidates=2) == 0  # one call in flight at a time

    slots.answered(["s1", "s2"], refused=0)
    assert not slots.waiting and slots.in_flight == 0
    assert [slots.take(), slots.take()] == ["s1", "s2"]


def test_a_full_cluster_is_not_asked_again_until_a_slot_may_have_freed() -> None:
    slots = cluster_full_at(T0)
    assert slots.waiting

    for now in (T0, T0 + 0.3, T0 + 0.9):
        assert slots.ask(now, candidates=1) == 0
        assert not slots.due(now)

    slots.slot_freed()  # a release message, or a session ended here
    assert slots.due(T0 + 0.9)
    assert slots.ask(T0 + 0.9, candidates=1) == 1
    assert slots.attempts == 1


def test_the_backstop_asks_again_when_no_release_was_heard() -> None:
    slots = cluster_full_at(T0)

    assert not slots.due(T0 + RETRY - 0.01)
    assert slots.due(T0 + RETRY)
    assert slots.ask(T0 + RETRY, candidates=3) == 3
    slots.answered([], refused=3)  # still full

    assert slots.waiting
    assert slots.ask(T0 + RETRY + 0.5, candidates=3) == 0
    assert slots.due(T0 + 2 * RETRY)  # one interval after the last call left


def test_releases_heard_during_a_call_make_one_more_call_not_one_each() -> None:
    slots = cluster_full_at(T0)
    slots.slot_freed()
    assert slots.ask(T0 + 0.1, candidates=2) == 2

    for _ in range(5):  # released meanwhile, maybe after Redis answered us
        slots.slot_freed()
    assert slots.ask(T0 + 0.1, candidates=2) == 0  # (in flight)
    slots.answered(["s1"], refused=1)

    # (The queue asks before its tickets take the granted slots: two tickets, one slot.)
    assert slots.ask(T0 + 0.2, candidates=2) == 1  # once more, at once
    assert slots.take() == "s1"
    slots.answered([], refused=1)
    assert slots.ask(T0 + 0.3, candidates=1) == 0
    assert slots.attempts == 2


def test_nothing_is_asked_for_tickets_the_node_itself_cannot_admit() -> None:
    slots = cluster_full_at(T0)
    slots.slot_freed()

    assert slots.ask(T0 + 0.1, candidates=0) == 0  # (their rooms are full here)
    # Nothing due until the backstop, counted from this look: no drain per tick.
    assert not slots.due(T0 + 0.5)
    assert slots.due(T0 + 0.1 + RETRY)
    assert slots.attempts == 0


def test_all_granted_means_the_cluster_had_room() -> None:
    slots = cluster_full_at(T0)
    slots.slot_freed()
    slots.ask(T0 + 0.1, candidates=2)

    slots.answered(["s1", "s2"], refused=0)

    assert not slots.waiting and slots.retry_at is None and not slots.due(T0 + 10)
    assert slots.ask(T0 + 0.2, candidates=2) == 0  # (the two tickets take them)
    assert [slots.take(), slots.take()] == ["s1", "s2"]
    assert slots.ask(T0 + 0.3, candidates=1) == 1  # the next ticket: asked at once


def test_slots_no_ticket_can_take_are_given_back_and_an_empty_queue_forgets() -> None:
    slots = cluster_full_at(T0)
    slots.slot_freed()
    slots.ask(T0 + 0.1, candidates=2)
    slots.answered(["s1", "s2"], refused=0)
    assert slots.take() == "s1"  # the other ticket left while the call was in flight

    assert slots.surplus() == ["s2"] and not slots.slots

    slots.refused(T0 + 1)
    slots.idle()
    assert not slots.waiting and not slots.due(T0 + 100)


def test_a_call_that_never_came_back_is_asked_again_by_the_backstop() -> None:
    slots = cluster_full_at(T0)
    slots.slot_freed()
    slots.ask(T0 + 0.1, candidates=1)

    slots.failed()

    assert slots.in_flight == 0 and slots.waiting
    assert not slots.due(T0 + 0.5)
    assert slots.due(T0 + 0.1 + RETRY)
