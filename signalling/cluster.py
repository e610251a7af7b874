"""A local cluster: redis-server, N ghostless nodes and HAProxy on this machine.

``scripts/cluster --nodes 3`` runs it until Ctrl-C or SIGTERM, then stops
everything it started (nodes first, with SIGTERM: they drain).  The tests of
tests/cluster drive the same ``Cluster`` class.  ``render_haproxy`` fills
``docker/haproxy/haproxy.cfg.template`` from a node list:

    python -m signalling.cluster render --server n1=10.0.0.1:8765 --server n2=10.0.0.2:8765
"""

from __future__ import annotations

import argparse
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
    check_interval: str = "1s",
    connect_timeout: str = "1s",
    stick_expire: str = "1h",
    maxconn: int = 9000,  # 2 descriptors each: stays under a 20,000 open-file limit
    template: Path = HAPROXY_TEMPLATE,
) -> str:
    """The HAProxy configuration for ``servers`` (name, host:port) behind ``bind``;
    ``peers`` (name, host:port) are every HAProxy instance sharing the stick table,
    this one being ``local_peer``."""
    if not servers:
        raise ValueError("no servers")
    return Template(template.read_text()).substitute(
        maxconn=maxconn,
        local_peer=local_peer,
        stats_socket=stats_socket,
        connect_timeout=connect_timeout,
        bind=bind,
        stick_expire=stick_expire,
        check_interval=check_interval,
        peers="\n".join(f"    peer {name} {address}" for name, address in peers),
        servers="\n".join(f"    server {name} {address}" for name, address in servers),
    )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
class Cluster:
    """redis-server, ``nodes`` ghostless nodes and one HAProxy, as child processes
    writing their logs into ``directory``."""

    directory: Path
    nodes: int = 3
    port: int = 8080
    redis_port: int = 6379
    node_base_port: int = 8765
    metrics_base_port: int = 9102
    rtc_base_port: int = 40000
    rtc_ports_per_node: int = 1000
    peer_port: int = 10000
    node_args: tuple[str, ...] = ()
    check_interval: str = "1s"
    python: str = sys.executable
    members: list[Node] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None

    free_ports: bool = False
    """Take free ports for everything (tests): media ports from the whole range."""

    def __post_init__(self) -> None:
        if self.free_ports:
            self.port, self.redis_port, self.peer_port = free_port(), free_port(), free_port()
        for index in range(self.nodes):
            low = self.rtc_base_port + index * self.rtc_ports_per_node
            self.members.append(
                Node(
                    f"n{index + 1}",
                    free_port() if self.free_ports else self.node_base_port + index,
                    free_port() if self.free_ports else self.metrics_base_port + index,
                    (0, 0) if self.free_ports else (low, low + self.rtc_ports_per_node - 1),
                )
            )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def node(self, name: str) -> Node:
        return next(node for node in self.members if node.name == name)

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

    # -- starting ---------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        self.start_redis(timeout)
        for node in self.members:
            self.start_node(node.name)
        for node in self.members:
            self.wait_node_ready(node.name, timeout)
        self.start_haproxy(timeout)

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
        node = self.node(name)
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

    def start_haproxy(self, timeout: float = 10.0) -> None:
        binary = _binary("haproxy")
        config = render_haproxy(
            [(node.name, node.address) for node in self.members],
            bind=f"127.0.0.1:{self.port}",
            peers=[("lb1", f"127.0.0.1:{self.peer_port}")],
            local_peer="lb1",
            stats_socket=str(self.directory / "haproxy.sock"),
            check_interval=self.check_interval,
        )
        path = self.directory / "haproxy.cfg"
        path.write_text(config)
        self.haproxy = self._spawn("haproxy", [binary, "-db", "-f", str(path)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.haproxy.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{self.log('haproxy')}")
            try:
                status, _ = http_get(f"http://127.0.0.1:{self.port}/readyz", 1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not come up:\n{self.log('haproxy')}")

    def haproxy_command(self, command: str) -> str:
        """A command on HAProxy's stats socket (e.g. ``show table nodes``)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.directory / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    # -- stopping ---------------------------------------------------------------------

    def kill_node(self, name: str, signum: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        node = self.node(name)
        _stop(node.process, signum, timeout)

    def stop(self) -> None:
        """Everything this cluster started: nodes (SIGTERM, drained), HAProxy, Redis."""
        for node in self.members:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.members:
            _stop(node.process, signal.SIGTERM, 15.0)
        _stop(self.haproxy, signal.SIGTERM, 5.0)
        _stop(self.redis, signal.SIGTERM, 5.0)


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"no {name} binary: apt-get install {name} (scripts/cluster does it)")
    return path


def _stop(
    process: subprocess.Popen[bytes] | None, signum: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Signal ``process`` and wait for it; SIGKILL if it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# -- command line ----------------------------------------------------------------------------


_CLUSTER_OPTIONS = (
    "nodes",
    "port",
    "redis_port",
    "node_base_port",
    "metrics_base_port",
    "rtc_base_port",
    "rtc_ports_per_node",
    "peer_port",
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
        print(f"  redis {cluster.redis_url}; logs and haproxy.cfg in {directory}")
        for node in cluster.members:
            print(f"  {node.name}: ws://{node.address}  metrics :{node.metrics_port}")
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for node in cluster.members:
                if not node.alive:
                    print(f"node {node.name} exited (see {directory / (node.name + '.log')})")
                    node.process = None
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
        description="Run redis-server, N ghostless nodes and HAProxy on this machine until "
        "Ctrl-C/SIGTERM ('scripts/cluster render --help': render an HAProxy configuration).",
        epilog="Options after -- are passed to every node.",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080, help="HAProxy's port")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--node-base-port", type=int, default=8765)
    parser.add_argument("--metrics-base-port", type=int, default=9102)
    parser.add_argument("--rtc-base-port", type=int, default=40000)
    parser.add_argument("--rtc-ports-per-node", type=int, default=1000)
    parser.add_argument("--peer-port", type=int, default=10000, help="HAProxy's peers port")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs directory")
    args = parser.parse_args(argv)
    args.node_args = node_args
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    return _run(args)


def _render(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster render", description="Print an HAProxy configuration."
    )
    parser.add_argument("--server", action="append", required=True, help="NAME=HOST:PORT")
    parser.add_argument("--bind", default="0.0.0.0:8080")
    parser.add_argument("--peer", action="append", help="NAME=HOST:PORT of each HAProxy")
    parser.add_argument("--local-peer", default="lb1")
    parser.add_argument("--stats-socket", default="/run/haproxy-ghostless.sock")
    parser.add_argument("--check-interval", default="1s")
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
            check_interval=args.check_interval,
        ),
        end="",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
