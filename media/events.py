"""A small synchronous event emitter whose listener errors never escape.

mediasoup's ``EnhancedEventEmitter.safeEmit`` isolates listeners so that one bad
listener cannot break a close cascade; this is the same idea.  Listeners run
synchronously, in registration order, inside ``emit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[..., Any]


class EventEmitter:
    """``on``/``once``/``off``/``emit`` with per-listener error isolation."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def on(self, event: str, listener: Listener) -> Listener:
        self._listeners.setdefault(event, []).append(listener)
        return listener

    def once(self, event: str, listener: Listener) -> Listener:
        def wrapper(*args: Any) -> None:
            self.off(event, wrapper)
            listener(*args)

        return self.on(event, wrapper)

    def off(self, event: str, listener: Listener) -> None:
        listeners = self._listeners.get(event)
        if listeners is None:
            return
        try:
            listeners.remove(listener)
        except ValueError:
            return
        if not listeners:
            del self._listeners[event]

    def listener_count(self, event: str) -> int:
        return len(self._listeners.get(event, ()))

    def remove_all_listeners(self) -> None:
        self._listeners.clear()

    def release_listeners(self) -> None:
        """Drop every listener, and the observer's, once the object is closed.

        Listeners are often closures over the object itself; left in place they
        keep it alive in a reference cycle that only the cyclic collector frees
        (and never, once ``gc.freeze()`` has moved it out of reach).
        """
        self._listeners.clear()
        observer = getattr(self, "observer", None)
        if isinstance(observer, EventEmitter):
            observer._listeners.clear()

    def emit(self, event: str, *args: Any) -> bool:
        """Call every listener of ``event``; return whether there was one."""
        listeners = self._listeners.get(event)
        if not listeners:
            return False
        for listener in tuple(listeners):
            try:
                listener(*args)
            except Exception:
                logger.exception("listener for %r raised", event)
        return True
