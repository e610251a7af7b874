"""Abuse benchmark: does one misbehaving client hurt a healthy call on the same server?

Why
---
A signalling server that buffers without bound, answers every request at any
rate, or lets one bad datagram escape the media plane can be taken down by a
single client.  This benchmark floods a real ghostless server in six ways and
measures what the flood costs the *other* users and the server itself, so that
hardening (rate limits, bounded outbound buffers, per-IP limits, join
timeouts, media-plane error containment) can be judged before and after.

How to run it (from the repository root; about 2 minutes, loopback only)::

    .venv/bin/python scripts/bench_abuse.py
    .venv/bin/python scripts/bench_abuse.py --only slow_reader --duration 5
    .venv/bin/python scripts/bench_abuse.py --server-args "--some-new-limit 10"
    .venv/bin/python scripts/bench_abuse.py --server-dir /tmp/ghostless-head   # another checkout

It prints a table and always exits 0 (it measures, it does not assert).

What it does, for each flood
----------------------------
A fresh server (``python -m signalling``, run from ``--server-dir``) is started
on free ports with its media ports restricted to a 400-port range, pinned to
core 0.  Only the ports are given to it, plus ``--server-args``: the script
works with the server before and after the hardening lands, and lists the
server options it does not know (the new knobs) in its header.  Then, all
pinned to core 1:

* a **healthy call**: two pymediasoup bots (``signalling.bot.Bot``) in one
  room, Alice sending video and audio, Bob counting decoded video frames;
* **healthy peers** in the same room sending a ``ping`` request every 50 ms
  (open loop) and recording round-trip times: ``--pingers`` connections
  (5) taking turns, so that each pings only every 250 ms and a per-connection
  heartbeat limit does not take the probe for an attacker;
* after a warm-up and a baseline window, the **attacker**
  (``scripts/_abuse_floods.py``) in its own process, at a lower priority than
  the healthy clients so that their CPU share is not what is measured, from
  127.0.0.2 (the healthy clients use 127.0.0.1, so per-IP limits can tell them
  apart).

Measured over the flood window (``--duration`` from the attacker's first byte)
against the baseline window just before it: the server's peak RSS growth
(VmRSS sampled every 50 ms, and VmHWM), the healthy peer's ping p50/p99
(lost or timed-out pings count as infinite), Bob's decoded video frames/s as a
% of the baseline, the server's CPU, its log lines/s (a log flood shows here)
and what the attacker saw.  Targets: RSS growth < 64 MB, ping p99 < 20 ms,
frame rate >= 80 %.  A flood that grows the server beyond ``--rss-cap`` is
stopped early.  Every process started here is killed at the end, also on
Ctrl-C or an error.  The floods are described in ``scripts/_abuse_floods.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import datetime
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from _abuse_floods import FLOODS, FloodConfig, emit

REPO = Path(__file__).resolve().parent.parent
FLOODS_SCRIPT = Path(__file__).resolve().parent / "_abuse_floods.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = frozenset(os.sched_getaffinity(0))  # before the orchestrator pins itself

SERVER_CORE, CLIENT_CORE = 0, 1
HEALTHY_NICE, ATTACKER_NICE = -10, 5  # the attacker never wins the client core
HOST, ATTACKER_SOURCE = "127.0.0.1", "127.0.0.2"
CALL_ROOM = "call"
RTC_PORTS = 400
PING_INTERVAL = 0.05
PING_TIMEOUT = 5.0

TARGET_RSS_MB = 64.0
TARGET_P99_MS = 20.0
TARGET_FRAMES_PERCENT = 80.0

# ``python -m signalling --help`` when this script was written: anything else is new.
KNOWN_SERVER_OPTIONS = frozenset(
    {
        "--host", "--port", "--metrics-host", "--metrics-port", "--rtc-listen-ip",
        "--rtc-announced-address", "--rtc-min-port", "--rtc-max-port", "--consent-timeout",
        "--heartbeat-interval", "--grace-period", "--silence-timeout", "--probe-after",
        "--stale-after", "--sweep-interval", "--inactivity-limit", "--idle-after",
        "--background-after", "--takeover", "--room-close-delay", "--max-peers-per-room",
        "--max-message-size", "--request-timeout", "--token-secret", "--shutdown-timeout",
        "--reconnect-delay", "--log-format", "--log-level", "--gc-freeze",
        "--gc-collect-interval", "--help",
    }
)  # fmt: skip

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

_started: list[subprocess.Popen[bytes]] = []


def _child_setup(core: int, nice: int) -> None:
    """In the child before exec: die with us (PR_SET_PDEATHSIG), pin, set priority."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {core} if core in CORES else CORES)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def spawn(
    command: Sequence[str], *, cwd: Path, core: int, nice: int, stdout: Any, stderr: Any
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GHOSTLESS_")}
    env["PYTHONPATH"] = str(cwd)  # the server's packages, or the project's bot for clients
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        preexec_fn=lambda: _child_setup(core, nice),
        start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
    )
    _started.append(proc)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_everything() -> None:
    for proc in _started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in _started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


