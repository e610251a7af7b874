"""Unit tests of media/ports.py: PortRange validation and PortAllocator on 127.0.0.1.

The allocator tests bind real UDP sockets on loopback (no traffic is sent) and close
every socket they get.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from media import Router, Worker
from media.errors import MediaError
from media.ports import NoFreePortError, PortAllocator, PortRange

LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    """A list whose sockets are all closed at the end of the block."""
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def free_udp_range(size: int) -> PortRange:
    """``size`` consecutive UDP ports free on loopback right now (found by binding them)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOOPBACK, 0))
            low = probe.getsockname()[1]
        if low + size - 1 > 65535:
            continue
        with sockets() as held:
            try:
                for port in range(low, low + size):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    held.append(sock)
                    sock.bind((LOOPBACK, port))
            except OSError:
                continue
        return PortRange(low, low + size - 1)
    raise AssertionError(f"no {size} consecutive free UDP ports on {LOOPBACK} in 50 tries")


# -- PortRange ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high"), [(0, 0), (1, 1), (40000, 40000), (40000, 40100), (1, 65535)]
)
def test_a_port_range_within_1_to_65535_or_0_to_0_is_accepted(low: int, high: int) -> None:
    port_range = PortRange(low, high)

    assert (port_range.min_port, port_range.max_port) == (low, high)


def test_the_default_port_range_lets_the_kernel_choose() -> None:
    assert PortRange() == PortRange(0, 0)


@pytest.mark.parametrize(
    ("low", "high"),
    [(-1, 10), (10, 5), (40000, 65536), (0, 10), (65536, 65536)],
    ids=["negative", "reversed", "above-65535", "zero-to-nonzero", "both-above-65535"],
)
def test_an_invalid_port_range_is_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortRange(low, high)


def test_a_port_range_is_immutable() -> None:
    port_range = PortRange(1000, 2000)

    with pytest.raises(AttributeError):
        port_range.min_port = 5  # type: ignore[misc]


# -- PortAllocator ------------------------------------------------------------------------


def test_no_free_port_is_a_media_error() -> None:
    assert issubclass(NoFreePortError, MediaError)


def test_the_kernel_chooses_the_port_of_a_0_to_0_range() -> None:
    allocator = PortAllocator(LOOPBACK, PortRange(0, 0))

    with sockets() as held:
        held.append(allocator.bind())
        host, port = held[0].getsockname()

        assert host == LOOPBACK
        assert port != 0
        assert held[0].type == socket.SOCK_DGRAM
        assert held[0].getblocking() is False


def test_the_allocator_binds_every_port_of_a_small_range_once() -> None:
    port_range = free_udp_range(3)
    allocator = PortAllocator(LOOPBACK, port_range)

    with sockets() as held:
        for _ in range(3):
            held.append(allocator.bind())
        ports = sorted(sock.getsockname()[1] for sock in held)

        assert ports == list(range(port_range.min_port, port_range.max_port + 1))
        assert all(sock.getsockname()[0] == LOOPBACK for sock in held)
        assert all(sock.getblocking() is False for sock in held)


def test_an_exhausted_range_raises_no_free_port_error_without_naming_the_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port_range = free_udp_range(2)
    allocator = PortAllocator(LOOPBACK, port_range)

    with sockets() as held:
        held.extend([allocator.bind(), allocator.bind()])

        with pytest.raises(NoFreePortError) as raised:
            allocator.bind()

    # The message may reach a client: the firewall layout stays in the server log.
    assert str(raised.value) == "no free media port"
    assert str(port_range.min_port) not in str(raised.value)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "media.ports")
    assert f"{port_range.min_port}-{port_range.max_port}" in logged


def test_port_usage_counts_the_open_sockets_of_a_range_against_its_size() -> None:
    port_range = free_udp_range(3)
    allocator = PortAllocator(LOOPBACK, port_range)
    assert (allocator.in_use(), allocator.pool_size) == (0, 3)

    with sockets() as held:
        held.extend([allocator.bind(), allocator.bind()])
        assert allocator.in_use() == 2
        held[0].close()
        assert allocator.in_use() == 1

    assert allocator.in_use() == 0


def test_a_0_to_0_range_has_no_fixed_pool_but_still_counts_its_sockets() -> None:
    allocator = PortAllocator(LOOPBACK, PortRange(0, 0))

    with sockets() as held:
        held.append(allocator.bind())

        assert (allocator.in_use(), allocator.pool_size) == (1, 0)


def test_a_port_taken_by_another_socket_is_skipped() -> None:
    port_range = free_udp_range(2)
    allocator = PortAllocator(LOOPBACK, port_range)

    with sockets() as held:
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held.append(squatter)
        squatter.bind((LOOPBACK, port_range.min_port))

        for _ in range(5):
            sock = allocator.bind()
            port = sock.getsockname()[1]
            sock.close()
            assert port == port_range.max_port


def test_a_port_is_free_again_once_its_socket_closes() -> None:
    port_range = free_udp_range(1)
    allocator = PortAllocator(LOOPBACK, port_range)

    with sockets() as held:
        first = allocator.bind()
        held.append(first)
        port = first.getsockname()[1]
        with pytest.raises(NoFreePortError):
            allocator.bind()

        first.close()

        held.append(allocator.bind())
        assert held[1].getsockname()[1] == port


async def test_a_worker_reports_the_ports_its_transports_hold(
    worker: Worker, router: Router
) -> None:
    first = await router.create_webrtc_transport()
    await router.create_webrtc_transport()
    assert worker.port_usage() == (2, 0)  # 0..0: no fixed pool

    first.close()
    await asyncio.sleep(0.05)  # asyncio closes the socket on its next iteration

    assert worker.port_usage() == (1, 0)
