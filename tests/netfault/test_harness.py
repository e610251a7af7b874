"""The harness itself: each fault does what it says, and nothing outlives a test.

Plain sockets, no server: a small client (probe.py) in the namespace, its
peer in this process on the root end of the veth.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from .netns import (
    REPO,
    ClientNetwork,
    links,
    namespaces,
    nft_tables,
    sh,
    sweep_stale,
    wait_until_gone,
)
from .peers import NsProcess
from .relay import Impairment


@dataclass
class TcpPair:
    """A TCP connection from an echo client in the namespace to this process."""

    client: NsProcess
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    port: int

    async def echoed(self, data: bytes, timeout: float) -> bool:
        self.writer.write(data)
        await self.writer.drain()
        try:
            got = await asyncio.wait_for(self.reader.readexactly(len(data)), timeout)
        except TimeoutError:
            return False
        assert got == data
        return True


@asynccontextmanager
async def tcp_server(host: str) -> AsyncIterator[tuple[int, asyncio.Queue[TcpStreams]]]:
    accepted: asyncio.Queue[TcpStreams] = asyncio.Queue()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_connection, host, 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()


TcpStreams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo_client(
    network: ClientNetwork, port: int, accepted: asyncio.Queue[TcpStreams], log: Path
) -> TcpPair:
    client = await NsProcess.start(
        network, log, "-m", "tests.netfault.probe", "tcp-echo", network.server_ip, str(port)
    )
    reader, writer = await asyncio.wait_for(accepted.get(), 10)
    pair = TcpPair(client, reader, writer, port)
    assert await pair.echoed(b"hello", 5)
    return pair


@pytest.mark.parametrize("fault", ["blackhole", "link_down"])
async def test_fault_drops_silently_and_the_connection_survives(
    network: ClientNetwork, tmp_path: Path, fault: str
) -> None:
    async with tcp_server(network.server_ip) as (port, accepted):
        pair = await echo_client(network, port, accepted, tmp_path / "echo.log")
        if fault == "blackhole":
            network.blackhole()
        else:
            network.link_down()
        # Nothing gets through, and nothing comes back either: no RST, no EOF.
        assert not await pair.echoed(b"during", 1.5)
        assert not pair.reader.at_eof()
        if fault == "blackhole":
            counters = network.counters()
            assert counters["ingress:blackhole"]["packets"] > 0  # our retransmissions
            network.restore()
        else:
            network.link_up()
        # TCP retransmits: the bytes sent during the fault arrive, then the echo.
        got = await asyncio.wait_for(pair.reader.readexactly(len(b"during")), 10)
        assert got == b"during"
        assert await pair.echoed(b"after", 5)
        assert not [e for _, e in pair.client.events if "error" in e], pair.client.events
        pair.writer.close()


async def test_change_address(network: ClientNetwork, tmp_path: Path) -> None:
    old_ip = network.client_ip
    async with tcp_server(network.server_ip) as (port, accepted):
        old = await echo_client(network, port, accepted, tmp_path / "old.log")
        assert old.writer.get_extra_info("peername")[0] == old_ip
        new_ip = network.change_address()
        assert new_ip != old_ip
        addresses = network.run(["ip", "-4", "-o", "addr", "show", "dev", network.client_link])
        assert new_ip in addresses and f"{old_ip}/" not in addresses
        # A new connection comes from the new address...
        new = await echo_client(network, port, accepted, tmp_path / "new.log")
        assert new.writer.get_extra_info("peername")[0] == new_ip
        # ... while the old one is stranded: its answers go to an address nobody has.
        assert not await old.echoed(b"stranded", 1.5)
        assert not old.reader.at_eof()
        for pair in (old, new):
            pair.writer.close()


async def test_reset_tcp(network: ClientNetwork, tmp_path: Path) -> None:
    async with tcp_server(network.server_ip) as (port, accepted):
        pair = await echo_client(network, port, accepted, tmp_path / "echo.log")
        started = time.monotonic()
        assert network.reset_tcp(port) == 1
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(pair.reader.read(1), 2)
        _, event = await pair.client.wait_for(lambda e: "error" in e, 2)
        assert event == {"error": "ConnectionAbortedError", "errno": 103}
        assert time.monotonic() - started < 2
        pair.writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: set[tuple[str, int]] = set()
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.received += 1
        self.peers.add(addr)
        self.transport.sendto(data, addr)


@asynccontextmanager
async def udp_echo(host: str) -> AsyncIterator[tuple[int, UdpEcho]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(UdpEcho, local_addr=(host, 0))
    try:
        yield transport.get_extra_info("sockname")[1], protocol
    finally:
        transport.close()


async def udp_round_trips(
    network: ClientNetwork, port: int, count: int, interval: float, log: Path
) -> dict[str, object]:
    probe = await NsProcess.start(
        network,
        log,
        "-m",
        "tests.netfault.probe",
        "udp-send",
        network.server_ip,
        str(port),
        str(count),
        str(interval),
    )
    _, summary = await probe.wait_for(lambda e: "sent" in e, count * interval + 15)
    return summary


async def test_loss(network: ClientNetwork, tmp_path: Path) -> None:
    async with udp_echo(network.server_ip) as (port, echo):
        network.set_loss(10, "up")
        summary = await udp_round_trips(network, port, 2000, 0.001, tmp_path / "udp.log")
    counters = network.counters()
    # Binomial, n = 2000, p = 0.1: the standard deviation is 0.7 %.
    assert 0.86 <= echo.received / 2000 <= 0.94, echo.received
    assert summary["received"] == echo.received  # nothing lost on the way back
    assert counters["egress:loss"]["packets"] >= 2000 - echo.received
    assert "ingress:loss" not in counters


async def test_block_udp(network: ClientNetwork, tmp_path: Path) -> None:
    async with (
        udp_echo(network.server_ip) as (port, echo),
        tcp_server(network.server_ip) as (
            tcp_port,
            accepted,
        ),
    ):
        network.block_udp()
        blocked = await udp_round_trips(network, port, 20, 0.01, tmp_path / "blocked.log")
        assert blocked["received"] == 0 and echo.received == 0
        pair = await echo_client(network, tcp_port, accepted, tmp_path / "tcp.log")  # TCP passes
        network.unblock_udp()
        unblocked = await udp_round_trips(network, port, 20, 0.01, tmp_path / "open.log")
        assert unblocked["received"] == 20
        pair.writer.close()


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_bandwidth_limit(network: ClientNetwork, tmp_path: Path, direction: str) -> None:
    size, kbit = 250_000, 1000  # 2 s at 1 Mbit/s
    received: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if direction == "down":
            writer.write(b"x" * size)
            await writer.drain()
            writer.close()
            return
        first = await reader.read(65536)
        started, total = time.monotonic(), 0  # counted from the first chunk, as tcp-recv does
        while data := await reader.read(65536):
            total += len(data)
        assert first
        received.set_result((total, time.monotonic() - started))
        writer.close()

    server = await asyncio.start_server(on_connection, network.server_ip, 0)
    try:
        network.limit_bandwidth(kbit, "up" if direction == "up" else "down")
        client_side = network.run(["tc", "qdisc", "show", "dev", network.client_link])
        host_side = sh(["tc", "qdisc", "show", "dev", network.host_link])
        assert ("tbf" in client_side) == (direction == "up")
        assert ("tbf" in host_side) == (direction == "down")
        port = server.sockets[0].getsockname()[1]
        mode = ["tcp-send", network.server_ip, str(port), str(size)]
        if direction == "down":
            mode = ["tcp-recv", network.server_ip, str(port)]
        client = await NsProcess.start(
            network, tmp_path / "client.log", "-m", "tests.netfault.probe", *mode
        )
        if direction == "up":
            total, elapsed = await asyncio.wait_for(received, 30)
        else:
            _, event = await client.wait_for(lambda e: "received" in e, 30)
            total, elapsed = event["received"], event["elapsed"]
    finally:
        server.close()
    assert size - 65536 <= total <= size
    rate = total * 8 / elapsed / 1000
    print(f"tbf {kbit} kbit/s {direction}: {total} bytes in {elapsed:.2f} s = {rate:.0f} kbit/s")
    assert 0.7 * kbit <= rate <= 1.2 * kbit
    network.limit_bandwidth(None)
    assert "tbf" not in network.run(["tc", "qdisc", "show"]) + sh(["tc", "qdisc", "show"])


async def test_relay_delay_jitter_reordering(network: ClientNetwork, tmp_path: Path) -> None:
    async with udp_echo(network.server_ip) as (port, echo):
        direct = await udp_round_trips(network, port, 50, 0.005, tmp_path / "direct.log")
        relay = await network.start_relay(
            [port],
            up=Impairment(delay=0.04, jitter=0.01),
            down=Impairment(delay=0.04, reorder=0.2, reorder_gap=0.02),
            seed=1,
        )
        relayed = await udp_round_trips(network, port, 200, 0.005, tmp_path / "relayed.log")
    print(f"direct: {direct}\nrelayed: {relayed}")
    assert isinstance(direct["rtt_median"], float) and direct["rtt_median"] < 0.02
    assert relayed["received"] == 200
    # 40 ms each way, +-10 ms up, 20 % held back 20 ms more on the way down.
    assert isinstance(relayed["rtt_median"], float) and 0.075 <= relayed["rtt_median"] <= 0.2
    assert isinstance(relayed["inversions"], int) and relayed["inversions"] > 10
    assert relay.stats["up"].packets == relay.stats["down"].packets == 200
    assert relay.stats["down"].reordered > 10
    # The server side sees the relay, the client the server: steering is transparent.
    assert (network.relay_ip, port) not in echo.peers
    assert any(host == network.relay_ip for host, _ in echo.peers)


def host_state() -> dict[str, list[str]]:
    return {
        "ip netns list": sorted(sh(["ip", "netns", "list"]).splitlines()),
        "ip link": sorted(links()),
        "nft list tables": sorted(nft_tables()),
    }


async def test_teardown_restores_the_host(tmp_path: Path) -> None:
    """Everything at once, then ``aclose``: the host is as it was."""
    before = host_state()
    network = ClientNetwork.create()
    try:
        assert network.name in namespaces() and network.host_link in links()
        await network.start_relay(range(*_free_udp_ports()), up=Impairment(delay=0.01))
        network.blackhole()
        network.set_loss(5)
        network.block_udp()
        network.limit_bandwidth(500)
        sleeper = await network.spawn(["sleep", "60"])
        assert sorted(nft_tables(network.name)) == ["ip ghostless_nat", "netdev ghostless"]
        assert str(sleeper.pid) in sh(["ip", "netns", "pids", network.name]).split()
    finally:
        await network.aclose()
        await network.aclose()  # idempotent
    wait_until_gone(network)
    assert sleeper.returncode == -signal.SIGKILL
    assert all(relay.flows == 0 for relay in network.relays)
    assert host_state() == before


def _free_udp_ports() -> tuple[int, int]:
    low = 30000 + os.getpid() % 2000
    return low, low + 4


INNER_CONFTEST = """
from tests.netfault.conftest import make_network, netfault_host, network  # noqa: F401
"""

INNER_TESTS = """
import os
import pathlib
import time