class Child:
    """A client process that prints JSON lines; a thread collects them as events."""

    def __init__(self, name: str, command: Sequence[str], *, nice: int, log_dir: Path) -> None:
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = spawn(
                command, cwd=REPO, core=CLIENT_CORE, nice=nice, stdout=subprocess.PIPE,
                stderr=stderr,
            )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name=f"read-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exited"})
            self._changed.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e.get("event") == kind]

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any] | None:
        """The first event of ``kind``; None on timeout or if the process exited first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events:
                    if event.get("event") == kind:
                        return event
                if any(e.get("event") == "exited" for e in self.events):
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def stderr_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            text = self.stderr_path.read_text(errors="replace").strip().splitlines()
            return "\n".join(text[-lines:])
        return ""

    def stop(self, timeout: float = 5.0) -> None:
        stop_process(self.proc, timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_udp_range(size: int) -> tuple[int, int]:
    """``size`` consecutive bindable UDP ports below the ephemeral range."""
    for base in range(20_000, 32_000 - size, 1_000):
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((HOST, port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base, base + size - 1
    raise RuntimeError(f"no {size} free consecutive UDP ports in 20000-32000")


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(64).split(b" ", 2)
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else 0


class ServerProcess:
    """``python -m signalling`` on fresh ports, pinned to the server core, logging to a file."""

    def __init__(self, name: str, plan: Plan) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = plan.log_dir / f"server-{name}.log"
        command = [
            sys.executable, "-m", "signalling",
            "--host", HOST,
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--rtc-listen-ip", HOST,
            "--rtc-min-port", str(plan.rtc_ports[0]),
            "--rtc-max-port", str(plan.rtc_ports[1]),
            *plan.server_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = spawn(
                command, cwd=plan.server_dir, core=SERVER_CORE, nice=HEALTHY_NICE, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.pid = self.proc.pid
        self._log_offset = 0
        self._log_lines = 0

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_status(self.port, "/readyz") == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_lines(self) -> int:
        """Lines the server has logged so far (read incrementally)."""
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            while chunk := log.read(1 << 20):
                self._log_lines += chunk.count(b"\n")
                self._log_offset += len(chunk)
        return self._log_lines

    def log_tail(self, lines: int = 6) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
            return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        stop_process(self.proc, 5.0)


# ---------------------------------------------------------------------------------------
# /proc sampling
# ---------------------------------------------------------------------------------------


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_jiffies(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core, from /proc/stat."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                values = [int(v) for v in line.split()[1:]]
                return sum(values) - values[3] - values[4], sum(values)
    return 0, 0


@dataclass
class Sample:
    t: float
    rss_kb: int
    hwm_kb: int
    cpu: float  # the server's
    attacker_cpu: float
    cores: tuple[tuple[int, int], tuple[int, int]]  # (busy, total) jiffies of cores 0, 1


class Sampler(threading.Thread):
    """The server's memory and CPU (and the attacker's CPU) every ``interval`` s, until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid = pid
        self.attacker_pid: int | None = None
        self.interval = interval
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                rss, hwm = memory_kb(self.pid)
                attacker = 0.0
                if self.attacker_pid is not None:
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        attacker = cpu_seconds(self.attacker_pid)
                cores = (core_jiffies(SERVER_CORE), core_jiffies(CLIENT_CORE))
                self.samples.append(
                    Sample(time.monotonic(), rss, hwm, cpu_seconds(self.pid), attacker, cores)
                )
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(2)

    def at(self, t: float) -> Sample | None:
        """The last sample taken at or before ``t``."""
        times = [s.t for s in self.samples]
        index = bisect.bisect_right(times, t) - 1
        return self.samples[index] if index >= 0 else None

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.t <= t1]


