"""Logging: one structured line per session lifecycle event, text or JSON."""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .liveness import Session

lifecycle = logging.getLogger("ghostless.session")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if k != "event")
        return text


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aioice").setLevel(max(logging.WARNING, root.level))


def log_session(event: str, session: Session | None = None, **extra: Any) -> None:
    """One line per lifecycle event: started, joined, reconnecting, resumed, ended."""
    if not lifecycle.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {"event": event}
    if session is not None:
        fields.update(
            session=session.id,
            room=session.room_id,
            peer=session.peer_id,
            user=session.user_id,
            state=session.state.value,
        )
    fields.update(extra)
    lifecycle.info(event, extra={"fields": fields})


class LogThrottle:
    """At most one log line per key per ``interval``; says how many were held back.

    Hostile input must not turn into a log flood: each kind of refusal is
    logged once per interval, with the count of those not logged since.
    Keys are few (a kind of event, not a client), so memory stays bounded.
    """

    __slots__ = ("_last", "_suppressed", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """The number suppressed since the last line if a line may go out now, else None."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
