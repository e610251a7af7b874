"""scripts/healthcheck.py against a real server: exit codes and the summary line."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from signalling.server import Server

from .conftest import ServerFactory

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "healthcheck.py"


async def run_check(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode().strip()


async def test_a_running_server_is_healthy(server: Server) -> None:
    code, line = await run_check("--url", f"ws://127.0.0.1:{server.port}")
    assert code == 0, line
    assert line.startswith("healthy: ready, join + ping")
    assert len(line.splitlines()) == 1
    await asyncio.sleep(0.1)
    assert not server.registry.by_id  # the check left nothing behind


async def test_the_media_check_sends_and_decodes_video(server: Server) -> None:
    code, line = await run_check(
        "--url", f"ws://127.0.0.1:{server.port}", "--media", "--timeout", "20"
    )
    assert code == 0, line
    assert "frames decoded" in line


async def test_a_closed_port_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, line = await run_check("--url", f"ws://127.0.0.1:{port}", "--timeout", "2")
    assert code == 2 and line.startswith("unreachable:")


async def test_a_server_that_is_not_ready_is_unhealthy(make_server: ServerFactory) -> None:
    server = await make_server()
    server.accepting = False  # what shutdown does first: /readyz turns 503
    code, line = await run_check("--url", f"ws://127.0.0.1:{server.port}")
    assert code == 1 and line == "unhealthy: /readyz answered 503"
