"""The waiting queue (signalling/admission_queue.py): FIFO, two capacities, positions."""

from __future__ import annotations

from signalling.admission_queue import AdmissionQueue, Ticket

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
