"""AdmissionLedger on a fake clock: what a node counts of the cluster-wide
limits, what it tells Redis and when (one call in flight, releases batched,
resync after an unknown outcome), with Redis's answers played by the test."""

from __future__ import annotations

from signalling.admission import AdmissionLedger, Batch, Request, Verdict


def ledger(**changes: object) -> AdmissionLedger:
    options: dict[str, object] = {
        "count_connections": True,
        "max_connections_per_ip": 3,
        "max_sessions": 10,
        "release_delay": 0.1,
    }
    options.update(changes)
    return AdmissionLedger(**options)  # type: ignore[arg-type]


def grant_all(book: AdmissionLedger, batch: Batch, now: float = 0.0) -> list[Request]:
    return book.answered(batch, ["ok"] * len(batch.acquire), None, now)


def enqueue(book: AdmissionLedger, address: str | None, *, session: bool) -> Request:
    request = book.request(address, session=session)
    assert request.verdict is None
    book.enqueue(request)
    return request


def test_nothing_to_count_is_decided_at_once_and_never_reaches_redis() -> None:
    off = ledger(count_connections=False, max_sessions=None)
    assert not off.enabled
    request = off.request("10.0.0.1", session=True)
    assert request.verdict is Verdict.LOCAL and not request.counted
    # Per-address counting only: a session alone asks nothing.
    only_ip = ledger(max_sessions=None)
    assert only_ip.request(None, session=True).verdict is Verdict.LOCAL
    # No per-address limit configured: nothing to count per address either.
    assert not ledger(max_connections_per_ip=None).count_connections


def test_newcomers_waiting_together_go_in_one_call_and_are_counted() -> None:
    book = ledger()
    first = enqueue(book, "10.0.0.1", session=True)
    second = enqueue(book, "10.0.0.1", session=False)
    third = enqueue(book, "10.0.0.2", session=True)

    batch = book.next_batch(0.0, sessions=0)
    assert batch is not None and batch.acquire == (first, second, third) and batch.ops == ()
    assert book.next_batch(0.0, sessions=0) is None  # one call in flight at a time

    decided = book.answered(batch, ["ok", "ok", "ip"], 7, 0.0)

    assert decided == [first, second, third]
    assert (first.verdict, second.verdict, third.verdict) == (
        Verdict.GRANTED,
        Verdict.GRANTED,
        Verdict.CONNECTIONS_PER_IP,
    )
    assert first.reserved and not second.reserved and not third.counted
    assert book.counted == book.applied == {"10.0.0.1": 2}
    assert (book.reservations, book.sessions_applied, book.cluster_sessions) == (1, 1, 7)
    assert not book.pending


def test_a_reserved_slot_becomes_the_registrys_session_without_a_call() -> None:
    book = ledger()
    request = enqueue(book, "10.0.0.1", session=True)
    batch = book.next_batch(0.0, sessions=0)
    assert batch is not None
    grant_all(book, batch)

    book.settle(request)  # the registry has the session now (sessions=1)
    book.changed(0.0)  # (sessionstarted)

    assert book.next_batch(1.0, sessions=1) is None  # Redis already counts it
    assert not book.pending


def test_releases_are_batched_and_ride_along_with_the_next_admission() -> None:
    book = ledger(release_delay=0.5)
    requests = [enqueue(book, "10.0.0.1", session=False) for _ in range(3)]
    batch = book.next_batch(0.0, sessions=0)
    assert batch is not None
    grant_all(book, batch)

    for request in requests[:2]:
        book.release(request, 1.0)
    book.release(requests[0], 1.0)  # idempotent
    assert book.next_batch(1.2, sessions=0) is None  # not due yet
    assert book.next_deadline(1.2) == 1.5

    # A newcomer does not wait for the delay, and takes the releases along.
    newcomer = enqueue(book, "10.0.0.1", session=False)
    batch = book.next_batch(1.2, sessions=0)
    assert batch is not None
    assert batch.ops == (("i", "10.0.0.1", -2),) and batch.acquire == (newcomer,)
    grant_all(book, batch, 1.2)
    assert book.counted == book.applied == {"10.0.0.1": 2}

    for request in (requests[2], newcomer):
        book.release(request, 2.0)
    batch = book.next_batch(2.5, sessions=0)
    assert batch is not None and batch.ops == (("i", "10.0.0.1", -2),)
    grant_all(book, batch, 2.5)
    assert book.counted == book.applied == {} and not book.pending


