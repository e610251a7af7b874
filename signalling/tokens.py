"""Verifying the optional ``token`` URL parameter (JWT, HS256, RFC 7519).

When a secret is configured, a connection's identity is the token's ``sub``
claim, so nobody can take over another user's session by claiming their
``userId``.  Only HS256 is accepted (no ``alg: none``, no algorithm confusion).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time

_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class InvalidToken(Exception):
    """The token is malformed, badly signed or expired (never says which to clients)."""


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("bad base64") from exc


def verify_token(token: str, secret: str, now: float | None = None) -> str:
    """Return the verified subject of ``token``; raise ``InvalidToken`` otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_BASE64URL.match(part) for part in parts):
        raise InvalidToken("not a JWT")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = json.loads(_b64decode(header_b64))
        payload = json.loads(_b64decode(payload_b64))
    except (ValueError, RecursionError) as exc:
        raise InvalidToken("bad JSON") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise InvalidToken("algorithm must be HS256")
    expected = hmac.new(
        secret.encode(), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(expected, _b64decode(signature_b64)):
        raise InvalidToken("bad signature")
    if not isinstance(payload, dict):
        raise InvalidToken("payload must be an object")
    now = time.time() if now is None else now
    exp = payload.get("exp")
    if exp is not None and (
        not isinstance(exp, (int, float)) or not math.isfinite(exp) or now >= exp
    ):
        raise InvalidToken("expired")
    nbf = payload.get("nbf")
    if nbf is not None and (not isinstance(nbf, (int, float)) or now < nbf):
        raise InvalidToken("not yet valid")
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("no subject")
    return subject


def make_token(subject: str, secret: str, *, expires_in: float | None = 3600) -> str:
    """Issue a token (for tests and for operators' own tooling)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims: dict[str, object] = {"sub": subject}
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(signature.digest())}"
