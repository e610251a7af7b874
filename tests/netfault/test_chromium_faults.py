"""Liveness under real faults, with headless Chromium: Alice (the demo page, or
a pymediasoup bot) in a client namespace, Bob's demo page in the root one on
an unimpaired path.  What Bob's page shows (its participants list, the
notifications its client got) is what is checked, and each measured time is
printed (``-s``) and recorded as a junit property.

Timings are ``NETFAULT_CONFIG``'s (conftest.py): with media, a client is
released 10 s after the last thing heard on any plane (``media_silence_timeout``),
grace period 2 s.  The browser client (client/src/ghostless.js) closes its
WebSocket when the browser goes offline, reconnects with its resume token when
it is back, and restarts ICE on every transport after each resume.  It also
finds a socket stranded with no FIN or RST (an address change): a ping with a
short deadline, sent when a busy transport stops hearing anything, its ICE
checks go unanswered or it goes 'disconnected', or any request that times out
with nothing heard, drops it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from signalling.liveness import SessionState
from signalling.server import Server

from . import chromium
from .conftest import NETFAULT_CONFIG, BrowserFactory, ServerStarter, ws_url
from .netns import ClientNetwork
from .peers import NsBot

pytestmark = pytest.mark.slow  # real browsers, real liveness timeouts

ROOM = "faults"
MEDIA_SILENCE = NETFAULT_CONFIG.liveness.media_silence_timeout or 0.0
GRACE = NETFAULT_CONFIG.liveness.grace_period
Record = Callable[[str, object], None]


async def call(
    network: ClientNetwork, netfault_server: ServerStarter, browsers: BrowserFactory
) -> tuple[Server, Page, Page, str]:
    """Bob's demo page (root) and Alice's (in the namespace), Bob decoding her video."""
    server = await netfault_server(network)
    bob = await chromium.join(await browsers(server, None), server, ROOM, "bob")
    alice = await chromium.join(await browsers(server, network), server, ROOM, "alice")
    alice_id = (await chromium.client_info(alice))["peerId"]
    await chromium.frames_resume(bob, "alice", timeout=40, frames=10)
    return server, alice, bob, alice_id


async def shown(page: Page, name: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
    """The participants list's entry for ``name`` once it has ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        row = await chromium.participant(page, name)
        if row is not None and row["status"] == status:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not shown {status}: {row}")
        await asyncio.sleep(0.05)


async def about(page: Page, peer_id: str, *methods: str, after: float) -> list[dict[str, Any]]:
    return [
        entry
        for entry in await chromium.notifications(page, methods, after=after)
        if peer_id in (entry["data"].get("peerId"), entry["data"].get("id"))
    ]


@pytest.mark.parametrize("client", ["chromium", "bot"])
async def test_blackholed_client_is_released_and_the_other_page_shows_why(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    tmp_path: Path,
    record_property: Record,
    client: str,
) -> None:
    server = await netfault_server(network)
    bob = await chromium.join(await browsers(server, None), server, ROOM, "bob")
    if client == "chromium":
        alice = await chromium.join(await browsers(server, network), server, ROOM, "alice")
        alice_id = (await chromium.client_info(alice))["peerId"]
    else:
        await NsBot.join(network, ws_url(server), ROOM, "alice", tmp_path / "alice.log")
        alice_id = "alice"
    await chromium.frames_resume(bob, "alice", timeout=40, frames=10)

    blackholed = chromium.wall()
    network.blackhole()
    closed = await chromium.wait_for_notification(
        bob, "peerClosed", alice_id, after=blackholed, timeout=MEDIA_SILENCE + 10
    )
    released = closed["at"] - blackholed
    row = await shown(bob, "alice", "left")
    print(
        f"blackholed {client}: Bob's page got peerClosed {closed['data']} after {released:.2f} s"
        f" and shows {row['badge']!r}"
    )
    record_property(f"blackhole_{client}_release_s", round(released, 2))

    assert closed["data"]["reason"] == "keepalive_timeout"
    assert (row["reason"], row["badge"]) == ("keepalive_timeout", "left (keepalive_timeout)")
    # 10 s after the last thing heard (her media, up to the blackhole), plus a
    # tick; not before (the probe after 6 s is no reason to end).
    assert MEDIA_SILENCE - 0.5 <= released <= MEDIA_SILENCE + 2.0
    assert not await about(bob, alice_id, "peerReconnecting", after=blackholed)
    assert (ROOM, alice_id) not in server.registry.by_peer
    assert await chromium.decoded_frames(bob, "alice") == 0  # her consumers are gone


