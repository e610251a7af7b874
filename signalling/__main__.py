"""``python -m signalling``: run the ghostless server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from .config import ConfigError, parse_config
from .logs import configure_logging
from .server import Server

logger = logging.getLogger("ghostless")


async def run(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"ghostless: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.log_level)
    server = Server(config)
    try:
        await server.start()
    except OSError as exc:
        logger.error("cannot listen: %s", exc)
        return 1
    loop = asyncio.get_running_loop()
    signals = 0
    shutdown: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            logger.warning("second signal: exiting now")
            os._exit(1)
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        shutdown.append(asyncio.ensure_future(server.shutdown()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    print(
        f"ghostless listening on ws://{config.host}:{server.port}/?roomId=ROOM&peerId=PEER"
        + (
            f"  metrics http://{config.metrics_host}:{server.metrics_port}/metrics"
            if server.metrics_port
            else ""
        ),
        flush=True,
    )
    await server.wait_stopped()
    return 0


def main() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        sys.exit(asyncio.run(run(sys.argv[1:])))
    sys.exit(uvloop.run(run(sys.argv[1:])))


if __name__ == "__main__":
    main()