# ---------------------------------------------------------------------------------------
# The healthy clients (run as ``bench_abuse.py --role call|pinger``)
# ---------------------------------------------------------------------------------------


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def call_role(url: str) -> None:
    """Alice sends video and audio, Bob decodes; report Bob's video frames every 0.25 s."""
    import aioice.ice

    from signalling.bot import Bot

    # aioice skips loopback when gathering; the server is on loopback only.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [HOST]
    stop = _stop_event()
    bob = Bot(url, CALL_ROOM, "bob", display_name="bob", video=False)
    alice = Bot(url, CALL_ROOM, "alice", display_name="alice", video=True, audio=True)
    told: set[str] = set()

    def video_frames() -> int:
        return sum(
            n for cid, n in bob.frames.items() if getattr(bob.consumers[cid], "kind", "") == "video"
        )

    try:
        await asyncio.wait_for(bob.join(), 20)
        await asyncio.wait_for(alice.join(), 20)
        ready = False
        while not stop.is_set():
            frames = video_frames()
            emit({"event": "frames", "t": time.monotonic(), "frames": frames})
            if not ready and frames >= 15:
                ready = True
                emit({"event": "ready"})
            for bot in (alice, bob):
                client = bot.client
                if bot.peer_id not in told and client is not None and client.closed.done():
                    told.add(bot.peer_id)
                    code, reason = client.closed.result()
                    emit({"event": "closed", "who": bot.peer_id, "code": code, "reason": reason})
            await _wait(stop, 0.25)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
    finally:
        for bot in (alice, bob):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bot.close(), 3)


async def pinger_role(url: str, connections: int) -> None:
    """Joined peers taking turns to send ``ping``, one every 50 ms in all.

    Each connection pings every ``connections`` x 50 ms: a per-connection
    heartbeat limit (``--heartbeat-rate``) must not mistake the probe for abuse.
    Reports batches of [sent_at, rtt_ms | null (lost)], and refusals (429).
    """
    from signalling.protoo_client import ProtooClient, ProtooError

    stop = _stop_event()
    samples: list[list[float | None]] = []
    refused = 0
    in_flight: dict[asyncio.Task[None], float] = {}
    clients: list[ProtooClient] = []
    try:
        for index in range(connections):
            client = await ProtooClient.connect(f"{url}/?roomId={CALL_ROOM}&peerId=watcher{index}")
            clients.append(client)
            await client.request("join", {"displayName": f"watcher{index}", "device": {}})
    except Exception as exc:
        emit({"event": "error", "error": repr(exc)})
        for client in clients:
            client.abort()
        return

    async def ping(client: ProtooClient, sent_at: float) -> None:
        nonlocal refused
        began = time.perf_counter()
        try:
            await client.request("ping", {}, timeout=PING_TIMEOUT)
        except Exception as exc:
            refused += isinstance(exc, ProtooError) and exc.code == 429
            samples.append([sent_at, None])  # lost: refused, timed out, connection closed
            return
        samples.append([sent_at, (time.perf_counter() - began) * 1000])

    emit({"event": "ready"})
    loop = asyncio.get_running_loop()
    next_ping = next_report = loop.time()
    turn = 0
    told: set[int] = set()
    while not stop.is_set():
        now = loop.time()
        if now >= next_ping:
            client = clients[turn % connections]
            turn += 1
            task = asyncio.ensure_future(ping(client, time.monotonic()))
            in_flight[task] = time.perf_counter()
            task.add_done_callback(lambda t: in_flight.pop(t, None))
            next_ping += PING_INTERVAL
            if next_ping < now:  # our own loop stalled: do not burst to catch up
                next_ping = now + PING_INTERVAL
        if now >= next_report:
            emit({"event": "pings", "samples": samples, "refused": refused})
            samples, refused = [], 0
            next_report = now + 0.25
            for index, client in enumerate(clients):
                if index not in told and client.closed.done():
                    told.add(index)
                    code, _ = client.closed.result()
                    emit({"event": "closed", "who": f"watcher{index}", "code": code})
        await _wait(stop, max(0.0, min(next_ping, next_report) - loop.time()))
    # Pings still unanswered: what they have waited so far (a lower bound).
    now = time.perf_counter()
    sent_at = time.monotonic()
    for began in in_flight.values():
        samples.append([sent_at - (now - began), (now - began) * 1000])
    emit({"event": "pings", "samples": samples, "refused": refused})
    for client in clients:
        client.abort()


