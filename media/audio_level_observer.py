"""AudioLevelObserver: who is speaking in a router, from the audio level header extension.

Senders put each audio packet's level in the ``ssrc-audio-level`` header
extension (RFC 6464): the low 7 bits are the level in -dBov, 0 (loudest) to
127 (silence).  The observer averages them per producer over ``interval`` and
reports, as mediasoup's ``AudioLevelObserver`` does:

- ``volumes`` ([``Volume``], loudest first, at most ``max_entries``): the
  producers whose average reached ``threshold`` (dBov, -127..0) in the last
  interval, with their average; a producer with fewer than 10 packets in the
  interval (200 ms of 20 ms Opus frames) is not judged;
- ``silence``: once, when nobody reaches the threshold any more.

Nothing runs per packet unless a producer is observed: the producer hands each
packet to ``producer.audio_level_sink`` only when one is set (after its pause
check, so a paused producer is not heard, as in mediasoup).  ``update`` is the
whole decision, driven by a timer in production and called directly by tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import rtp_packet
from .errors import InvalidParametersError, InvalidStateError
from .events import EventEmitter
from .rtp_parameters import AUDIO_LEVEL_URI

if TYPE_CHECKING:
    from .producer import Producer
    from .router import Router

# mediasoup's bounds for ``interval`` (it clamps rather than refuses).
MIN_INTERVAL = 0.25
MAX_INTERVAL = 5.0
MIN_PACKETS = 10


@dataclass(frozen=True, slots=True)
class Volume:
    """One entry of a ``volumes`` event: a producer's average level (dBov, -127..0)."""

    producer: Producer
    volume: int


