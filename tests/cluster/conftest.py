"""Fixtures: a real redis-server, and a real cluster (redis-server, ghostless
nodes, HAProxy) started by ``signalling.cluster.Cluster``.

Everything runs as child processes on loopback, on free ports, with its files
in a temporary directory; at teardown (whatever the outcome) every process is
killed and the directory removed.  A missing redis-server or haproxy binary
fails the test loudly (``apt-get install redis-server haproxy``; scripts/test
and scripts/cluster install them).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError
from redis.retry import Retry

from signalling.cluster import Cluster


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


@pytest.fixture
def cluster(workdir: Path) -> Iterator[Cluster]:
    """Redis, three nodes (default lease timings: 3 s lease renewed every 1 s,
    reaper every 1 s) and HAProxy checking /readyz every 0.5 s."""
    _binaries()
    cluster = Cluster(
        workdir,
        nodes=3,
        free_ports=True,
        check_interval="500ms",
        node_args=(
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
        ),
    )
    try:
        cluster.start()
        yield cluster
    except BaseException:
        for name in ("redis", "haproxy", *(node.name for node in cluster.members)):
            print(f"--- {name} ---\n{cluster.log(name)}")
        raise
    finally:
        for node in cluster.members:
            cluster.kill_node(node.name)
        cluster.stop()