async def test_link_down_3s_chromium_resumes_the_same_session(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
) -> None:
    server, alice, bob, alice_id = await call(network, netfault_server, browsers)
    session = server.registry.by_peer[(ROOM, alice_id)]

    down, down_monotonic = chromium.wall(), time.monotonic()
    network.link_down()
    await asyncio.sleep(0.5)
    frames_in_outage = await chromium.decoded_frames(bob, "alice")
    await asyncio.sleep(2.5)
    frames_in_outage = await chromium.decoded_frames(bob, "alice") - frames_in_outage
    network.link_up()
    up = chromium.wall()
    video_back = await chromium.frames_resume(bob, "alice", timeout=15)
    await chromium.frames_resume(bob, "alice", timeout=15, frames=30)  # and it keeps coming

    # Wait past every deadline the outage could have started: silence, grace.
    await asyncio.sleep(max(0.0, down_monotonic + MEDIA_SILENCE + GRACE + 1 - time.monotonic()))
    alice_states = await chromium.states(alice, after=down)
    blips = await about(bob, alice_id, "peerReconnecting", "peerResumed", after=down)
    resumed = [round(s["at"] - up, 2) for s in alice_states if s["state"] == "joined"]
    print(
        f"link down 3 s (Chromium): {frames_in_outage} frames decoded during the outage;"
        f" first frame {video_back:.2f} s after the link came back; Alice's client:"
        f" {[(s['state'], round(s['at'] - down, 2)) for s in alice_states]} (s after the cut),"
        f" resumed {resumed[0] if resumed else None} s after the link came back;"
        f" Bob saw {[(b['method'], round(b['at'] - up, 2)) for b in blips]} (s after)"
    )
    record_property("link_down_chromium_first_frame_s", round(video_back, 2))

    assert frames_in_outage <= 3  # the outage was real
    assert video_back <= 4.0  # issue 12: video back within 2 s (2-core slack)
    assert not await about(bob, alice_id, "peerClosed", after=down)
    assert server.registry.by_peer[(ROOM, alice_id)] is session
    assert session.state is SessionState.JOINED
    assert (await chromium.client_info(alice))["state"] == "joined"
    # A resume, not a fresh join: her client was told so.
    assert await chromium.notifications(alice, ["sessionResumed"], after=down) or not alice_states
    assert not await chromium.notifications(alice, ["sessionExpired"], after=down)


async def test_link_down_past_the_grace_period_chromium_rejoins_in_a_fresh_session(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
) -> None:
    server, alice, bob, alice_id = await call(network, netfault_server, browsers)
    old_session = server.registry.by_peer[(ROOM, alice_id)]

    down, down_monotonic = chromium.wall(), time.monotonic()
    network.link_down()
    closed = await chromium.wait_for_notification(
        bob, "peerClosed", alice_id, after=down, timeout=MEDIA_SILENCE + 10
    )
    released = closed["at"] - down
    row = await shown(bob, "alice", "left")
    # Stay down past the grace period too: nothing of the old session is left.
    await asyncio.sleep(max(0.0, down_monotonic + MEDIA_SILENCE + GRACE + 1 - time.monotonic()))
    network.link_up()
    up = chromium.wall()
    video_back = await chromium.frames_resume(bob, "alice", timeout=30)
    new_peer = await chromium.wait_for_notification(
        bob, "newPeer", alice_id, after=closed["at"], timeout=5
    )
    new_session = server.registry.by_peer[(ROOM, alice_id)]
    print(
        f"link down past the grace period (Chromium): Bob's page got peerClosed"
        f" {closed['data']} {released:.2f} s after the cut and shows {row['badge']!r};"
        f" back {new_peer['at'] - up:.2f} s after the link returned (newPeer), video"
        f" {video_back:.2f} s after; session {old_session.id[:8]} -> {new_session.id[:8]}"
    )
    record_property("link_down_long_release_s", round(released, 2))
    record_property("link_down_long_rejoin_video_s", round(video_back, 2))

    # No FIN, and the close frame (4000) of Alice's "offline" handler cannot
    # get out: the server hears nothing, so the silence rule ends her.
    assert closed["data"]["reason"] in ("keepalive_timeout", "socket_lost")
    assert row["badge"] == f"left ({closed['data']['reason']})"
    assert released <= MEDIA_SILENCE + 2.0
    assert old_session.state is SessionState.CLOSED
    # A fresh session: the server told her client hers had expired, it joined
    # again, Bob's page shows her connected.
    assert new_session is not old_session and new_session.id != old_session.id
    assert new_session.state is SessionState.JOINED
    assert await chromium.notifications(alice, ["sessionExpired"], after=up)
    assert (await shown(bob, "alice", "connected"))["peerId"] == alice_id
    assert (await chromium.client_info(alice))["state"] == "joined"
    assert video_back <= 10.0


