"""A userspace UDP relay that delays, jitters, reorders and drops datagrams.

This kernel has no ``netem``, so latency is added here.  The relay listens on
``listen_ip`` at each of the server's media ports; every client address that
writes to one of them gets its own upstream socket (bound to ``listen_ip``)
towards ``target_ip`` at the same port, and what the server answers there goes
back to that client.  ``ClientNetwork.start_relay`` puts it in the path with a
DNAT rule in the client's namespace (see netns.py).

Impairments apply per direction (``up``: client to server, ``down``: server to
client) and can be changed at any time:

- ``delay`` plus a uniform ``jitter`` (± seconds); the order of a flow is kept
  (a packet never leaves before the one ahead of it) unless it is
- ``reorder``ed: that fraction of packets is held back ``reorder_gap`` more,
  so the packets behind it overtake it;
- ``loss``: that fraction is dropped.

Plain non-blocking sockets on the event loop's reader callbacks: no task per
packet, one timer per delayed packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass
class Impairment:
    delay: float = 0.0
    """Seconds added to every packet."""
    jitter: float = 0.0
    """Plus a uniform value within ± this (seconds), order kept."""
    reorder: float = 0.0
    """Fraction of packets held back ``reorder_gap`` more (so later ones overtake)."""
    reorder_gap: float = 0.03
    loss: float = 0.0
    """Fraction of packets dropped."""

    @property
    def none(self) -> bool:
        return not (self.delay or self.jitter or self.reorder or self.loss)


@dataclass
class Stats:
    packets: int = 0
    dropped: int = 0
    reordered: int = 0


@dataclass
class _Flow:
    port: int
    client: Address
    upstream: socket.socket
    last_release: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})


class UdpRelay:
    def __init__(
        self,
        listen_ip: str,
        target_ip: str,
        ports: Iterable[int],
        *,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int | None = None,
    ) -> None:
        self.listen_ip = listen_ip
        self.target_ip = target_ip
        self.ports = sorted(set(ports))
        self.impairments = {"up": up or Impairment(), "down": down or Impairment()}
        self.stats = {"up": Stats(), "down": Stats()}
        self.rng = random.Random(seed)
        self._fronts: dict[int, socket.socket] = {}
        self._flows: dict[tuple[int, Address], _Flow] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def up(self) -> Impairment:
        return self.impairments["up"]

    @up.setter
    def up(self, value: Impairment) -> None:
        self.impairments["up"] = value

    @property
    def down(self) -> Impairment:
        return self.impairments["down"]

    @down.setter
    def down(self, value: Impairment) -> None:
        self.impairments["down"] = value

    @property
    def flows(self) -> int:
        return len(self._flows)

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        try:
            for port in self.ports:
                sock = _udp_socket((self.listen_ip, port))
                self._fronts[port] = sock
                loop.add_reader(sock.fileno(), self._drain, sock, self._from_client(port))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Idempotent; delayed packets still pending are discarded."""
        self._closed = True
        sockets = [*self._fronts.values(), *(flow.upstream for flow in self._flows.values())]
        for sock in sockets:
            if self._loop is not None and not self._loop.is_closed() and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._fronts.clear()
        self._flows.clear()

    # -- forwarding -------------------------------------------------------------------

    def _drain(self, sock: socket.socket, handle: Callable[[bytes, Address], None]) -> None:
        for _ in range(256):  # bounded, so one busy socket cannot starve the loop
            try:
                data, address = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket
            handle(data, address)

    def _from_client(self, port: int) -> Callable[[bytes, Address], None]:
        def handle(data: bytes, client: Address) -> None:
            flow = self._flows.get((port, client))
            if flow is None:
                flow = self._open_flow(port, client)
            self._forward(flow, "up", data, flow.upstream, (self.target_ip, port))

        return handle

    def _open_flow(self, port: int, client: Address) -> _Flow:
        assert self._loop is not None
        upstream = _udp_socket((self.listen_ip, 0))
        flow = _Flow(port, client, upstream)
        self._flows[(port, client)] = flow

        def from_server(data: bytes, _: Address) -> None:
            self._forward(flow, "down", data, self._fronts[port], client)

        self._loop.add_reader(upstream.fileno(), self._drain, upstream, from_server)
        return flow

    def _forward(
        self, flow: _Flow, direction: str, data: bytes, sock: socket.socket, to: Address
    ) -> None:
        impairment, stats = self.impairments[direction], self.stats[direction]
        stats.packets += 1
        if impairment.none:
            _send(sock, data, to)
            return
        rng = self.rng
        if impairment.loss and rng.random() < impairment.loss:
            stats.dropped += 1
            return
        assert self._loop is not None
        now = self._loop.time()
        at = now + max(0.0, impairment.delay + rng.uniform(-impairment.jitter, impairment.jitter))
        if impairment.reorder and rng.random() < impairment.reorder:
            stats.reordered += 1
            at += impairment.reorder_gap  # does not hold back the packets behind it
        else:
            at = max(at, flow.last_release[direction])
            flow.last_release[direction] = at
        if at <= now:
            _send(sock, data, to)
        else:
            self._loop.call_at(at, self._send_later, sock, data, to)

    def _send_later(self, sock: socket.socket, data: bytes, to: Address) -> None:
        if not self._closed:
            _send(sock, data, to)


def _udp_socket(address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _send(sock: socket.socket, data: bytes, to: Address) -> None:
    with contextlib.suppress(OSError):  # a full buffer or an unreachable peer: a lost packet
        sock.sendto(data, to)
