"""A client that never closes its data channels survives peers leaving and joining.

pymediasoup's README example registers each ``newDataConsumer`` as it comes
and ignores ``dataConsumerClosed``, so the channels of peers who left stay
registered on its side, and aiortc refuses a new channel with an id it holds
("Data channel with ID 0 already registered").  The server gives stream ids
round robin, as mediasoup does, so such a client is never offered an id it
still holds while others are free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from signalling.bot import Bot
from signalling.server import Server

ROOM = "chat"


class ReadmeListener(Bot):
    """Listens as pymediasoup's README example does: every data consumer offered
    is consumed and kept; ``dataConsumerClosed`` is never acted on."""

    def __init__(self, url: str) -> None:
        super().__init__(url, ROOM, "listener", video=False, chat=False)
        self.failures: list[str] = []
        self.stream_ids: list[int] = []

    async def _on_request(self, method: str, data: dict[str, Any]) -> Any:
        if method == "newDataConsumer":
            self.stream_ids.append(data["sctpStreamParameters"]["streamId"])
        try:
            return await super()._on_request(method, data)
        except Exception as exc:
            self.failures.append(repr(exc))
            raise


@pytest.fixture
async def bots() -> AsyncIterator[list[Bot]]:
    made: list[Bot] = []
    yield made
    for bot in made:
        await bot.close()


async def says_hello(talker: Bot, listener: ReadmeListener, timeout: float = 15) -> None:
    """``talker`` chats until ``listener`` has the message (its channel may open late)."""
    hello = f"hello from {talker.peer_id}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while hello not in listener.messages:
        assert loop.time() < deadline, f"{hello!r} never arrived; failures: {listener.failures}"
        channel = talker.chat_channel
        if channel is not None and channel.readyState == "open":
            channel.send(hello)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "steps",
    [
        # The crash as reported: a peer joins after another left.
        ["+alice", "-alice", "+carol", "-carol", "+alice"],
        # Any order: several present, leaving out of their joining order.
        ["+alice", "+carol", "-alice", "+dave", "-carol", "+erin", "-dave", "+alice"],
    ],
    ids=["one-at-a-time", "interleaved"],
)
async def test_a_client_that_keeps_its_channels_survives_peers_coming_and_going(
    make_server: Any, bots: list[Bot], steps: list[str]
) -> None:
    server: Server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    listener = ReadmeListener(url)
    bots.append(listener)
    await listener.join()
    assert listener.client is not None
    present: dict[str, Bot] = {}

    for step in steps:
        name = step[1:]
        if step.startswith("+"):
            talker = present[name] = Bot(url, ROOM, name, video=False, chat=True)
            bots.append(talker)
            await talker.join()
            await says_hello(talker, listener)
            listener.messages.clear()
        else:
            await present.pop(name).leave()
            _, closed = await listener.client.next_notification("dataConsumerClosed")
            assert closed["dataConsumerId"]  # heard, and ignored

    assert listener.failures == []
    joins = sum(step.startswith("+") for step in steps)
    assert listener.stream_ids == list(range(joins))  # never an id it still holds
