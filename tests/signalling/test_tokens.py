"""Verification of the ``token`` URL parameter (signalling/tokens.py): keys, claims, CLI."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from signalling.tokens import (
    MAX_TOKEN_LENGTH,
    InvalidToken,
    TokenVerifier,
    VerifiedIdentity,
    main,
    make_token,
    parse_jwks,
    secret_key,
)

SECRET = "correct horse battery staple, 32+ bytes"
NOW = 1_700_000_000.0
ROOM = "demo"
LEEWAY = 30.0
DAY = 86400.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: object, *, header: object = None, secret: str | bytes = SECRET) -> str:
    """A token with any header and payload, HMAC-signed with ``secret`` by hand."""
    header = {"alg": "HS256", "typ": "JWT"} if header is None else header
    alg = header.get("alg") if isinstance(header, dict) else None
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(str(alg), hashlib.sha256)
    key = secret.encode() if isinstance(secret, str) else secret
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**extra: Any) -> dict[str, Any]:
    """Valid claims, issued now for an hour, with ``extra`` changed (None removes)."""
    payload = {"sub": "alice", "iat": NOW, "exp": NOW + 3600, **extra}
    return {name: value for name, value in payload.items() if value is not None}


def verifier(**options: Any) -> TokenVerifier:
    keys = options.pop("keys", None) or {None: secret_key(SECRET)}
    return TokenVerifier(keys, **options)


SECRET_ONLY = verifier()


def verified(
    token: str, using: TokenVerifier = SECRET_ONLY, *, room_id: str = ROOM, now: float = NOW
) -> VerifiedIdentity:
    return using.verify(token, room_id=room_id, now=now)


def rejected(
    token: str, using: TokenVerifier = SECRET_ONLY, *, room_id: str = ROOM, now: float = NOW
) -> str:
    with pytest.raises(InvalidToken) as caught:
        using.verify(token, room_id=room_id, now=now)
    return str(caught.value)


# -- keys made for the tests ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def public_jwk(private: PrivateKey, *, kid: str, alg: str) -> dict[str, Any]:
    public = private.public_key()
    jwk: dict[str, Any]
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": alg}


def oct_jwk(secret: bytes, *, kid: str, alg: str = "HS256") -> dict[str, Any]:
    return {"kty": "oct", "k": b64(secret), "kid": kid, "alg": alg}


def write_jwks(tmp_path: Path, *keys: dict[str, Any]) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(keys)}))
    return str(path)


def from_options(
    *, secret: str | None = None, jwks_file: str | None = None, **options: Any
) -> TokenVerifier | None:
    settings: dict[str, Any] = {
        "leeway": LEEWAY,
        "max_lifetime": DAY,
        "audience": None,
        "issuer": None,
        **options,
    }
    return TokenVerifier.from_options(secret=secret, jwks_file=jwks_file, **settings)


def from_files(*, secret: str | None = None, jwks_file: str | None = None) -> TokenVerifier:
    verifier = from_options(secret=secret, jwks_file=jwks_file)
    assert verifier is not None
    return verifier


# -- valid tokens ---------------------------------------------------------------------------------


def test_a_token_made_with_the_secret_verifies_to_its_subject() -> None:
    token = make_token("alice", SECRET, now=NOW)

    assert verified(token) == VerifiedIdentity(
        subject="alice", room=None, expires_at=NOW + 3600, name=None
    )


def test_a_made_token_is_an_hs256_jwt_issued_now_and_expiring_in_an_hour() -> None:
    token = make_token("alice", SECRET, now=NOW + 0.7)

    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.decode(token, options={"verify_signature": False}) == {
        "sub": "alice",
        "iat": NOW,
        "exp": NOW + 3600,
    }


def test_the_room_and_name_claims_reach_the_identity() -> None:
    token = make_token("alice", SECRET, room=ROOM, name="Alice Ünïcødé 🎉", now=NOW)

    assert verified(token) == VerifiedIdentity(
        subject="alice", room=ROOM, expires_at=NOW + 3600, name="Alice Ünïcødé 🎉"
    )


def test_the_verifier_reads_the_clock_when_no_time_is_given() -> None:
    assert SECRET_ONLY.verify(make_token("alice", SECRET), room_id=ROOM).subject == "alice"


def test_fractional_times_are_accepted() -> None:
    token = forge(claims(iat=NOW - 0.5, nbf=NOW - 0.25, exp=NOW + 0.5))

    assert verified(token, verifier(leeway=0)).expires_at == NOW + 0.5
    assert rejected(token, verifier(leeway=0), now=NOW + 0.5) == "expired"


def test_a_subject_may_be_any_printable_text_up_to_256_characters() -> None:
    for subject in ("ünïcødé 用户", "a" * 256, "user@example.org", "🧑‍💻"):
        assert verified(forge(claims(sub=subject))).subject == subject


# -- signatures and algorithms --------------------------------------------------------------------


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    assert rejected(make_token("alice", "another secret of at least 32 bytes", now=NOW)) == (
        "bad signature"
    )


def test_a_tampered_payload_is_invalid() -> None:
    head, _, signature = make_token("alice", SECRET, now=NOW).split(".")
    body = b64(json.dumps(claims(sub="mallory")).encode())

    assert rejected(f"{head}.{body}.{signature}") == "bad signature"


def test_a_truncated_signature_is_invalid() -> None:
    token = make_token("alice", SECRET, now=NOW)

    assert rejected(token[:-4])
    assert rejected(token.rsplit(".", 1)[0] + ".")


def test_alg_none_is_refused_signed_or_not() -> None:
    none = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{none}.{b64(json.dumps(claims()).encode())}."

    assert rejected(unsigned) == "algorithm not allowed for this key"
    assert rejected(forge(claims(), header={"alg": "none"})) == "algorithm not allowed for this key"


@pytest.mark.parametrize("alg", ["HS384", "HS512", "hs256", "RS256", "", None])
def test_the_secret_verifies_hs256_only_even_when_correctly_signed(alg: str | None) -> None:
    token = forge(claims(), header={"alg": alg, "typ": "JWT"})

    assert rejected(token) == "algorithm not allowed for this key"


def test_a_header_without_alg_is_refused() -> None:
    assert rejected(forge(claims(), header={"typ": "JWT"})) == "algorithm not allowed for this key"


def test_an_hs256_token_signed_with_an_rsa_public_key_is_refused(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Algorithm confusion: the public key is public, so anyone can HMAC with its PEM.
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    only_rsa = from_files(jwks_file=write_jwks(tmp_path, public_jwk(rsa_key, kid="r", alg="RS256")))

    for header in ({"alg": "HS256"}, {"alg": "HS256", "kid": "r"}):
        token = forge(claims(), header=header, secret=pem)
        assert rejected(token, only_rsa) == "algorithm not allowed for this key"


# -- expiry, not-before, lifetime -----------------------------------------------------------------


def test_a_token_without_expiry_is_invalid() -> None:
    assert rejected(make_token("alice", SECRET, expires_in=None, now=NOW)) == "no expiry"
    assert rejected(forge(claims(exp=None))) == "no expiry"


def test_an_expired_token_is_accepted_within_the_leeway_and_refused_beyond() -> None:
    token = forge(claims(exp=NOW))

    assert verified(token, now=NOW + LEEWAY - 0.001).subject == "alice"
    assert rejected(token, now=NOW + LEEWAY) == "expired"


def test_without_leeway_a_token_expires_at_its_exp() -> None:
    token = forge(claims(exp=NOW + 10))
    strict = verifier(leeway=0)

    assert verified(token, strict, now=NOW + 9.999).subject == "alice"
    assert rejected(token, strict, now=NOW + 10) == "expired"


def test_a_token_used_before_its_not_before_instant_is_invalid_beyond_the_leeway() -> None:
    token = forge(claims(nbf=NOW + 60))

    assert rejected(token) == "not yet valid"
    assert verified(token, now=NOW + 60 - LEEWAY).subject == "alice"


def test_a_token_issued_in_the_future_is_invalid_beyond_the_leeway() -> None:
    assert rejected(forge(claims(iat=NOW + LEEWAY + 1))) == "issued in the future"
    assert verified(forge(claims(iat=NOW + LEEWAY))).subject == "alice"


def test_a_token_living_longer_than_the_maximum_is_refused() -> None:
    long_lived = make_token("alice", SECRET, expires_in=2 * DAY, now=NOW)
    just_right = make_token("alice", SECRET, expires_in=DAY + LEEWAY, now=NOW)

    assert rejected(long_lived) == "lifetime too long"
    assert verified(just_right).subject == "alice"


def test_an_old_token_with_a_far_expiry_is_refused_even_if_little_is_left() -> None:
    token = forge(claims(iat=NOW - 10 * DAY, exp=NOW + 60))

    assert rejected(token) == "lifetime too long"


def test_without_iat_the_lifetime_is_counted_from_now() -> None:
    token = forge(claims(iat=None, exp=NOW + 2 * DAY))

    assert rejected(token) == "lifetime too long"
    assert verified(token, now=NOW + DAY).subject == "alice"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["tomorrow", True, [1], {"at": 1}, 10**400], ids=repr)
def test_a_time_claim_that_is_not_a_finite_number_is_invalid(claim: str, value: object) -> None:
    assert rejected(forge(claims(**{claim: value}))) == f"{claim} is not a number"


def test_a_null_time_claim_is_invalid() -> None:
    assert rejected(forge({**claims(), "nbf": None})) == "nbf is not a number"


# -- subject and name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    ["", None, 42, ["alice"], {"id": "alice"}, "a" * 257, "a\nb", "a\x00", "\x7f", "a\u2028b"],
    ids=repr,
)
def test_a_token_without_a_usable_subject_is_invalid(subject: object) -> None:
    assert rejected(forge({**claims(), "sub": subject})) == "bad subject"


def test_a_token_without_a_subject_is_invalid() -> None:
    assert rejected(forge(claims(sub=None))) == "bad subject"


@pytest.mark.parametrize("name", ["", 42, ["Alice"], "A" * 129, "Alice\r\nSet-Cookie: x"], ids=repr)
def test_a_token_with_an_unusable_name_is_invalid(name: object) -> None:
    assert rejected(forge(claims(name=name))) == "bad name"


# -- rooms ----------------------------------------------------------------------------------------


def test_a_token_bound_to_the_room_joined_verifies_with_its_room() -> None:
    assert verified(make_token("alice", SECRET, room=ROOM, now=NOW)).room == ROOM


def test_a_token_bound_to_another_room_is_invalid() -> None:
    token = make_token("alice", SECRET, room="other", now=NOW)

    assert rejected(token) == "token is for another room"


@pytest.mark.parametrize("room", [None, 42, [ROOM], ""], ids=repr)
def test_a_room_claim_that_is_not_the_room_name_is_invalid(room: object) -> None:
    assert rejected(forge({**claims(), "room": room})) == "token is for another room"


def test_a_token_without_a_room_claim_is_good_for_any_room() -> None:
    token = make_token("alice", SECRET, now=NOW)

    assert verified(token, room_id="one").room is None
    assert verified(token, room_id="two").room is None


# -- audience and issuer --------------------------------------------------------------------------


def test_a_configured_audience_must_be_named_by_the_token() -> None:
    for_us = verifier(audience="ghostless")

    assert verified(forge(claims(aud="ghostless")), for_us).subject == "alice"
    assert verified(forge(claims(aud=["app", "ghostless"])), for_us).subject == "alice"
    assert rejected(forge(claims(aud="app")), for_us) == "wrong audience"
    assert rejected(forge(claims()), for_us) == "wrong audience"


def test_a_token_for_an_audience_is_refused_when_none_is_configured() -> None:
    # RFC 7519 §4.1.3: a token for another service must not work here.
    assert rejected(forge(claims(aud="another-service"))) == "wrong audience"


def test_a_configured_issuer_must_be_the_tokens() -> None:
    from_app = verifier(issuer="https://app.example")

    token = make_token("alice", SECRET, issuer="https://app.example", now=NOW)
    assert verified(token, from_app).subject == "alice"
    assert rejected(forge(claims(iss="https://evil.example")), from_app) == "wrong issuer"
    assert rejected(forge(claims()), from_app) == "wrong issuer"
    assert verified(forge(claims(iss="anyone"))).subject == "alice"  # not configured


# -- keys and rotation ----------------------------------------------------------------------------


OLD = b"o" * 32
CURRENT = b"c" * 32
NEXT = b"n" * 64


@pytest.fixture
def rotating(tmp_path: Path) -> TokenVerifier:
    """An old shared secret, plus a JWKS with the current and next keys."""
    jwks = write_jwks(
        tmp_path, oct_jwk(CURRENT, kid="2025"), oct_jwk(NEXT, kid="2026", alg="HS512")
    )
    return from_files(secret=OLD.decode(), jwks_file=jwks)


def test_during_rotation_tokens_of_the_secret_and_of_every_jwks_key_verify(
    rotating: TokenVerifier,
) -> None:
    by_secret = make_token("old", OLD, now=NOW)
    by_current = make_token("current", CURRENT, kid="2025", now=NOW)
    by_next = make_token("next", NEXT, kid="2026", algorithm="HS512", now=NOW)

    assert [verified(t, rotating).subject for t in (by_secret, by_current, by_next)] == [
        "old",
        "current",
        "next",
    ]


def test_the_kid_chooses_the_key_and_the_key_chooses_the_algorithm(
    rotating: TokenVerifier,
) -> None:
    stranger = b"s" * 64
    assert rejected(
        make_token("a", stranger, kid="2026", algorithm="HS512", now=NOW), rotating
    ) == ("bad signature")
    assert rejected(make_token("a", NEXT, kid="2026", now=NOW), rotating) == (
        "algorithm not allowed for this key"
    )
    assert rejected(make_token("a", CURRENT, now=NOW), rotating) == "bad signature"  # secret's


def test_a_token_naming_an_unknown_kid_is_invalid(rotating: TokenVerifier) -> None:
    assert rejected(make_token("a", CURRENT, kid="2024", now=NOW), rotating) == "unknown key id"
    assert rejected(make_token("a", OLD, kid="secret", now=NOW), SECRET_ONLY) == "unknown key id"


def test_a_kid_that_is_not_a_string_is_malformed() -> None:
    assert rejected(forge(claims(), header={"alg": "HS256", "kid": 7})) == "malformed token"


def test_without_a_secret_a_kidless_token_needs_a_single_key(tmp_path: Path) -> None:
    single = from_files(jwks_file=write_jwks(tmp_path, oct_jwk(CURRENT, kid="2025")))
    double = from_files(
        jwks_file=write_jwks(tmp_path, oct_jwk(CURRENT, kid="2025"), oct_jwk(OLD, kid="2024"))
    )
    token = make_token("alice", CURRENT, now=NOW)

    assert verified(token, single).subject == "alice"
    assert rejected(token, double) == "token names no key id"


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
        ("RS256", None),
        ("PS256", None),
    ],
)
def test_tokens_signed_by_an_app_server_verify_with_its_public_key_only(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    alg: str,
    make_key: Callable[[], PrivateKey] | None,
) -> None:
    private = make_key() if make_key is not None else rsa_key
    public_only = from_files(
        jwks_file=write_jwks(
            tmp_path, public_jwk(private, kid="app", alg=alg), oct_jwk(CURRENT, kid="hmac")
        )
    )
    token = make_token("alice", private, kid="app", algorithm=alg, room=ROOM, now=NOW)

    assert verified(token, public_only) == VerifiedIdentity(
        subject="alice", room=ROOM, expires_at=NOW + 3600, name=None
    )
    if make_key is not None:  # a stranger's key of the same kind
        forged = make_token("alice", make_key(), kid="app", algorithm=alg, now=NOW)
        assert rejected(forged, public_only) == "bad signature"
    assert rejected(make_token("a", CURRENT, kid="app", now=NOW), public_only) == (
        "algorithm not allowed for this key"
    )


# -- configuration --------------------------------------------------------------------------------


def test_without_a_secret_or_jwks_there_is_no_verifier() -> None:
    assert from_options() is None


@pytest.mark.parametrize(
    ("secret", "message"),
    [("", "the token secret is empty"), ("short", "5 bytes; HS256 needs at least 32")],
)
def test_an_empty_or_short_secret_is_refused(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_options(secret=secret)


def test_a_missing_jwks_file_is_refused_with_its_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.json")

    with pytest.raises(ValueError, match=r"cannot read JWKS file .*nope\.json: No such file"):
        from_options(jwks_file=missing)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", 'expected {"keys": \\[...\\]}'),
        ('{"keys": []}', "at least one key"),
        ('{"keys": [42]}', "key #0: not a JSON object"),
        (json.dumps({"keys": [{"kty": "oct", "k": b64(CURRENT), "alg": "HS256"}]}), "'kid'"),
        (json.dumps({"keys": [{"kty": "oct", "k": b64(CURRENT), "kid": "k"}]}), "needs an 'alg'"),
        (json.dumps({"keys": [oct_jwk(CURRENT, kid="k", alg="none")]}), "'none' is not allowed"),
        (json.dumps({"keys": [oct_jwk(CURRENT, kid="k", alg="RS256")]}), "needs kty 'RSA'"),
        (json.dumps({"keys": [oct_jwk(b"short", kid="k")]}), "5 bytes long"),
        (json.dumps({"keys": [oct_jwk(CURRENT, kid="k", alg="HS512")]}), "32 bytes long"),
        (json.dumps({"keys": [{"kty": "oct", "kid": "k", "alg": "HS256"}]}), "not a usable"),
        (json.dumps({"keys": [{**oct_jwk(CURRENT, kid="k"), "use": "enc"}]}), "'use' must"),
        (json.dumps({"keys": [oct_jwk(CURRENT, kid="k"), oct_jwk(OLD, kid="k")]}), "duplicate"),
    ],
    ids=[
        "bad JSON",
        "not an object",
        "no keys",
        "key not an object",
        "no kid",
        "no alg",
        "alg none",
        "alg of another key type",
        "short secret",
        "secret short for HS512",
        "no key material",
        "encryption key",
        "duplicate kid",
    ],
)
def test_an_unusable_jwks_file_is_refused_with_one_clear_line(
    tmp_path: Path, document: str, message: str
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(document)

    with pytest.raises(ValueError, match=message) as caught:
        from_options(jwks_file=str(path))
    assert str(caught.value).startswith(f"JWKS file {path}: ")
    assert "\n" not in str(caught.value)


def test_a_jwks_holding_a_private_key_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(private, as_dict=True)

    with pytest.raises(ValueError, match="holds a private key"):
        parse_jwks(json.dumps({"keys": [{**jwk, "kid": "k", "alg": "ES256"}]}))


def test_a_jwks_key_on_the_wrong_curve_for_its_alg_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())

    with pytest.raises(ValueError, match="not a usable ES256 key"):
        parse_jwks(json.dumps({"keys": [public_jwk(p384, kid="k", alg="ES256")]}))


def test_a_weak_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    with pytest.raises(ValueError, match="1024 bits"):
        parse_jwks(json.dumps({"keys": [public_jwk(weak, kid="k", alg="RS256")]}))


def test_a_verifier_given_a_private_key_is_refused() -> None:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)

    with pytest.raises(ValueError, match="give the public key"):
        TokenVerifier({"k": jwt.PyJWK(jwk, "ES256")})


@pytest.mark.parametrize(
    "options", [{"leeway": -1.0}, {"max_lifetime": 0.0}, {"max_lifetime": float("inf")}]
)
def test_nonsensical_time_limits_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="token"):
        verifier(**options)


# -- garbage --------------------------------------------------------------------------------------


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
        make_token("alice", SECRET, now=NOW) + "é",
        f"{b64(b'not json')}.{b64(b'{}')}.x",
        f"{b64(bytes([0xFF, 0xFE]))}.{b64(b'{}')}.x",
        f"{b64(b'{}')}.{b64(b'{')}.x",
        forge([]),
        forge("alice"),
        forge(None),
        "eyJhbGciOiJIUzI1NiJ9.e30.a",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        forge(claims(), header={"alg": "HS256", "crit": ["exp"]}),
        forge(claims(), header={"alg": "HS256", "b64": False}),
    ],
    ids=repr,
)
def test_garbage_is_an_invalid_token(token: str) -> None:
    assert rejected(token)


def test_a_deeply_nested_header_is_an_invalid_token_not_a_crash() -> None:
    assert rejected(f"{b64(b'[' * 1000)}.{b64(b'{}')}.x") == "malformed token"


def test_an_overlong_token_is_refused_before_it_is_parsed() -> None:
    token = forge(claims(padding="x" * MAX_TOKEN_LENGTH))

    assert rejected(token) == "token too long"


def never_raises_anything_but_invalid_token(token: str) -> None:
    with contextlib.suppress(InvalidToken):
        SECRET_ONLY.verify(token, room_id=ROOM, now=NOW)


@given(st.text(max_size=300))
def test_arbitrary_text_is_an_invalid_token(token: str) -> None:
    never_raises_anything_but_invalid_token(token)


@given(st.binary(max_size=300), st.sampled_from(["latin-1", "utf-8"]))
def test_arbitrary_bytes_are_an_invalid_token(data: bytes, encoding: str) -> None:
    never_raises_anything_but_invalid_token(data.decode(encoding, errors="replace"))


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="


@given(st.lists(st.text(alphabet=BASE64URL, max_size=80), min_size=1, max_size=4))
def test_base64url_garbage_is_an_invalid_token(parts: list[str]) -> None:
    never_raises_anything_but_invalid_token(".".join(parts))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "room", "name", "jti"])


@given(
    st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64"]), JSON, max_size=4),
    st.dictionaries(CLAIM_NAMES, JSON, max_size=9),
    st.booleans(),
)
def test_correctly_signed_tokens_with_arbitrary_contents_verify_or_are_invalid(
    header: dict[str, Any], payload: dict[str, Any], plain_header: bool
) -> None:
    if plain_header:
        header = {"alg": "HS256"}
    with contextlib.suppress(InvalidToken):
        identity = verified(forge({**claims(), **payload}, header=header))
        assert identity.subject


def test_the_reason_is_for_logs_and_never_contains_the_secret_or_the_token() -> None:
    for token in (
        make_token("a", "another secret of at least 32 bytes", now=NOW),
        forge(claims(sub="")),
        "x",
        forge(claims(exp=0)),
        forge(claims(aud="x")),
    ):
        reason = rejected(token)
        assert SECRET not in reason
        assert token not in reason
        assert len(reason) < 60


# -- the CLI --------------------------------------------------------------------------------------


def test_the_cli_prints_a_token_that_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--secret", SECRET, "--sub", "alice", "--room", ROOM, "--ttl", "60"]) == 0

    identity = SECRET_ONLY.verify(capsys.readouterr().out.strip(), room_id=ROOM)
    assert (identity.subject, identity.room) == ("alice", ROOM)


def test_the_cli_reads_the_secret_from_the_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--sub", "alice", "--name", "Alice"], environ={"GHOSTLESS_TOKEN_SECRET": SECRET})

    assert SECRET_ONLY.verify(capsys.readouterr().out.strip(), room_id=ROOM).name == "Alice"


def test_the_cli_signs_with_a_jwks_secret_under_its_kid(
    rotating: TokenVerifier, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--secret", NEXT.decode(), "--kid", "2026", "--alg", "HS512", "--sub", "bob"])

    assert rotating.verify(capsys.readouterr().out.strip(), room_id=ROOM).subject == "bob"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sub", "alice"], "give --secret or set GHOSTLESS_TOKEN_SECRET"),
        (["--sub", "alice", "--secret", "short"], "needs at least 32"),
        (["--sub", "alice", "--secret", SECRET, "--ttl", "0"], "--ttl must be a positive number"),
    ],
)
def test_the_cli_refuses_to_sign_without_a_good_secret_or_ttl(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv, environ={})

    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cli_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signalling.tokens", "--sub", "alice"],
        env={**os.environ, "GHOSTLESS_TOKEN_SECRET": SECRET},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert SECRET_ONLY.verify(result.stdout.strip(), room_id=ROOM).subject == "alice"
