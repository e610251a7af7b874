"""The two sides of a call in the network-fault tests.

- ``NsBot``: a pymediasoup bot in a client namespace (``nsbot.py`` as a
  subprocess), whose JSON lines are collected as they come.
- ``Observer``: a pymediasoup bot in the test process (root namespace, on an
  unimpaired path) that logs every notification it receives with the time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import orjson

from signalling.bot import Bot

from .netns import ClientNetwork

Event = dict[str, Any]


class NsProcess:
    """A Python process in a client namespace that prints JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.events: list[tuple[float, Event]] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, network: ClientNetwork, log: Path, *args: str) -> Self:
        """``python ARGS`` in ``network``; its stderr goes to ``log``."""
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            process = await network.spawn_python(
                *args, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
        return cls(process, log)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append((time.monotonic(), orjson.loads(line)))
                self._changed.set()

    async def wait_for(
        self, check: Callable[[Event], bool], timeout: float, after: float = 0.0
    ) -> tuple[float, Event]:
        """The first event (at or after monotonic time ``after``) that passes ``check``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for at, event in self.events[seen:]:
                if at >= after and check(event):
                    return at, event
            seen = len(self.events)
            if self._reader.done():
                raise AssertionError(f"bot exited: {self.stderr_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such bot event in {timeout} s: {self.stderr_tail()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def of(self, kind: str) -> list[tuple[float, Event]]:
        return [(at, event) for at, event in self.events if event.get("event") == kind]

    def status(self) -> Event:
        statuses = self.of("status")
        assert statuses, "no status from the bot yet"
        return statuses[-1][1]

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        """Kill it (the network's ``close`` would too) and stop reading."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class NsBot(NsProcess):
    """``nsbot.py``: a pymediasoup bot producing video in a client namespace."""

    @classmethod
    async def join(
        cls, network: ClientNetwork, url: str, room: str, peer: str, log: Path, *args: str
    ) -> NsBot:
        bot = await cls.start(
            network, log, "-m", "tests.netfault.nsbot", url, room, "--peer", peer, *args
        )
        _, event = await bot.wait_for(lambda e: e["event"] in ("joined", "error"), 30)
        assert event["event"] == "joined", f"{event} {bot.stderr_tail()}"
        return bot

    def statuses(self, after: float = 0.0) -> list[Event]:
        return [event for at, event in self.of("status") if at >= after]


@dataclass
class Notification:
    at: float
    method: str
    data: dict[str, Any]


@dataclass
class Observer:
    """A peer on the server's side of the faults, watching the faulted one."""

    bot: Bot
    log: list[Notification] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @classmethod
    async def join(cls, url: str, room: str, peer: str = "bob") -> Observer:
        bot = Bot(url, room, peer, display_name=peer, video=False)
        observer = cls(bot)
        await bot.join()
        observer._drain = asyncio.ensure_future(observer._collect())
        return observer

    async def _collect(self) -> None:
        assert self.bot.client is not None
        queue = self.bot.client.notifications
        while True:
            method, data = await queue.get()
            self.log.append(Notification(time.monotonic(), method, data))

    def about(self, peer: str, *methods: str, after: float = 0.0) -> list[Notification]:
        """Notifications of ``methods`` about ``peer`` (``data.peerId``) since ``after``."""
        return [
            n
            for n in self.log
            if n.method in methods and n.data.get("peerId") == peer and n.at >= after
        ]

    async def wait_for(
        self, peer: str, method: str, timeout: float, after: float = 0.0
    ) -> Notification:
        deadline = time.monotonic() + timeout
        while not (found := self.about(peer, method, after=after)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} for {peer} within {timeout} s: {self.log}")
            await asyncio.sleep(0.02)
        return found[0]

    def frames(self) -> int:
        return self.bot.decoded_frames()

    async def frames_after(self, count: int, timeout: float) -> float:
        """Wait until ``count`` more frames are decoded; return how long it took."""
        target = self.frames() + count
        started = time.monotonic()
        assert await self.bot.wait_for_frames(target, timeout), (
            f"{self.frames()} frames, wanted {target} within {timeout} s"
        )
        return time.monotonic() - started

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        await self.bot.close()
