"""The expiry of an access token, read from the JWT without verifying it: the client
only needs to know when to ask for a new one; the server does the checking."""

from __future__ import annotations

import base64
import binascii

import orjson

from taxi_tornado.client.errors import TaxiError
from taxi_tornado.client.redact import is_token_shaped

_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def check_token(token: str) -> None:
    """Raise TaxiError `bad_token` unless `token` is a JWT that can travel as the
    `bearer.<token>` subprotocol. The message says what is wrong and where, never the
    token: it ends up in logs."""
    if is_token_shaped(token):
        return
    stray = next((i for i, char in enumerate(token) if char not in _ALLOWED), None)
    if stray is not None:
        what = f"{token[stray]!r} at position {stray} of {len(token)}"
    else:
        what = f"{token.count('.') + 1} dot-separated parts"
    raise TaxiError("bad_token", f"get_token() gave a token with {what}; an access token "
                                 "is a JWT: three base64url parts joined by dots")


def token_expiry(token: str) -> float | None:
    """The `exp` claim of `token` in seconds since the epoch, or None when the token has
    no readable `exp` (the client then never refreshes ahead and relies on
    `auth.expired`)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)
