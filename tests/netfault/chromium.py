"""Headless Chromium in the network-fault tests.

A browser is launched either in a client namespace (Playwright starts a
wrapper script that ``ip netns exec``s Chromium there; Playwright talks to it
over inherited pipes, which ``ip netns exec`` keeps) or in the root namespace,
on an unimpaired path.  Pages load the demo (``signalling/static/demo.js``)
from the server, over plain HTTP from the veth's root address, so the browser
is told to treat that origin as secure (getUserMedia needs one).

Helpers read what a user would see (the participants list of the demo page)
and what the page's WebRTC stack measured (``getStats``), and log every protoo
notification the page's client receives, with the wall-clock time.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from signalling.server import Server
from tests.browser.conftest import CHROMIUM, FLAGS, audio_level

from .netns import ClientNetwork

FAKE_DEVICE = "--use-fake-device-for-media-stream"


def origin(server: Server) -> str:
    return f"http://{server.config.host}:{server.port}"


def page_url(server: Server, room: str, name: str) -> str:
    return f"{origin(server)}/?room={room}&name={name}&autojoin"


def browser_flags(server: Server, *, fake_device: str | None = None) -> list[str]:
    """``FLAGS``, the server's origin treated as secure; ``fake_device`` options
    (``fps=30``) for Chromium's fake camera."""
    flags = [flag for flag in FLAGS if fake_device is None or flag != FAKE_DEVICE]
    if fake_device is not None:
        flags.append(f"{FAKE_DEVICE}={fake_device}")
    return [*flags, f"--unsafely-treat-insecure-origin-as-secure={origin(server)}"]


async def launch(
    playwright: Playwright,
    tmp_path: Path,
    server: Server,
    network: ClientNetwork | None,
    *,
    fake_device: str | None = None,
) -> Browser:
    """Chromium in ``network``'s namespace, or in the root one (``None``)."""
    executable = CHROMIUM
    if network is not None:
        wrapper = tmp_path / f"chromium-in-{network.name}"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(network.command([CHROMIUM]))} "$@"\n')
        wrapper.chmod(0o755)
        executable = str(wrapper)
    return await playwright.chromium.launch(
        executable_path=executable,
        args=browser_flags(server, fake_device=fake_device),
        timeout=60000,
    )


# Every notification the page's client handles, with Date.now(): the demo's
# GhostlessClient calls this._onNotification for each, so wrapping it on the
# instance sees them all, across reconnections (the page keeps one client).
_LOG_NOTIFICATIONS = """() => {
    if (window.notificationLog) return;
    window.notificationLog = [];
    const handle = ghostless._onNotification.bind(ghostless);
    ghostless._onNotification = (protoo, method, data) => {
        window.notificationLog.push({at: Date.now() / 1000, method, data});
        return handle(protoo, method, data);
    };
    window.stateLog = [];
    ghostless.addEventListener('statechange', ({detail}) => {
        window.stateLog.push({at: Date.now() / 1000, state: detail.state, reason: detail.reason});
    });
}"""


async def join(browser: Browser, server: Server, room: str, name: str) -> Page:
    """A demo page that joined ``room`` as ``name``; its notifications are logged."""
    page = await (await browser.new_context()).new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    await page.goto(page_url(server, room, name))
    try:
        await page.wait_for_function(
            "window.ghostless && window.ghostless.state === 'joined'", timeout=30000
        )
    except PlaywrightTimeoutError:
        state = await page.evaluate("window.ghostless ? window.ghostless.state : 'no client'")
        raise AssertionError(
            f"{name} did not join in 30 s: client state {state!r}; sessions on the server "
            f"{len(server.registry)}; the page's console: {console[-30:]}"
        ) from None
    await page.evaluate(_LOG_NOTIFICATIONS)
    return page


# A GhostlessClient built by hand (no demo page UI): what it sends, at which
# size, with or without simulcast; every track it receives is played (Chrome
# only plays out, and counts, received audio that an element plays).
_CUSTOM_CLIENT = """async ({roomId, name, send, simulcast, width, height}) => {
    const { GhostlessClient } = await import('/ghostless.js');
    const client = new GhostlessClient({
        roomId, displayName: name, audio: send, video: send, chat: false, simulcast,
        videoConstraints: {width: {ideal: width}, height: {ideal: height}},
    });
    window.ghostless = client;
    client.addEventListener('track', ({detail}) => {
        const sink = document.createElement(detail.kind === 'video' ? 'video' : 'audio');
        sink.muted = detail.kind === 'video';
        sink.srcObject = new MediaStream([detail.track]);
        document.body.append(sink);
        sink.play().catch(() => {});
    });
    await client.start();
}"""