# ---------------------------------------------------------------------------------------
# One flood
# ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    server_dir: Path
    server_args: list[str]
    log_dir: Path
    rtc_ports: tuple[int, int]
    duration: float
    baseline: float
    warmup: float
    rss_cap_mb: float
    stun_rate: int
    connections: int
    pingers: int


@dataclass
class Row:
    flood: str
    rss_mb: float = math.nan
    p50: float = math.nan
    p99: float = math.nan
    base_p50: float = math.nan
    base_p99: float = math.nan
    pings: int = 0
    lost: int = 0
    base_fps: float = math.nan
    fps: float = math.nan
    cpu_percent: float = math.nan
    other_core_percent: float = math.nan  # the server's core busy with other processes
    attacker_cpu_percent: float = math.nan
    client_core_percent: float = math.nan
    base_log_rate: float = math.nan
    log_rate: float = math.nan
    outcome: str = ""
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def frames_percent(self) -> float:
        if not self.base_fps or math.isnan(self.base_fps) or math.isnan(self.fps):
            return math.nan
        return 100.0 * self.fps / self.base_fps


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ping_stats(pinger: Child, t0: float, t1: float) -> tuple[float, float, int, int]:
    """p50, p99, pings sent in [t0, t1], lost ones (counted as infinite)."""
    rtts = [
        math.inf if rtt is None else float(rtt)
        for event in pinger.of("pings")
        for sent, rtt in event["samples"]
        if t0 <= sent <= t1
    ]
    lost = sum(1 for rtt in rtts if math.isinf(rtt))
    return percentile(rtts, 50), percentile(rtts, 99), len(rtts), lost


def frame_rate(call: Child, t0: float, t1: float) -> float:
    """Bob's decoded video frames/s over [t0, t1] (linear between 0.25 s reports)."""
    points = [(float(e["t"]), float(e["frames"])) for e in call.of("frames")]
    if len(points) < 2 or points[0][0] > t0 or points[-1][0] < t1 - 1.0:
        return math.nan  # the call was not reporting over the window

    def frames_at(t: float) -> float:
        times = [p[0] for p in points]
        i = min(max(bisect.bisect_left(times, t), 1), len(points) - 1)
        (ta, fa), (tb, fb) = points[i - 1], points[i]
        return fa + (fb - fa) * (min(max(t, ta), tb) - ta) / (tb - ta) if tb > ta else fb

    return (frames_at(t1) - frames_at(t0)) / (t1 - t0)


def flood_config(name: str, server: ServerProcess, plan: Plan) -> FloodConfig:
    return FloodConfig(
        host=HOST,
        port=server.port,
        source=ATTACKER_SOURCE,
        legit_source=HOST,
        duration=plan.duration,
        rtc_min_port=plan.rtc_ports[0],
        rtc_max_port=plan.rtc_ports[1],
        stun_rate=plan.stun_rate,
        storm_connections=plan.connections,
    )


