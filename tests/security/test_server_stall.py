"""A stalled server (SIGSTOP for 35 s) ends no healthy session when it comes back.

The server runs in its own process, as in production (uvloop, whose timers run
before queued I/O is read); two pymediasoup bots hold a call through it.

The clients are told to keep checking consent through the stall: an RFC 7675
client stops sending after 30 s without answers (aioice after 6 failed checks,
about 27-38 s), and then only an ICE restart brings its media back (the browser
client does that on ``failed``; aiortc cannot).  What is tested here is the
server's half: it ends nobody for time it lost itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import aioice.ice
import pytest

from signalling.bot import Bot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STALL = 35.0


class ServerProcess:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "signalling", "--port", "0", "--metrics-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        match = re.search(r"ws://[^:]+:(\d+)/.*metrics http://[^:]+:(\d+)/", line)
        assert match, line
        self.port, self.metrics_port = int(match[1]), int(match[2])

    def scrape(self, prefix: str) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            name: float(value)
            for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
            if name.startswith(prefix)
        }

    def stop(self) -> str:
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            _, stderr = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr.decode(errors="replace")


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    server = ServerProcess(
        "--rtc-min-port", "0", "--rtc-max-port", "0",
        "--consent-timeout", "10", "--grace-period", "2", "--silence-timeout", "4",
        "--probe-after", "2", "--heartbeat-interval", "2", "--join-timeout", "10",
    )  # fmt: skip
    yield server
    print(server.stop()[-4000:])  # shown when the test fails


@pytest.mark.slow
async def test_a_35_second_server_stall_ends_no_healthy_session(
    server_process: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 1000)  # client-side, see above
    url = f"ws://127.0.0.1:{server_process.port}"
    alice = Bot(url, "call", "alice", video=True, chat=True)
    bob = Bot(url, "call", "bob", video=False, chat=False)
    try:
        await alice.join()
        await bob.join()
        assert await bob.wait_for_frames(10, timeout=30)
        assert bob.client is not None

        server_process.process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(STALL)
        server_process.process.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        frames = bob.decoded_frames()
        assert await bob.wait_for_frames(frames + 20, timeout=20), "video did not come back"
        await asyncio.sleep(max(0.0, resumed + 12 - time.monotonic()))  # past every deadline

        notices = []
        while not bob.client.notifications.empty():
            notices.append(bob.client.notifications.get_nowait()[0])
        assert "peerClosed" not in notices
        ended = await asyncio.to_thread(server_process.scrape, "ghostless_sessions_ended_total")
        assert sum(ended.values()) == 0, ended
        sessions = await asyncio.to_thread(server_process.scrape, "ghostless_sessions{")
        assert sessions['ghostless_sessions{state="joined"}'] == 2, sessions
        stalls = await asyncio.to_thread(server_process.scrape, "ghostless_event_loop_stalls")
        assert stalls["ghostless_event_loop_stalls_total"] >= 1
    finally:
        await alice.close()
        await bob.close()
