"""Binding the sockets of each WebRtcTransport inside a configured range.

Every transport has a UDP socket, an ICE-TCP listener, or both.  TCP and UDP
port numbers are separate spaces, so the listener takes the UDP socket's
port number when it is free (one number to open in a firewall per transport),
and any free port of the range otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from .errors import MediaError

logger = logging.getLogger(__name__)


class NoFreePortError(MediaError):
    """Every port of the configured range is taken.

    Its message reaches clients, so it does not name the range (that is
    firewall layout); the server log does.
    """


@dataclass(frozen=True, slots=True)
class PortRange:
    """``min_port``..``max_port`` inclusive; ``0..0`` lets the kernel choose."""

    min_port: int = 0
    max_port: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.min_port <= self.max_port <= 65535):
            raise ValueError("port range must satisfy 0 <= min <= max <= 65535")
        if (self.min_port == 0) != (self.max_port == 0):
            raise ValueError("a port range is either 0..0 or within 1..65535")


class PortAllocator:
    """Hands out bound UDP sockets and TCP listening sockets; a port is free
    again once its socket closes.

    The kernel is the registry: a port is in use exactly while a socket holds
    it, so there is nothing to release by hand and nothing to leak.
    """

    def __init__(self, listen_ip: str, port_range: PortRange, buffer_size: int = 4 << 20) -> None:
        self.listen_ip = listen_ip
        self.port_range = port_range
        self.buffer_size = buffer_size
        self._family = socket.AF_INET6 if ":" in listen_ip else socket.AF_INET
        # Only for counting: a socket still counts while it is open.
        self._bound: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._bound_tcp: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    @property
    def pool_size(self) -> int:
        """Ports in the range; 0 for ``0..0``, where the kernel's ephemeral range applies."""
        if self.port_range.min_port == 0:
            return 0
        return self.port_range.max_port - self.port_range.min_port + 1

    def in_use(self) -> int:
        """Ports of the fuller space (UDP or TCP) held by sockets this allocator
        bound that are still open (other processes not counted)."""
        return max(self.udp_in_use(), self.tcp_in_use())

    def udp_in_use(self) -> int:
        return sum(1 for sock in list(self._bound) if sock.fileno() >= 0)

    def tcp_in_use(self) -> int:
        """ICE-TCP listening sockets still open (accepted connections share their port)."""
        return sum(1 for sock in list(self._bound_tcp) if sock.fileno() >= 0)

    def bind(self) -> socket.socket:
        sock = self._bind(self._try_bind, "UDP")
        self._bound.add(sock)
        return sock

    def bind_tcp(self, preferred_port: int | None = None) -> socket.socket:
        """A TCP socket bound for listening (not yet listening), on
        ``preferred_port`` when it is free, else on any free port of the range."""
        sock = None
        if preferred_port:
            sock = self._try_bind_tcp(preferred_port)
        if sock is None:
            sock = self._bind(self._try_bind_tcp, "TCP")
        self._bound_tcp.add(sock)
        return sock

    def _bind(self, try_bind: Callable[[int], socket.socket | None], what: str) -> socket.socket:
        low, high = self.port_range.min_port, self.port_range.max_port
        if low == 0:
            return try_bind(0) or self._fail(what)
        span = high - low + 1
        start = random.randrange(span)
        for i in range(span):
            sock = try_bind(low + (start + i) % span)
            if sock is not None:
                return sock
        return self._fail(what)

    def _try_bind_tcp(self, port: int) -> socket.socket | None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # Connections this server closed linger in TIME_WAIT for a minute;
            # without this, a new listener could not take their port meanwhile.
            # (On Linux it never lets two listeners share a port.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_ip, port))
        except OSError:
            sock.close()
            return None
        return sock

    def _try_bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # The default ~200 KB holds ~150 packets: a burst of video overflows it.
            # The kernel caps the request at net.core.rmem_max / wmem_max.
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, self.buffer_size)
            sock.bind((self.listen_ip, port))
        except OSError:
            sock.close()
            return None
        return sock

    def _fail(self, what: str = "UDP") -> socket.socket:
        logger.warning(
            "no free %s port on %s in %d-%d (%d held by this worker)",
            what,
            self.listen_ip,
            self.port_range.min_port,
            self.port_range.max_port,
            self.tcp_in_use() if what == "TCP" else self.udp_in_use(),
        )
        raise NoFreePortError("no free media port")


async def open_endpoint(
    allocator: PortAllocator, protocol: asyncio.DatagramProtocol
) -> tuple[asyncio.DatagramTransport, int]:
    sock = allocator.bind()
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, port
