"""A local cluster: redis-server, N ghostless nodes and one or several HAProxy
instances (sharing their stick table through ``peers``) on this machine.

``scripts/cluster --nodes 3 --balancers 2`` runs it until Ctrl-C or SIGTERM,
then stops everything it started (nodes first, with SIGTERM: they drain).  The
tests of tests/cluster drive the same ``Cluster`` class; ``Cluster.add_node``
adds a node at runtime (HAProxy's runtime API: no process restarts, the stick
table stays).  ``render_haproxy`` fills ``docker/haproxy/haproxy.cfg.template``
from a node list:

    python -m signalling.cluster render --server n1=10.0.0.1:8765 --server n2=10.0.0.2:8765
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_TEMPLATE = ROOT / "docker" / "haproxy" / "haproxy.cfg.template"

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def render_haproxy(
    servers: Sequence[tuple[str, str]],
    *,
    bind: str = "127.0.0.1:8080",
    peers: Sequence[tuple[str, str]] = (("lb1", "127.0.0.1:10000"),),
    local_peer: str = "lb1",
    stats_socket: str = "/run/haproxy-ghostless.sock",
    holders_map: str = "/etc/haproxy/ghostless-holders.map",
    check_interval: str = "1s",
    connect_timeout: str = "3s",
    stick_expire: str = "1h",
    maxconn: int = 9000,  # 2 descriptors each: stays under a 20,000 open-file limit
    threads: int | None = None,
    template: Path = HAPROXY_TEMPLATE,
) -> str:
    """The HAProxy configuration for ``servers`` (name, host:port) behind ``bind``;
    ``peers`` (name, host:port) are every HAProxy instance sharing the stick table,
    this one being ``local_peer``.  ``holders_map`` must exist (empty is fine):
    HAProxy fills it at runtime (room -> holder, learnt from the nodes); the
    server names must be the nodes' ``--node-id``.  ``threads`` sets ``nbthread``
    (None: HAProxy's default, a thread per CPU it may run on, right for the one
    balancer of a machine; several instances sharing a machine's cores, as the
    local cluster and its benchmark run them, each take one)."""
    if not servers:
        raise ValueError("no servers")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    return Template(template.read_text()).substitute(
        maxconn=maxconn,
        threads=(
            f"    nbthread {threads}\n"
            if threads is not None
            else "    # nbthread: HAProxy's default, one thread per CPU it may run on\n"
        ),
        local_peer=local_peer,
        stats_socket=stats_socket,
        holders_map=holders_map,
        connect_timeout=connect_timeout,
        bind=bind,
        stick_expire=stick_expire,
        server_options=haproxy_server_options(check_interval),
        peers="\n".join(f"    peer {name} {address}" for name, address in peers),
        servers="\n".join(f"    server {name} {address}" for name, address in servers),
    )


def haproxy_server_options(check_interval: str = "1s") -> str:
    """Every node's server options: the template's ``default-server``, and what
    ``Cluster.add_node`` gives a server added at runtime (which does not inherit
    ``default-server`` in HAProxy 2.6).  Three failed checks (each may take up to
    ``timeout check``, 2 s) mark a node down: a live node slow to answer under
    load is not taken for dead at once, and a dead one is skipped anyway at its
    first refused connection (``option redispatch``)."""
    return f"check inter {check_interval} fastinter {check_interval} fall 3 rise 2"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on now, below the kernel's ephemeral range: a port
    from that range (what binding port 0 gives) may become the local end of an
    outgoing connection (a client, HAProxy, a node's Redis connection) before
    the process it was picked for binds it, and that bind fails."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``: status and body (an error status is an answer, not an exception)."""
    try:
        with _http.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class Node:
    name: str
    port: int
    metrics_port: int
    rtc_ports: tuple[int, int]
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Balancer:
    """One HAProxy instance: its clients' port and its ``peers`` port (every
    instance of a cluster is one peer of the same section, sharing the table)."""

    name: str
    port: int
    peer_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def peer_address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    @property
    def log_name(self) -> str:
        return f"haproxy-{self.name}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    """redis-server, ``nodes`` ghostless nodes and ``balancers`` HAProxy instances,
    as child processes writing their logs into ``directory``.

    Balancer ``lbK`` listens on ``port + K - 1`` (its peers port: ``peer_port + K
    - 1``), writes ``haproxy-lbK.cfg``, ``haproxy-lbK.log`` and its stats socket
    ``haproxy-lbK.sock`` there.  ``url`` is the first balancer's, ``urls`` every one's.
    """

    directory: Path
    nodes: int = 3
    balancers: int = 1
    port: int = 8080
    redis_port: int = 6379
    node_base_port: int = 8765
    metrics_base_port: int = 9102
    rtc_base_port: int = 40000
    rtc_ports_per_node: int = 1000
    peer_port: int = 10000
    node_args: tuple[str, ...] = ()
    check_interval: str = "1s"
    balancer_threads: int | None = None
    """Each balancer's ``nbthread`` (None: HAProxy's default, a thread per CPU)."""
    python: str = sys.executable
    members: list[Node] = field(default_factory=list)
    haproxies: list[Balancer] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None

    free_ports: bool = False
    """Take free ports for everything (tests): media ports from the whole range."""

    def __post_init__(self) -> None:
        if self.free_ports:
            self.port, self.redis_port, self.peer_port = free_port(), free_port(), free_port()
        for index in range(self.balancers):
            port, peer_port = self.port + index, self.peer_port + index
            if self.free_ports and index:
                port, peer_port = free_port(), free_port()
            self.haproxies.append(Balancer(f"lb{index + 1}", port, peer_port))
        for _ in range(self.nodes):
            self.members.append(self._new_node())

    def _new_node(self) -> Node:
        index = len(self.members)
        low = self.rtc_base_port + index * self.rtc_ports_per_node
        return Node(
            f"n{index + 1}",
            free_port() if self.free_ports else self.node_base_port + index,
            free_port() if self.free_ports else self.metrics_base_port + index,
            (0, 0) if self.free_ports else (low, low + self.rtc_ports_per_node - 1),
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def url(self) -> str:
        """The first balancer's address (``urls``: every balancer's)."""
        return self.haproxies[0].url if self.haproxies else f"ws://127.0.0.1:{self.port}"

    @property
    def urls(self) -> list[str]:
        return [balancer.url for balancer in self.haproxies]

    def node(self, name: str) -> Node:
        return next(node for node in self.members if node.name == name)

    def balancer(self, which: int | str = 0) -> Balancer:
        """A balancer by index (0: the first) or by name (``lb1``...)."""
        if isinstance(which, int):
            return self.haproxies[which]
        return next(balancer for balancer in self.haproxies if balancer.name == which)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches the launcher, which stops them in order
            )

    def log(self, name: str) -> str:
        try:
            return (self.directory / f"{name}.log").read_text(errors="replace")[-6000:]
        except OSError:
            return "(no log)"

    def log_names(self) -> list[str]:
        """Every process's log (``log(name)``): redis, the balancers, the nodes."""
        return [
            "redis",
            *(balancer.log_name for balancer in self.haproxies),
            *(node.name for node in self.members),
        ]

    # -- starting ---------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Redis, the nodes, then the balancers; on any failure, everything started
        so far is stopped before the error propagates."""
        try:
            self.start_redis(timeout)
            for node in self.members:
                self.start_node(node.name)
            for node in self.members:
                self.wait_node_ready(node.name, timeout)
            self.start_balancers(timeout)
        except BaseException:
            self.stop()
            raise

    def start_redis(self, timeout: float = 10.0) -> None:
        binary = _binary("redis-server")
        self.redis = self._spawn(
            "redis",
            [
                binary,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
            ],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.redis.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log('redis')}")
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), 0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer:\n{self.log('redis')}")

    def stop_redis(self) -> None:
        _stop(self.redis, signal.SIGKILL)
        self.redis = None

    def start_node(self, name: str) -> None:
        """Start node ``name`` (again, after it was killed: a new incarnation)."""
        node = self.node(name)
        if node.alive:
            raise RuntimeError(f"node {name} is running")
        low, high = node.rtc_ports
        node.process = self._spawn(
            name,
            [
                self.python,
                "-m",
                "signalling",
                "--port",
                str(node.port),
                "--metrics-port",
                str(node.metrics_port),
                "--rtc-min-port",
                str(low),
                "--rtc-max-port",
                str(high),
                "--redis-url",
                self.redis_url,
                "--node-id",
                name,
                "--trusted-proxies",
                "127.0.0.1/32",
                *self.node_args,
            ],
        )

    def wait_node_ready(self, name: str, timeout: float = 20.0) -> None:
        """Until the node answers /readyz 200 with its directory up."""
        node = self.node(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not node.alive:
                raise RuntimeError(f"node {name} exited:\n{self.log(name)}")
            try:
                status, body = http_get(f"http://{node.address}/readyz", 1.0)
            except OSError:
                status, body = 0, b""
            if status == 200 and b'"up":true' in body:
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {name} not ready:\n{self.log(name)}")

    def add_node(self, timeout: float = 20.0) -> Node:
        """Start one more node and make every balancer route to it, moving no live
        room: the server is added through each HAProxy's runtime API (``add
        server`` with the id it has in the rendered configuration, so the
        consistent hash is the same on every instance and after a restart), so no
        HAProxy process restarts and the stick table, which keeps every live room
        on its node, stays as it is.  New rooms whose hash falls on the node go
        there.  Each configuration file is rendered again with the node (a later
        restart of a balancer keeps it)."""
        node = self._new_node()
        self.members.append(node)
        server_id = len(self.members)  # its line in the rendered configuration
        self.start_node(node.name)
        self.wait_node_ready(node.name, timeout)
        options = haproxy_server_options(self.check_interval)
        commands = [
            f"add server nodes/{node.name} {node.address} id {server_id} {options}",
            f"enable health nodes/{node.name}",
            f"enable server nodes/{node.name}",
        ]
        for balancer in self.haproxies:
            self._config_path(balancer).write_text(self._haproxy_config(balancer))
            if not balancer.alive:
                continue  # it gets the node from its configuration when it starts
            for command in commands:
                answer = self.haproxy_command(command, balancer.name).strip()
                if answer and answer != "New server registered.":
                    raise RuntimeError(f"{balancer.name}: {command!r}: {answer}")
        deadline = time.monotonic() + timeout
        for balancer in self.haproxies:
            while balancer.alive and self.server_state(node.name, balancer.name) != "UP":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{balancer.name} does not see {node.name} UP")
                time.sleep(0.05)
        return node

    def _config_path(self, balancer: Balancer) -> Path:
        return self.directory / f"{balancer.log_name}.cfg"

    def stats_socket(self, which: int | str = 0) -> Path:
        return self.directory / f"{self.balancer(which).log_name}.sock"

    def _haproxy_config(self, balancer: Balancer) -> str:
        holders = self.directory / f"{balancer.log_name}.map"
        holders.touch()  # HAProxy fills it in memory; the file only has to exist
        return render_haproxy(
            [(node.name, node.address) for node in self.members],
            bind=f"127.0.0.1:{balancer.port}",
            peers=[(peer.name, peer.peer_address) for peer in self.haproxies],
            local_peer=balancer.name,
            stats_socket=str(self.stats_socket(balancer.name)),
            holders_map=str(holders),
            check_interval=self.check_interval,
            threads=self.balancer_threads,
        )

    def start_balancers(self, timeout: float = 10.0) -> None:
        """Every HAProxy instance, each until it answers /readyz through itself."""
        for balancer in self.haproxies:
            self.start_balancer(balancer.name, timeout)

    def start_balancer(self, which: int | str = 0, timeout: float = 10.0) -> None:
        binary = _binary("haproxy")
        balancer = self.balancer(which)
        if balancer.alive:
            raise RuntimeError(f"{balancer.name} is running")
        path = self._config_path(balancer)
        path.write_text(self._haproxy_config(balancer))
        process = balancer.process = self._spawn(
            balancer.log_name, [binary, "-db", "-f", str(path)]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log(balancer.log_name)}")
            try:
                status, _ = http_get(f"http://127.0.0.1:{balancer.port}/readyz", 1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not come up:\n{self.log(balancer.log_name)}")

    def haproxy_command(self, command: str, which: int | str = 0) -> str:
        """A command on a balancer's stats socket (e.g. ``show table nodes``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket(which)))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stick_table(self, which: int | str = 0) -> dict[str, str]:
        """A balancer's stick table: room id -> node name (``show table nodes``)."""
        table = {}
        for line in self.haproxy_command("show table nodes", which).splitlines():
            fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
            if "key" in fields and "server_key" in fields:
                table[fields["key"]] = fields["server_key"]
        return table

    def server_state(self, name: str, which: int | str = 0) -> str | None:
        """What a balancer thinks of node ``name``: UP, DOWN, MAINT... (None: unknown)."""
        for line in self.haproxy_command("show stat -1 4 -1", which).splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "nodes" and fields[1] == name:
                return fields[17].split()[0] if fields[17] else None
        return None

    # -- stopping ---------------------------------------------------------------------

    def kill_node(self, name: str, signum: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        node = self.node(name)
        _stop(node.process, signum, timeout)

    def stop(self) -> None:
        """Everything this cluster started: nodes (SIGTERM, drained; SIGKILL after
        15 s), the balancers, Redis.  Every process is waited for, whatever fails."""
        for node in self.members:
            if node.alive:
                _signal(node.process, signal.SIGTERM)
        stops: list[tuple[subprocess.Popen[bytes] | None, float]] = [
            *((node.process, 15.0) for node in self.members),
            *((balancer.process, 5.0) for balancer in self.haproxies),
            (self.redis, 5.0),
        ]
        failure: BaseException | None = None
        for process, timeout in stops:
            try:
                _stop(process, signal.SIGTERM, timeout)
            except BaseException as exc:  # stop the others all the same
                failure = failure or exc
                if process is not None and process.poll() is None:
                    process.kill()
        if failure is not None:
            raise failure


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"no {name} binary: apt-get install {name} (scripts/cluster does it)")
    return path


