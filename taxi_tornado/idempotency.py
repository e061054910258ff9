"""Idempotent requests: a keyed frame is handled at most once per (user, key).

A phone that sent `trip.request` and lost its link before the reply sends the same frame
again, with the same `key`, on its next socket, perhaps on another process. The first
frame claims the key (one round trip to where keys live), runs its handler, and the
answer, reply or error frame, is remembered for `limits.idempotency_ttl` seconds (a
second round trip). A repeat finds the claim in the same single round trip it would have
claimed with, and gets the remembered answer, `in_progress` while there is none yet, or
`key_reused` when its type or `data` differ. Nothing else happens for a repeat.

A claim carries a token of its own, and every way out of the handler settles it: the
answer is remembered, or the claim released, only while the key still holds that token
(a handler slower than CLAIM_LEASE lost its key to a retry, and must not overwrite the
retry's claim). A new claim may first be charged (`charge`: the user's budget of keyed
requests, limits.keyed_requests); a refused frame's claim is released, so it leaves
nothing behind, and a repeat answered from its key is never charged.

Keys live in the store (SQLite, MongoDB) with the in-process hub, and in Redis with the
Redis hub, where every process sees them (services.py chooses). Frames without a key,
and types that are not keyed, never come here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from taxi_tornado.hub.keys import HubKeys
from taxi_tornado.store import RequestKey

log = logging.getLogger("taxi_tornado.idempotency")

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
KEY_RULE = "`key` must be a string of 1 to 64 characters from A-Z a-z 0-9 _ - . :"
# How long a claim without an answer holds its key: a process that died mid-handler
# leaves one behind, and the key may be tried again once it lapses.
CLAIM_LEASE = 60.0
# What a claim's value in Redis holds after the fingerprint: the mark, then its token.
CLAIM_MARK = b"~"
# KEYS: the key. ARGV: the claim's value, the answer's, its ttl in ms. 1 when remembered.
REMEMBER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: the key. ARGV: the mark and the claim's token, what its value holds after the
# fingerprint (64 characters).
RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 65) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Error frames after which the same key may be tried again: they say nothing happened.
NOT_REMEMBERED = frozenset({"rate_limited", "in_progress", "internal"})
NO_REPLY = b"null"  # a handler that answers nothing is remembered as such
# JSON numbers are one kind: 1 and 1.0 compare equal. Floats up to 2**53 convert exactly.
EXACT_INTEGER = 2.0**53

Answer = dict[str, Any] | None


def valid_key(key: Any) -> bool:
    return isinstance(key, str) and KEY_PATTERN.fullmatch(key) is not None


class RequestKeys(Protocol):
    """Where keys live: the Store, or RedisKeys. One round trip per call."""

    async def claim_key(self, user_id: str, key: str, fingerprint: str,
                        lease: float, claim: str = "") -> RequestKey | None:
        """Claim the key for `lease` seconds with the token `claim` and return None; or,
        when it is claimed already (and not lapsed), return what it holds and change
        nothing."""

    async def remember_key(self, user_id: str, key: str, fingerprint: str, answer: bytes,
                           ttl: float, claim: str = "") -> bool:
        """Keep `answer` under the key for `ttl` seconds; given a `claim`, only while
        the key holds that claim. Whether it was kept."""

    async def release_key(self, user_id: str, key: str, claim: str = "") -> None:
        """Forget the key (given a `claim`, only while it holds that claim): the request
        may be tried again."""


class Idempotency:
    """The step around a keyed frame's handler, in front of a RequestKeys."""

    def __init__(self, keys: RequestKeys, ttl: float) -> None:
        self.keys = keys
        self.ttl = ttl

    async def answer(self, user_id: str, key: str, message_type: str, sent_type: str,
                     data: Any, handle: Callable[[], Awaitable[Answer]],
                     charge: Callable[[], Awaitable[Answer]] | None = None) -> Answer:
        """The answer to a keyed frame: `handle()`'s the first time, remembered after.

        `message_type` is the canonical type (an alias counts as its type), `sent_type`
        the one the frame named (for error frames). `charge`, when given, runs once the
        key is claimed anew, before `handle`: an answer from it is a refusal (answered,
        the claim released).
        """
        fingerprint = fingerprint_of(message_type, data)
        claim = uuid.uuid4().hex
        found = await self.keys.claim_key(user_id, key, fingerprint, CLAIM_LEASE, claim)
        if found is not None:
            return _repeat(found, fingerprint, sent_type)
        settled = False
        try:
            refusal = await charge() if charge is not None else None
            if refusal is not None:
                return refusal
            answer = await handle()
            kept = _kept(answer)
            if kept is not None:
                settled = True  # remembered, or (the keys failing) left to lapse
                await self._remember(user_id, key, fingerprint, kept, claim)
            return answer
        finally:
            if not settled:  # not to be remembered, or no answer at all: tried again
                await self._release(user_id, key, claim)

    async def _remember(self, user_id: str, key: str, fingerprint: str, kept: bytes,
                        claim: str) -> None:
        """The request was handled: it is answered whatever happens here."""
        try:
            if not await self.keys.remember_key(user_id, key, fingerprint, kept, self.ttl,
                                                claim):
                log.warning("key %r of user %s was claimed again while its request was "
                            "handled (past %s s): its answer is not remembered", key,
                            user_id, CLAIM_LEASE)
        except Exception:  # the claim lapses by itself, answerless (CLAIM_LEASE)
            log.exception("could not remember the answer under key %r of user %s", key,
                          user_id)

    async def _release(self, user_id: str, key: str, claim: str) -> None:
        try:
            await self.keys.release_key(user_id, key, claim)
        except Exception:  # the claim lapses by itself (CLAIM_LEASE)
            log.exception("could not release key %r of user %s", key, user_id)


