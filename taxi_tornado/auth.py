"""Passwords (argon2) and the JWT access/refresh pair of docs/protocol.md, "Tokens"."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from taxi_tornado.settings import AuthSettings
from taxi_tornado.store import STAFF, User, photo_url

T = TypeVar("T")

ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"

# OWASP's first argon2id choice (Password Storage Cheat Sheet): 19 MiB, two passes, one
# lane. README.md, "Passwords", says why; hashes made with other parameters (the library's
# 64 MiB default before) still verify, as every hash carries its own.
_hasher = PasswordHasher(memory_cost=19 * 1024, time_cost=2, parallelism=1)
# A real hash to verify against when the username is unknown, so that a failed log-in
# takes as long whether or not the user exists.
_DUMMY_HASH = _hasher.hash("not a password of anybody")
# Hashes run at once: hashing is CPU-bound, so more threads than cores only add memory.
HASH_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Hashes running or queued past which a log-in or sign-up is refused (429) at once.
HASH_QUEUE = 32


class AtobSafeEncoder(json.JSONEncoder):
    """JSON whose base64url form has no `-` or `_`, so that browsers' atob() decodes it.

    The course's React client reads the token payload with plain atob(), which rejects
    base64url's two extra letters. In ASCII JSON they come only from `>`, `?`, `~` and
    DEL; written as \\u escapes they cannot appear. Non-ASCII is escaped already.
    """

    def encode(self, o: Any) -> str:
        text = super().encode(o)
        for char, escape in _ATOB_ESCAPES:
            text = text.replace(char, escape)
        return text


_ATOB_ESCAPES = ((">", "\\u003e"), ("?", "\\u003f"), ("~", "\\u007e"), ("\x7f", "\\u007f"))


class InvalidToken(Exception):
    """The token is missing, malformed, badly signed, expired or of the wrong type."""


class HashingBusy(Exception):
    """Too many password hashes are running or queued; the caller should come back."""


class HashingPool:
    """Argon2 off the IOLoop, in threads of its own, at most `workers` at once.

    Each hash holds its memory cost while it runs, so the cap bounds memory; and because
    the threads are not the loop's default executor, a log-in flood never queues the
    photo reads and other blocking work that use that executor. More than `queue`
    hashes running or waiting raises HashingBusy rather than making everyone wait.
    """

    def __init__(self, workers: int = HASH_WORKERS, queue: int = HASH_QUEUE) -> None:
        self.workers = workers
        self.queue = queue
        self.pending = 0
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="taxi-argon2")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self.pending >= self.queue:
            raise HashingBusy()
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, function, *args)
        finally:
            self.pending -= 1


_pool = HashingPool()


async def hash_password(password: str) -> str:
    """Hash off the IOLoop: argon2 is deliberately slow. HashingBusy when overloaded."""
    return await _pool.run(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; HashingBusy when overloaded."""
    return await _pool.run(_verify, password_hash or _DUMMY_HASH, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password) and password_hash is not _DUMMY_HASH
    except (VerificationError, InvalidHashError):
        return False


class TokenAuthority:
    """Issues and verifies the HS256 tokens for one deployment's settings."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.key = settings.secret_key
        self.id_claim = settings.user_id_claim
        self.leeway = settings.leeway

    def issue_pair(self, user: User, base_url: str) -> dict[str, str]:
        return {"access": self.issue_access(user, base_url), "refresh": self.issue_refresh(user.id)}

    def issue_access(self, user: User, base_url: str) -> str:
        claims = self._claims(ACCESS, user.id, self.settings.access_ttl)
        claims.update(
            username=user.username,
            first_name=user.first_name,
            last_name=user.last_name,
            group=user.group,
            photo=photo_url(base_url, user.photo),
        )
        if user.group == STAFF:
            claims["staff"] = True  # docs/protocol.md, Operators: only staff tokens carry it
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, json_encoder=AtobSafeEncoder)

    def issue_refresh(self, user_id: str) -> str:
        return jwt.encode(self._claims(REFRESH, user_id, self.settings.refresh_ttl), self.key,
                          algorithm=ALGORITHM)

    def _claims(self, token_type: str, user_id: str, ttl: int) -> dict[str, Any]:
        issued = int(time.time())
        return {
            "token_type": token_type,
            "exp": issued + ttl,
            "iat": issued,
            "jti": uuid.uuid4().hex,
            self.id_claim: user_id,
        }

    def verify(self, token: str | None, token_type: str = ACCESS, *,
               exp_leeway: float | None = None) -> dict[str, Any]:
        """The token's claims, or InvalidToken; only `token_type` tokens pass.

        `exp_leeway` narrows how long past `exp` a token still passes (auth.leeway
        unless given; 0 on a live socket, where the refresh grace stands in for it);
        `iat` and `nbf` always get auth.leeway, for the clocks of two hosts differ.
        """
        if not token:
            raise InvalidToken("no token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "iat", "jti", "token_type", self.id_claim]},
                leeway=self.leeway,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        # PyJWT 2.x refuses an iat in the future (beyond the leeway), but not every
        # version did: the protocol's rule does not hang on the installed one.
        if _seconds(claims["iat"]) > time.time() + self.leeway:
            raise InvalidToken("issued in the future")
        if exp_leeway is not None and _seconds(claims["exp"]) <= time.time() - exp_leeway:
            raise InvalidToken("expired")
        if claims.get("token_type") != token_type:
            raise InvalidToken(f"not an {token_type} token")
        if not isinstance(claims.get(self.id_claim), str):
            raise InvalidToken("the user id claim is not a string")
        return claims

    def user_id(self, claims: dict[str, Any]) -> str:
        return str(claims[self.id_claim])


def _seconds(value: Any) -> float:
    """A NumericDate claim as seconds; a value that is not one is an invalid token."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("a time claim is not a number")
    return float(value)


def token_from_request(
    authorization: str | None, query_token: str | None, subprotocol_token: str | None = None
) -> str | None:
    """The access token of a request: `Authorization: Bearer …`, else the socket's
    `bearer.<token>` subprotocol, else `?token=…`. The first place given wins, even with
    a bad token: no fall-back."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if subprotocol_token is not None:
        return subprotocol_token or None
    return query_token or None
