"""The forwarding path's own cost per packet, in-process: no event loop, no kernel.

``scripts/bench_sfu.py`` measures what a forwarded packet costs end to end, with
real sockets, but on a shared VM its runs swing by tens of percent within
seconds, more than the differences it is asked to show.  This script runs the
same code the server runs for a datagram, from ``WebRtcTransport``'s datagram
handler through SRTP, the producer's stream and every consumer to the SRTP
protection of each copy, with the same packets as ``bench_sfu`` (one encoding,
or three-layer VP8 simulcast with every consumer forwarding r2), fed from a
list in a loop.  Each figure is the best of ``--batches`` batches: the least
disturbed measurement of a deterministic path.

What it leaves out is the same for every packet received or sent: the
``recvfrom`` and ``sendto`` system calls and the event loop's callback (about
4-6 us a packet on this VM, ``bench_sfu`` minus this).  So it shows the
difference simulcast makes, not the whole cost.

Run it from the repository root (about half a minute)::

    .venv/bin/python scripts/bench_forwarding_path.py
    .venv/bin/python scripts/bench_forwarding_path.py --fanout 1 --simulcast-mix 1,2,5
    .venv/bin/python scripts/bench_forwarding_path.py --fanout 1 --apart  # r2 / r0+r1 apart
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pylibsrtp

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import bench_sfu  # noqa: E402  (scripts/ is this script's directory)

from media import Worker, WorkerSettings  # noqa: E402
from media.aiortc_bridge import SrtpSession  # noqa: E402

CLIENT = ("127.0.0.1", 50000)
_PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM
_KEY_LENGTH = 44  # AES-256 key and 12-byte salt


def _session(key: bytes, inbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        ),
        srtp_profile=_PROFILE,
    )
    return pylibsrtp.Session(policy=policy)


class _Path:
    """One router with a producer and ``fanout`` consumers, their transports'
    SRTP keyed by hand and their sends counted instead of sent."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.sent = 0
        self.received: Callable[[bytes, Any], None] | None = None
        self._client_tx: pylibsrtp.Session | None = None
        self._producer: Any = None
        self._consumers: list[Any] = []

    def _count(self, data: bytes) -> None:
        self.sent += 1

    async def setup(self, fanout: int, layers: int) -> None:
        router = await self._worker.create_router()
        send = await router.create_webrtc_transport()
        recvs = [await router.create_webrtc_transport() for _ in range(fanout)]
        key = secrets.token_bytes(_KEY_LENGTH)
        self._client_tx = _session(key, inbound=False)
        send._rx_srtp = SrtpSession(_session(key, inbound=True))
        send._tuple = CLIENT
        for transport in recvs:
            transport._tx_srtp = SrtpSession(_session(secrets.token_bytes(_KEY_LENGTH), False))
            transport._tuple = CLIENT
            transport._send_media = self._count
            await transport.set_min_outgoing_bitrate(100_000_000_000)  # as bench_sfu
        self._producer = await send.produce(
            kind="video", rtp_parameters=bench_sfu.producer_rtp_parameters(layers), paused=False
        )
        caps = bench_sfu.receiver_rtp_capabilities(router.rtp_capabilities)
        self._consumers = [
            await t.consume(producer_id=self._producer.id, rtp_capabilities=caps, paused=False)
            for t in recvs
        ]
        self.received = send._datagram_received

    def protected(self, packets: list[bytes]) -> list[bytes]:
        assert self._client_tx is not None
        protect = self._client_tx.protect
        return [protect(p) for p in packets]

    @property
    def forwarded(self) -> int:
        return sum(c.packet_count for c in self._consumers)

    @property
    def inbound(self) -> int:
        return int(sum(s.packet_count for s in self._producer.streams))


def _packets(layers: int, mix: tuple[int, ...], count: int) -> Callable[[], list[bytes]]:
    """Batches of at least ``count`` packets, as bench_sfu's client sends them."""
    next_frame = (
        bench_sfu._single_frames() if layers == 1 else bench_sfu._simulcast_frames(mix[:layers])
    )

    def batch() -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            out.extend(next_frame())
        return out

    return batch


def _timed(path: _Path, datagrams: list[bytes]) -> float:
    """Microseconds ``path`` takes over ``datagrams``, the garbage collector off."""
    feed = path.received
    assert feed is not None
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter_ns()
        for data in datagrams:
            feed(data, CLIENT)
        return (time.perf_counter_ns() - started) / 1000
    finally:
        gc.enable()


async def _warm_path(
    worker: Worker, fanout: int, layers: int, make: Callable[[], list[bytes]]
) -> _Path:
    path = _Path(worker)
    await path.setup(fanout, layers)
    _timed(path, path.protected(make()))  # warm-up: key frames, the layer choice
    return path


