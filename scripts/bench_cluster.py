"""Benchmark of ghostless scaled out: sessions through HAProxy, forwarding per node.

What it measures
----------------
1. **Sessions across nodes** (``--phases sessions``).  A local cluster
   (``signalling.cluster.Cluster``: redis-server, ``--nodes`` ghostless nodes,
   ``--balancers`` HAProxy instances sharing their stick table through
   ``peers``) holds ``--sessions`` WebSocket sessions in rooms of
   ``--room-size``, each sending an app ``ping`` request every ``--heartbeat``
   seconds (30 s, as the demo clients do).  Load generators (the WebSocket
   client of ``bench_signalling.py``, one process per ``--per-worker``
   sockets, each from its own 127.0.0.x source address and through its own
   balancer) open them; after ``--settle`` seconds the steady state is measured
   for ``--window`` seconds: sessions still joined, app ping RTT p50/p99
   (client side, through HAProxy), sessions per node (each node's
   ``/debug/stats``), CPU % of the nodes, the balancers and Redis, and the
   rooms the directory holds against the nodes' own counts.
2. **Forwarded packets/s of several nodes against one** (``--phases
   forwarding``).  Each node's SFU (``bench_sfu``'s server process: a
   ``media.Worker``, one producer forwarded to ``--fanout`` consumers with
   real ICE-lite, DTLS and SRTP) is pinned to its own core; one client
   process offers each node a little more than it takes (``--rate``, paced:
   a flat-out client would spin a core of its own), from packets it built and
   SRTP-protected before the round started (a ``sendto`` each while it
   runs).  The receivers' sockets stay open but are not read (the kernel
   drops what overflows them), so the clients cost little next to the nodes:
   the figure is the sum of the nodes' forwarded packets/s with 1 node and
   with ``--nodes-forwarding`` nodes, and the ratio.

A table closes the output with the targets of issue 10 (60,000 sessions with
an app ping p99 under 20 ms; forwarding close to 2x on 2 cores).  Nothing
asserts: the script prints numbers and exits 0 unless it could not run.

Run it from the repository root (redis-server and haproxy installed, as
``scripts/cluster`` does)::

    .venv/bin/python scripts/bench_cluster.py                       # both phases
    .venv/bin/python scripts/bench_cluster.py --phases forwarding
    .venv/bin/python scripts/bench_cluster.py --phases sessions --sessions 20000 --nodes 2

Caveats: everything shares two cores (nodes, balancers, Redis and the load
generators), so the session phase measures what this machine holds, not what
one node would with a core of its own; the forwarding phase's clients take a
part of the cores the nodes are pinned to (their CPU % is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import multiprocessing
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
for path in (str(SCRIPTS), str(REPO_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)  # spawn passes sys.path on to the children

import bench_sfu  # noqa: E402
import bench_signalling as sig  # noqa: E402

from signalling.cluster import Cluster  # noqa: E402

Json = dict[str, Any]

FORWARDING_TARGET = 2.0
SESSIONS_TARGET = 60_000
PING_P99_TARGET = 0.020


# =====================================================================================
# Phase 1: sessions through several balancers
# =====================================================================================

NODE_ARGS = (
    "--log-level", "WARNING",
    "--room-close-delay", "1",
    # Tens of thousands of simulated clients share a few loopback addresses.
    "--max-connections", "off",
    "--max-connections-per-ip", "off",
    "--ip-connection-rate", "1e9/1e9",
    "--heartbeat-rate", "1e9/1e9",
    "--message-rate", "1e9/1e9",
)  # fmt: skip


def _node_stats(cluster: Cluster) -> dict[str, Json]:
    """Each node's ``/debug/stats``, with ``roomIds`` from its ``/rooms`` (both on
    the operators' listener)."""
    stats = {}
    for node in cluster.members:
        status, body = sig.http_get(node.metrics_port, "/debug/stats", 20.0)
        stats[node.name] = body if status == 200 and isinstance(body, dict) else {}
        status, rooms = sig.http_get(node.metrics_port, "/rooms", 20.0)
        if status == 200 and isinstance(rooms, dict):
            stats[node.name]["roomIds"] = [room["roomId"] for room in rooms["rooms"]]
    return stats


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += sig.cpu_seconds(pid)
    return total


