#!/usr/bin/env python3
"""How long a late joiner waits for its first decoded video frame.

aiortc's VP8 encoder sends a key frame only every 3000 frames unless asked,
so a participant who joins after the first key frame decodes nothing until
the SFU relays a PLI for it.  This runs a real server on loopback, a
pymediasoup sender (``signalling.bot.Bot``), and then, several times, a
receiver that joins late and measures the time from its ``join`` request to
its first decoded frame.  Target: under one second.

    .venv/bin/python scripts/bench_late_joiner.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aioice.ice

from signalling.bot import Bot
from signalling.config import Config, replace
from signalling.server import Server


async def main(runs: int, head_start: float) -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    server = Server(
        replace(
            Config(), port=0, metrics_port=None, rtc_min_port=0, rtc_max_port=0, gc_freeze=False
        )
    )
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    sender = Bot(url, "late", "sender", video=True, heartbeat=False)
    await sender.join()
    await asyncio.sleep(head_start)  # the sender's first key frame is long gone
    latencies: list[float] = []
    for run in range(runs):
        receiver = Bot(url, "late", f"receiver-{run}", video=False, heartbeat=False)
        started = time.perf_counter()
        await receiver.join()
        if await receiver.wait_for_frames(1, timeout=10):
            latencies.append(time.perf_counter() - started)
        else:
            print(f"run {run}: no frame within 10 s")
        await receiver.leave()
        await asyncio.sleep(1.0)
    await sender.leave()
    await server.shutdown()
    if latencies:
        print(
            "late joiner, join request -> first decoded frame: "
            f"median {statistics.median(latencies) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} runs "
            f"(target < 1000 ms): {'met' if max(latencies) < 1 else 'NOT met'}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--head-start", type=float, default=3.0, help="s before the first joiner")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.head_start))
