"""Real headless Chromium (Debian's) driven by Playwright, against a real server.

Pages get a fake camera and microphone.  Chromium runs with the flags this
sandbox needs (no background networking, no sandbox as root).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from signalling.config import replace
from signalling.server import Server

from ..signalling.conftest import TEST_CONFIG

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# The signalling tests' short timings, with a little more slack for Chromium.
BROWSER_CONFIG = replace(
    TEST_CONFIG,
    grace_period=6.0,
    silence_timeout=6.0,
    probe_after=4.0,
    media_probe_after=4.0,
    media_silence_timeout=6.0,
    socket_probe_after=4.0,
    room_close_delay=1.0,
)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    server = Server(BROWSER_CONFIG)
    await server.start()
    yield server
    await server.shutdown()


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Servers with ``BROWSER_CONFIG`` and some changes (a capacity, the queue...)."""
    servers: list[Server] = []

    async def make(**changes: Any) -> Server:
        server = Server(replace(BROWSER_CONFIG, **changes))
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.shutdown()


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as running:
        yield running


@pytest.fixture
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    yield browser
    await browser.close()


class ChromiumProcess:
    """A whole browser in its own process (so it can be SIGKILLed), over CDP."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="ghostless-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                *FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def endpoint(self) -> str:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return f"http://127.0.0.1:{port_file.read_text().split()[0]}"
            await asyncio.sleep(0.1)
        raise RuntimeError("chromium did not start")

    def kill(self) -> None:
        """SIGKILL the browser and every process it started."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
async def separate_browser(
    playwright: Playwright,
) -> AsyncIterator[Callable[[], Awaitable[tuple[ChromiumProcess, Browser]]]]:
    made: list[ChromiumProcess] = []

    async def launch() -> tuple[ChromiumProcess, Browser]:
        process = ChromiumProcess()
        made.append(process)
        browser = await playwright.chromium.connect_over_cdp(await process.endpoint())
        return process, browser

    yield launch
    for process in made:
        process.cleanup()


def page_url(server: Server, room: str, name: str) -> str:
    return f"http://127.0.0.1:{server.port}/?room={room}&name={name}&autojoin"


async def join(context: BrowserContext | Browser, server: Server, room: str, name: str) -> Page:
    page = await context.new_page()
    await page.goto(page_url(server, room, name))
    await page.wait_for_function(
        "window.ghostless && window.ghostless.state === 'joined'", timeout=20000
    )
    return page


async def peer_status(page: Page, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = await page.evaluate(
        """(name) => {
            const named = [...ghostless.peers.values()].filter((p) => p.displayName === name);
            const peer = named.find((p) => p.status !== 'left') || named[named.length - 1];
            return peer ? {status: peer.status, reason: peer.reason, id: peer.id} : null;
        }""",
        name,
    )
    return result


async def remote_video(page: Page, name: str) -> dict[str, Any]:
    """Size and decoded frame count of the tile showing ``name``'s camera."""
    result: dict[str, Any] = await page.evaluate(
        """(name) => {
            const named = [...ghostless.peers.values()].filter((p) => p.displayName === name);
            const peer = named.find((p) => p.status !== 'left') || named[named.length - 1];
            const tile = peer && document.querySelector(`.tile[data-peer-id="${peer.id}"] video`);
            if (!tile) return {width: 0, height: 0, frames: 0};
            return {width: tile.videoWidth, height: tile.videoHeight,
                    frames: tile.getVideoPlaybackQuality().totalVideoFrames};
        }""",
        name,
    )
    return result


async def audio_level(page: Page, name: str) -> float:
    level: float = await page.evaluate(
        """(name) => {
            const named = [...ghostless.peers.values()].filter((p) => p.displayName === name);
            const peer = named.find((p) => p.status !== 'left') || named[named.length - 1];
            const meter = peer && window.ghostlessMeters.get(peer.id);
            return meter ? meter.level : 0;
        }""",
        name,
    )
    return level


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, step: float = 0.05
) -> float:
    """Poll ``check`` until true; return how long it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - started


async def video_flows(page: Page, name: str) -> bool:
    first = await remote_video(page, name)
    await asyncio.sleep(0.5)
    second = await remote_video(page, name)
    return bool(second["width"] > 0 and second["height"] > 0 and second["frames"] > first["frames"])