class _Levels:
    """The running sum of one producer's levels in the current interval."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def reset(self) -> None:
        self.total = 0
        self.count = 0


class AudioLevelObserver(EventEmitter):
    """mediasoup ``AudioLevelObserver``: events ``volumes``, ``silence``,
    ``routerclose``; observer ``close``, ``pause``, ``resume``, ``addproducer``,
    ``removeproducer``, ``volumes``, ``silence``.

    ``interval`` is in seconds (mediasoup: milliseconds), clamped to 0.25..5.
    """

    def __init__(
        self,
        *,
        router: Router,
        max_entries: int = 1,
        threshold: int = -80,
        interval: float = 1.0,
        app_data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise InvalidParametersError("max_entries must be a positive integer")
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise InvalidParametersError("threshold must be an integer")
        if not -127 <= threshold <= 0:
            raise InvalidParametersError("threshold must be -127..0 dBov")
        self.id = str(uuid.uuid4())
        self.type = "audiolevel"
        self.app_data = app_data if app_data is not None else {}
        self.observer = EventEmitter()
        self.closed = False
        self.paused = False
        self.max_entries = max_entries
        self.threshold = threshold
        self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, float(interval)))
        self._router = router
        self._extension_id = next(
            (
                ext["preferredId"]
                for ext in router.rtp_capabilities["headerExtensions"]
                if ext["uri"] == AUDIO_LEVEL_URI and ext["kind"] == "audio"
            ),
            None,
        )
        self._producers: dict[str, Producer] = {}
        self._levels: dict[str, _Levels] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._silent = True
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._next_update = 0.0
        self._start_timer()

    def __repr__(self) -> str:
        return f"<AudioLevelObserver {self.id}{' closed' if self.closed else ''}>"

    @property
    def producer_ids(self) -> list[str]:
        return list(self._producers)

    # -- producers --------------------------------------------------------------------

    async def add_producer(self, producer_id: str) -> None:
        """Observe an audio producer of this router (mediasoup ``addProducer``)."""
        self._check_open()
        producer = self._router.get_producer(producer_id)
        if producer is None:
            raise InvalidParametersError(f"producer {producer_id} not found")
        if producer.kind != "audio":
            raise InvalidParametersError("not an audio producer")
        if producer_id in self._producers:
            raise InvalidStateError("producer already observed")
        if producer.audio_level_sink is not None:
            # One sink per producer keeps the packet path to one attribute check.
            raise InvalidStateError("producer already observed by another observer")
        levels = self._levels[producer_id] = _Levels()
        self._producers[producer_id] = producer
        producer.audio_level_sink = self._sink(levels)
        # mediasoup forgets a paused producer's levels (ProducerPaused).
        on_pause = producer.observer.on("pause", levels.reset)
        on_close = producer.observer.on("close", lambda: self._forget(producer_id))

        def unsubscribe() -> None:
            producer.observer.off("pause", on_pause)
            producer.observer.off("close", on_close)
            if producer.audio_level_sink is not None:
                producer.audio_level_sink = None

        self._unsubscribe[producer_id] = unsubscribe
        self.observer.emit("addproducer", producer)

    async def remove_producer(self, producer_id: str) -> None:
        self._check_open()
        producer = self._producers.get(producer_id)
        if producer is None:
            raise InvalidParametersError(f"producer {producer_id} not observed")
        self._forget(producer_id)

    def _forget(self, producer_id: str) -> None:
        producer = self._producers.pop(producer_id, None)
        self._levels.pop(producer_id, None)
        unsubscribe = self._unsubscribe.pop(producer_id, None)
        if unsubscribe is not None:
            unsubscribe()
        if producer is not None and not self.closed:
            self.observer.emit("removeproducer", producer)

    def _sink(self, levels: _Levels) -> Callable[[bytearray], None]:
        """What the producer calls with each packet it forwards (mapped to router ids)."""
        extension_id = self._extension_id
        extension_value = rtp_packet.extension_value

        def receive(packet: bytearray) -> None:
            if extension_id is None or self.paused:
                return
            value = extension_value(packet, extension_id)
            if value:
                levels.total += value[0] & 0x7F  # RFC 6464: the V bit is not the level
                levels.count += 1

        return receive

    # -- the decision -----------------------------------------------------------------

    def update(self) -> None:
        """Judge the interval that just ended and start the next one."""
        if self.closed or self.paused:
            return
        loud: list[tuple[int, Producer]] = []
        for producer_id, levels in self._levels.items():
            if levels.count >= MIN_PACKETS:
                # -dBov averaged, rounded half away from zero as mediasoup's lround.
                volume = -int(levels.total / levels.count + 0.5)
                if volume >= self.threshold:
                    loud.append((volume, self._producers[producer_id]))
            levels.reset()
        if loud:
            self._silent = False
            loud.sort(key=lambda entry: entry[0], reverse=True)
            volumes = [Volume(p, v) for v, p in loud[: self.max_entries]]
            self.emit("volumes", volumes)
            self.observer.emit("volumes", volumes)
        elif not self._silent:
            self._silent = True
            self.emit("silence")
            self.observer.emit("silence")

    # -- the timer ----------------------------------------------------------------------

    def _start_timer(self) -> None:
        # An absolute schedule: a late tick does not push every later one back.
        self._next_update = self._loop.time() + self.interval
        self._timer = self._loop.call_at(self._next_update, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed or self.paused:
            return
        self.update()
        now = self._loop.time()
        self._next_update = max(self._next_update + self.interval, now)
        self._timer = self._loop.call_at(self._next_update, self._tick)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- control --------------------------------------------------------------------------

    async def pause(self) -> None:
        """Stop judging; a speaking room is told ``silence`` (mediasoup ``Paused``)."""
        self._check_open()
        if self.paused:
            return
        self.paused = True
        self._stop_timer()
        for levels in self._levels.values():
            levels.reset()
        if not self._silent:
            self._silent = True
            self.emit("silence")
            self.observer.emit("silence")
        self.observer.emit("pause")

    async def resume(self) -> None:
        self._check_open()
        if not self.paused:
            return
        self.paused = False
        self._start_timer()
        self.observer.emit("resume")

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidStateError(f"audio level observer {self.id} is closed")

    # -- close --------------------------------------------------------------------------

    def close(self) -> None:
        """Close it (app-initiated): the producers are released, the router told."""
        if self.closed:
            return
        self._close()
        self._router.rtp_observer_closed(self)
        self.release_listeners()

    def router_closed(self) -> None:
        """Its router closed: emit ``routerclose``."""
        if self.closed:
            return
        self._close()
        self.emit("routerclose")
        self.release_listeners()

    def _close(self) -> None:
        self.closed = True
        self._stop_timer()
        for producer_id in list(self._producers):
            self._forget(producer_id)
        self.observer.emit("close")


__all__ = ["AudioLevelObserver", "Volume"]