FRAMES_BACK = 3


def selected_tuples(server: Server, peer_id: str) -> list[dict[str, Any] | None]:
    """The server's selected ICE tuple of each of the peer's transports."""
    return [
        transport.ice_selected_tuple
        for room in server.rooms.values()
        for peer in room.peers.values()
        if peer.id == peer_id
        for transport in peer.transports.values()
    ]


def tuples_moved(server: Server, peer_id: str, address: str) -> bool:
    tuples = selected_tuples(server, peer_id)
    return bool(tuples) and all(t is not None and t["remoteIp"] == address for t in tuples)


# An address change strands the client's sockets: its WebSocket and its ICE
# candidates are bound to an address it no longer has, so nothing it sends
# leaves and nothing sent to it arrives (no FIN, no RST either way).  Same
# link: no offline/online event; her client sees her media stop (about 1 s),
# its ping goes unanswered (1 s), it drops the socket, resumes over a new one
# and restarts ICE.  Link replaced: offline, then online, a resume within
# about 0.5 s, and ICE restarted at once.  Either way Chromium gathers on the
# new address only once its own network-change notifier has caught up (2.1-2.8 s
# after the change here): that, not the client, is the floor.  The server asks
# for a key frame at the first packet on the new path and Bob usually decodes
# 0.05-0.3 s later.  What she sent into the dead path (190-630 transport-wide
# numbers) is not reported lost on the new one (TransportCcFeedback.new_path):
# her Chromium keeps its network id on a same-subnet address, so it would count
# those losses against the new path, and whenever over 400 were reported its
# estimate fell from 4.0-7.2 to 0.3-1.9 Mbit/s and it switched its top encoding
# off (video back 2.7-4.6 s, 9 of those 11 runs over 3 s; 2026-11-30, 24 runs).
# Since: same link 2.29-2.94 s in 18 of 18 runs, link replaced 2.26-2.54 s in
# 16 of 16, her estimate kept (docs/liveness.md).  The 5 s bound leaves room for
# a loaded machine; the 3 s target is reported (record_property), and so is how
# much of her send estimate she kept.
@pytest.mark.parametrize("how", ["same_link", "link_replaced"])
async def test_address_change_restarts_ice_in_the_same_session(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
    how: str,
) -> None:
    if how == "link_replaced":
        # IPv4 only: with IPv6 on, the link-local address's duplicate address
        # detection ends 1-2 s after the link comes up, and that address event
        # restarts Chromium's 2 s network-change debounce in about half the
        # runs, so Chromium sees the new address 3.7-4.2 s after the change
        # instead of 2.4-2.8 s (measured; nothing a page can hasten).
        network.run(["sysctl", "-qw", f"net.ipv6.conf.{network.client_link}.disable_ipv6=1"])
    server, alice, bob, alice_id = await call(network, netfault_server, browsers)
    session = server.registry.by_peer[(ROOM, alice_id)]
    old_ip = network.client_ip
    # Mid-call: 2 s more of her video first (past Chromium's start-up, when
    # its simulcast layers come and go).
    await chromium.frames_resume(bob, "alice", timeout=20, frames=60)

    estimate_before = await chromium.send_estimate(alice)
    moved, started = chromium.wall(), time.monotonic()
    if how == "link_replaced":  # Wi-Fi to mobile: the old link goes, a new one comes
        network.link_down()
        network.change_address()
        await asyncio.sleep(0.5)
        network.link_up()
    else:
        network.change_address()
        await asyncio.sleep(0.5)
    # Video is back at the first of FRAMES_BACK frames none more than 0.5 s
    # apart: a frame or two of the old flow finished late (a retransmission)
    # do not count.
    frames = await chromium.decoded_frames(bob, "alice")
    run_start, run_base, last_new = 0.0, frames, 0.0
    first_frame: float | None = None
    video_back: float | None = None
    new_path: float | None = None  # when the server selected her new address on both transports
    transports: list[tuple[float, dict[str, str | None]]] = []
    estimates: list[int] = []  # her send estimate (kbit/s), every 0.2 s

    async def watch_transports() -> None:
        # Apart from the frame count: a call into her page can take a second
        # on a loaded machine (her renderer starved), which would hold up the
        # sampling of Bob's frames and add to the time measured.
        for tick in itertools.count():
            states = await chromium.transport_states(alice)
            if not transports or transports[-1][1] != states:
                transports.append((round(time.monotonic() - started, 2), states))
            if tick % 4 == 0:
                estimate = await chromium.send_estimate(alice)
                if estimate is not None:
                    estimates.append(estimate)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_transports())
    try:
        while time.monotonic() - started < 25:
            now = time.monotonic() - started
            if new_path is None and tuples_moved(server, alice_id, network.client_ip):
                new_path = round(now, 2)
            decoded = await chromium.decoded_frames(bob, "alice")
            if decoded > frames:
                first_frame = first_frame or round(now, 2)
                if now - last_new > 0.5:
                    run_start, run_base = now, frames
                last_new, frames = now, decoded
                if frames - run_base >= FRAMES_BACK:
                    video_back = run_start
                    break
            if await about(bob, alice_id, "peerClosed", after=moved):
                break
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    # Video can be back (her send transport moved) a little before her receive
    # transport is on the new address too (its checks or RTCP come next).
    deadline = time.monotonic() + 5
    while not tuples_moved(server, alice_id, network.client_ip) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    closed = await about(bob, alice_id, "peerClosed", after=moved)
    tuples = selected_tuples(server, alice_id)
    print(
        f"address change ({how}, {old_ip} -> {network.client_ip}): video back after"
        f" {video_back} s (first new frame {first_frame} s);"
        f" Bob got {[(c['data'], round(c['at'] - moved, 2)) for c in closed]};"
        f" Alice's client {[(s['state'], round(s['at'] - moved, 2)) for s in await chromium.states(alice, after=moved)]},"  # noqa: E501
        f" her transports {transports}; the server on her new address after {new_path} s;"
        f" server tuples {tuples}; her send estimate {estimate_before} kbit/s before,"
        f" lowest after {min(estimates, default=None)}"
    )
    if video_back is not None:
        record_property(f"address_change_{how}_video_back_s", round(video_back, 2))
    if new_path is not None:
        record_property(f"address_change_{how}_new_path_s", new_path)
    if estimate_before and estimates:
        record_property(
            f"address_change_{how}_send_estimate_kept", round(min(estimates) / estimate_before, 2)
        )

    assert not closed, "released instead of resumed"
    assert server.registry.by_peer.get((ROOM, alice_id)) is session
    assert video_back is not None and video_back <= 5.0  # issue 12: within 3 s
    assert all(t is not None and t["remoteIp"] == network.client_ip for t in tuples), tuples


