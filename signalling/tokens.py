"""Verifying the optional ``token`` URL parameter: a signed JWT (RFC 7519).

When keys are configured, a connection's identity is the token's ``sub`` claim and
nothing the client claims for itself, so nobody can take over another user's session by
sending their ``userId``.  Signatures and JOSE parsing are PyJWT's job; this module only
decides which key may verify which token and what the claims must say, following the
JWT best current practices (RFC 8725):

- algorithms are explicit: each key carries exactly one ``alg``, the token's header must
  name that same algorithm, and ``none`` is never accepted (RFC 8725 §2.1, §3.1), so an
  HMAC token can never be checked against an RSA public key (algorithm confusion);
- keys come from one ``--token-secret`` (HS256, at least 32 bytes, RFC 7518 §3.2) and/or
  a JWKS file (RFC 7517 §5): asymmetric keys let application servers sign tokens while
  ghostless can only verify them, and several ``kid``-named keys let keys rotate;
- ``exp`` is required and the lifetime is bounded, so a leaked token is worth little for
  long; ``nbf`` and ``iat`` are honoured; ``aud``/``iss`` are checked when configured
  (RFC 8725 §3.8, §3.9), and a token naming an audience is refused when ghostless is not
  configured as one (RFC 7519 §4.1.3);
- a token may be bound to one room with a ``room`` claim;
- keys are configuration only: header parameters that point at keys (``jku``, ``jwk``,
  ``x5u``, ``x5c``) are ignored, so a token can never bring its own key.

Everything is sans-I/O: time comes in as ``now``.  :class:`InvalidToken` carries a short
reason for logs; clients only ever learn "invalid token".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import jwt
from jwt.algorithms import AllowedPrivateKeys
from jwt.exceptions import (
    DecodeError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuerError,
    InvalidJTIError,
    InvalidSignatureError,
    InvalidSubjectError,
    MissingRequiredClaimError,
    PyJWTError,
)
from jwt.utils import base64url_encode

MAX_TOKEN_LENGTH = 8 * 1024
"""Longer tokens are refused before parsing (they have to fit in a URL anyway)."""

MAX_SUBJECT_LENGTH = 256
MAX_NAME_LENGTH = 128

ALGORITHMS: Mapping[str, str] = {
    # alg -> the JWK key type (kty) that may carry it (RFC 7518 §3.1, RFC 8037 §3.1).
    "HS256": "oct",
    "HS384": "oct",
    "HS512": "oct",
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
"""The only algorithms a key may be configured with; ``none`` is not one of them."""

# Claims are checked here against the caller's clock (PyJWT reads the system clock), and
# ``sub`` against our own rules; PyJWT still checks ``aud``, ``iss`` and the types of
# ``sub`` and ``jti``.
_DECODE_OPTIONS: jwt.types.Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": True,
    "verify_iss": True,
    "verify_sub": True,
    "verify_jti": True,
    "require": [],
}

_PRIVATE_KEY_TYPES = get_args(AllowedPrivateKeys)

_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, surrogates, breaks


class InvalidToken(Exception):
    """The token is not acceptable; the message is a short reason, for logs only."""


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    subject: str
    """The ``sub`` claim: the connection's identity (its ``userId``)."""
    room: str | None
    """The ``room`` claim if the token has one (then it equals the room joined)."""
    expires_at: float
    """The ``exp`` claim (seconds since the epoch)."""
    name: str | None
    """The optional ``name`` claim: a display name hint."""


# -- keys -------------------------------------------------------------------------------------


def secret_key(secret: str | bytes, algorithm: str = "HS256") -> jwt.PyJWK:
    """The key for a shared ``secret``; ``ValueError`` if it is empty or too short."""
    data = secret.encode() if isinstance(secret, str) else secret
    if not data:
        raise ValueError("the token secret is empty")
    if algorithm not in ("HS256", "HS384", "HS512"):
        raise ValueError(f"a shared secret cannot be used with {algorithm}")
    minimum = int(algorithm[2:]) // 8
    if len(data) < minimum:
        raise ValueError(
            f"the token secret is {len(data)} bytes; {algorithm} needs at least {minimum} random"
            " bytes (RFC 7518 §3.2), e.g. python -c 'import secrets;"
            " print(secrets.token_urlsafe(48))'"
        )
    return jwt.PyJWK({"kty": "oct", "k": base64url_encode(data).decode(), "alg": algorithm})