async def join_client(
    browser: Browser,
    server: Server,
    room: str,
    name: str,
    *,
    send: bool = True,
    simulcast: bool = True,
    size: tuple[int, int] = (640, 360),
) -> Page:
    """A page whose client the test builds (no demo UI): ``send`` camera and
    microphone at ``size``, with or without ``simulcast``."""
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{origin(server)}/")
    options = {"roomId": room, "name": name, "send": send, "simulcast": simulcast}
    await page.evaluate(_CUSTOM_CLIENT, {**options, "width": size[0], "height": size[1]})
    await page.wait_for_function("window.ghostless.state === 'joined'", timeout=30000)
    await page.evaluate(_LOG_NOTIFICATIONS)
    return page


async def wait_for_notification(
    page: Page, method: str, peer_id: str, *, after: float, timeout: float
) -> dict[str, Any]:
    """The first ``method`` notification about ``peer_id`` (``peerId`` or ``id``)
    logged at or after wall time ``after``."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in await notifications(page, [method], after=after):
            data = entry["data"]
            if peer_id in (data.get("peerId"), data.get("id")):
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"no {method} for {peer_id} within {timeout} s")
        await asyncio.sleep(0.05)


async def frames_resume(page: Page, name: str, *, timeout: float, frames: int = 1) -> float:
    """Wait until ``page`` decodes ``frames`` more frames of ``name``'s video;
    return how long that took (seconds, monotonic)."""
    started = time.monotonic()
    target = await decoded_frames(page, name) + frames
    while await decoded_frames(page, name) < target:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no new video frame of {name} within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def notifications(
    page: Page, methods: Sequence[str] = (), *, after: float = 0.0
) -> list[dict[str, Any]]:
    """Logged notifications (of ``methods``, all if empty) at or after wall time ``after``."""
    logged: list[dict[str, Any]] = await page.evaluate("() => window.notificationLog")
    return [
        entry
        for entry in logged
        if entry["at"] >= after and (not methods or entry["method"] in methods)
    ]


async def states(page: Page, *, after: float = 0.0) -> list[dict[str, Any]]:
    """The page client's state changes (``statechange``) at or after ``after``."""
    logged: list[dict[str, Any]] = await page.evaluate("() => window.stateLog")
    return [entry for entry in logged if entry["at"] >= after]


async def client_info(page: Page) -> dict[str, Any]:
    info: dict[str, Any] = await page.evaluate(
        "() => ({peerId: ghostless.peerId, state: ghostless.state,"
        " closeReason: ghostless.closeReason})"
    )
    return info


async def participant(page: Page, name: str) -> dict[str, Any] | None:
    """What the demo's participants list shows for ``name`` (its last entry):
    ``status`` and ``reason`` (data attributes) and the badge's text."""
    row: dict[str, Any] | None = await page.evaluate(
        """(name) => {
            const rows = [...document.querySelectorAll('#participants li')]
                .filter((li) => li.querySelector('.who').textContent === name);
            const li = rows[rows.length - 1];
            return li ? {status: li.dataset.status, reason: li.dataset.reason,
                         badge: li.querySelector('.badge').textContent,
                         peerId: li.dataset.peerId} : null;
        }""",
        name,
    )
    return row


async def decoded_frames(page: Page, name: str) -> int:
    """Video frames the page decoded of ``name``'s camera (getStats, inbound-rtp),
    over every consumer it had of that peer's current entry."""
    frames: int = await page.evaluate(
        """async (name) => {
            const named = [...ghostless.peers.values()].filter((p) => p.displayName === name);
            const peer = named.find((p) => p.status !== 'left') || named[named.length - 1];
            if (!peer || !ghostless._recvTransport) return 0;
            let frames = 0;
            for (const entry of ghostless._consumers.values()) {
                if (entry.peerId !== peer.id || entry.consumer.kind !== 'video') continue;
                const stats = await entry.consumer.getStats();
                stats.forEach((s) => {
                    if (s.type === 'inbound-rtp') frames += s.framesDecoded || 0;
                });
            }
            return frames;
        }""",
        name,
    )
    return frames


