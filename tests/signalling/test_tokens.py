"""JWT verification of the ``token`` URL parameter (signalling/tokens.py): HS256 only."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signalling.tokens import InvalidToken, make_token, verify_token

SECRET = "correct horse battery staple"
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    payload: object,
    *,
    header: object = None,
    secret: str = SECRET,
    algorithm: str = "sha256",
) -> str:
    """A token with any header and payload, signed with ``secret``."""
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), algorithm).digest()
    return f"{head}.{body}.{b64(signature)}"


def rejected(token: str, *, secret: str = SECRET, now: float | None = NOW) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify_token(token, secret, now=now)
    return str(caught.value)


# -- valid tokens -------------------------------------------------------------------------------


def test_a_token_made_with_the_secret_verifies_to_its_subject() -> None:
    token = make_token("alice", SECRET)

    assert verify_token(token, SECRET) == "alice"


def test_a_made_token_is_a_three_part_hs256_jwt_expiring_in_an_hour() -> None:
    before = time.time()
    head, body, _ = make_token("alice", SECRET).split(".")

    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims["sub"] == "alice"
    assert before + 3600 - 1 <= claims["exp"] <= time.time() + 3600


def test_a_token_made_without_expiry_never_expires() -> None:
    token = make_token("alice", SECRET, expires_in=None)

    assert verify_token(token, SECRET, now=time.time() + 10 * 365 * 86400) == "alice"


def test_a_hand_made_hs256_token_verifies() -> None:
    token = forge({"sub": "bob", "exp": NOW + 60, "nbf": NOW - 60, "iat": NOW, "extra": [1]})

    assert verify_token(token, SECRET, now=NOW) == "bob"


def test_a_subject_may_be_any_non_empty_string() -> None:
    assert verify_token(forge({"sub": "ünïcødé 用户"}), SECRET, now=NOW) == "ünïcødé 用户"


def test_the_expiry_and_not_before_instants_are_half_open() -> None:
    token = forge({"sub": "a", "nbf": NOW, "exp": NOW + 10})

    assert verify_token(token, SECRET, now=NOW) == "a"  # valid from nbf ...
    assert verify_token(token, SECRET, now=NOW + 9.999) == "a"
    assert rejected(token, now=NOW + 10) == "expired"  # ... to exp, excluded
    assert rejected(token, now=NOW - 0.001) == "not yet valid"


def test_fractional_expiry_claims_are_accepted() -> None:
    token = forge({"sub": "a", "exp": NOW + 0.5})

    assert verify_token(token, SECRET, now=NOW) == "a"
    assert rejected(token, now=NOW + 0.5) == "expired"


# -- invalid tokens ------------------------------------------------------------------------------


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    assert rejected(make_token("alice", "another secret")) == "bad signature"
    assert rejected(forge({"sub": "alice"}, secret="")) == "bad signature"


def test_a_token_is_checked_against_the_configured_secret_only() -> None:
    token = make_token("alice", SECRET)

    assert rejected(token, secret=SECRET + " ") == "bad signature"


def test_a_tampered_payload_is_invalid() -> None:
    head, _, signature = make_token("alice", SECRET).split(".")
    body = b64(json.dumps({"sub": "mallory", "exp": NOW + 3600}).encode())

    assert rejected(f"{head}.{body}.{signature}") == "bad signature"


def test_a_tampered_header_is_invalid() -> None:
    _, body, signature = make_token("alice", SECRET).split(".")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "x"}).encode())

    assert rejected(f"{head}.{body}.{signature}") == "bad signature"


def test_a_truncated_signature_is_invalid() -> None:
    token = make_token("alice", SECRET)

    assert rejected(token[:-4])
    assert rejected(token.rsplit(".", 1)[0] + ".")


def test_alg_none_is_refused_even_without_a_signature() -> None:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "mallory"}).encode())

    assert rejected(f"{head}.{body}.") == "algorithm must be HS256"
    assert rejected(forge({"sub": "mallory"}, header={"alg": "none"})) == (
        "algorithm must be HS256"
    )


@pytest.mark.parametrize(
    ("alg", "digest"), [("HS512", "sha512"), ("HS384", "sha384"), ("hs256", "sha256")]
)
def test_other_algorithms_are_refused_even_when_correctly_signed(alg: str, digest: str) -> None:
    token = forge({"sub": "alice"}, header={"alg": alg, "typ": "JWT"}, algorithm=digest)

    assert rejected(token) == "algorithm must be HS256"


@pytest.mark.parametrize("header", [{"typ": "JWT"}, [], "HS256", None, {"alg": None}])
def test_a_header_without_alg_hs256_is_refused(header: object) -> None:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps({"sub": "alice"}).encode())
    signature = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()

    assert rejected(f"{head}.{body}.{b64(signature)}") == "algorithm must be HS256"


def test_an_expired_token_is_invalid() -> None:
    assert rejected(make_token("alice", SECRET, expires_in=-10), now=None) == "expired"
    assert rejected(make_token("alice", SECRET), now=time.time() + 3601) == "expired"


def test_a_token_used_before_its_not_before_instant_is_invalid() -> None:
    assert rejected(forge({"sub": "alice", "nbf": NOW + 30})) == "not yet valid"


@pytest.mark.parametrize("claim", ["exp", "nbf"])
@pytest.mark.parametrize("value", ["tomorrow", None, [1], {"at": 1}])
def test_a_time_claim_that_is_not_a_number_is_invalid(claim: str, value: object) -> None:
    token = forge({"sub": "alice", claim: value})

    if value is None:  # a null claim is as good as none
        assert verify_token(token, SECRET, now=NOW) == "alice"
    else:
        assert rejected(token) in ("expired", "not yet valid")


@pytest.mark.parametrize(
    "payload",
    [{}, {"sub": ""}, {"sub": None}, {"sub": 42}, {"sub": ["alice"]}, {"name": "alice"}],
    ids=repr,
)
def test_a_token_without_a_usable_subject_is_invalid(payload: object) -> None:
    assert rejected(forge(payload)) == "no subject"


@pytest.mark.parametrize("payload", [[], "alice", 42, None], ids=repr)
def test_a_payload_that_is_not_an_object_is_invalid(payload: object) -> None:
    assert rejected(forge(payload))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "...",
        "!!!.???.***",
        "é.é.é",
        f"{b64(b'not json')}.{b64(b'{}')}.x",
        f"{b64(bytes([0xFF, 0xFE]))}.{b64(b'{}')}.x",
        f"{b64(b'{}')}.{b64(b'{')}.x",
        "eyJhbGciOiJIUzI1NiJ9.e30.a",  # a signature of impossible length
        "eyJhbGciOiJIUzI1NiJ9.e30.",
    ],
    ids=repr,
)
def test_garbage_is_an_invalid_token(token: str) -> None:
    assert rejected(token)


def test_a_deeply_nested_header_is_an_invalid_token_not_a_crash() -> None:
    # About 1.4 kB: fits in a URL, and is parsed before the signature is checked.
    token = f"{b64(b'[' * 1000)}.{b64(b'{}')}.x"

    assert rejected(token)


@given(st.text(max_size=200))
def test_verify_never_raises_anything_but_invalid_token_on_arbitrary_text(token: str) -> None:
    with contextlib.suppress(InvalidToken):
        verify_token(token, SECRET, now=NOW)


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.lists(st.text(alphabet=BASE64URL, max_size=60), min_size=3, max_size=3))
def test_verify_never_raises_anything_but_invalid_token_on_base64url_garbage(
    parts: list[str],
) -> None:
    with contextlib.suppress(InvalidToken):
        verify_token(".".join(parts), SECRET, now=NOW)


def test_the_reason_is_for_logs_and_never_contains_the_secret() -> None:
    for token in (make_token("a", "other"), forge({"sub": ""}), "x", forge({"sub": "a", "exp": 0})):
        assert SECRET not in rejected(token)