def parse_jwks(document: str, *, source: str = "JWKS") -> dict[str, jwt.PyJWK]:
    """The keys of a JWKS document (RFC 7517 §5), by ``kid``; ``ValueError`` if unusable.

    Every key must name its ``kid`` and its ``alg`` (one of :data:`ALGORITHMS`): an
    algorithm is never guessed from the key type.  Asymmetric keys must be public: a
    verifier has no use for private keys, and a file holding them is a leak waiting.
    """
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from None
    entries = parsed.get("keys") if isinstance(parsed, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f'{source}: expected {{"keys": [...]}} with at least one key')
    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(entries):
        key = _parse_jwk(entry, f"{source}: key #{index}")
        if key.key_id in keys:
            raise ValueError(f"{source}: key #{index}: duplicate kid {key.key_id!r}")
        assert key.key_id is not None  # checked by _parse_jwk
        keys[key.key_id] = key
    return keys


def read_jwks(path: str) -> dict[str, jwt.PyJWK]:
    """:func:`parse_jwks` of the file at ``path``; ``ValueError`` if unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            document = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read JWKS file {path}: {reason}") from None
    return parse_jwks(document, source=f"JWKS file {path}")


def _parse_jwk(entry: object, where: str) -> jwt.PyJWK:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: not a JSON object")
    kid, alg, kty = entry.get("kid"), entry.get("alg"), entry.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"{where}: needs a non-empty string 'kid'")
    where = f"{where} ({kid!r})"
    if alg is None:
        raise ValueError(f"{where}: needs an 'alg' (one of {', '.join(ALGORITHMS)})")
    if alg not in ALGORITHMS:
        raise ValueError(f"{where}: alg {alg!r} is not allowed (one of {', '.join(ALGORITHMS)})")
    if kty != ALGORITHMS[alg]:
        raise ValueError(f"{where}: alg {alg} needs kty {ALGORITHMS[alg]!r}, not {kty!r}")
    if entry.get("use", "sig") != "sig":
        raise ValueError(f"{where}: 'use' must be 'sig'")
    if kty != "oct" and "d" in entry:
        raise ValueError(f"{where}: holds a private key; publish only the public key")
    try:
        key = jwt.PyJWK(entry, alg)
        # Loads the key as the algorithm will (curve matches alg, no PEM as an HMAC key)
        # and refuses keys that are too weak (RFC 7518 §3.2, §3.3).
        prepared = key.Algorithm.prepare_key(key.key)
        weakness = key.Algorithm.check_key_length(prepared)
    except (PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: not a usable {alg} key ({exc})") from None
    if weakness:
        raise ValueError(f"{where}: {weakness}")
    return key


# -- verification -----------------------------------------------------------------------------


class TokenVerifier:
    """Checks tokens against a fixed set of keys and claim rules.

    ``keys`` maps a ``kid`` to its key; the key under ``None`` (the ``--token-secret``)
    verifies tokens that name no ``kid``, as does the only key when there is just one.
    """

    def __init__(
        self,
        keys: Mapping[str | None, jwt.PyJWK],
        *,
        leeway: float = 30.0,
        max_lifetime: float = 86400.0,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        if not keys:
            raise ValueError("a token verifier needs at least one key")
        for kid, key in keys.items():
            if key.algorithm_name not in ALGORITHMS:
                raise ValueError(f"key {kid!r}: algorithm {key.algorithm_name!r} is not allowed")
            if isinstance(key.key, _PRIVATE_KEY_TYPES):
                raise ValueError(f"key {kid!r}: give the public key, not the private one")
        if not (math.isfinite(leeway) and leeway >= 0):
            raise ValueError(f"token leeway must be >= 0 seconds, not {leeway}")
        if not (math.isfinite(max_lifetime) and max_lifetime > 0):
            raise ValueError(f"token max lifetime must be > 0 seconds, not {max_lifetime}")
        self.keys: Mapping[str | None, jwt.PyJWK] = dict(keys)
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.audience = audience
        self.issuer = issuer
        self._jwt = jwt.PyJWT()

    @classmethod
    def from_options(
        cls,
        *,
        secret: str | None,
        jwks_file: str | None,
        leeway: float,
        max_lifetime: float,
        audience: str | None,
        issuer: str | None,
    ) -> TokenVerifier | None:
        """The verifier for the server's options, or ``None`` when no key is configured.

        Both a secret and a JWKS file may be given, to rotate from one to the other.
        Raises ``ValueError`` with one line saying what is wrong with either.
        """
        if secret is None and jwks_file is None:
            return None
        keys: dict[str | None, jwt.PyJWK] = {}
        if secret is not None:
            keys[None] = secret_key(secret)
        if jwks_file is not None:
            keys.update(read_jwks(jwks_file))
        return cls(keys, leeway=leeway, max_lifetime=max_lifetime, audience=audience, issuer=issuer)

    def verify(self, token: str, *, room_id: str, now: float | None = None) -> VerifiedIdentity:
        """The identity ``token`` proves for a connection to ``room_id``.

        Raises :class:`InvalidToken` (and nothing else) for any unacceptable input.
        """
        if not isinstance(token, str):
            raise InvalidToken("malformed token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        if not token.isascii():
            raise InvalidToken("malformed token")  # compact JWS is ASCII (RFC 7515 §7.1)
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise InvalidToken("malformed token") from None
        key = self._select_key(header)
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                options=_DECODE_OPTIONS,
                audience=self.audience,
                issuer=self.issuer,
            )
        except PyJWTError as exc:
            raise InvalidToken(_reason(exc)) from None
        return self._check_claims(claims, room_id=room_id, now=time.time() if now is None else now)

    def _select_key(self, header: dict[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        if kid is not None:
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken("unknown key id")
        elif None in self.keys:
            key = self.keys[None]
        elif len(self.keys) == 1:
            (key,) = self.keys.values()
        else:
            raise InvalidToken("token names no key id")
        # RFC 8725 §3.1: the key decides the algorithm, never the token.
        if header.get("alg") != key.algorithm_name:
            raise InvalidToken("algorithm not allowed for this key")
        return key

    def _check_claims(
        self, claims: dict[str, Any], *, room_id: str, now: float
    ) -> VerifiedIdentity:
        if "exp" not in claims:
            raise InvalidToken("no expiry")
        expires_at = _numeric_date(claims, "exp")
        if now >= expires_at + self.leeway:
            raise InvalidToken("expired")
        if "nbf" in claims and now < _numeric_date(claims, "nbf") - self.leeway:
            raise InvalidToken("not yet valid")
        issued_at = now
        if "iat" in claims:
            issued_at = _numeric_date(claims, "iat")
            if issued_at > now + self.leeway:
                raise InvalidToken("issued in the future")
        if expires_at - issued_at > self.max_lifetime + self.leeway:
            raise InvalidToken("lifetime too long")
        subject = claims.get("sub")
        if not _is_clean_text(subject, MAX_SUBJECT_LENGTH):
            raise InvalidToken("bad subject")
        assert isinstance(subject, str)
        room = None
        if "room" in claims:
            room = claims["room"]
            if not isinstance(room, str) or room != room_id:
                raise InvalidToken("token is for another room")
        name = claims.get("name")
        if name is not None and not _is_clean_text(name, MAX_NAME_LENGTH):
            raise InvalidToken("bad name")
        return VerifiedIdentity(subject=subject, room=room, expires_at=expires_at, name=name)


def _numeric_date(claims: dict[str, Any], claim: str) -> float:
    value = claims[claim]
    # bool is an int in Python, not a NumericDate in JSON (RFC 7519 §2).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{claim} is not a number")
    try:
        seconds = float(value)
    except OverflowError:  # an integer beyond any float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise InvalidToken(f"{claim} is not a number")
    return seconds


def _is_clean_text(value: object, max_length: int) -> bool:
    """A non-empty string, not too long, safe to log and show (no controls or breaks)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and not any(unicodedata.category(char) in _UNPRINTABLE_CATEGORIES for char in value)
    )