def _kept(answer: Answer) -> bytes | None:
    """What a key keeps of `answer`; None for an error that says nothing happened. A
    malformed error frame, or an answer that is not JSON, raises (the caller releases)."""
    if answer is None:
        return NO_REPLY
    if answer.get("type") == "error" and answer["data"]["code"] in NOT_REMEMBERED:
        return None
    return orjson.dumps(answer)


def _repeat(found: RequestKey, fingerprint: str, sent_type: str) -> Answer:
    if found.fingerprint != fingerprint:
        return _error("key_reused", "This key was used before for another request: send a "
                      "new request with a new key.", sent_type)
    if found.answer is None:
        return _error("in_progress", "A request with this key is still being handled; "
                      "send it again shortly.", sent_type)
    answer: Answer = orjson.loads(found.answer)
    return answer


def _error(code: str, detail: str, for_type: str) -> dict[str, Any]:
    return {"type": "error", "data": {"code": code, "detail": detail, "for": for_type,
                                      "errors": {}}}


def fingerprint_of(message_type: str, data: Any) -> str:
    """A hash of the type and `data` as a JSON value: key order and the spelling of
    numbers (1, 1.0, 1e0) make no difference."""
    canonical = orjson.dumps(_same_numbers(data), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(message_type.encode() + b"\n" + canonical).hexdigest()


def _same_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {name: _same_numbers(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_same_numbers(item) for item in value]
    return value


class RedisKeys:
    """Keys in Redis (with the Redis hub): one string per (user, key), holding the
    fingerprint (64 hex characters) and, once answered, the answer after it. Named by
    hub/keys.py: in a Redis Cluster a user's keys share the user's hash tag."""

    def __init__(self, redis: Redis | RedisCluster, keys: HubKeys) -> None:
        self.redis = redis
        self._name = keys.request_key
        self._remember: AsyncScript | None = None
        self._release: AsyncScript | None = None

    async def claim_key(self, user_id: str, key: str, fingerprint: str,
                        lease: float, claim: str = "") -> RequestKey | None:
        # SET NX GET (Redis 7): claims an absent key, or returns what is there and sets
        # nothing; a lapsed claim is gone already (PX), so it is claimed anew.
        found = await self.redis.set(self._name(user_id, key), _claimed(fingerprint, claim),
                                     nx=True, px=int(lease * 1000), get=True)
        if found is None:
            return None
        held = found if isinstance(found, bytes) else str(found).encode()
        answer = held[64:]
        return RequestKey(held[:64].decode(),
                          None if not answer or answer.startswith(CLAIM_MARK) else answer)

    async def remember_key(self, user_id: str, key: str, fingerprint: str, answer: bytes,
                           ttl: float, claim: str = "") -> bool:
        name, value = self._name(user_id, key), fingerprint.encode() + answer
        if not claim:
            await self.redis.set(name, value, px=int(ttl * 1000))
            return True
        if self._remember is None:
            self._remember = self.redis.register_script(REMEMBER)
        held = _claimed(fingerprint, claim)
        return bool(await self._remember(keys=[name], args=[held, value, int(ttl * 1000)]))

    async def release_key(self, user_id: str, key: str, claim: str = "") -> None:
        name = self._name(user_id, key)
        if not claim:
            await self.redis.delete(name)
            return
        if self._release is None:
            self._release = self.redis.register_script(RELEASE)
        await self._release(keys=[name], args=[CLAIM_MARK + claim.encode()])


def _claimed(fingerprint: str, claim: str) -> bytes:
    """A claim's value in Redis: the fingerprint, then (with a token) the mark and it."""
    return fingerprint.encode() + (CLAIM_MARK + claim.encode() if claim else b"")
