"""Fixtures of the network-fault harness (docs/liveness.md, "Network-fault harness").

- ``network``: a ``ClientNetwork`` (netns.py), removed after the test whatever
  its outcome; ``make_network`` makes more than one.
- ``netfault_server``: starts a real server on the test's event loop that
  listens on, and announces, the root end of a network's veth
  (``NETFAULT_CONFIG``: short liveness timings, see below).
- ``observers``: in-process bots on the root side (``Observer.join``), closed after.
- ``browsers``: headless Chromium in a client namespace or in the root one
  (chromium.py), closed before the servers stop and the networks go.

Every test of this directory is checked afterwards: none of this run's
namespaces or veths, no new root nftables table and no spawned process may
remain.  Stale namespaces of crashed runs are swept at session start.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from signalling.config import replace
from signalling.server import Server
from tests.signalling.conftest import TEST_CONFIG

from . import chromium
from .netns import (
    ClientNetwork,
    links,
    missing_tools,
    namespaces,
    nft_tables,
    owner,
    spawned_pids,
    sweep_stale,
    unavailable_reason,
    wait_until_gone,
)
from .peers import Observer

# Short timings, chosen so the faults tested here are told apart:
# - a blackholed client is silent on every plane: ended after silence_timeout
#   (10 s) as keepalive_timeout, before its ICE consent (20 s) expires;
# - a 3 s outage must not end anything: the WebSocket probe sent after
#   probe_after (2 s) has silence_timeout - probe_after (8 s) to be answered,
#   more than the TCP retransmission backoff needs after the link returns
#   (retransmissions 0.2, 0.6, 1.4, 3.0, 6.2 s after the probe).
SILENCE_TIMEOUT = 10.0
NETFAULT_CONFIG = replace(
    TEST_CONFIG,
    consent_timeout=20.0,
    silence_timeout=SILENCE_TIMEOUT,
    probe_after=2.0,
    # The production media rule: a client with media is released 10 s after
    # the last packet on any plane (probe after 6 s of total silence).
    media_probe_after=6.0,
    media_silence_timeout=10.0,
    socket_probe_after=15.0,
    grace_period=2.0,
)


@pytest.fixture(scope="session", autouse=True)
def netfault_host() -> Iterator[None]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    missing = missing_tools()
    if missing:  # root with namespaces (as in CI): the tests must run, not skip
        pytest.fail(f"the network-fault harness needs {', '.join(missing)}", pytrace=False)
    removed = sweep_stale()
    if removed:
        print(f"swept stale network-fault leftovers: {removed}")
    yield
    sweep_stale(include_own=True)


def _ours() -> dict[str, Any]:
    """This run's namespaces and veths, the root's nftables tables, live spawned pids."""
    pid = os.getpid()
    alive = set()
    for spawned in list(spawned_pids):
        try:
            os.kill(spawned, 0)
        except ProcessLookupError:
            spawned_pids.discard(spawned)  # gone: its pid may be reused by anybody
            continue
        alive.add(spawned)
    return {
        "namespaces": [name for name in namespaces() if owner(name) == pid],
        "links": [name for name in links() if owner(name) == pid],
        "nft_tables": sorted(nft_tables()),
        "processes": sorted(alive),
    }


@pytest.fixture(autouse=True)
def nothing_left_behind(netfault_host: None) -> Iterator[None]:
    """Set up before, torn down after, every other fixture of the test."""
    before = _ours()
    yield
    after = _ours()
    assert after == {**before, "namespaces": [], "links": [], "processes": []}, (
        f"left behind: {after} (before: {before})"
    )


NetworkFactory = Callable[[], ClientNetwork]


@pytest.fixture
async def make_network() -> AsyncIterator[NetworkFactory]:
    made: list[ClientNetwork] = []

    def make() -> ClientNetwork:
        network = ClientNetwork.create()
        made.append(network)
        return network

    try:
        yield make
    finally:
        for network in made:
            await network.aclose()
        for network in made:
            wait_until_gone(network)


@pytest.fixture
def network(make_network: NetworkFactory) -> ClientNetwork:
    return make_network()


ServerStarter = Callable[..., Awaitable[Server]]


@pytest.fixture
async def netfault_server(make_network: NetworkFactory) -> AsyncIterator[ServerStarter]:
    """(Depends on ``make_network`` so that servers stop before networks go.)"""
    servers: list[Server] = []

    async def start(network: ClientNetwork, **changes: Any) -> Server:
        config = replace(
            NETFAULT_CONFIG,
            **{"host": network.server_ip, "rtc_listen_ip": network.server_ip, **changes},
        )
        server = Server(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


def ws_url(server: Server) -> str:
    return f"ws://{server.config.host}:{server.port}"


ObserverFactory = Callable[..., Awaitable[Observer]]


@pytest.fixture
async def observers(netfault_server: ServerStarter) -> AsyncIterator[ObserverFactory]:
    made: list[Observer] = []

    async def join(server: Server, room: str, peer: str = "bob") -> Observer:
        observer = await Observer.join(ws_url(server), room, peer)
        made.append(observer)
        return observer

    yield join
    for observer in made:
        await observer.close()


BrowserFactory = Callable[..., Awaitable[Browser]]


@pytest.fixture
async def browsers(netfault_server: ServerStarter, tmp_path: Path) -> AsyncIterator[BrowserFactory]:
    """``await browsers(server, network)``: Chromium in ``network``'s namespace
    (``None``: the root namespace); ``fake_device="fps=30"`` sets its fake camera.
    (Depends on ``netfault_server``: browsers close first, then servers, then networks.)"""
    launched: list[Browser] = []
    async with async_playwright() as playwright:

        async def launch(
            server: Server, network: ClientNetwork | None, *, fake_device: str | None = None
        ) -> Browser:
            browser = await chromium.launch(
                playwright, tmp_path, server, network, fake_device=fake_device
            )
            launched.append(browser)
            return browser

        yield launch
        for browser in launched:
            await browser.close()