def run_flood(name: str, plan: Plan) -> Row:
    row = Row(name)
    server = ServerProcess(name, plan)
    children: list[Child] = []
    sampler: Sampler | None = None
    try:
        server.wait_ready()
        sampler = Sampler(server.pid)
        sampler.start()
        me = str(Path(__file__).resolve())
        role = [sys.executable, me, "--url", server.url, "--role"]
        call = Child(f"{name}-call", [*role, "call"], nice=HEALTHY_NICE, log_dir=plan.log_dir)
        children.append(call)
        if call.wait_for("ready", 45) is None:
            row.error = f"the healthy call did not start: {_last_error(call)}"
            return row
        pinger = Child(
            f"{name}-pinger",
            [*role, "pinger", "--pingers", str(plan.pingers)],
            nice=HEALTHY_NICE,
            log_dir=plan.log_dir,
        )
        children.append(pinger)
        if pinger.wait_for("ready", 15) is None:
            row.error = f"the healthy peer did not join: {_last_error(pinger)}"
            return row
        time.sleep(plan.warmup)
        base0, log0 = time.monotonic(), server.log_lines()
        time.sleep(plan.baseline)
        base1, log1 = time.monotonic(), server.log_lines()

        config = orjson.dumps(flood_config(name, server, plan).__dict__).decode()
        attacker = Child(
            f"{name}-attacker",
            [sys.executable, str(FLOODS_SCRIPT), name, config],
            nice=ATTACKER_NICE,
            log_dir=plan.log_dir,
        )
        children.append(attacker)
        sampler.attacker_pid = attacker.proc.pid
        started = attacker.wait_for("started", 30)
        if started is None:
            row.error = f"the attacker did not start: {_last_error(attacker)}"
            return row
        t0, log2 = float(started["t"]), server.log_lines()
        t1, log3, result = _watch_flood(attacker, server, sampler, t0, plan, row)
        time.sleep(0.5)  # the last pings and frames of the window reach us
        times = (base0, base1, t0, t1)
        _measure(row, sampler, call, pinger, times, (log0, log1, log2, log3))
        row.outcome = str(result["outcome"]) if result else f"no result: {_last_error(attacker)}"
        for event in call.of("closed") + pinger.of("closed"):
            row.notes.append(f"healthy {event.get('who')} disconnected (close {event.get('code')})")
        refused = sum(int(e.get("refused", 0)) for e in pinger.of("pings"))
        if refused:
            row.notes.append(
                f"{refused} healthy pings refused with 429 (counted as lost): the server's "
                "heartbeat limit is below what --pingers spreads; raise --pingers"
            )
        if server.proc.poll() is not None:
            row.notes.append(f"SERVER EXITED with status {server.proc.returncode}")
    except RuntimeError as exc:
        row.error = str(exc)
    finally:
        for child in reversed(children):
            child.stop()
        if sampler is not None:
            sampler.stop()
        server.stop()
    return row


def _last_error(child: Child) -> str:
    errors = child.of("error")
    return str(errors[-1]["error"]) if errors else child.stderr_tail(3) or "no output"


def _watch_flood(
    attacker: Child, server: ServerProcess, sampler: Sampler, t0: float, plan: Plan, row: Row
) -> tuple[float, int, dict[str, Any] | None]:
    """Wait out the flood; stop it early if the server outgrows the RSS cap or dies.

    Returns the end of the window, the server's log line count then, and the
    attacker's result.
    """
    window_end = t0 + plan.duration
    start = sampler.at(t0)
    rss0 = start.rss_kb if start else 0
    log_at_end: int | None = None
    capped = False
    hard_deadline = window_end + 30.0  # set-up and wrap-up of the attacker, bounded
    while time.monotonic() < hard_deadline:
        now = time.monotonic()
        result = attacker.of("result")
        if log_at_end is None and (now >= window_end or result):
            window_end = min(window_end, now)
            log_at_end = server.log_lines()
        if result:
            return window_end, log_at_end or server.log_lines(), result[0]
        if attacker.of("exited"):
            break
        latest = sampler.samples[-1] if sampler.samples else None
        if not capped and latest and (latest.rss_kb - rss0) / 1024 > plan.rss_cap_mb:
            capped = True
            row.notes.append(f"flood stopped at the RSS cap ({plan.rss_cap_mb:.0f} MB)")
            attacker.proc.send_signal(signal.SIGTERM)
        if server.proc.poll() is not None and not capped:
            capped = True
            attacker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    attacker.stop()
    final = attacker.of("result")
    return window_end, log_at_end or server.log_lines(), final[0] if final else None