def phase_sessions(args: argparse.Namespace) -> Json:
    print(
        f"\n=== sessions: {args.sessions:,} through {args.balancers} balancers to "
        f"{args.nodes} nodes, app pings every {args.heartbeat:g} s"
        + (
            f"; {args.balancer_threads} HAProxy thread(s) each"
            if args.balancer_threads
            else "; HAProxy's default threads"
        )
        + (f"; nodes run with {args.node_args}" if args.node_args else "")
        + " ===",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="ghostless-bench-cluster-"))
    cluster = Cluster(
        workdir,
        nodes=args.nodes,
        balancers=args.balancers,
        free_ports=True,
        check_interval="2s",
        balancer_threads=args.balancer_threads or None,
        node_args=(
            *NODE_ARGS,
            "--heartbeat-interval",
            str(args.heartbeat),
            *shlex.split(args.node_args),
        ),
    )
    workers: sig.Workers | None = None
    result: Json = {}
    try:
        cluster.start(timeout=60)
        count = max(args.balancers, math.ceil(args.sessions / args.per_worker))
        workers = sig.Workers(count, -1)
        specs = sig.split(sig.session_specs("c", args.sessions, args.room_size), count)
        ports = [cluster.balancer(i % args.balancers).port for i in range(count)]
        started = time.monotonic()
        opened = workers.call(
            "open",
            [
                {"host": "127.0.0.1", "port": ports[i], "source": sig.source_address(i),
                 "sessions": specs[i], "concurrency": max(4, args.connect_concurrency // count),
                 "timeout": 60.0, "heartbeat": args.heartbeat, "retries": 5}
                for i in range(count)
            ],
            per_worker=True,
            timeout=300 + args.sessions / 50,
        )  # fmt: skip
        took = time.monotonic() - started
        joined = sum(r["joined"] for r in opened)
        errors: collections.Counter[str] = collections.Counter()
        for reply in opened:
            errors.update(reply["errors"])
        print(
            f"  {count} load generators (one balancer each, round robin); opened+joined "
            f"{joined:,}/{args.sessions:,} in {took:.1f} s ({joined / took:,.0f}/s)"
            + (f"; failures: {dict(errors)}" if errors else ""),
            flush=True,
        )
        refused = {
            k: v
            for k, v in collections.Counter(
                {k: v for c in workers.call("counters") for k, v in c.items()}
            ).items()
            if k.startswith(("closed_by_server", "handshake_"))
        }
        if refused:
            print(f"  refused or closed by the server while joining: {refused}")
        print(f"  settling {args.settle:g} s, then measuring {args.window:g} s ...", flush=True)
        time.sleep(args.settle)
        node_pids = [n.process.pid for n in cluster.members if n.process is not None]
        lb_pids = [b.process.pid for b in cluster.haproxies if b.process is not None]
        redis_pids = [cluster.redis.pid] if cluster.redis is not None else []
        starts = workers.call("window_start")
        wall0 = time.monotonic()
        cpu0 = [_cpu(node_pids), _cpu(lb_pids), _cpu(redis_pids), workers.cpu()]
        time.sleep(args.window)
        wall = time.monotonic() - wall0
        cpu1 = [_cpu(node_pids), _cpu(lb_pids), _cpu(redis_pids), workers.cpu()]
        ends = workers.call("window_end", timeout=120)
        samples = sorted(x for e in ends for x in e["samples"])
        alive = sum(e["alive"] for e in ends)
        counters: collections.Counter[str] = collections.Counter()
        for reply in ends:
            counters.update(reply["counters"])
        stats = _node_stats(cluster)
        per_node = {
            name: (s.get("registry", {}).get("sessions", 0), s.get("rooms", 0))
            for name, s in stats.items()
        }
        split_rooms = _rooms_on_several_nodes(stats)
        p50, p99 = sig.percentile(samples, 50), sig.percentile(samples, 99)
        p999 = sig.percentile(samples, 99.9)
        worst = samples[-1] if samples else float("nan")
        cpu = [100 * (b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
        print(
            f"  sessions held: {alive:,} at the clients ({sum(s['alive'] for s in starts):,} at "
            f"window start); per node (sessions, rooms): {per_node}; rooms on more than one "
            f"node: {split_rooms}"
        )
        print(
            f"  CPU % of one core over {wall:.0f} s: nodes {cpu[0]:.1f}, balancers {cpu[1]:.1f}, "
            f"redis {cpu[2]:.1f}, load generators {cpu[3]:.1f}"
        )
        print(
            f"  app pings in window: {sum(e['pings_sent'] for e in ends):,} sent, "
            f"{len(samples):,} answered; sessions lost: {counters['lost_after_join']:,}"
        )
        print(
            f"  app ping RTT through HAProxy: p50 {sig.fmt_ms(p50)}  p99 {sig.fmt_ms(p99)}  "
            f"p99.9 {sig.fmt_ms(p999)}  max {sig.fmt_ms(worst)}  "
            f"(target p99 < {PING_P99_TARGET * 1000:g} ms)",
            flush=True,
        )
        result = {"held": alive, "p50": p50, "p99": p99, "split_rooms": split_rooms}
        workers.call("close_all", timeout=120)
        empty = sig.wait_for(
            lambda: all(
                s.get("registry", {}).get("sessions", 1) == 0 for s in _node_stats(cluster).values()
            ),
            60,
            1.0,
        )
        print(f"  every node empty after the clients left: {'yes' if empty else 'NO'}")
    finally:
        if workers is not None:
            workers.close()
        cluster.stop()
        if args.keep_logs:
            print(f"  logs of every process in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _rooms_on_several_nodes(stats: dict[str, Json]) -> int:
    """Rooms that more than one node says it has; -1 when a node did not list its
    rooms."""
    seen: collections.Counter[str] = collections.Counter()
    for body in stats.values():
        ids = body.get("roomIds")
        if not isinstance(ids, list):
            return -1
        seen.update(ids)
    return sum(1 for n in seen.values() if n > 1)


# =====================================================================================
# Phase 2: forwarded packets/s of N nodes against one
# =====================================================================================


async def _stop_reading(peer: bench_sfu._Peer) -> None:
    """Close the receiver's transport but keep its socket: nobody reads it any more,
    so the kernel drops what overflows its buffer instead of this process paying a
    callback per forwarded packet (uvloop's UDP transport cannot pause reading)."""
    kept = peer.sock.dup()
    assert peer.udp is not None
    peer.udp.close()
    await asyncio.sleep(0)
    kept.setblocking(False)
    peer.sock = kept


def _protected_stream(peer: bench_sfu._Peer, count: int) -> list[bytes]:
    """At least ``count`` consecutive packets (whole frames) of ``bench_sfu``'s
    sender, SRTP-protected now, before the clock starts: sending them then costs
    the client a ``sendto`` each instead of building and encrypting each one, so
    less of the core it shares with a node goes to the client.  Protected in
    order by the one sending session, so the rollover counter is right (RFC 3711
    section 3.3.1) even past a sequence number wrap."""
    tx = peer.dtls.tx_srtp
    assert tx is not None
    next_frame = bench_sfu._single_frames()
    packets: list[bytes] = []
    while len(packets) < count:
        for packet in next_frame():
            protected = tx.protect(packet)
            assert protected is not None
            packets.append(protected)
    return packets


async def _pump_protected(
    peer: bench_sfu._Peer,
    packets: list[bytes],
    rate: int,
    stop: asyncio.Event,
    stats: bench_sfu._SenderStats,
    idle: float = 0.002,
) -> None:
    """Send ``packets`` paced at ``rate`` until ``stop`` (or until they run out:
    the round is sized so that they do not)."""
    sendto = peer.sock.sendto
    server = peer.server
    started = time.monotonic()
    sent = errors = 0
    total = len(packets)
    while not stop.is_set() and sent < total:
        due = min(int((time.monotonic() - started) * rate), total) - sent
        if due <= 0:
            stats.sent, stats.send_errors = sent, errors
            await asyncio.sleep(idle)
            continue
        for packet in packets[sent : sent + min(due, 2 * bench_sfu.BURST)]:
            try:
                sendto(packet, server)
            except OSError:  # full socket buffer, or ICMP unreachable from a dead server
                errors += 1
            sent += 1
        stats.sent, stats.send_errors = sent, errors
        await asyncio.sleep(0)
    stats.sent, stats.send_errors = sent, errors


async def _forwarding_round(
    controls: list[bench_sfu._Control], certificate: Any, args: argparse.Namespace
) -> list[Json]:
    """Every node in ``controls`` forwards flat out at once; per node: fwd/s, CPU %."""
    peers: list[list[bench_sfu._Peer]] = [[] for _ in controls]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        for control, node_peers in zip(controls, peers, strict=True):
            await bench_sfu._connect(control, args.fanout, certificate, node_peers)
            for receiver in node_peers[1:]:
                await _stop_reading(receiver)
        senders = [node_peers[0] for node_peers in peers]
        stats = [bench_sfu._SenderStats() for _ in controls]
        if args.rate > 0 and not args.protect_live:
            # Enough for the warm-up, the window and the marks around them, and more.
            count = int(args.rate * (args.warmup + args.duration + 2) * 1.5)
            streams = [_protected_stream(sender, count) for sender in senders]
            for sender, stream, sender_stats in zip(senders, streams, stats, strict=True):
                pump = _pump_protected(sender, stream, args.rate, stop, sender_stats)
                tasks.append(asyncio.create_task(pump))
        else:  # built and protected as they go (bench_sfu's client)
            for sender, sender_stats in zip(senders, stats, strict=True):
                pump = bench_sfu._pump(sender, args.rate, stop, sender_stats, idle=0.002)
                tasks.append(asyncio.create_task(pump))
        tasks.append(asyncio.create_task(bench_sfu._consent(senders, stop)))
        await asyncio.sleep(args.warmup)
        client0 = os.times()
        first = [await control.call("mark") for control in controls]
        await asyncio.sleep(args.duration)
        last = [await control.call("mark") for control in controls]
        client1 = os.times()
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"client task failed: {task.exception()!r}")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2.0)
        for control in controls:
            with contextlib.suppress(RuntimeError):
                await control.call("teardown")
        for node_peers in peers:
            for peer in node_peers:
                peer.close()
        await asyncio.sleep(0.05)
    client_cpu = (client1.user + client1.system) - (client0.user + client0.system)
    rows = []
    for a, b in zip(first, last, strict=True):
        wall = b["wall"] - a["wall"]
        cpu = (b["user"] - a["user"]) + (b["system"] - a["system"])
        forwarded = b["forwarded"] - a["forwarded"]
        rows.append(
            {
                "forwarded": forwarded / wall,
                "cpu": 100 * cpu / wall,
                "us_per_forwarded": cpu * 1e6 / forwarded if forwarded else float("inf"),
                "client_cpu": 100 * client_cpu / wall,
            }
        )
    return rows


async def _forwarding_client(conns: list[Connection], args: argparse.Namespace) -> Json:
    from media.aiortc_bridge import RTCCertificate

    controls = [bench_sfu._Control(conn) for conn in conns]
    certificate = RTCCertificate.generateCertificate()
    totals: dict[int, list[float]] = {1: [], len(controls): []}
    print(f"{'nodes':>5}{'fwd/s (all nodes)':>20}{'per node':>28}{'client cpu%':>13}", flush=True)
    try:
        for _ in range(args.repeat):
            for count in sorted(totals):
                rows = await _forwarding_round(controls[:count], certificate, args)
                total = sum(row["forwarded"] for row in rows)
                totals[count].append(total)
                per_node = ", ".join(f"{row['forwarded']:,.0f}/s@{row['cpu']:.0f}%" for row in rows)
                print(
                    f"{count:>5}{total:>20,.0f}{per_node:>28}{rows[0]['client_cpu']:>13.0f}",
                    flush=True,
                )
    finally:
        for control in controls:
            with contextlib.suppress(Exception):
                await control.call("quit", timeout=5.0)
    one = statistics.median(totals[1])
    many = statistics.median(totals[len(controls)])
    # Each repeat's two rounds run back to back: their ratio cancels the drift of
    # a shared machine's speed from one repeat to the next (a lone node here has
    # forwarded anything from 110k to 190k packets/s within minutes).
    paired = [m / o for o, m in zip(totals[1], totals[len(controls)], strict=True) if o]
    return {
        "one": one,
        "many": many,
        "nodes": len(controls),
        "ratio": many / one if one else 0,
        "paired": statistics.median(paired) if paired else 0,
    }


def phase_forwarding(args: argparse.Namespace) -> Json:
    print(
        f"\n=== forwarding: 1 node against {args.nodes_forwarding}, 1->{args.fanout} each, "
        f"{args.rate:,} pkt/s offered to each, {args.duration:g} s after {args.warmup:g} s, "
        f"median of {args.repeat}; the client "
        + (
            "protects each packet as it sends it"
            if args.protect_live
            else "sends pre-protected packets"
        )
        + " ===",
        flush=True,
    )
    cores = sorted(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")
    servers: list[Any] = []
    conns: list[Connection] = []
    for index in range(args.nodes_forwarding):
        parent, child = context.Pipe()
        process = context.Process(
            target=bench_sfu.server_main,
            args=(child, cores[index % len(cores)]),
            name=f"bench-cluster-node{index + 1}",
            daemon=True,
        )
        process.start()
        child.close()
        servers.append(process)
        conns.append(parent)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_forwarding_client(conns, args))
    finally:
        for process in servers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join()
    print(
        f"  median: 1 node {result['one']:,.0f} fwd/s; {result['nodes']} nodes "
        f"{result['many']:,.0f} fwd/s: {result['ratio']:.2f}x; median of each repeat's "
        f"ratio {result['paired']:.2f}x",
        flush=True,
    )
    return result


# =====================================================================================
# Main
# =====================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="sessions,forwarding")
    group = parser.add_argument_group("sessions")
    group.add_argument("--sessions", type=int, default=SESSIONS_TARGET)
    group.add_argument("--nodes", type=int, default=4, help="ghostless nodes")
    group.add_argument(
        "--balancers", type=int, default=7, help="HAProxy instances (9,000 connections each)"
    )
    group.add_argument(
        "--balancer-threads",
        type=int,
        default=1,
        help="each HAProxy's nbthread (0: HAProxy's default, a thread per CPU); seven "
        "instances share two cores here, where a deployment gives each balancer its own "
        "(2026-11-30, two runs each: app ping p99 13.1 and 17.9 ms with 1, 23.2 and 23.8 ms "
        "with HAProxy's default)",
    )
    group.add_argument("--room-size", type=int, default=20)
    group.add_argument("--heartbeat", type=float, default=30.0)
    group.add_argument("--per-worker", type=int, default=9000)
    group.add_argument("--connect-concurrency", type=int, default=400)
    group.add_argument("--settle", type=float, default=30.0)
    group.add_argument("--window", type=float, default=60.0)
    group.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    group.add_argument("--node-args", default="", help="more options for every node")
    group = parser.add_argument_group("forwarding")
    group.add_argument("--nodes-forwarding", type=int, default=2)
    group.add_argument("--fanout", type=int, default=10)
    group.add_argument(
        "--rate",
        type=int,
        default=20_000,
        help="packets/s offered to each node (0: flat out); a little above what one node takes",
    )
    group.add_argument(
        "--protect-live",
        action="store_true",
        help="build and SRTP-protect each packet as it is sent (bench_sfu's client), "
        "not before the round: the client then takes more of the cores",
    )
    group.add_argument("--warmup", type=float, default=1.0)
    group.add_argument("--duration", type=float, default=5.0)
    group.add_argument("--repeat", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = set(args.phases.split(","))
    print(
        f"bench_cluster: {time.strftime('%Y-%m-%d %H:%M')}; "
        f"cores {sorted(os.sched_getaffinity(0))}; "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    results: Json = {}
    if "sessions" in phases:
        results["sessions"] = phase_sessions(args)
    if "forwarding" in phases:
        results["forwarding"] = phase_forwarding(args)
    print("\n=== summary " + "=" * 76)
    if results.get("sessions"):
        r = results["sessions"]
        print(
            f"sessions held through HAProxy: {r['held']:,} (target {SESSIONS_TARGET:,}); app ping "
            f"p99 {sig.fmt_ms(r['p99'])} (target < {PING_P99_TARGET * 1000:g} ms)"
        )
    if "forwarding" in results:
        f = results["forwarding"]
        print(
            f"forwarded pkt/s, {f['nodes']} nodes against 1: {f['ratio']:.2f}x "
            f"(each repeat's: median {f['paired']:.2f}x; target close to {FORWARDING_TARGET:g}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
