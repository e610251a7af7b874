"""The pymediasoup bot of ``signalling.bot``, run inside a client namespace.

``python -m tests.netfault.nsbot ws://10.200.X.1:PORT ROOM --peer alice``
joins, produces video (unless ``--no-video``) and prints one JSON object per
line on stdout, for the test to read:

- ``{"event": "joined", "peers": [...]}``
- ``{"event": "notification", "method": ..., "data": ...}`` for every protoo
  notification it receives;
- ``{"event": "status", "frames": N, "consumers": N, "open": bool}`` every
  ``--interval`` seconds;
- ``{"event": "closed", "code": ..., "reason": ...}`` once its WebSocket closes;
- ``{"event": "error", "error": ...}`` if joining fails (then it exits 1);
- with ``--resume``: ``{"event": "resumed"}`` or ``{"event": "expired"}`` (or
  ``{"event": "resume_failed", "error": ...}``) after each reconnection.

It never reconnects, unless ``--resume``: then a lost WebSocket is replaced at
once by a new one carrying the session's resume token (``resumeToken``, as the
browser client does), and the media goes on over the same transports.
``signalling.bot.Bot`` itself does not resume; this is the smallest client that
does, to test the server's side of it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from signalling.bot import Bot
from signalling.protoo_client import ProtooClient


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("--peer", required=True)
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--resume", action="store_true", help="resume a lost connection")
    args = parser.parse_args(argv)
    bot = Bot(args.url, args.room, args.peer, display_name=args.peer, video=not args.no_video)
    try:
        joined = await bot.join()
    except Exception as exc:
        emit("error", error=repr(exc))
        return 1
    assert bot.client is not None
    client = bot.client
    emit("joined", peers=[peer.get("id") for peer in joined.get("peers", [])])
    resume_token: str | None = joined.get("resumeToken") if args.resume else None
    closed_reported = False
    while True:
        while not client.notifications.empty():
            method, data = client.notifications.get_nowait()
            emit("notification", method=method, data=data)
        if client.closed.done() and not closed_reported:
            code, reason = client.closed.result()
            emit("closed", code=code, reason=reason)
            closed_reported = True
            if resume_token is not None:
                resumed = await resume(bot, resume_token)
                resume_token = resumed.resume_token if resumed is not None else None
                if resumed is not None:
                    client = resumed.client
                    closed_reported = False
        emit(
            "status",
            frames=bot.decoded_frames(),
            consumers=len(bot.consumers),
            open=not client.closed.done(),
        )
        await asyncio.sleep(args.interval)


class Resumed:
    def __init__(self, client: ProtooClient, resume_token: str) -> None:
        self.client = client
        self.resume_token = resume_token


async def resume(bot: Bot, token: str) -> Resumed | None:
    """Reconnect with the resume token; the bot's new client if the session resumed."""
    try:
        client = await ProtooClient.connect(f"{bot.url}&resumeToken={token}")
    except Exception as exc:
        emit("resume_failed", error=repr(exc))
        return None
    client.on_request = bot._on_request
    try:
        while True:  # the server's first word: sessionResumed, or sessionExpired
            method, data = await client.next_notification(timeout=5)
            emit("notification", method=method, data=data)
            if method in ("sessionResumed", "sessionExpired"):
                break
    except Exception as exc:
        emit("resume_failed", error=repr(exc))
        await client.close()
        return None
    if method == "sessionExpired":
        emit("expired")
        await client.close()
        return None
    bot.client = client  # the heartbeat follows it
    emit("resumed")
    return Resumed(client, str(data["resumeToken"]))


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
