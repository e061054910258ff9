"""The expiry of an access token, read from the JWT without verifying it: the client
only needs to know when to ask for a new one; the server does the checking."""

from __future__ import annotations

import base64
import binascii

import orjson


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