def _reason(error: PyJWTError) -> str:
    """A short reason for logs that never echoes the token or the key."""
    if isinstance(error, InvalidSignatureError):
        return "bad signature"
    if isinstance(error, InvalidAlgorithmError):
        return "algorithm not allowed for this key"
    if isinstance(error, InvalidAudienceError) or (
        isinstance(error, MissingRequiredClaimError) and error.claim == "aud"
    ):
        return "wrong audience"
    if isinstance(error, InvalidIssuerError) or (
        isinstance(error, MissingRequiredClaimError) and error.claim == "iss"
    ):
        return "wrong issuer"
    if isinstance(error, InvalidSubjectError):
        return "bad subject"
    if isinstance(error, InvalidJTIError):
        return "bad jti"
    if isinstance(error, DecodeError):
        return "malformed token"
    return f"rejected by JWT checks ({type(error).__name__})"


# -- issuing ----------------------------------------------------------------------------------


def make_token(
    subject: str,
    key: str | bytes | jwt.PyJWK | AllowedPrivateKeys,
    *,
    room: str | None = None,
    expires_in: float | None = 3600,
    kid: str | None = None,
    algorithm: str = "HS256",
    issued_at: float | None = None,
    not_before: float | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    name: str | None = None,
    now: float | None = None,
) -> str:
    """Issue a token (for tests and operators' tooling; ghostless itself only verifies).

    ``iat`` is ``issued_at`` or ``now``; ``expires_in=None`` issues a token without
    ``exp``, which no :class:`TokenVerifier` accepts.  Times are whole seconds.
    """
    now = time.time() if now is None else now
    issued_at = now if issued_at is None else issued_at
    claims: dict[str, Any] = {"sub": subject, "iat": math.floor(issued_at)}
    if expires_in is not None:
        claims["exp"] = math.floor(now + expires_in)
    if not_before is not None:
        claims["nbf"] = math.floor(not_before)
    optional = {"room": room, "aud": audience, "iss": issuer, "name": name}
    claims.update((claim, value) for claim, value in optional.items() if value is not None)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``python -m signalling.tokens --sub alice [--room demo]``: print a signed token."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m signalling.tokens",
        description="Print a JWT for ghostless's 'token' URL parameter, signed with a secret.",
    )
    parser.add_argument("--secret", help="the shared secret (default: $GHOSTLESS_TOKEN_SECRET)")
    parser.add_argument("--sub", required=True, help="the identity (userId) the token proves")
    parser.add_argument("--room", help="bind the token to this roomId")
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    parser.add_argument("--kid", help="key id, for a secret from the server's JWKS file")
    parser.add_argument("--alg", default="HS256", choices=("HS256", "HS384", "HS512"))
    parser.add_argument("--name", help="display name hint")
    parser.add_argument("--aud", help="audience (the server's --token-audience)")
    parser.add_argument("--iss", help="issuer (the server's --token-issuer)")
    args = parser.parse_args(argv)
    secret = args.secret if args.secret is not None else environ.get("GHOSTLESS_TOKEN_SECRET")
    if secret is None:
        parser.error("give --secret or set GHOSTLESS_TOKEN_SECRET")
    if not (math.isfinite(args.ttl) and args.ttl > 0):
        parser.error("--ttl must be a positive number of seconds")
    try:
        key = secret_key(secret, args.alg)
    except ValueError as exc:
        parser.error(str(exc))
    token = make_token(
        args.sub,
        key,
        room=args.room,
        expires_in=args.ttl,
        kid=args.kid,
        algorithm=args.alg,
        audience=args.aud,
        issuer=args.iss,
        name=args.name,
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
