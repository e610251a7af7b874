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
   a flat-out client would spin a core of its own).  The receivers' sockets stay open but
   are not read (the kernel drops what overflows them), so the clients cost
   little next to the nodes: the figure is the sum of the nodes' forwarded
   packets/s with 1 node and with ``--nodes-forwarding`` nodes, and the ratio.

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
import contextlib
import multiprocessing
import os
import statistics
import sys
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

Json = dict[str, Any]

FORWARDING_TARGET = 2.0
SESSIONS_TARGET = 60_000
PING_P99_TARGET = 0.020


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
        for sender, sender_stats in zip(senders, stats, strict=True):
            tasks.append(asyncio.create_task(bench_sfu._pump(sender, args.rate, stop, sender_stats, idle=0.002)))
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
                per_node = ", ".join(
                    f"{row['forwarded']:,.0f}/s@{row['cpu']:.0f}%" for row in rows
                )
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
    return {"one": one, "many": many, "nodes": len(controls), "ratio": many / one if one else 0}


def phase_forwarding(args: argparse.Namespace) -> Json:
    print(
        f"\n=== forwarding: 1 node against {args.nodes_forwarding}, 1->{args.fanout} each, "
        f"{args.rate:,} pkt/s offered to each, {args.duration:g} s after {args.warmup:g} s, median of {args.repeat} ===",
        flush=True,
    )
    cores = sorted(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")
    servers: list[multiprocessing.process.BaseProcess] = []
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
        f"{result['many']:,.0f} fwd/s: {result['ratio']:.2f}x",
        flush=True,
    )
    return result


# =====================================================================================
# Main
# =====================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="sessions,forwarding")
    group = parser.add_argument_group("forwarding")
    group.add_argument("--nodes-forwarding", type=int, default=2)
    group.add_argument("--fanout", type=int, default=10)
    group.add_argument(
        "--rate",
        type=int,
        default=20_000,
        help="packets/s offered to each node (0: flat out); a little above what one node takes",
    )
    group.add_argument("--warmup", type=float, default=1.0)
    group.add_argument("--duration", type=float, default=5.0)
    group.add_argument("--repeat", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = set(args.phases.split(","))
    print(
        f"bench_cluster: {time.strftime('%Y-%m-%d %H:%M')}; cores {sorted(os.sched_getaffinity(0))}; "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    results: Json = {}
    if "forwarding" in phases:
        results["forwarding"] = phase_forwarding(args)
    print("\n=== summary " + "=" * 76)
    if "forwarding" in results:
        f = results["forwarding"]
        print(
            f"forwarded pkt/s, {f['nodes']} nodes against 1: {f['ratio']:.2f}x "
            f"(target close to {FORWARDING_TARGET:g}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
