#!/usr/bin/env python3
"""Is ghostless well?  For operators, Docker HEALTHCHECK and Kubernetes probes.

1. ``GET /readyz`` on the WebSocket port (the SFU works and the server accepts);
2. a real protoo session: connect, ``join``, ``ping`` round trip, ``beforeDisconnect``;
3. with ``--media``: a pymediasoup participant sends a short video track and a
   second one receives and decodes it back through the SFU.

Exit status: 0 healthy, 1 unhealthy, 2 unreachable.  Prints one summary line.

    python scripts/healthcheck.py --url ws://127.0.0.1:8765 [--media] [--timeout 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEALTHY, UNHEALTHY, UNREACHABLE = 0, 1, 2


class Unhealthy(Exception):
    pass


class Unreachable(Exception):
    pass


def check_ready(ws_url: str, timeout: float) -> None:
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    try:
        with urllib.request.urlopen(f"{scheme}://{parts.netloc}/readyz", timeout=timeout) as r:
            if r.status != 200:
                raise Unhealthy(f"/readyz answered {r.status}")
    except urllib.error.HTTPError as error:
        raise Unhealthy(f"/readyz answered {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise Unreachable(f"{parts.netloc}: {getattr(error, 'reason', error)}") from None


async def check_session(ws_url: str, timeout: float) -> float:
    from signalling.protoo_client import ProtooClient

    token = secrets.token_hex(4)
    url = f"{ws_url.rstrip('/')}/?roomId=__healthcheck-{token}&peerId=healthcheck-{token}"
    try:
        client = await ProtooClient.connect(url, open_timeout=timeout)
    except OSError as error:
        raise Unreachable(f"WebSocket: {error}") from None
    except Exception as error:
        raise Unhealthy(f"WebSocket handshake failed: {error}") from None
    try:
        await client.request("join", {"displayName": "healthcheck"}, timeout=timeout)
        started = time.perf_counter()
        await client.request("ping", {}, timeout=timeout)
        rtt = (time.perf_counter() - started) * 1000
        await client.notify("beforeDisconnect", {"reason": "healthcheck"})
        await asyncio.wait_for(client.closed, timeout)
        return rtt
    except Exception as error:
        raise Unhealthy(f"protoo session failed: {type(error).__name__}: {error}") from None
    finally:
        if not client.closed.done():
            client.abort()


async def check_media(ws_url: str, timeout: float) -> tuple[int, float]:
    host = urlsplit(ws_url).hostname or ""
    if host in ("127.0.0.1", "localhost", "::1"):
        import aioice.ice

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    from signalling.bot import Bot

    room = f"__healthcheck-media-{secrets.token_hex(4)}"
    sender = Bot(ws_url, room, "hc-sender", video=True, heartbeat=False)
    receiver = Bot(ws_url, room, "hc-receiver", video=False, heartbeat=False)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(sender.join(), timeout)
        await asyncio.wait_for(receiver.join(), timeout)
        if not await receiver.wait_for_frames(5, timeout):
            raise Unhealthy(f"media: {receiver.decoded_frames()} frames decoded in {timeout:.0f} s")
        return receiver.decoded_frames(), time.perf_counter() - started
    except Unhealthy:
        raise
    except Exception as error:
        raise Unhealthy(f"media failed: {type(error).__name__}: {error}") from None
    finally:
        await sender.leave()
        await receiver.leave()


async def main(args: argparse.Namespace) -> int:
    try:
        check_ready(args.url, args.timeout)
        rtt = await check_session(args.url, args.timeout)
        summary = f"healthy: ready, join + ping {rtt:.1f} ms"
        if args.media:
            frames, seconds = await check_media(args.url, args.timeout)
            summary += f", media {frames} frames decoded in {seconds:.1f} s"
    except Unreachable as error:
        print(f"unreachable: {error}")
        return UNREACHABLE
    except Unhealthy as error:
        print(f"unhealthy: {error}")
        return UNHEALTHY
    print(summary)
    return HEALTHY


def parse_args(argv: list[str]) -> argparse.Namespace:
    port = os.environ.get("GHOSTLESS_PORT", "8765")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("GHOSTLESS_HEALTHCHECK_URL", f"ws://127.0.0.1:{port}")
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per step, seconds")
    parser.add_argument("--media", action="store_true", help="also send and receive media")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    sys.exit(asyncio.run(main(arguments)))