async def _measure(
    fanout: int, layers: int, mix: tuple[int, ...], batch: int, batches: int
) -> tuple[float, float]:
    """(us per forwarded packet, us per inbound packet) of the least disturbed batch."""
    worker = Worker(WorkerSettings())
    try:
        make = _packets(layers, mix, batch)
        path = await _warm_path(worker, fanout, layers, make)
        # Every consumer forwards every packet, or r2's.
        share = 1.0 if layers == 1 else mix[layers - 1] / sum(mix[:layers])
        samples = []
        for _ in range(batches):
            datagrams = path.protected(make())
            forwarded, inbound = path.forwarded, path.inbound
            elapsed = _timed(path, datagrams)
            forwarded, inbound = path.forwarded - forwarded, path.inbound - inbound
            if forwarded < 0.9 * fanout * share * len(datagrams):
                raise RuntimeError(f"{forwarded:,} of {len(datagrams):,} packets forwarded")
            samples.append((elapsed / forwarded, elapsed / inbound))
        return min(samples)
    finally:
        worker.close()


async def _measure_apart(fanout: int, mix: tuple[int, ...], batch: int, batches: int) -> None:
    """Simulcast with r2's packets and the others fed in separate timed loops:
    what a forwarded packet and a packet nobody takes each cost."""
    worker = Worker(WorkerSettings())
    try:
        make = _packets(3, mix, batch)
        path = await _warm_path(worker, fanout, 3, make)
        top = bench_sfu.PRODUCER_SSRC + 2
        best = {True: float("inf"), False: float("inf")}
        for _ in range(batches):
            packets = make()
            datagrams = path.protected(packets)  # protected in order, fed per group
            for forwarded in (True, False):
                group = [
                    data
                    for data, packet in zip(datagrams, packets, strict=True)
                    if (int.from_bytes(packet[8:12], "big") == top) == forwarded
                ]
                best[forwarded] = min(best[forwarded], _timed(path, group) / len(group))
        print(
            f"1->{fanout} simulcast fed apart: {best[True]:.2f} us per r2 packet (received and "
            f"forwarded), {best[False]:.2f} us per r0/r1 packet (nobody takes it)",
            flush=True,
        )
    finally:
        worker.close()


async def _main(args: argparse.Namespace) -> None:
    mix = tuple(args.simulcast_mix)
    print(
        f"bench_forwarding_path: in-process, best of {args.batches} batches of {args.batch:,} "
        f"packets; simulcast r0/r1/r2 packets per frame {'/'.join(map(str, mix))}"
    )
    if not args.apart and not args.only:
        print(
            f"{'fan-out':<9}{'1 enc us/fwd':>14}{'sim us/fwd':>12}{'sim us/in':>11}"
            f"{'sim/1 enc':>11}"
        )
    for fanout in args.fanout:
        if args.apart:
            await _measure_apart(fanout, mix, args.batch, args.batches)
            continue
        if args.only:
            fwd, inbound = await _measure(fanout, args.only, mix, args.batch, args.batches)
            print(f"1->{fanout}, {args.only} layer(s): {fwd:.2f} us/fwd, {inbound:.2f} us/in")
            continue
        ratios = []
        for _ in range(args.rounds):
            one = await _measure(fanout, 1, mix, args.batch, args.batches)
            sim = await _measure(fanout, 3, mix, args.batch, args.batches)
            ratios.append((sim[0] / one[0], one, sim))
        ratio, one, sim = sorted(ratios)[(len(ratios) - 1) // 2]
        spread = f" ({min(r[0] for r in ratios):.2f}-{max(r[0] for r in ratios):.2f})"
        print(
            f"{'1->' + str(fanout):<9}{one[0]:>14.2f}{sim[0]:>12.2f}{sim[1]:>11.2f}"
            f"{ratio:>10.2f}x{spread if args.rounds > 1 else ''}",
            flush=True,
        )
    print(
        "(user space only: add the system calls, one per packet received and one per packet "
        "sent, for what bench_sfu measures; the median of --rounds rounds)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fanout", type=bench_sfu._int_list, default=[1, 4, 10])
    parser.add_argument(
        "--simulcast-mix", type=bench_sfu._int_list, default=list(bench_sfu.SIMULCAST_MIX)
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="simulcast only: time r2's packets and the lower layers' separately",
    )
    parser.add_argument(
        "--only", type=int, choices=(1, 3), help="profile aid: measure only 1 or 3 layers"
    )
    parser.add_argument("--batch", type=int, default=20_000, help="packets per batch")
    parser.add_argument("--batches", type=int, default=7, help="batches; the best counts")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per fan-out; the median")
    args = parser.parse_args(argv)
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