def _measure(
    row: Row,
    sampler: Sampler,
    call: Child,
    pinger: Child,
    times: tuple[float, float, float, float],
    logs: tuple[int, int, int, int],
) -> None:
    """Fill ``row``: ``times`` and ``logs`` mark baseline start, baseline end, flood start, end."""
    base0, base1, t0, t1 = times
    row.base_p50, row.base_p99, _, _ = ping_stats(pinger, base0, base1)
    row.p50, row.p99, row.pings, row.lost = ping_stats(pinger, t0, t1)
    row.base_fps = frame_rate(call, base0, base1)
    row.fps = frame_rate(call, t0, t1)
    if math.isnan(row.fps) and not math.isnan(row.base_fps):
        row.notes.append("the healthy call stopped reporting during the flood")
    row.base_log_rate = (logs[1] - logs[0]) / (base1 - base0)
    row.log_rate = (logs[3] - logs[2]) / (t1 - t0) if t1 > t0 else math.nan
    start, end = sampler.at(t0), sampler.at(t1)
    window = sampler.between(t0, t1 + 0.5)
    if start is None or end is None or not window:
        return
    peak = max(s.rss_kb for s in window)
    last = window[-1]
    if last.hwm_kb > start.hwm_kb:  # a spike between two samples
        peak = max(peak, last.hwm_kb)
    row.rss_mb = (peak - start.rss_kb) / 1024
    if end.t > start.t:
        row.cpu_percent = 100 * (end.cpu - start.cpu) / (end.t - start.t)
        if start.attacker_cpu:
            row.attacker_cpu_percent = (
                100 * (end.attacker_cpu - start.attacker_cpu) / (end.t - start.t)
            )
        server_core, client_core = (
            100 * (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else math.nan
            for a, b in zip(start.cores, end.cores, strict=True)
        )
        row.other_core_percent = max(0.0, server_core - row.cpu_percent)
        row.client_core_percent = client_core


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def _num(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "?"
    if math.isinf(value):
        return "lost"
    return f"{value:,.{digits}f}"


def verdicts(row: Row) -> tuple[bool | None, bool | None, bool | None]:
    if row.error is not None:
        return None, None, None
    rss = None if math.isnan(row.rss_mb) else row.rss_mb < TARGET_RSS_MB
    p99 = None if math.isnan(row.p99) else row.p99 < TARGET_P99_MS
    frames = row.frames_percent
    fps = False if math.isnan(frames) and not math.isnan(row.base_fps) else None
    if not math.isnan(frames):
        fps = frames >= TARGET_FRAMES_PERCENT
    return rss, p99, fps


def print_row_detail(row: Row) -> None:
    if row.error is not None:
        print(f"  {row.flood}: could not measure: {row.error}", flush=True)
        return
    print(
        f"  {row.flood}: RSS +{_num(row.rss_mb)} MB; ping p50/p99 {_num(row.p50)}/{_num(row.p99)}"
        f" ms (baseline {_num(row.base_p50)}/{_num(row.base_p99)}; {row.pings} pings, "
        f"{row.lost} lost); video {_num(row.fps)} fps (baseline {_num(row.base_fps)}); "
        f"server CPU {_num(row.cpu_percent, 0)}% (core {SERVER_CORE} other load "
        f"{_num(row.other_core_percent, 0)}%); attacker CPU {_num(row.attacker_cpu_percent, 0)}%"
        f" (core {CLIENT_CORE} busy {_num(row.client_core_percent, 0)}%); log "
        f"{_num(row.log_rate)} lines/s (baseline {_num(row.base_log_rate)})",
        flush=True,
    )
    print(f"    attacker: {row.outcome}", flush=True)
    for note in row.notes:
        print(f"    note: {note}", flush=True)


def print_table(rows: list[Row]) -> None:
    headers = (
        "flood", "RSS +MB", "", "ping p99 ms", "", "frames %", "", "p99 base", "p50",
        "srv cpu%", "other%", "log/s", "attacker outcome",
    )  # fmt: skip
    table: list[tuple[str, ...]] = []
    for row in rows:
        rss, p99, fps = verdicts(row)
        if row.error is not None:
            table.append((row.flood, "?", "-", "?", "-", "?", "-", "", "", "", "", "", row.error))
            continue
        outcome = row.outcome + "".join(f"; {note}" for note in row.notes)
        table.append(
            (
                row.flood,
                _num(row.rss_mb),
                _verdict(rss),
                _num(row.p99),
                _verdict(p99),
                _num(row.frames_percent, 0),
                _verdict(fps),
                _num(row.base_p99),
                _num(row.p50),
                _num(row.cpu_percent, 0),
                _num(row.other_core_percent, 0),
                _num(row.log_rate, 0),
                outcome,
            )
        )
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(len(headers) - 1)]
    right = {1, 3, 5, 7, 8, 9, 10, 11}

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells[:-1])
        ]
        return "  ".join([*parts, cells[-1]])

    print(line(headers))
    for cells in table:
        print(line(cells))
    print(
        f"targets: RSS growth < {TARGET_RSS_MB:.0f} MB, healthy ping p99 < {TARGET_P99_MS:.0f} ms, "
        f"healthy video frame rate >= {TARGET_FRAMES_PERCENT:.0f} % of its baseline; "
        f"other% = core {SERVER_CORE} busy with other processes than the server (noise)"
    )


