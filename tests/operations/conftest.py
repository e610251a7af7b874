"""Fixtures: a real Prometheus scraping a real server every second, and a real call.

Prometheus is Debian's ``prometheus`` binary (``apt-get install prometheus``;
``scripts/test`` installs it), started as a child process on loopback with its
configuration and TSDB in a temporary directory, the alert rules of
``docker/prometheus/alerts.yml`` loaded and evaluated every second.  It is
killed and its directory removed when the test ends, whatever the outcome.

The server runs on the test's event loop, so everything that waits for
Prometheus (which scrapes that server) awaits: HTTP calls go to a thread.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from signalling.bot import Bot
from signalling.server import Server
from tests.cluster.helpers import free_udp_ports as free_udp_block
from tests.signalling import conftest as signalling
from tests.signalling.conftest import ServerFactory

make_server = signalling.make_server  # the fixture of tests/signalling, shared

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "docker" / "prometheus" / "alerts.yml"
JOB = "ghostless"  # the job name the alert rules select, as in docker/prometheus/prometheus.yml
SCRAPE_INTERVAL = 1.0

# Everything here is on loopback: never go through a proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Sample = tuple[dict[str, str], float]
"""One element of an instant vector: its labels and its value."""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: status and body (an error status is an answer, not an exception)."""
    try:
        with _http.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Prometheus:
    """A Prometheus child process and a small client of its HTTP API."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, directory: Path) -> None:
        self.process = process
        self.url = url
        self.directory = directory

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    async def start(
        cls, target: str, *, rule_files: tuple[Path, ...] = (ALERT_RULES,)
    ) -> Prometheus:
        """Start Prometheus scraping ``target`` (host:port) and wait until it is ready."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("no prometheus binary: apt-get install prometheus (scripts/test does it)")
        directory = Path(tempfile.mkdtemp(prefix="ghostless-prometheus-"))
        prometheus: Prometheus | None = None
        try:
            for _ in range(3):  # the free port may be taken before Prometheus binds it
                prometheus = cls._spawn(binary, directory, target, rule_files)
                if await prometheus._wait_ready(timeout=20):
                    return prometheus
                prometheus._kill()
                if "address already in use" not in prometheus.log():
                    break
            log = prometheus.log() if prometheus is not None else ""
            raise AssertionError(f"Prometheus did not become ready:\n{log}")
        except BaseException:
            if prometheus is not None:
                prometheus._kill()
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def _spawn(
        cls, binary: str, directory: Path, target: str, rule_files: tuple[Path, ...]
    ) -> Prometheus:
        port = free_tcp_port()
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_bytes(orjson.dumps(config))  # JSON is YAML
        with open(directory / "prometheus.log", "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(process, f"http://127.0.0.1:{port}", directory)

    async def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                status, _ = await asyncio.to_thread(http_get, f"{self.url}/-/ready", 1.0)
            except OSError:
                status = 0
            if status == 200:
                return True
            await asyncio.sleep(0.05)
        return False

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def stop(self) -> None:
        """Kill the process and remove its configuration, data and log."""
        try:
            self._kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.directory / "prometheus.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    # -- the HTTP API -------------------------------------------------------------------

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its ``data``, or AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = await asyncio.to_thread(http_get, url)
        answer = orjson.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {answer.get('error', body[:200])}")
        return answer["data"]

    async def query(self, expr: str) -> list[Sample]:
        """Evaluate ``expr`` now: the instant vector (a scalar is one unlabelled sample)."""
        data = await self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: a {data['resultType']}, not an instant vector")
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    async def value(self, expr: str) -> float | None:
        """The value of a one-sample ``expr`` now; None when it has no sample."""
        samples = await self.query(expr)
        if len(samples) > 1:
            raise AssertionError(f"{expr}: {len(samples)} samples, expected one: {samples}")
        return samples[0][1] if samples else None

    async def wait_until(
        self, expr: str, check: Callable[[list[Sample]], bool], timeout: float = 20.0
    ) -> list[Sample]:
        """Poll ``expr`` until ``check`` accepts its samples; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            samples = await self.query(expr)
            if check(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} never became as expected; last: {samples}")
            await asyncio.sleep(SCRAPE_INTERVAL / 4)

    async def wait_for_value(self, expr: str, expected: float, timeout: float = 20.0) -> None:
        """Poll until the one-sample ``expr`` equals ``expected``."""

        def equal(samples: list[Sample]) -> bool:
            return len(samples) == 1 and math.isclose(samples[0][1], expected)

        await self.wait_until(expr, equal, timeout)


PrometheusFactory = Callable[[Server], Awaitable[Prometheus]]


@pytest.fixture
async def watch(make_server: ServerFactory) -> AsyncIterator[PrometheusFactory]:
    """Start a Prometheus scraping a server; returns once the server has been scraped.

    (Depends on ``make_server`` so that Prometheus stops before the servers do.)
    """
    started: list[Prometheus] = []

    async def start(server: Server) -> Prometheus:
        prometheus = await Prometheus.start(f"127.0.0.1:{server.metrics_port}")
        started.append(prometheus)
        await prometheus.wait_for_value(f'up{{job="{JOB}"}}', 1)
        return prometheus

    try:
        yield start
    finally:
        for prometheus in started:
            prometheus.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    """A server with a media port pool (so its use can be measured) and 2 pings a second."""
    low, high = free_udp_block(20)
    return await make_server(rtc_min_port=low, rtc_max_port=high, heartbeat_interval=0.5)


@pytest.fixture
async def prometheus(watch: PrometheusFactory, server: Server) -> Prometheus:
    return await watch(server)


class Call:
    """Bob watching Alice's video in room "call" (pymediasoup, in this process)."""

    def __init__(self, server: Server, room: str = "call") -> None:
        url = f"ws://127.0.0.1:{server.port}"
        self.bob = Bot(url, room, "bob", video=False)
        self.alice = Bot(url, room, "alice", video=True)

    async def start(self) -> None:
        await self.bob.join()
        await self.alice.join()
        assert await self.bob.wait_for_frames(10, timeout=20), "Bob decoded no video from Alice"

    async def alice_leaves(self) -> None:
        """Alice leaves as a well-behaved app does, and Bob is told so."""
        assert self.bob.client is not None
        await self.alice.leave()
        _, closed = await self.bob.client.next_notification("peerClosed", timeout=10)
        assert closed == {"peerId": "alice", "reason": "graceful"}

    async def close(self) -> None:
        await self.alice.close()
        await self.bob.close()


@pytest.fixture
async def call(server: Server) -> AsyncIterator[Call]:
    call = Call(server)
    try:
        yield call
    finally:
        await call.close()