async def test_tcp_reset_chromium_reconnects_and_resumes(
    network: ClientNetwork,
    netfault_server: ServerStarter,
    browsers: BrowserFactory,
    record_property: Record,
) -> None:
    server, alice, bob, alice_id = await call(network, netfault_server, browsers)
    session = server.registry.by_peer[(ROOM, alice_id)]

    reset = chromium.wall()
    assert network.reset_tcp(server.port) >= 1
    reconnecting = await chromium.wait_for_notification(
        bob, "peerReconnecting", alice_id, after=reset, timeout=5
    )
    resumed = await chromium.wait_for_notification(
        bob, "peerResumed", alice_id, after=reset, timeout=15
    )
    row = await shown(bob, "alice", "connected")
    await chromium.frames_resume(bob, "alice", timeout=5, frames=30)  # media never stopped
    alice_states = await chromium.states(alice, after=reset)
    print(
        f"TCP RST (Chromium): Bob's page got peerReconnecting {reconnecting['at'] - reset:.2f} s"
        f" and peerResumed {resumed['at'] - reset:.2f} s after the reset; Alice's client"
        f" {[(s['state'], round(s['at'] - reset, 2)) for s in alice_states]}"
    )
    record_property("tcp_reset_chromium_resumed_s", round(resumed["at"] - reset, 2))

    assert [s["state"] for s in alice_states] == ["reconnecting", "joined"]
    assert await chromium.notifications(alice, ["sessionResumed"], after=reset)
    assert not await about(bob, alice_id, "peerClosed", after=reset)
    assert server.registry.by_peer[(ROOM, alice_id)] is session
    assert session.state is SessionState.JOINED
    assert row["badge"] == "connected"
    assert resumed["at"] - reset <= 5.0
