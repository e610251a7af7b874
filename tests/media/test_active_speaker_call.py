"""A real client's audio levels reach the audio level observer through SRTP.

aiortc writes each frame's level into the ``ssrc-audio-level`` extension under
the id it negotiated; the producer maps it to the router's and the observer
reads it.  A speaking client is heard, a silent one is not.
"""

from __future__ import annotations

import asyncio

from aiortc.mediastreams import AudioStreamTrack

from media import Router
from media.audio_level_observer import Volume

from .clients import Client, join
from .tone import ToneTrack


async def test_a_speaking_client_is_heard_and_a_silent_one_is_not(
    router: Router, clients: list[Client]
) -> None:
    alice = await join(router, clients, send=True, recv=False)
    bob = await join(router, clients, send=True, recv=False)
    observer = await router.create_audio_level_observer(max_entries=2, interval=0.25)
    heard: asyncio.Queue[list[Volume]] = asyncio.Queue()
    observer.on("volumes", heard.put_nowait)

    _, speaking = await alice.produce(ToneTrack())
    _, silent = await bob.produce(AudioStreamTrack())
    await observer.add_producer(speaking.id)
    await observer.add_producer(silent.id)

    for _ in range(3):
        volumes = await asyncio.wait_for(heard.get(), 10)
        assert [v.producer for v in volumes] == [speaking]
        assert -20 <= volumes[0].volume <= 0  # a half-scale sine is about -9 dBov