def _signal(process: subprocess.Popen[bytes] | None, signum: int) -> None:
    """``signum`` to ``process``'s whole process group (each child is started in
    its own session), while it is not reaped yet, so its id is still its own."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _stop(
    process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Signal ``process`` and wait for it; SIGKILL if it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    _signal(process, signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal(process, signal.SIGKILL)
        process.wait(5)


# -- command line ----------------------------------------------------------------------------


_CLUSTER_OPTIONS = (
    "nodes",
    "balancers",
    "port",
    "redis_port",
    "node_base_port",
    "metrics_base_port",
    "rtc_base_port",
    "rtc_ports_per_node",
    "peer_port",
    "balancer_threads",
)


def _run(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="ghostless-cluster-"))
    # The Cluster fields the command sets, each from the option of its name.
    chosen = {name: getattr(args, name) for name in _CLUSTER_OPTIONS}
    cluster = Cluster(directory, node_args=tuple(args.node_args), **chosen)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start()
        print(
            f"ghostless cluster: {args.nodes} nodes behind {cluster.url}/?roomId=ROOM&peerId=PEER"
        )
        for balancer in cluster.haproxies:
            print(f"  {balancer.name}: {balancer.url}  peers :{balancer.peer_port}")
        print(f"  redis {cluster.redis_url}; logs and haproxy-lbK.cfg in {directory}")
        for node in cluster.members:
            print(f"  {node.name}: ws://{node.address}  metrics :{node.metrics_port}")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for node in cluster.members:
                if node.process is not None and not node.alive:
                    print(f"node {node.name} exited (see {directory / (node.name + '.log')})")
                    node.process = None
            for balancer in cluster.haproxies:
                if balancer.process is not None and not balancer.alive:
                    print(f"{balancer.name} exited (see {directory / balancer.log_name}.log)")
                    balancer.process = None
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the cluster...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        if not args.keep_logs:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        return _render(argv[1:])
    node_args: list[str] = []
    if "--" in argv:  # what follows goes to every node
        argv, node_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        prog="scripts/cluster",
        description="Run redis-server, N ghostless nodes and HAProxy (one or several "
        "instances sharing the stick table) on this machine until Ctrl-C/SIGTERM "
        "('scripts/cluster render --help': render an HAProxy configuration).",
        epilog="Options after -- are passed to every node.",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--balancers", type=int, default=1, help="HAProxy instances (peers sharing the table)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="the first HAProxy's port (the next: +1...)"
    )
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--node-base-port", type=int, default=8765)
    parser.add_argument("--metrics-base-port", type=int, default=9102)
    parser.add_argument("--rtc-base-port", type=int, default=40000)
    parser.add_argument("--rtc-ports-per-node", type=int, default=1000)
    parser.add_argument(
        "--peer-port", type=int, default=10000, help="the first HAProxy's peers port (+1...)"
    )
    parser.add_argument(
        "--balancer-threads",
        type=_at_least_one,
        help="each HAProxy's nbthread (default: HAProxy's, a thread per CPU); 1 when "
        "several instances share this machine's cores",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs directory")
    args = parser.parse_args(argv)
    args.node_args = node_args
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.balancers < 1:
        parser.error("--balancers must be at least 1")
    return _run(args)


def _at_least_one(text: str) -> int:
    """An argparse type: an integer of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _render(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster render", description="Print an HAProxy configuration."
    )
    parser.add_argument("--server", action="append", required=True, help="NAME=HOST:PORT")
    parser.add_argument("--bind", default="0.0.0.0:8080")
    parser.add_argument("--peer", action="append", help="NAME=HOST:PORT of each HAProxy")
    parser.add_argument("--local-peer", default="lb1")
    parser.add_argument("--stats-socket", default="/run/haproxy-ghostless.sock")
    parser.add_argument(
        "--holders-map",
        default="/etc/haproxy/ghostless-holders.map",
        help="a file that must exist (empty): HAProxy keeps room -> holder hints there",
    )
    parser.add_argument("--check-interval", default="1s")
    parser.add_argument("--threads", type=_at_least_one, help="nbthread (default: HAProxy's)")
    args = parser.parse_args(argv)

    def pairs(values: list[str]) -> list[tuple[str, str]]:
        return [(name, address) for name, _, address in (v.partition("=") for v in values)]

    print(
        render_haproxy(
            pairs(args.server),
            bind=args.bind,
            peers=pairs(args.peer or [f"{args.local_peer}=127.0.0.1:10000"]),
            local_peer=args.local_peer,
            stats_socket=args.stats_socket,
            holders_map=args.holders_map,
            check_interval=args.check_interval,
            threads=args.threads,
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
