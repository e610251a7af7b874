"""The node's liveness lease, renewed from a thread of its own.

Why a thread: the lease says "this process is alive and holds its rooms".
Renewed from the event loop, it also said "the loop was never busy for more
than ttl - renew_interval", which is not true of a live node.  A balancer
that goes away drops thousands of WebSockets on a node at once, and closing
them kept a 20,000-session node's loop busy for 2-5 s (measured): the 3 s
lease expired, another node's reaper took the rooms, and the node, back,
ended the sessions of every room taken meanwhile.  Kafka moved its consumer
heartbeat to a background thread for the same reason (KIP-62), and kept a
bound on the processing loop separately: so does this.

The thread renews every ``renew_interval`` while the loop has shown a sign of
life within ``stall_limit`` (``loop_alive``, called from the loop).  A loop
wedged longer than that (a bug, a deadlock) stops the renewals, and the lease
expires ``ttl`` later, as for a dead process.  SIGKILL and SIGSTOP stop the
thread with the process.

The thread only makes the Redis call and keeps ``LeaseSchedule`` (under a
lock: the loop reads it); what follows from an answer (logging a conflict,
the reconcile) is handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .directory import LeaseSchedule, LeaseState, RenewResult

logger = logging.getLogger(__name__)

Outcome = RenewResult | BaseException
"""What one renewal got: Redis's answer, or the error."""


class LeaseKeeper:
    """Renews the lease on ``schedule`` with ``script`` (see the module docstring).

    ``arguments()`` gives the renewal script's arguments (read in the thread:
    it must only read plain attributes); ``on_outcome(outcome, was_held)``
    runs on the loop after each renewal, ``was_held`` being whether the lease
    was held before it.
    """

    def __init__(
        self,
        *,
        url: str,
        script: str,
        schedule: LeaseSchedule,
        lock: threading.Lock,
        arguments: Callable[[], list[Any]],
        on_outcome: Callable[[Outcome, bool], None],
        loop: asyncio.AbstractEventLoop,
        stall_limit: float,
        name: str,
    ) -> None:
        timeout = schedule.timings.timeout
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # as the loop's client: one retry after a restart
        )
        self._script = self._redis.register_script(script)
        self._schedule = schedule
        self._lock = lock
        self._arguments = arguments
        self._on_outcome = on_outcome
        self._loop = loop
        self.stall_limit = stall_limit
        self._loop_seen = time.monotonic()
        self._stop = threading.Event()
        self._wedged = False
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def loop_alive(self) -> None:
        """The loop ran (call it from the loop, at least every ``renew_interval``)."""
        self._loop_seen = time.monotonic()

    def halt(self) -> None:
        """Renew no more, from now on (``stop`` also waits for the thread)."""
        self._stop.set()

    async def stop(self) -> None:
        """Stop renewing (the lease then expires, or the caller withdraws it)."""
        self._stop.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)
        self._redis.close()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        schedule, lock = self._schedule, self._lock
        while not self._stop.is_set():
            now = time.monotonic()
            silent = now - self._loop_seen
            if silent > self.stall_limit:
                if not self._wedged:
                    logger.error(
                        "directory: the event loop has not run for %.1f s: the lease is"
                        " no longer renewed (its rooms move once it expires)",
                        silent,
                    )
                self._wedged = True
            else:
                self._wedged = False
                with lock:
                    due = schedule.renewal_due(now)
                    if due:
                        schedule.renewing(now)
                if due:
                    self._renew()
            with lock:
                delay = schedule.next_renewal - time.monotonic()
            self._stop.wait(min(max(delay, 0.01), schedule.timings.renew_interval))

    def _renew(self) -> None:
        schedule, lock = self._schedule, self._lock
        outcome: Outcome
        try:
            answer = self._script(args=self._arguments())
            outcome = RenewResult(answer)
        except (RedisError, OSError, ValueError) as exc:
            outcome = exc
        with lock:
            now = time.monotonic()
            was_held = schedule.state(now) is LeaseState.HELD
            if isinstance(outcome, RenewResult):
                schedule.renewed(now, outcome)
                self.renewals += 1
            else:
                schedule.failed(now)
        try:
            self._loop.call_soon_threadsafe(self._on_outcome, outcome, was_held)
        except RuntimeError:
            self._stop.set()  # the loop is closed: nobody to tell