def test_the_session_share_follows_the_registry_size() -> None:
    book = ledger()
    book.changed(0.0)
    # Sessions admitted while Redis was away (or taken over) reach Redis unchecked.
    batch = book.next_batch(0.2, sessions=4)
    assert batch is not None and batch.ops == (("s", "", 4),)
    grant_all(book, batch)
    # A takeover: a session started and one ended, net zero: no call.
    book.changed(1.0)
    assert book.next_batch(1.2, sessions=4) is None
    book.changed(2.0)
    batch = book.next_batch(2.2, sessions=1)
    assert batch is not None and batch.ops == (("s", "", -3),)


def test_an_unknown_outcome_admits_locally_then_resyncs_with_absolute_values() -> None:
    book = ledger()
    kept = enqueue(book, "10.0.0.1", session=True)
    batch = book.next_batch(0.0, sessions=0)
    assert batch is not None
    grant_all(book, batch)
    book.settle(kept)
    lost_in_flight = enqueue(book, "10.0.0.2", session=True)
    batch = book.next_batch(1.0, sessions=1)
    assert batch is not None and batch.acquire == (lost_in_flight,)
    waiting = enqueue(book, "10.0.0.3", session=False)

    decided = book.failed(1.5, batch)  # a timeout: did Redis apply it?

    assert decided == [lost_in_flight, waiting]
    assert all(r.verdict is Verdict.LOCAL and r.counted for r in decided)
    assert not lost_in_flight.reserved  # local admissions reserve nothing
    assert book.resync_needed and book.next_batch(2.0, sessions=1) is None
    # Redis lists an address this node no longer has: it is set to zero.
    batches = book.resync_batches({"10.0.0.1", "10.9.9.9"}, sessions=1)
    assert [b.ops for b in batches] == [
        (
            ("S", "", 1),
            ("I", "10.0.0.1", 1),
            ("I", "10.0.0.2", 1),
            ("I", "10.0.0.3", 1),
            ("I", "10.9.9.9", 0),
        )
    ]
    book.sending(batches[0])
    grant_all(book, batches[0], 2.0)
    book.resynced(2.0)
    assert book.applied == book.counted == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1}
    assert book.sessions_applied == 1
    assert book.next_batch(3.0, sessions=1) is None and not book.pending


def test_a_resync_is_cut_into_batches() -> None:
    book = ledger(batch_size=4)
    for index in range(9):
        book.local(book.request(f"10.0.0.{index}", session=False), 0.0)
    batches = book.resync_batches(set(), sessions=0)
    assert [len(b.ops) for b in batches] == [4, 4, 2]  # S + nine addresses


def test_a_newcomer_whose_connection_went_away_is_undone() -> None:
    book = ledger()
    queued = enqueue(book, "10.0.0.1", session=True)
    book.abandon(queued, 0.0)
    assert book.next_batch(0.0, sessions=0) is None and not queued.counted

    in_flight = enqueue(book, "10.0.0.1", session=True)
    batch = book.next_batch(1.0, sessions=0)
    assert batch is not None
    book.abandon(in_flight, 1.0)
    grant_all(book, batch, 1.0)  # granted after all: given back at once
    assert not in_flight.counted and not in_flight.reserved
    assert book.counted == {} and book.reservations == 0
    batch = book.next_batch(1.2, sessions=0)
    assert batch is not None and batch.ops == (("s", "", -1), ("i", "10.0.0.1", -1))
    grant_all(book, batch, 1.2)
    assert book.applied == {} and book.sessions_applied == 0 and not book.pending


def test_redis_away_admits_the_waiting_locally_and_counts_them_for_later() -> None:
    book = ledger()
    waiting = enqueue(book, "10.0.0.1", session=True)
    assert book.fall_back(0.0) == [waiting]
    assert waiting.verdict is Verdict.LOCAL and book.counted == {"10.0.0.1": 1}
    assert not book.resync_needed  # nothing was sent: Redis holds what it held
    batch = book.next_batch(0.2, sessions=1)
    assert batch is not None
    assert batch.ops == (("s", "", 1), ("i", "10.0.0.1", 1))


def test_draining_answers_the_waiting_and_counts_nothing_more() -> None:
    book = ledger()
    waiting = enqueue(book, "10.0.0.1", session=True)
    assert book.stop() == [waiting] and waiting.verdict is Verdict.LOCAL
    assert book.request("10.0.0.1", session=True).verdict is Verdict.LOCAL


def test_draining_decides_a_call_in_flight_and_ignores_its_late_answer() -> None:
    book = ledger()
    in_flight = enqueue(book, "10.0.0.1", session=True)
    batch = book.next_batch(0.0, sessions=0)
    assert batch is not None
    assert book.stop() == [in_flight] and in_flight.verdict is Verdict.LOCAL
    book.release(in_flight, 1.0)
    grant_all(book, batch, 1.0)
    assert not in_flight.counted and book.counted == {} and book.reservations == 0
