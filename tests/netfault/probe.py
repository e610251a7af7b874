"""Small network clients run inside a client namespace by tests/netfault/test_harness.py.

``python -m tests.netfault.probe MODE HOST PORT [...]``, one JSON object per
line on stdout:

- ``tcp-echo``: connect, then send back every chunk received (``{"echoed": n}``),
  report ``{"error": ...}`` or ``{"eof": true}`` and exit;
- ``tcp-send BYTES``: connect, send that many bytes, close;
- ``tcp-recv``: connect, read until EOF, report the bytes and the time from
  the first byte;
- ``udp-send COUNT INTERVAL``: send COUNT numbered datagrams INTERVAL seconds
  apart to an echo server, then report what came back: how many, in which
  order, and round-trip times.
"""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import sys
import time


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def tcp_echo(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(None)
    emit(connected=sock.getsockname()[0])
    try:
        while data := sock.recv(65536):
            sock.sendall(data)
            emit(echoed=len(data))
        emit(eof=True)
    except OSError as exc:
        emit(error=type(exc).__name__, errno=exc.errno)


def tcp_send(host: str, port: int, size: int) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(b"x" * size)
    sock.close()
    emit(sent=size)


def tcp_recv(host: str, port: int) -> None:
    sock = socket.create_connection((host, port), timeout=30)
    total, started = 0, None
    while data := sock.recv(65536):
        if started is None:
            started = time.monotonic()
        else:
            total += len(data)  # bytes after the first chunk, over the time since it
    elapsed = time.monotonic() - started if started is not None else 0.0
    emit(received=total, elapsed=elapsed)


def send_datagram(sock: socket.socket, payload: bytes, address: tuple[str, int]) -> None:
    """``sendto`` on a socket with a (receive) timeout: a full send buffer on a
    busy machine makes it time out rather than wait; try again shortly."""
    while True:
        try:
            sock.sendto(payload, address)
            return
        except (TimeoutError, BlockingIOError):
            time.sleep(0.0005)


def udp_send(host: str, port: int, count: int, interval: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.001)
    sent_at: dict[int, float] = {}
    order: list[int] = []
    rtts: list[float] = []
    deadline = None
    i = 0
    while True:
        now = time.monotonic()
        if i < count and (i == 0 or now >= sent_at[i - 1] + interval):
            send_datagram(sock, i.to_bytes(4, "big") + b"\0" * 96, (host, port))
            sent_at[i] = now
            i += 1
            if i == count:
                deadline = now + 2.0
        try:
            data = sock.recv(2048)
        except TimeoutError:
            data = b""
        if data:
            number = int.from_bytes(data[:4], "big")
            order.append(number)
            rtts.append(time.monotonic() - sent_at[number])
        if deadline is not None and time.monotonic() > deadline:
            break
    inversions = sum(1 for a, b in itertools.pairwise(order) if b < a)
    emit(
        sent=count,
        received=len(order),
        inversions=inversions,
        rtt_median=statistics.median(rtts) if rtts else None,
        rtt_min=min(rtts, default=None),
        rtt_max=max(rtts, default=None),
    )


def main(argv: list[str]) -> None:
    mode, host, port = argv[0], argv[1], int(argv[2])
    if mode == "tcp-echo":
        tcp_echo(host, port)
    elif mode == "tcp-send":
        tcp_send(host, port, int(argv[3]))
    elif mode == "tcp-recv":
        tcp_recv(host, port)
    elif mode == "udp-send":
        udp_send(host, port, int(argv[3]), float(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
