"""LeaseSchedule: when a node renews its lease and runs the reaper, and what
Redis's answers (or silence) mean, on a fake clock."""

from __future__ import annotations

import pytest

from signalling.directory import LeaseSchedule, LeaseState, LeaseTimings, RenewResult

TIMINGS = LeaseTimings(ttl=3.0, renew_interval=1.0, reaper_interval=1.0, timeout=0.5)


def renew(schedule: LeaseSchedule, sent: float, answered: float, result: RenewResult) -> None:
    assert schedule.renewal_due(sent)
    schedule.renewing(sent)
    assert not schedule.renewal_due(sent + 5)  # one call in flight at a time
    schedule.renewed(answered, result)


def test_a_new_schedule_renews_at_once_and_holds_nothing() -> None:
    schedule = LeaseSchedule(TIMINGS)
    assert schedule.renewal_due(0.0)
    assert schedule.state(0.0) is LeaseState.UNREGISTERED


def test_the_lease_is_held_for_ttl_from_when_the_renewal_was_sent() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 10.0, 10.4, RenewResult.REGISTERED)

    # Redis set the TTL after the call left: 10.0 + 3 is a safe lower bound.
    assert schedule.state(12.99) is LeaseState.HELD
    assert schedule.state(13.0) is LeaseState.LOST
    assert not schedule.renewal_due(10.99)
    assert schedule.renewal_due(11.0)  # every renew_interval, from the send time
    assert not schedule.reconcile_needed  # a first registration has nothing to reconcile


def test_renewals_keep_the_lease_held() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 0.0, 0.01, RenewResult.REGISTERED)
    for second in range(1, 100):
        renew(schedule, float(second), second + 0.01, RenewResult.RENEWED)
        assert schedule.state(second + 0.99) is LeaseState.HELD
    assert not schedule.reconcile_needed


def test_failed_renewals_are_retried_within_half_a_second_and_the_lease_runs_out() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 0.0, 0.01, RenewResult.REGISTERED)
    now = 1.0
    while now < 5.0:
        assert schedule.renewal_due(now)
        schedule.renewing(now)
        schedule.failed(now + 0.5)  # a timeout
        assert schedule.next_renewal == now + 1.0
        now += 1.0
    assert schedule.state(2.99) is LeaseState.HELD
    assert schedule.state(3.0) is LeaseState.LOST


def test_registered_anew_after_holding_the_lease_asks_for_a_reconcile() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 0.0, 0.01, RenewResult.REGISTERED)
    schedule.renewing(1.0)
    schedule.failed(1.5)
    # Redis comes back empty (restarted), or after our key expired.
    renew(schedule, 8.0, 8.01, RenewResult.REGISTERED)

    assert schedule.reconcile_needed
    assert schedule.state(8.5) is LeaseState.HELD
    schedule.reconciled()
    assert not schedule.reconcile_needed


def test_a_node_id_held_by_another_process_holds_nothing() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 0.0, 0.01, RenewResult.RENEWED)
    renew(schedule, 1.0, 1.01, RenewResult.CONFLICT)

    assert schedule.state(1.5) is LeaseState.UNREGISTERED
    assert schedule.renewal_due(2.0)  # it keeps trying: the other may go away


def test_the_reaper_runs_once_per_interval() -> None:
    schedule = LeaseSchedule(TIMINGS)
    assert schedule.reap_due(0.0)
    schedule.reaped(0.0)
    assert not schedule.reap_due(0.99)
    assert schedule.reap_due(1.0)


def test_the_next_deadline_is_the_earliest_of_renewal_and_reaper() -> None:
    schedule = LeaseSchedule(TIMINGS)
    renew(schedule, 0.0, 0.1, RenewResult.REGISTERED)
    schedule.reaped(0.3)
    assert schedule.next_deadline(0.2) == 1.0
    schedule.renewing(1.0)  # in flight: only the reaper is waited for
    assert schedule.next_deadline(1.1) == 1.3
    assert schedule.next_deadline(5.0) == 5.0  # overdue: now


@pytest.mark.parametrize(
    "timings",
    [
        {"ttl": 1.0, "renew_interval": 1.0},
        {"renew_interval": 0.0},
        {"reaper_interval": 0.0},
        {"timeout": 2.0},
    ],
)
def test_timings_that_cannot_work_are_refused(timings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LeaseTimings(**timings)