async def inbound(page: Page, name: str) -> dict[str, dict[str, float]]:
    """``{"video": {...}, "audio": {...}}``: the inbound-rtp counters of ``name``'s
    consumers on ``page`` (frames, NACK/PLI sent, packets lost, audio concealment)."""
    result: dict[str, dict[str, float]] = await page.evaluate(
        """async (name) => {
            const named = [...ghostless.peers.values()].filter((p) => p.displayName === name);
            const peer = named.find((p) => p.status !== 'left') || named[named.length - 1];
            const out = {video: {}, audio: {}};
            const keys = ['framesDecoded', 'framesDropped', 'freezeCount', 'totalFreezesDuration',
                          'nackCount', 'pliCount', 'firCount', 'packetsLost', 'packetsReceived',
                          'retransmittedPacketsReceived', 'totalSamplesReceived',
                          'concealedSamples', 'silentConcealedSamples', 'concealmentEvents',
                          'frameWidth', 'frameHeight', 'jitter'];
            if (!peer) return out;
            for (const entry of ghostless._consumers.values()) {
                if (entry.peerId !== peer.id) continue;
                const stats = await entry.consumer.getStats();
                stats.forEach((s) => {
                    if (s.type !== 'inbound-rtp') return;
                    const into = out[entry.consumer.kind];
                    for (const key of keys) {
                        if (typeof s[key] === 'number') into[key] = (into[key] || 0) + s[key];
                    }
                });
            }
            return out;
        }""",
        name,
    )
    return result


async def outbound(page: Page) -> dict[str, Any]:
    """The page's own video and audio senders (outbound-rtp, summed over simulcast
    encodings): NACKs and PLIs received, packets retransmitted; and the
    ``qualityLimitationReason`` of each encoding."""
    result: dict[str, Any] = await page.evaluate(
        """async () => {
            const out = {video: {}, audio: {}, limitations: []};
            const keys = ['nackCount', 'pliCount', 'firCount', 'packetsSent',
                          'retransmittedPacketsSent', 'framesEncoded'];
            for (const [kind, producer] of ghostless._producers) {
                const stats = await producer.getStats();
                stats.forEach((s) => {
                    if (s.type !== 'outbound-rtp') return;
                    for (const key of keys) {
                        if (typeof s[key] !== 'number') continue;
                        out[kind][key] = (out[kind][key] || 0) + s[key];
                    }
                    if (kind === 'video') {
                        out.limitations.push([s.rid || '', s.qualityLimitationReason,
                                              s.frameWidth || 0, s.framesPerSecond || 0]);
                    }
                });
            }
            return out;
        }"""
    )
    return result


async def send_estimate(page: Page) -> int | None:
    """The page's own bandwidth estimate for what it sends (kbit/s): its send
    transport's selected pair's ``availableOutgoingBitrate`` (Chrome's GoogCC
    target, fed by the server's transport-cc feedback); None before it has one."""
    estimate: int | None = await page.evaluate(
        """async () => {
            const transport = ghostless._sendTransport;
            if (!transport) return null;
            const stats = await transport.getStats();
            let estimate = null;
            stats.forEach((s) => {
                if (s.type !== 'transport' || !s.selectedCandidatePairId) return;
                const pair = stats.get(s.selectedCandidatePairId);
                if (pair && typeof pair.availableOutgoingBitrate === 'number') {
                    estimate = Math.round(pair.availableOutgoingBitrate / 1000);
                }
            });
            return estimate;
        }"""
    )
    return estimate


async def transport_states(page: Page) -> dict[str, str | None]:
    states: dict[str, str | None] = await page.evaluate(
        """() => ({send: ghostless._sendTransport && ghostless._sendTransport.connectionState,
                   recv: ghostless._recvTransport && ghostless._recvTransport.connectionState})"""
    )
    return states


async def hears(page: Page, name: str) -> bool:
    for _ in range(60):  # the fake microphone beeps: sample the level for a while
        if await audio_level(page, name) > 0.01:
            return True
        await asyncio.sleep(0.05)
    return False


async def selected_pairs(page: Page) -> dict[str, Any]:
    """Per transport of the page, the selected candidate pair's protocols (getStats)."""
    result: dict[str, Any] = await page.evaluate(
        """async () => {
            const out = {};
            for (const [name, transport] of [['send', ghostless._sendTransport],
                                             ['recv', ghostless._recvTransport]]) {
                if (!transport) { out[name] = null; continue; }
                const stats = await transport.getStats();
                let pairId = null;
                stats.forEach((s) => {
                    if (s.type === 'transport' && s.selectedCandidatePairId) {
                        pairId = s.selectedCandidatePairId;
                    }
                });
                if (!pairId) {  // no transport entry: the nominated succeeded pair
                    stats.forEach((s) => {
                        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
                            pairId = s.id;
                        }
                    });
                }
                const pair = pairId && stats.get(pairId);
                const local = pair && stats.get(pair.localCandidateId);
                const remote = pair && stats.get(pair.remoteCandidateId);
                out[name] = pair ? {
                    local: local.protocol, remote: remote.protocol,
                    remotePort: remote.port, tcpType: local.tcpType || null,
                } : null;
            }
            return out;
        }"""
    )
    return result


def wall() -> float:
    """The clock the pages' logs use (``Date.now()``), in seconds."""
    return time.time()
