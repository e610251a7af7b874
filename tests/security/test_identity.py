"""Identity comes from a verified token, never from what a client claims."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from signalling.protoo_client import ProtooClient
from signalling.server import Server
from signalling.tokens import make_token

from .conftest import ServerFactory, url

SECRET = "a-shared-secret-of-at-least-32-bytes"


async def closed_with(client: ProtooClient) -> int | None:
    code, _ = await asyncio.wait_for(client.closed, 5)
    return code


async def joined(server: Server, peer: str, token: str, **params: str) -> ProtooClient:
    client = await ProtooClient.connect(url(server, peer=peer, token=token, **params))
    client.join_data = await client.request("join", {"displayName": peer})  # type: ignore[attr-defined]
    return client


@pytest.fixture
async def secured(make_server: ServerFactory) -> Server:
    return await make_server(token_secret=SECRET)


async def test_without_a_token_a_connection_is_refused_and_alice_is_untouched(
    secured: Server,
) -> None:
    alice = await joined(secured, "alice", make_token("alice", SECRET))
    bob = await joined(secured, "bob", make_token("bob", SECRET))

    squatter = await ProtooClient.connect(url(secured, peer="alice", userId="alice"))

    assert await closed_with(squatter) == 4401
    await asyncio.sleep(0.2)
    assert bob.notifications.empty()  # no peerClosed{replaced}, no newPeer
    assert not alice.closed.done()
    assert {s.user_id for s in secured.registry.by_id.values()} == {"alice", "bob"}


async def test_with_the_reject_policy_a_squatter_without_a_token_cannot_lock_alice_out(
    make_server: ServerFactory,
) -> None:
    server = await make_server(token_secret=SECRET, takeover="reject")
    squatter = await ProtooClient.connect(url(server, peer="alice", userId="alice"))
    assert await closed_with(squatter) == 4401

    alice = await joined(server, "alice", make_token("alice", SECRET))

    assert [s.user_id for s in server.registry.by_id.values()] == ["alice"]
    await alice.close()


async def test_the_url_user_id_is_ignored_when_tokens_are_required(secured: Server) -> None:
    alice = await joined(secured, "alice", make_token("alice", SECRET))

    mallory = await joined(secured, "m", make_token("mallory", SECRET), userId="alice")

    assert not alice.closed.done()
    assert {s.user_id for s in secured.registry.by_id.values()} == {"alice", "mallory"}
    await mallory.close()


async def test_a_valid_token_cannot_take_another_users_peer_id(secured: Server) -> None:
    bob = await joined(secured, "bob", make_token("bob", SECRET))
    carol = await joined(secured, "carol", make_token("carol", SECRET))

    mallory = await ProtooClient.connect(
        url(secured, peer="bob", token=make_token("mallory", SECRET))
    )

    assert await closed_with(mallory) == 4409
    await asyncio.sleep(0.2)
    assert carol.notifications.empty()  # bob was not evicted nor impersonated
    assert not bob.closed.done()
    assert secured.registry.by_peer[("room", "bob")].user_id == "bob"


async def test_the_same_subject_may_move_to_a_second_tab(secured: Server) -> None:
    token = make_token("alice", SECRET)
    first = await joined(secured, "alice-tab1", token)

    second = await joined(secured, "alice-tab2", token)

    assert await closed_with(first) == 4410
    assert [s.peer_id for s in secured.registry.by_id.values()] == ["alice-tab2"]
    await second.close()


async def test_a_resume_token_without_a_jwt_resumes_nothing(secured: Server) -> None:
    alice = await joined(secured, "alice", make_token("alice", SECRET))
    resume = alice.join_data["resumeToken"]  # type: ignore[attr-defined]
    alice.abort()
    await asyncio.sleep(0.2)

    thief = await ProtooClient.connect(url(secured, peer="alice", resumeToken=resume))

    assert await closed_with(thief) == 4401
    session = secured.registry.by_peer[("room", "alice")]
    assert session.state.value == "reconnecting" and session.connection_id is None


async def test_another_users_token_with_alices_resume_token_resumes_nothing(
    secured: Server,
) -> None:
    alice = await joined(secured, "alice", make_token("alice", SECRET))
    resume = alice.join_data["resumeToken"]  # type: ignore[attr-defined]
    alice.abort()
    await asyncio.sleep(0.2)

    thief = await ProtooClient.connect(
        url(secured, peer="alice", resumeToken=resume, token=make_token("mallory", SECRET))
    )

    assert await closed_with(thief) == 4409  # alice's peerId is alice's
    assert secured.registry.by_peer[("room", "alice")].user_id == "alice"


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"expires_in": None}, "no exp"),
        ({"expires_in": -120}, "expired beyond the leeway"),
        ({"expires_in": 10 * 86400}, "lifetime over the maximum"),
        ({"room": "another-room"}, "bound to another room"),
    ],
)
async def test_tokens_that_fail_a_claim_check_are_refused(
    secured: Server, claims: dict[str, object], why: str
) -> None:
    token = make_token("alice", SECRET, **claims)  # type: ignore[arg-type]

    client = await ProtooClient.connect(url(secured, room="room", peer="alice", token=token))

    assert await closed_with(client) == 4401, why
    assert len(secured.registry) == 0


async def test_a_token_bound_to_the_room_is_accepted_there(secured: Server) -> None:
    client = await joined(secured, "alice", make_token("alice", SECRET, room="room"))
    assert len(secured.registry) == 1
    await client.close()


async def test_keys_rotate_by_kid_from_a_jwks_file(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    import base64

    def oct_key(kid: str, secret: str) -> dict[str, str]:
        k = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
        return {"kty": "oct", "kid": kid, "alg": "HS256", "k": k}

    old, new = "old-secret-old-secret-old-secret!!", "new-secret-new-secret-new-secret!!"
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps({"keys": [oct_key("2026-10", old), oct_key("2026-11", new)]}))
    server = await make_server(token_jwks=str(jwks))

    a = await joined(server, "a", make_token("a", old, kid="2026-10"))
    b = await joined(server, "b", make_token("b", new, kid="2026-11"))
    unknown = await ProtooClient.connect(
        url(server, peer="c", token=make_token("c", new, kid="2025-01"))
    )

    assert await closed_with(unknown) == 4401
    assert {s.user_id for s in server.registry.by_id.values()} == {"a", "b"}
    await a.close()
    await b.close()


async def test_refusals_are_logged_at_most_once_per_interval(
    secured: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="signalling.server")
    started = time.monotonic()
    for _ in range(20):
        client = await ProtooClient.connect(url(secured, peer="x", token="garbage"))
        assert await closed_with(client) == 4401
    assert time.monotonic() - started < 10  # all within one interval
    lines = [r for r in caplog.records if "refused (unauthorized)" in r.getMessage()]
    assert len(lines) == 1


async def test_an_open_server_beyond_loopback_warns_at_start(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="signalling.server")
    await make_server(host="0.0.0.0")
    assert any("no token secret" in r.getMessage() for r in caplog.records)


async def test_an_open_server_on_loopback_does_not_warn(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="signalling.server")
    await make_server()
    assert not any("no token secret" in r.getMessage() for r in caplog.records)


async def test_a_dtls_fingerprint_mismatch_ends_the_session_as_dtls_failed(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from signalling.bot import Bot

    server = await make_server()
    base = f"ws://127.0.0.1:{server.port}"
    bob = Bot(base, "call", "bob", video=False)
    await bob.join()
    assert bob.client is not None
    original = ProtooClient.request

    async def lying(self: ProtooClient, method: str, data: object = None, timeout: float = 10):  # type: ignore[no-untyped-def]
        alice = "peerId=alice" in self.ws.request.path  # type: ignore[union-attr]
        if alice and method == "connectWebRtcTransport" and isinstance(data, dict):
            for fingerprint in data["dtlsParameters"]["fingerprints"]:
                fingerprint["value"] = ":".join(["AB"] * 32)  # not the client's certificate
        return await original(self, method, data, timeout)

    monkeypatch.setattr(ProtooClient, "request", lying)
    alice = Bot(base, "call", "alice", video=True)
    try:
        await alice.join()
        assert alice.client is not None
        _, data = await bob.client.next_notification("peerClosed", timeout=15)
        assert data == {"peerId": "alice", "reason": "dtls_failed"}
        code, reason = await asyncio.wait_for(alice.client.closed, 5)
        assert (code, reason) == (4412, "dtls_failed")
    finally:
        await alice.close()
        await bob.close()