from tests.netfault.netns import ClientNetwork

OUT = pathlib.Path(os.environ["NETFAULT_INNER_OUT"])


async def test_fails(network: ClientNetwork) -> None:
    network.blackhole()
    network.limit_bandwidth(100)
    await network.spawn(["sleep", "60"])
    (OUT / "failed.ns").write_text(network.name)
    raise AssertionError("this test fails on purpose")


async def test_crashes(network: ClientNetwork) -> None:
    network.set_loss(50)
    sleeper = await network.spawn(["sleep", "60"])
    (OUT / "crashed.ns").write_text(f"{network.name} {network.host_link} {sleeper.pid}")
    time.sleep(60)  # killed with SIGKILL meanwhile
"""


async def test_failed_and_crashed_runs_leave_nothing(tmp_path: Path) -> None:
    """A failing test's fixture cleans up; a killed pytest's leftovers are swept."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    env = {**os.environ, "NETFAULT_INNER_OUT": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(REPO / "pyproject.toml"),
        "--rootdir",
        str(REPO),
    ]

    failing = subprocess.run(
        [*command, str(inner / "test_inner.py::test_fails")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "this test fails on purpose" in failing.stdout
    failed_ns = (tmp_path / "failed.ns").read_text()
    assert failed_ns not in namespaces()

    crashing = subprocess.Popen(
        [*command, str(inner / "test_inner.py::test_crashes")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        marker = tmp_path / "crashed.ns"
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and crashing.poll() is None
            await asyncio.sleep(0.1)
    finally:
        crashing.kill()
        crashing.wait(10)
    await asyncio.sleep(0.1)  # the marker may be half written
    name, host_link, sleeper = marker.read_text().split()
    assert name in namespaces() and host_link in links()  # a crash leaves it behind...
    removed = sweep_stale()
    assert name in removed  # ... until the next session's sweep
    assert name not in namespaces()
    deadline = time.monotonic() + 5
    while host_link in links() or not process_gone(int(sleeper)):
        assert time.monotonic() < deadline, "stale veth or process not removed"
        await asyncio.sleep(0.05)


def process_gone(pid: int) -> bool:
    """Exited: no such pid, or a zombie (an orphan waits for a PID 1 that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
