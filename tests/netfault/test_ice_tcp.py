"""ICE-TCP with a real browser: Chromium in a client namespace whose network drops
all UDP still joins a call over the server's passive TCP candidates, and sees
and hears the other peer; with UDP open the same call picks UDP.

Alice's Chromium runs inside the namespace (Playwright launches a wrapper that
``ip netns exec``s Chromium there); Bob's runs in the root namespace, on an
unimpaired path.  The server listens on the root end of the veth.  The demo
page is served over plain HTTP from that address, so both browsers are told to
treat it as a secure origin (getUserMedia needs one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page

from signalling.server import Server
from tests.browser.conftest import video_flows, wait_until

from . import chromium
from .conftest import BrowserFactory, ServerStarter
from .netns import ClientNetwork, sh

pytestmark = pytest.mark.slow  # two real browsers, a real call

ROOM = "tcp"
Record = Callable[[str, object], None]


def server_tuples(server: Server, name: str) -> list[dict[str, Any] | None]:
    """The selected ICE tuples of ``name``'s transports, server side."""
    return [
        transport.ice_selected_tuple
        for room in server.rooms.values()
        for peer in room.peers.values()
        if peer.display_name == name
        for transport in peer.transports.values()
    ]


async def call(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
) -> tuple[Server, Page, Page, float]:
    """Alice (in the namespace) and Bob (root) in a call; how long until each
    decodes the other's video and hears the other's audio."""
    server = await netfault_server(network)
    started = time.monotonic()
    bob = await chromium.join(await browsers(server, None), server, ROOM, "bob")
    alice = await chromium.join(await browsers(server, network), server, ROOM, "alice")
    await wait_until(lambda: video_flows(alice, "bob"), timeout=40)
    await wait_until(lambda: video_flows(bob, "alice"), timeout=40)
    assert await chromium.hears(alice, "bob"), "alice does not hear bob"
    assert await chromium.hears(bob, "alice"), "bob does not hear alice"
    return server, alice, bob, time.monotonic() - started


async def test_udp_blocked_chromium_joins_over_ice_tcp_and_sees_and_hears(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
) -> None:
    network.block_udp()

    server, alice, _bob, took = await call(network, netfault_server, browsers)

    pairs = await chromium.selected_pairs(alice)
    assert pairs["send"] is not None and pairs["recv"] is not None, pairs
    for pair in (pairs["send"], pairs["recv"]):
        assert (pair["local"], pair["remote"]) == ("tcp", "tcp"), pairs
    tuples = server_tuples(server, "alice")
    assert len(tuples) == 2 and all(t is not None for t in tuples), tuples
    for selected in tuples:
        assert selected is not None
        assert (selected["protocol"], selected["remoteIp"]) == ("tcp", network.client_ip)
    # Alice's browser really is in the namespace, and tried UDP: the filter dropped it.
    assert sh(["ip", "netns", "pids", network.name]).split()
    assert network.counters()["egress:udp"]["packets"] > 0
    stats = [
        (await transport.get_stats())[0]["iceTcp"]
        for room in server.rooms.values()
        for peer in room.peers.values()
        if peer.display_name == "alice"
        for transport in peer.transports.values()
    ]
    assert all(s["connections"] >= 1 and s["refused"] == 0 for s in stats), stats
    print(f"selected pairs (alice's getStats): {pairs}; server: {tuples}")
    print(f"ICE-TCP call: video and audio both ways after {took:.1f} s")
    record_property("ice_tcp_call_seconds", round(took, 2))


async def test_with_udp_open_the_same_call_picks_udp(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
) -> None:
    server, alice, _bob, took = await call(network, netfault_server, browsers)

    pairs = await chromium.selected_pairs(alice)
    for pair in (pairs["send"], pairs["recv"]):
        assert pair is not None and (pair["local"], pair["remote"]) == ("udp", "udp"), pairs
    tuples = server_tuples(server, "alice")
    assert len(tuples) == 2
    for selected in tuples:
        assert selected is not None
        assert (selected["protocol"], selected["remoteIp"]) == ("udp", network.client_ip)
    print(f"UDP call: video and audio both ways after {took:.1f} s")
    record_property("udp_call_seconds", round(took, 2))