def server_options(server_dir: Path) -> list[str]:
    """The server's option flags, from ``python -m signalling --help``."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "signalling", "--help"],
            cwd=server_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout)))


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (
        f"{os.cpu_count()} CPUs (nproc {len(CORES)}), {model}; "
        f"load average {load}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def revision(directory: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True,
            text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "not a git checkout"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "not a git checkout"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--duration", type=float, default=8.0, help="flood window, s (8)")
    add("--baseline", type=float, default=4.0, help="baseline window just before it, s (4)")
    add("--warmup", type=float, default=2.0, help="call running before the baseline, s (2)")

    def floods(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in FLOODS]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(FLOODS)}")
        return names

    add(
        "--only", type=floods, default=list(FLOODS), metavar="NAME[,NAME]",
        help=f"run only these floods, of {', '.join(FLOODS)} (all)",
    )  # fmt: skip
    add("--server-args", default="", help="extra options for python -m signalling, one string")
    add("--server-dir", type=Path, default=REPO, help="the checkout whose server runs (this one)")
    add(
        "--rss-cap", type=float, default=1024.0, help="stop a flood past this RSS growth, MB (1024)"
    )
    add("--stun-rate", type=int, default=20_000, help="STUN storm datagrams/s (20000)")
    add("--connections", type=int, default=3_000, help="connection storm: sockets to try (3000)")
    add(
        "--pingers", type=int, default=5,
        help="healthy peers taking turns to ping, each every PINGERS x 50 ms (5)",
    )  # fmt: skip
    add("--keep-logs", action="store_true", help="keep the server and client logs")
    parser.add_argument("--role", choices=("call", "pinger"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 1 <= args.baseline <= 30 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..60 s, --baseline 1..30 s, --warmup 0..30 s")
    if not 1 <= args.connections <= 5_000:
        parser.error("--connections must be 1..5000 (the open-files limit is per process)")
    if not 1 <= args.pingers <= 40:
        parser.error("--pingers must be 1..40")
    if not 100 <= args.stun_rate <= 200_000:
        parser.error("--stun-rate must be 100..200000")
    return args


def run_role(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    role = call_role(args.url) if args.role == "call" else pinger_role(args.url, args.pingers)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(role)
    else:
        uvloop.run(role)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        run_role(args)
        return 0
    began = time.monotonic()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # finally: below stops everything

    signal.signal(signal.SIGTERM, terminate)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_abuse-"))
    options = server_options(args.server_dir)
    new_options = [o for o in options if o not in KNOWN_SERVER_OPTIONS]
    plan = Plan(
        server_dir=args.server_dir.resolve(),
        server_args=shlex.split(args.server_args),
        log_dir=log_dir,
        rtc_ports=free_udp_range(RTC_PORTS),
        duration=args.duration,
        baseline=args.baseline,
        warmup=args.warmup,
        rss_cap_mb=args.rss_cap,
        stun_rate=args.stun_rate,
        connections=args.connections,
        pingers=args.pingers,
    )
    print(f"bench_abuse  {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")
    with contextlib.suppress(OSError):  # the orchestrator stays off the server's core
        os.sched_setaffinity(0, {CLIENT_CORE} if CLIENT_CORE in CORES else CORES)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    low, high = plan.rtc_ports
    print(
        f"server: {plan.server_dir} ({revision(plan.server_dir)}) on core {SERVER_CORE}, "
        f"clients on core {CLIENT_CORE}; media ports {low}-{high}"
    )
    print(
        "server options beyond the original ones: "
        + (" ".join(new_options) if new_options else "none")
        + (f"; extra server args: {args.server_args}" if args.server_args else "")
    )
    print(
        f"per flood: fresh server, healthy call + {args.pingers} peers pinging in turn (one "
        f"ping every 50 ms), {args.warmup:g} s warm-up, "
        f"{args.baseline:g} s baseline, {args.duration:g} s flood from {ATTACKER_SOURCE}",
        flush=True,
    )
    rows: list[Row] = []
    try:
        for name in args.only:
            print(f"{name} ...", flush=True)
            row = run_flood(name, plan)
            rows.append(row)
            print_row_detail(row)
    except KeyboardInterrupt:
        print("interrupted: stopping everything", flush=True)
    finally:
        kill_everything()
        if args.keep_logs:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    print()
    print_table(rows)
    noisy = [r.flood for r in rows if r.other_core_percent > 15]
    if noisy:
        print(
            f"noise: core {SERVER_CORE} was also busy with other processes (>15 %) during "
            f"{', '.join(noisy)}: latency and frame rate there are less reliable"
        )
    print(f"total runtime {time.monotonic() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
