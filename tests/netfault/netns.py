"""A client in its own network namespace, and the faults its link can suffer.

Layout (``X`` is a free third octet, chosen under a lock file)::

    root namespace (server, relay)               namespace ghostless-<pid>-<n>
    glh<pid>x<n>  10.200.X.1/24   <--- veth --->  glc<pid>x<n>  10.200.X.2/24
                  10.200.X.254/32 (the relay)

Nothing here is magic: every method runs ``ip``, ``nft``, ``tc`` or ``ss``
and waits for it (a few milliseconds), so it may be called from a coroutine.
Faults live where a real network would put them:

- packet filters are one nftables table of family ``netdev`` inside the
  namespace, hooked on the client's interface at ``ingress`` and ``egress``:
  a dropped packet vanishes on the wire, the sender's ``send()`` succeeds and
  nobody sends a RST or an ICMP error;
- ``link_down`` takes the client's end of the veth down (Wi-Fi off): the
  client's own sends fail with ENETUNREACH, the server's are lost;
- bandwidth is ``tbf`` (no netem here): ``up`` on the client's interface,
  ``down`` on the root end;
- delay, jitter and reordering are the userspace ``UdpRelay`` (relay.py); the
  namespace's UDP to the server's media ports is DNATed to it (``steer_udp``).

``close()`` removes everything (processes, veth, namespace) and may be called
any number of times; ``sweep_stale()`` removes what crashed runs left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .relay import Impairment, UdpRelay

REPO = Path(__file__).resolve().parents[2]
PREFIX = "ghostless-"
SUBNET = "10.200"
NFT_TABLE = "ghostless"  # netdev family, inside the namespace
NAT_TABLE = "ghostless_nat"  # ip family, inside the namespace
LOCK_DIRECTORY = tempfile.gettempdir()  # flocked, so that no lock file is left behind

_NAMESPACE = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
_LINK = re.compile(r"^gl[hc](\d+)x(\d+)$")
_counter = itertools.count(1)

Direction = Literal["both", "up", "down"]
"""``up``: client to server (the namespace's egress); ``down``: server to client."""

# Every process spawned in a namespace by this process, for the leak check.
spawned_pids: set[int] = set()


class NetfaultError(RuntimeError):
    """A command of the harness failed; the message has its stderr."""


def sh(args: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    """Run a command, return its stdout; raise ``NetfaultError`` if it fails and ``check``."""
    result = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise NetfaultError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "network-fault tests need root (network namespaces, nftables, tc)"
    if shutil.which("ip") is None:
        return "network-fault tests need `ip` (apt-get install -y iproute2)"
    probe = f"{PREFIX}{os.getpid()}-0"  # ClientNetwork indices start at 1
    try:
        sh(["ip", "netns", "add", probe])
    except NetfaultError as exc:
        return f"`ip netns add` does not work here: {exc}"
    finally:
        sh(["ip", "netns", "del", probe], check=False)
    return None


def missing_tools() -> list[str]:
    """Tools the harness needs besides ``ip``: their absence is an error, not a skip."""
    packages = {"nft": "nftables", "tc": "iproute2", "ss": "iproute2"}
    return [
        f"{tool} (apt-get install -y {package})"
        for tool, package in packages.items()
        if shutil.which(tool) is None
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """Names of every network namespace (``ip netns list``)."""
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line.strip()]


def links() -> list[str]:
    """Names of the root namespace's interfaces."""
    return [entry["ifname"] for entry in json.loads(sh(["ip", "-j", "link", "show"]) or "[]")]


def nft_tables(namespace: str | None = None) -> list[str]:
    """``family name`` of every nftables table (of the root namespace by default)."""
    args = ["nft", "list", "tables"]
    if namespace is not None:
        args = ["ip", "netns", "exec", namespace, *args]
    return [line.removeprefix("table ").strip() for line in sh(args).splitlines() if line.strip()]


def _kill_namespace_processes(namespace: str) -> None:
    for word in sh(["ip", "netns", "pids", namespace], check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def _destroy(namespace: str, host_link: str | None) -> None:
    _kill_namespace_processes(namespace)
    if host_link is not None and host_link in links():
        sh(["ip", "link", "del", host_link], check=False)
    if namespace in namespaces():
        sh(["ip", "netns", "del", namespace], check=False)


def owner(name: str) -> int | None:
    """The pid of the run that created namespace or interface ``name``, if it is ours."""
    match = _NAMESPACE.match(name) or _LINK.match(name)
    return int(match.group(1)) if match else None


def sweep_stale(*, include_own: bool = False) -> list[str]:
    """Remove namespaces and veths of harness runs whose process is gone.

    A crashed or killed pytest leaves ``ghostless-<pid>-<n>``; its pid is
    dead, so it is removed (with any process still inside).  Those of live
    runs are left alone, ours too unless ``include_own``.  Returns what went.
    """
    removed: list[str] = []

    def stale(pid: int) -> bool:
        return (include_own and pid == os.getpid()) or (pid != os.getpid() and not _pid_alive(pid))

    for name in namespaces():
        pid = owner(name)
        if pid is not None and stale(pid):
            _destroy(name, None)
            removed.append(name)
    for name in links():
        pid = owner(name)
        if pid is not None and stale(pid):
            sh(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Serialises subnet choice and creation between parallel test processes."""
    fd = os.open(LOCK_DIRECTORY, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _used_octets() -> set[int]:
    used = set()
    for entry in json.loads(sh(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in entry.get("addr_info", []):
            local = info.get("local", "")
            if local.startswith(f"{SUBNET}."):
                used.add(int(local.split(".")[2]))
    return used


@dataclass
class _Faults:
    """The desired packet-filter state; the nftables table is rebuilt from it."""

    blackhole: bool = False
    udp_blocked: bool = False
    loss_up: float = 0.0
    loss_down: float = 0.0


class ClientNetwork:
    """One client namespace joined to the root namespace by a veth pair."""

    def __init__(self, index: int, octet: int) -> None:
        pid = os.getpid()
        self.name = f"{PREFIX}{pid}-{index}"
        self.host_link = f"glh{pid}x{index}"
        self.client_link = f"glc{pid}x{index}"
        if len(self.host_link) > 15:
            raise NetfaultError(f"interface name too long: {self.host_link}")
        self.octet = octet
        self.server_ip = f"{SUBNET}.{octet}.1"
        self.client_ip = f"{SUBNET}.{octet}.2"
        self.relay_ip = f"{SUBNET}.{octet}.254"
        self.processes: list[asyncio.subprocess.Process] = []
        self.relays: list[UdpRelay] = []
        self._faults = _Faults()
        self._steered = False
        self._closed = False

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    def create(cls) -> ClientNetwork:
        with _allocation_lock():
            used = _used_octets()
            free = [octet for octet in range(1, 255) if octet not in used]
            if not free:
                raise NetfaultError(f"no free {SUBNET}.X.0/24 subnet")
            network = cls(next(_counter), free[0])
            try:
                network._build()
            except BaseException:
                network.close()
                raise
        return network

    def _build(self) -> None:
        ns, client = self.name, self.client_link
        sh(["ip", "netns", "add", ns])
        veth = ["type", "veth", "peer", "name", client, "netns", ns]
        sh(["ip", "link", "add", self.host_link, *veth])
        sh(["ip", "addr", "add", f"{self.server_ip}/24", "dev", self.host_link])
        sh(["ip", "addr", "add", f"{self.relay_ip}/32", "dev", self.host_link])
        sh(["ip", "link", "set", self.host_link, "up"])
        # Deleting the old primary address must promote the new one (change_address).
        self.run(["sh", "-c", f"echo 1 > /proc/sys/net/ipv4/conf/{client}/promote_secondaries"])
        sh(["ip", "-n", ns, "addr", "add", f"{self.client_ip}/24", "dev", client])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "set", client, "up"])
        self._apply_filters()

    def close(self) -> None:
        """Kill every process in the namespace, delete the veth and the namespace.

        Idempotent, and safe on a half-built network.  The nftables tables and
        the qdiscs go with the namespace and the veth.  Relays are closed by
        ``aclose`` (they belong to an event loop).
        """
        self._closed = True
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        _destroy(self.name, self.host_link)

    async def aclose(self) -> None:
        """``close`` plus the relays, and reap the processes."""
        for relay in self.relays:
            relay.close()
        self.close()
        for process in self.processes:
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(process.wait(), 5)

    def __enter__(self) -> ClientNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running things inside -----------------------------------------------------------

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: Sequence[str], *, check: bool = True) -> str:
        """Run a command inside the namespace and return its stdout."""
        return sh(self.command(args), check=check)

    async def spawn(
        self, args: Sequence[str], *, stdout: Any = None, stderr: Any = None
    ) -> asyncio.subprocess.Process:
        """Start a process inside the namespace; ``close`` kills it."""
        if self._closed:
            raise NetfaultError("network closed")
        # `ip netns exec` execs the command itself: the pid is the command's.
        process = await asyncio.create_subprocess_exec(
            *self.command(args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
            start_new_session=True,
        )
        self.processes.append(process)
        spawned_pids.add(process.pid)
        return process

    async def spawn_python(
        self, *args: str, stdout: Any = None, stderr: Any = None
    ) -> asyncio.subprocess.Process:
        """``python ARGS`` (this interpreter, the repository as working directory)."""
        return await self.spawn([sys.executable, *args], stdout=stdout, stderr=stderr)

    # -- packet filters (nftables, netdev family, in the namespace) -------------------

    def _apply_filters(self) -> None:
        faults = self._faults

        def chain(name: str, hook: str, loss: float) -> str:
            rules = ['counter comment "seen"']
            if faults.blackhole:
                rules.append('counter drop comment "blackhole"')
            if faults.udp_blocked:
                rules.append('ip protocol udp counter drop comment "udp"')
                rules.append('ip6 nexthdr udp counter drop comment "udp6"')
            if loss > 0:
                rules.append(
                    f'numgen random mod 10000 < {round(loss * 100)} counter drop comment "loss"'
                )
            body = "\n".join(f"    {rule}" for rule in rules)
            return (
                f"  chain {name} {{\n"
                f'    type filter hook {hook} device "{self.client_link}" priority 0;'
                " policy accept;\n"
                f"{body}\n  }}\n"
            )

        script = (
            f"table netdev {NFT_TABLE}\n"
            f"delete table netdev {NFT_TABLE}\n"
            f"table netdev {NFT_TABLE} {{\n"
            + chain("ingress", "ingress", faults.loss_down)
            + chain("egress", "egress", faults.loss_up)
            + "}\n"
        )
        # One transaction: the old rules are replaced atomically.
        sh(self.command(["nft", "-f", "-"]), stdin=script)

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets per rule since the last filter change: ``{"ingress:seen": {...}}``."""
        listing = json.loads(self.run(["nft", "-j", "list", "table", "netdev", NFT_TABLE]))
        result: dict[str, dict[str, int]] = {}
        for item in listing.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            for expression in rule.get("expr", []):
                if "counter" in expression:
                    counter = expression["counter"]
                    key = f"{rule['chain']}:{rule.get('comment', '?')}"
                    result[key] = {"packets": counter["packets"], "bytes": counter["bytes"]}
        return result

    def blackhole(self) -> None:
        """Drop everything both ways at the client's interface: no FIN, no RST, no ICMP."""
        self._faults.blackhole = True
        self._apply_filters()

    def restore(self) -> None:
        """Lift the blackhole (other faults stay)."""
        self._faults.blackhole = False
        self._apply_filters()

    def set_loss(self, percent: float, direction: Direction = "both") -> None:
        """Drop ``percent`` % of packets at random (``numgen random``); 0 lifts it."""
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        if direction in ("both", "up"):
            self._faults.loss_up = percent
        if direction in ("both", "down"):
            self._faults.loss_down = percent
        self._apply_filters()

    def block_udp(self) -> None:
        """Drop all UDP both ways (a network that only lets TCP through)."""
        self._faults.udp_blocked = True
        self._apply_filters()

    def unblock_udp(self) -> None:
        self._faults.udp_blocked = False
        self._apply_filters()

    # -- link ---------------------------------------------------------------------------

    def link_down(self) -> None:
        """Take the client's end of the veth down (its sends fail, the server's are lost)."""
        sh(["ip", "-n", self.name, "link", "set", self.client_link, "down"])

    def link_up(self) -> None:
        """Bring it back; the kernel restores the addresses' routes by itself."""
        sh(["ip", "-n", self.name, "link", "set", self.client_link, "up"])

    def change_address(self) -> str:
        """Move the client to a new address of its subnet (a network change).

        The new address is added, the old one removed: sockets bound to the
        old address stay open but their packets go nowhere (answers to the old
        address are not delivered), as after a switch from Wi-Fi to mobile.
        """
        host = int(self.client_ip.rsplit(".", 1)[1])
        new_host = 2 + (host - 2 + 1) % 252  # 2..253: never .1 (server) or .254 (relay)
        new_ip = f"{SUBNET}.{self.octet}.{new_host}"
        sh(["ip", "-n", self.name, "addr", "add", f"{new_ip}/24", "dev", self.client_link])
        sh(["ip", "-n", self.name, "addr", "del", f"{self.client_ip}/24", "dev", self.client_link])
        self.client_ip = new_ip
        return new_ip

    # -- TCP reset -----------------------------------------------------------------------

    def reset_tcp(self, port: int) -> int:
        """Abort the namespace's TCP connections to ``server_ip:port`` (``ss -K``).

        The kernel sends the server a RST and the client's socket fails with
        ECONNABORTED, as when a NAT or a middlebox resets a connection.
        Returns how many connections were reset.
        """
        output = self.run(
            ["ss", "-K", "-4", "-t", "-n", "dst", self.server_ip, "dport", "=", f":{port}"],
            check=False,
        )
        return sum(1 for line in output.splitlines()[1:] if line.strip())

    # -- bandwidth (tbf; no netem on this kernel) ---------------------------------------

    def limit_bandwidth(
        self, kbit: int | None, direction: Direction = "both", *, latency_ms: int = 200
    ) -> None:
        """A token bucket of ``kbit`` kbit/s (``None`` lifts it).

        Packets queue up to ``latency_ms`` and are dropped beyond, like a
        congested bottleneck's buffer.
        """
        targets: list[tuple[list[str], str]] = []
        if direction in ("both", "up"):
            targets.append((self.command(["tc"]), self.client_link))
        if direction in ("both", "down"):
            targets.append((["tc"], self.host_link))
        for prefix, device in targets:
            if kbit is None:
                sh([*prefix, "qdisc", "del", "dev", device, "root"], check=False)
                continue
            burst = max(4000, kbit * 1000 // 8 // 50)  # 20 ms of tokens, at least two frames
            sh(
                [
                    *prefix,
                    "qdisc",
                    "replace",
                    "dev",
                    device,
                    "root",
                    "tbf",
                    "rate",
                    f"{kbit}kbit",
                    "burst",
                    str(burst),
                    "latency",
                    f"{latency_ms}ms",
                ]
            )

    # -- the userspace relay (delay, jitter, reordering) --------------------------------

    def steer_udp(self, ports: Iterable[int]) -> None:
        """DNAT the namespace's UDP to ``server_ip:ports`` to ``relay_ip`` (same ports).

        Conntrack in the namespace rewrites the answers back, so the client
        sees the server's address; the server sees the relay's.  Flows that
        exist already keep their conntrack entry: steer before the client starts.
        """
        ranges = ", ".join(_port_ranges(sorted(set(ports))))
        script = (
            f"table ip {NAT_TABLE}\n"
            f"delete table ip {NAT_TABLE}\n"
            f"table ip {NAT_TABLE} {{\n"
            "  chain output {\n"
            "    type nat hook output priority -100; policy accept;\n"
            f"    ip daddr {self.server_ip} udp dport {{ {ranges} }} counter"
            f" dnat to {self.relay_ip}\n"
            "  }\n}\n"
        )
        sh(self.command(["nft", "-f", "-"]), stdin=script)
        self._steered = True

    async def start_relay(
        self,
        ports: Iterable[int],
        *,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int | None = None,
    ) -> UdpRelay:
        """A ``UdpRelay`` on ``relay_ip`` forwarding to ``server_ip``, with the
        namespace's UDP to those ports steered through it; ``aclose`` closes it."""
        port_list = sorted(set(ports))
        relay = UdpRelay(self.relay_ip, self.server_ip, port_list, up=up, down=down, seed=seed)
        self.relays.append(relay)
        await relay.start()
        self.steer_udp(port_list)
        return relay


def _port_ranges(ports: list[int]) -> Iterator[str]:
    start = previous = ports[0]
    for port in [*ports[1:], None]:
        if port is not None and port == previous + 1:
            previous = port
            continue
        yield str(start) if start == previous else f"{start}-{previous}"
        if port is not None:
            start = previous = port


def wait_until_gone(network: ClientNetwork, timeout: float = 5.0) -> None:
    """Namespace teardown is asynchronous in the kernel: wait until it shows."""
    deadline = time.monotonic() + timeout
    while network.name in namespaces() or network.host_link in links():
        if time.monotonic() > deadline:
            raise NetfaultError(f"{network.name} still present after {timeout} s")
        time.sleep(0.05)


def media_port_range(size: int = 24) -> tuple[int, int]:
    """A media port range for a server whose ports a relay must know in advance.

    Below the kernel's ephemeral range, derived from the pid so that
    parallel runs differ.
    """
    low = 20000 + (os.getpid() % 500) * size
    return low, low + size - 1
