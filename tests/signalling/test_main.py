"""``python -m signalling`` as operators run it: configuration errors, signals, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from signalling.protoo_client import ProtooClient

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "signalling", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def test_a_bad_value_stops_the_server_with_one_clear_line() -> None:
    process = start("--grace-period", "soon")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert err.decode().strip() == (
        "ghostless: configuration error: --grace-period: 'soon' is not a valid float"
    )


def test_an_environment_variable_is_validated_too() -> None:
    process = start(env={"GHOSTLESS_CONSENT_TIMEOUT": "3"})
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "consent_timeout must be at least 10 s" in err.decode()


async def test_sigterm_tells_clients_closes_1001_and_exits_in_bound() -> None:
    port = free_port()
    process = start(
        "--port",
        str(port),
        "--metrics-port",
        "off",
        "--log-format",
        "json",
        "--rtc-min-port",
        "0",
        "--rtc-max-port",
        "0",
    )
    try:
        assert process.stdout is not None
        banner = await asyncio.to_thread(process.stdout.readline)
        assert b"ghostless listening" in banner
        client = await ProtooClient.connect(f"ws://127.0.0.1:{port}/?roomId=r&peerId=p")
        await client.request("join", {})

        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, data = await client.next_notification("serverShutdown", timeout=10)
        assert data["reconnectDelay"] == 2000
        assert (await asyncio.wait_for(client.closed, 10))[0] == 1001
        code = await asyncio.to_thread(process.wait, 15)
        assert code == 0
        assert time.monotonic() - started < 10 + 2
    finally:
        if process.poll() is None:
            process.kill()
        _, err = process.communicate(timeout=10)
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    lifecycle = [e for e in events if e.get("logger") == "ghostless.session"]
    assert [e["event"] for e in lifecycle] == ["session_started", "session_joined", "session_ended"]
    assert lifecycle[-1]["reason"] == "shutdown" and lifecycle[-1]["peer"] == "p"


async def test_a_second_signal_forces_the_exit() -> None:
    port = free_port()
    process = start(
        "--port",
        str(port),
        "--metrics-port",
        "off",
        "--shutdown-timeout",
        "30",
        "--rtc-min-port",
        "0",
        "--rtc-max-port",
        "0",
    )
    try:
        assert process.stdout is not None
        await asyncio.to_thread(process.stdout.readline)
        # A client that never answers the close handshake keeps shutdown waiting.
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(
            b"GET /?roomId=r&peerId=p HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: protoo\r\n\r\n"
        )
        raw.recv(1024)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 10)
        assert code == 1
        raw.close()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
