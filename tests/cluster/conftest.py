"""Fixtures: a real redis-server, and a real cluster (redis-server, ghostless
nodes, HAProxy) started by ``signalling.cluster.Cluster``.

Everything runs as child processes on loopback, on free ports, with its files
in a temporary directory; at teardown (whatever the outcome) every process is
killed and the directory removed.  A missing redis-server or haproxy binary
fails the test loudly (``apt-get install redis-server haproxy``; scripts/test
and scripts/cluster install them).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError

from signalling.cluster import Cluster

from .helpers import LightClient


def _binaries() -> None:
    for name in ("redis-server", "haproxy"):
        if shutil.which(name) is None and shutil.which(name, path="/usr/sbin:/sbin") is None:
            pytest.fail(f"no {name} binary: apt-get install {name} (scripts/test installs it)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ghostless-cluster-test-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_process(workdir: Path) -> Iterator[Cluster]:
    """A redis-server alone (a cluster of no node): ``start_redis``/``stop_redis``
    restart it on the same port, empty."""
    _binaries()
    cluster = Cluster(workdir, nodes=0, free_ports=True)
    try:
        cluster.start_redis()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis(redis_process: Cluster) -> AsyncIterator[Redis]:
    """A client of the test's Redis, to look at what the directory wrote."""
    client: Redis = Redis.from_url(
        redis_process.redis_url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=0.5), 5),  # across a restart of redis-server
        retry_on_error=[ConnectionError],
    )
    try:
        yield client
    finally:
        await client.aclose()


NODE_ARGS = (
    "--log-level",
    "INFO",
    "--grace-period",
    "1",
    "--room-close-delay",
    "2",
    "--reconnect-delay",
    "0.5",
    "--max-connections-per-ip",
    "off",
    "--ip-connection-rate",
    "1000/1000",
    "--gc-freeze",
    "false",
)
"""Every test node's options (default lease timings: 3 s lease renewed every 1 s,
reaper every 1 s)."""

ClusterFactory = Callable[..., Cluster]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Each phase's report on the test item, for fixtures to see how the test went."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return "call" not in reports or any(report.failed for report in reports.values())


@pytest.fixture
def make_cluster(workdir: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """Started clusters (Redis, ``nodes`` nodes, ``balancers`` HAProxy instances
    checking /readyz every 0.5 s), each in its own directory under ``workdir``;
    at teardown every process of each is killed, and when the test failed their
    logs are printed."""
    _binaries()
    made: list[Cluster] = []

    def make(
        *,
        nodes: int = 3,
        balancers: int = 1,
        node_args: tuple[str, ...] = (),
        rtc_ports: dict[str, tuple[int, int]] | None = None,
    ) -> Cluster:
        """``rtc_ports``: a media port range for some nodes (the others let the
        kernel pick ports: no pool, so no readiness threshold on ports)."""
        directory = workdir / f"cluster{len(made) + 1}"
        directory.mkdir()
        cluster = Cluster(
            directory,
            nodes=nodes,
            balancers=balancers,
            free_ports=True,
            check_interval="500ms",
            node_args=NODE_ARGS + node_args,
        )
        for name, ports in (rtc_ports or {}).items():
            cluster.node(name).rtc_ports = ports
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for node in cluster.members:
                cluster.kill_node(node.name)
            cluster.stop()
            if _failed(request):
                for name in cluster.log_names():
                    print(f"--- {name} ---\n{cluster.log(name)}")


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    """Redis, three nodes and one HAProxy."""
    return make_cluster()


@pytest.fixture
async def clients() -> AsyncIterator[list[LightClient]]:
    """Light protoo clients a test makes (``helpers.LightClient``), closed at teardown."""
    made: list[LightClient] = []
    yield made
    await asyncio.gather(*(client.close() for client in made))
