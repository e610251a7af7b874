"""Configuration: CLI flags, ``GHOSTLESS_*`` environment variables, defaults.

Precedence: flag > environment > default.  Everything is validated at start
and a bad value stops the process with one clear line (exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .liveness import LivenessPolicy, TakeoverPolicy


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8765
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9102
    rtc_listen_ip: str = "127.0.0.1"
    rtc_announced_address: str | None = None
    rtc_min_port: int = 40000
    rtc_max_port: int = 49999
    consent_timeout: float = 30.0
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    room_close_delay: float = 20.0
    max_peers_per_room: int | None = None
    max_message_size: int = 128 * 1024
    request_timeout: float = 30.0
    token_secret: str | None = None
    shutdown_timeout: float = 10.0
    reconnect_delay: float = 2.0
    """Told to clients in ``serverShutdown``: when to reconnect."""
    log_format: str = "text"
    log_level: str = "INFO"
    gc_freeze: bool = True
    """``gc.freeze()`` on every liveness tick, so collections never rescan old objects."""
    gc_collect_interval: float | None = 3600.0
    """With gc_freeze: a full collection this often, as insurance (see docs)."""


@dataclass(frozen=True)
class _Option:
    name: str  # Config field, or "liveness.<field>"
    kind: str  # int, float, optional_float, optional_int, str, optional_str, bool, choice
    help: str
    choices: tuple[str, ...] = ()


OPTIONS: tuple[_Option, ...] = (
    _Option("host", "str", "address the WebSocket/HTTP server listens on"),
    _Option("port", "int", "WebSocket/HTTP port"),
    _Option("metrics_host", "str", "address of the Prometheus metrics server"),
    _Option("metrics_port", "optional_int", "Prometheus metrics port ('off' to disable)"),
    _Option("rtc_listen_ip", "str", "IP address the media UDP sockets bind to"),
    _Option("rtc_announced_address", "optional_str", "address announced in ICE candidates"),
    _Option("rtc_min_port", "int", "lowest media UDP port"),
    _Option("rtc_max_port", "int", "highest media UDP port"),
    _Option("consent_timeout", "float", "ICE consent timeout in seconds (>= 10, RFC 7675)"),
    _Option("liveness.heartbeat_interval", "float", "app ping interval told to clients (s)"),
    _Option("liveness.grace_period", "float", "how long a lost session may resume (s)"),
    _Option(
        "liveness.silence_timeout", "optional_float", "end a session silent on every plane (s)"
    ),
    _Option("liveness.probe_after", "float", "send a keepalive probe after this silence (s)"),
    _Option("liveness.stale_after", "optional_float", "sweeper: no app message for this long (s)"),
    _Option("liveness.sweep_interval", "float", "how often the sweeper runs (s)"),
    _Option("liveness.inactivity_limit", "optional_float", "end idle sessions with no media (s)"),
    _Option("liveness.idle_after", "float", "activity level idle after this (s)"),
    _Option("liveness.background_after", "float", "activity level background after this (s)"),
    _Option(
        "liveness.takeover",
        "choice",
        "second connection with the same identity",
        tuple(p.value for p in TakeoverPolicy),
    ),
    _Option("room_close_delay", "float", "close a room this long after its last peer left (s)"),
    _Option("max_peers_per_room", "optional_int", "refuse peers beyond this ('off' = no limit)"),
    _Option("max_message_size", "int", "largest WebSocket message accepted (bytes)"),
    _Option("request_timeout", "float", "timeout of server-to-client requests (s)"),
    _Option("token_secret", "optional_str", "HS256 secret verifying the 'token' URL parameter"),
    _Option("shutdown_timeout", "float", "graceful shutdown bound (s)"),
    _Option("reconnect_delay", "float", "reconnect delay advertised in serverShutdown (s)"),
    _Option("log_format", "choice", "log format", ("text", "json")),
    _Option("log_level", "choice", "log level", ("DEBUG", "INFO", "WARNING", "ERROR")),
    _Option("gc_freeze", "bool", "gc.freeze() on every tick (no full-collection pauses)"),
    _Option("gc_collect_interval", "optional_float", "full GC this often with gc_freeze (s)"),
)

_OFF = ("off", "none", "")


def _flag(option: _Option) -> str:
    return "--" + option.name.replace("liveness.", "").replace("_", "-")


def _env(option: _Option) -> str:
    return "GHOSTLESS_" + option.name.replace("liveness.", "").upper()


def _convert(option: _Option, raw: str, source: str) -> Any:
    value = raw.strip()
    try:
        if option.kind == "int":
            return int(value)
        if option.kind == "float":
            return float(value)
        if option.kind in ("optional_int", "optional_float"):
            if value.lower() in _OFF:
                return None
            return int(value) if option.kind == "optional_int" else float(value)
        if option.kind == "optional_str":
            return None if value.lower() in _OFF else value
        if option.kind == "bool":
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if option.kind == "choice":
            match = next((c for c in option.choices if c.lower() == value.lower()), None)
            if match is None:
                raise ConfigError(f"{source}: {raw!r} is not one of {', '.join(option.choices)}")
            return match
        return value
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"{source}: {raw!r} is not a valid {option.kind.replace('_', ' ')}"
        ) from None


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build a validated ``Config``; raise ``ConfigError`` on any bad value."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m signalling",
        description="ghostless: WebRTC signalling server and SFU that never leaves a ghost.",
        epilog="Every flag can also be set as GHOSTLESS_<NAME> (e.g. GHOSTLESS_PORT=8765).",
    )
    for option in OPTIONS:
        parser.add_argument(_flag(option), dest=option.name, default=None, help=option.help)
    args = vars(parser.parse_args(argv))

    top: dict[str, Any] = {}
    liveness: dict[str, Any] = {}
    for option in OPTIONS:
        raw = args[option.name]
        source = _flag(option)
        if raw is None and _env(option) in environ:
            raw, source = environ[_env(option)], _env(option)
        if raw is None:
            continue
        value = _convert(option, raw, source)
        if option.name.startswith("liveness."):
            liveness[option.name.removeprefix("liveness.")] = value
        else:
            top[option.name] = value
    if "takeover" in liveness:
        liveness["takeover"] = TakeoverPolicy(liveness["takeover"])
    try:
        policy = LivenessPolicy(**liveness)
    except ValueError as exc:
        raise ConfigError(f"liveness: {exc}") from None
    config = Config(**top, liveness=policy)
    validate(config)
    return config


def validate(config: Config) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for name in ("port", "rtc_min_port", "rtc_max_port"):
        value = getattr(config, name)
        check(0 <= value <= 65535, f"{name} must be 0..65535, not {value}")
    check(
        config.metrics_port is None or 0 <= config.metrics_port <= 65535,
        "metrics_port must be 0..65535 or off",
    )
    check(
        (config.rtc_min_port == 0) == (config.rtc_max_port == 0)
        and config.rtc_min_port <= config.rtc_max_port,
        "rtc_min_port..rtc_max_port must be a range within 1..65535 (or 0..0)",
    )
    try:
        ip = ipaddress.ip_address(config.rtc_listen_ip)
    except ValueError:
        raise ConfigError(
            f"rtc_listen_ip must be an IP address, not {config.rtc_listen_ip!r}"
        ) from None
    check(
        not ip.is_unspecified or config.rtc_announced_address is not None,
        "rtc_listen_ip 0.0.0.0/:: needs rtc_announced_address (replies must come from it)",
    )
    check(config.consent_timeout >= 10, "consent_timeout must be at least 10 s (RFC 7675)")
    check(config.room_close_delay >= 0, "room_close_delay must not be negative")
    check(
        config.max_peers_per_room is None or config.max_peers_per_room >= 1,
        "max_peers_per_room must be at least 1",
    )
    check(config.max_message_size >= 1024, "max_message_size must be at least 1024 bytes")
    check(config.request_timeout > 0, "request_timeout must be positive")
    check(config.shutdown_timeout > 0, "shutdown_timeout must be positive")
    check(config.reconnect_delay >= 0, "reconnect_delay must not be negative")
    check(
        config.gc_collect_interval is None or config.gc_collect_interval >= 60,
        "gc_collect_interval must be at least 60 s (or off)",
    )


def replace(config: Config, **changes: Any) -> Config:
    """A copy with ``changes`` (``liveness`` fields may be given flat), validated."""
    live = {k: changes.pop(k) for k in list(changes) if k in LivenessPolicy.__dataclass_fields__}
    if live:
        try:
            changes["liveness"] = dataclasses.replace(config.liveness, **live)
        except ValueError as exc:
            raise ConfigError(f"liveness: {exc}") from None
    new = dataclasses.replace(config, **changes)
    validate(new)
    return new
