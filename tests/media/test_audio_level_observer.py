"""The audio level observer hears producers through their RTP path, as mediasoup's does.

Packets go into real producers (``receive_rtp``, the path SRTP-decrypted
packets take) carrying the RFC 6464 ``ssrc-audio-level`` extension under the
client's own id; the producer maps it to the router's id and hands the packet
to the observer.  ``update()`` is the observer's whole decision: the tests call
it where production has a timer.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

import pytest

from media import InvalidParametersError, InvalidStateError, Producer, Router
from media.audio_level_observer import AudioLevelObserver, Volume
from media.rtp_parameters import AUDIO_LEVEL_URI

CLIENT_AUDIO_LEVEL_ID = 5  # the client's id; the router's is 10
_ssrcs = itertools.count(1000)


def audio_packet(ssrc: int, seq: int, level: int, *, voice: bool = True) -> bytearray:
    """Opus (payload type 100) with a one-byte-header audio level element (RFC 8285, 6464)."""
    element = bytes([(CLIENT_AUDIO_LEVEL_ID << 4) | 0, (0x80 if voice else 0) | level])
    body = element + b"\x00" * (-len(element) % 4)
    header = struct.pack("!BBHII", 0x90, 100, seq, seq * 960, ssrc)
    extension = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return bytearray(header + extension + b"\xfc\xff\xfe")


class Speaker:
    """A real audio producer on a real transport, fed packets by hand."""

    def __init__(self, producer: Producer, ssrc: int) -> None:
        self.producer = producer
        self.ssrc = ssrc
        self.seq = 0

    def say(self, level: int, packets: int = 10) -> None:
        for _ in range(packets):
            self.seq += 1
            self.producer.receive_rtp(audio_packet(self.ssrc, self.seq, level))


async def speaker(router: Router, *, with_level: bool = True) -> Speaker:
    transport = await router.create_webrtc_transport()
    ssrc = next(_ssrcs)
    params: dict[str, Any] = {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}
        ],
        "encodings": [{"ssrc": ssrc}],
        "headerExtensions": (
            [{"uri": AUDIO_LEVEL_URI, "id": CLIENT_AUDIO_LEVEL_ID}] if with_level else []
        ),
    }
    producer = await transport.produce(kind="audio", rtp_parameters=params)
    return Speaker(producer, ssrc)


class Heard:
    """What an observer said, in order."""

    def __init__(self, observer: AudioLevelObserver) -> None:
        self.events: list[Any] = []
        observer.on("volumes", lambda volumes: self.events.append(volumes))
        observer.on("silence", lambda: self.events.append("silence"))


@pytest.fixture
async def observer(router: Router) -> AudioLevelObserver:
    return await router.create_audio_level_observer(max_entries=3, interval=5.0)


async def test_a_producer_speaking_above_the_threshold_is_reported_with_its_average(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    heard = Heard(observer)

    alice.say(20, packets=5)
    alice.say(30, packets=5)  # average 25 -dBov
    observer.update()

    assert heard.events == [[Volume(alice.producer, -25)]]


async def test_the_loudest_come_first_and_at_most_max_entries(
    router: Router, observer: AudioLevelObserver
) -> None:
    speakers = [await speaker(router) for _ in range(4)]
    for s in speakers:
        await observer.add_producer(s.producer.id)
    heard = Heard(observer)

    for s, level in zip(speakers, (50, 10, 70, 30), strict=True):
        s.say(level)
    observer.update()

    [volumes] = heard.events
    assert [(v.producer, v.volume) for v in volumes] == [
        (speakers[1].producer, -10),
        (speakers[3].producer, -30),
        (speakers[0].producer, -50),
    ]


async def test_fewer_than_ten_packets_or_a_quiet_average_are_not_speech(
    router: Router, observer: AudioLevelObserver
) -> None:
    brief, quiet = await speaker(router), await speaker(router)
    await observer.add_producer(brief.producer.id)
    await observer.add_producer(quiet.producer.id)
    heard = Heard(observer)

    brief.say(10, packets=9)
    quiet.say(90)  # -90 dBov is under the -80 threshold
    observer.update()

    assert heard.events == []  # silence is only said after speech


async def test_silence_is_said_once_when_speech_stops(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    heard = Heard(observer)

    alice.say(20)
    observer.update()
    observer.update()
    observer.update()
    alice.say(20)
    observer.update()

    assert heard.events == [[Volume(alice.producer, -20)], "silence", [Volume(alice.producer, -20)]]


async def test_each_interval_is_judged_on_its_own_packets(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    heard = Heard(observer)

    alice.say(10)
    observer.update()
    alice.say(40)
    observer.update()

    assert [v[0].volume for v in heard.events] == [-10, -40]


async def test_a_paused_producer_is_not_heard_and_its_interval_starts_afresh(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    heard = Heard(observer)

    alice.say(20, packets=6)
    await alice.producer.pause()
    alice.say(20, packets=20)
    await alice.producer.resume()
    alice.say(20, packets=6)
    observer.update()

    assert heard.events == []  # 6 packets since the pause: not enough to judge


async def test_a_producer_without_the_extension_is_never_heard(
    router: Router, observer: AudioLevelObserver
) -> None:
    mute = await speaker(router, with_level=False)
    await observer.add_producer(mute.producer.id)
    heard = Heard(observer)

    mute.say(10, packets=30)  # the element's client id maps to nothing: padded out
    observer.update()

    assert heard.events == []


async def test_only_audio_producers_of_the_router_may_be_observed(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    with pytest.raises(InvalidParametersError):
        await observer.add_producer("nope")
    await observer.add_producer(alice.producer.id)
    with pytest.raises(InvalidStateError):
        await observer.add_producer(alice.producer.id)
    other = await router.create_audio_level_observer()
    with pytest.raises(InvalidStateError):  # one sink per producer
        await other.add_producer(alice.producer.id)


async def test_a_closed_producer_is_forgotten_and_its_packet_path_left_bare(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice, bob = await speaker(router), await speaker(router)
    await observer.add_producer(alice.producer.id)
    await observer.add_producer(bob.producer.id)
    removed: list[Producer] = []
    observer.observer.on("removeproducer", removed.append)

    alice.producer.close()
    await observer.remove_producer(bob.producer.id)

    assert removed == [alice.producer, bob.producer]
    assert observer.producer_ids == []
    assert bob.producer.audio_level_sink is None


async def test_pausing_the_observer_says_silence_and_stops_judging(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    heard = Heard(observer)
    alice.say(20)
    observer.update()

    await observer.pause()
    alice.say(20)
    observer.update()
    await observer.resume()
    observer.update()  # the packets sent while paused were never counted

    assert heard.events == [[Volume(alice.producer, -20)], "silence"]


async def test_closing_the_router_closes_the_observer_and_releases_its_producers(
    router: Router, observer: AudioLevelObserver
) -> None:
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    events: list[str] = []
    observer.on("routerclose", lambda: events.append("routerclose"))
    observer.observer.on("close", lambda: events.append("close"))

    router.close()

    assert events == ["close", "routerclose"]
    assert observer.closed and router.rtp_observers == {}
    assert alice.producer.audio_level_sink is None


async def test_the_observer_reports_on_its_own_every_interval(router: Router) -> None:
    observer = await router.create_audio_level_observer(interval=0.01)  # clamped to 0.25 s
    assert observer.interval == 0.25
    alice = await speaker(router)
    await observer.add_producer(alice.producer.id)
    reported = asyncio.Event()
    observer.on("volumes", lambda volumes: reported.set())

    alice.say(15)
    await asyncio.wait_for(reported.wait(), 2)
    observer.close()
    assert router.rtp_observers == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"threshold": 1}, "threshold"),
        ({"threshold": -128}, "threshold"),
        ({"threshold": True}, "threshold"),
    ],
)
async def test_bad_options_are_refused(
    router: Router, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidParametersError, match=message):
        await router.create_audio_level_observer(**options)
