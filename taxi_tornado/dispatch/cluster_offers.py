"""The offer book in a Redis Cluster: each trip's keys carry the trip's hash tag, so
every change of a dispatch is one script on one shard (the shard of the trip's group).

Keys (names from hub/keys.py): per trip `trip`, `offers`, `excluded` and `lease`, as with
one Redis; per driver `held` (trip -> expiry); shared `active`. With one Redis the round,
decline and finish scripts also keep `held` and `active`; here those live on other
shards, so the script changes the trip alone and the indexes follow in one pipeline (a
round's new holders at the same time as its script, so the first offer waits for one
round trip, as with one Redis). They are indexes only: `holds` reads the trip's own
offers, `held_by` checks each trip `held` names against its offers (an entry of a round
that ended, or never began, is not an offer held; expired ones are pruned), and an
`active` entry whose trip is gone (its process died mid-finish) is dropped once its
deadline passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from taxi_tornado.dispatch.offers import Dispatching
from taxi_tornado.dispatch.redis_offers import RedisOfferBook, _ms, _text
from taxi_tornado.hub.keys import HubKeys

log = logging.getLogger("taxi_tornado.dispatch")

BEGIN_ROUND = """
if redis.call('HGET', KEYS[1], 'round') ~= ARGV[1] then return false end
local ended = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(ended) do redis.call('SADD', KEYS[3], id) end
redis.call('DEL', KEYS[2])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'round', tonumber(ARGV[1]) + 1, 'radius', ARGV[2], 'ends', ARGV[3])
return ended
"""

DECLINE = """
if not redis.call('HGET', KEYS[1], 'round') then return -1 end
local expires = redis.call('HGET', KEYS[2], ARGV[1])
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return redis.call('HLEN', KEYS[2])
"""

FINISH = """
if not redis.call('HGET', KEYS[1], 'round') then return false end
local holders = redis.call('HKEYS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return holders
"""


class ClusterOfferBook(RedisOfferBook):
    def __init__(self, redis: Redis | RedisCluster, keys: HubKeys) -> None:
        super().__init__(redis, keys.prefix)
        self.keys = keys
        self._active = keys.dispatch_shared("active")
        self._begin_round = redis.register_script(BEGIN_ROUND)
        self._decline = redis.register_script(DECLINE)
        self._finish = redis.register_script(FINISH)

    def _keys(self, trip_id: str) -> list[str]:
        trip = self.keys.dispatch_trip
        return [trip("trip", trip_id), trip("offers", trip_id), trip("excluded", trip_id)]

    def _lease_key(self, trip_id: str) -> str:
        return self.keys.dispatch_trip("lease", trip_id)

    def _held_key(self, driver_id: str) -> str:
        return self.keys.dispatch_driver("held", driver_id)

    async def open(self, dispatching: Dispatching, node: str, lease_s: float) -> None:
        trip_id = dispatching.trip_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self._keys(trip_id)[0], mapping={
            "rider": dispatching.rider_id, "lat": repr(dispatching.lat),
            "lng": repr(dispatching.lng), "base": dispatching.base_url,
            "deadline": _ms(dispatching.deadline), "round": 0, "radius": 0, "ends": 0,
        })
        pipe.set(self._lease_key(trip_id), node, px=_ms(lease_s))
        pipe.zadd(self._active, {trip_id: _ms(dispatching.deadline)})
        await pipe.execute()

    async def begin_round(self, trip_id: str, expected_round: int, radius_m: float,
                          offers: Mapping[str, float], round_ends: float) -> list[str] | None:
        """The round's script and the new holders' index entries at once (one round trip,
        as with one Redis: the first offer waits for it). An entry whose round did not
        begin, or ended, is never an offer held (held_by checks), and is pruned once
        expired."""
        pairs: list[Any] = []
        for driver_id, expires in offers.items():
            pairs += (driver_id, _ms(expires))
        pipe = self.redis.pipeline(transaction=False)
        now = _ms(time.time())
        for driver_id, expires in offers.items():
            held = self._held_key(driver_id)
            pipe.zremrangebyscore(held, "-inf", now)  # what earlier rounds left behind
            pipe.zadd(held, {trip_id: _ms(expires)})
        ended, _ = await asyncio.gather(
            self._begin_round(self._keys(trip_id),
                              [expected_round, repr(radius_m), _ms(round_ends), *pairs]),
            self._follow(pipe, trip_id))
        if ended is None:
            return None
        return [_text(driver_id) for driver_id in ended]

    async def decline(self, trip_id: str, driver_id: str) -> int | None:
        left = int(await self._decline(self._keys(trip_id), [driver_id, _ms(time.time())]))
        if left < 0:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self._held_key(driver_id), trip_id)
        await self._follow(pipe, trip_id)
        return left

    async def holds(self, trip_id: str, driver_id: str) -> bool:
        expires = await self.redis.hget(self._keys(trip_id)[1], driver_id)
        return expires is not None and int(expires) > _ms(time.time())

    async def held_by(self, driver_id: str) -> set[str]:
        now = _ms(time.time())
        listed = [_text(trip_id) for trip_id in await self.redis.zrangebyscore(
            self._held_key(driver_id), f"({now}", "+inf")]
        if not listed:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for trip_id in listed:
            pipe.hget(self._keys(trip_id)[1], driver_id)
        offers = await pipe.execute()
        return {trip_id for trip_id, expires in zip(listed, offers, strict=True)
                if expires is not None and int(expires) > now}

    async def finish(self, trip_id: str) -> list[str] | None:
        holders = await self._finish([*self._keys(trip_id), self._lease_key(trip_id)], [])
        if holders is None:
            return None
        drivers = [_text(driver_id) for driver_id in holders]
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self._active, trip_id)
        for driver_id in drivers:
            pipe.zrem(self._held_key(driver_id), trip_id)
        await self._follow(pipe, trip_id)
        return drivers

    async def unleased(self) -> list[str]:
        """Open dispatches without a lease; entries of finished ones past their deadline
        (their process died before it could drop them) are dropped."""
        active = cast(list[tuple[bytes, float]],
                      await self.redis.zrange(self._active, 0, -1, withscores=True))
        if not active:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for trip_id, _ in active:
            pipe.exists(self._lease_key(_text(trip_id)))
            pipe.exists(self._keys(_text(trip_id))[0])
        found = await pipe.execute()
        now = _ms(time.time())
        lapsed, gone = [], []
        for index, (trip_id, deadline) in enumerate(active):
            leased, opened = found[2 * index], found[2 * index + 1]
            if not opened:
                if deadline < now:
                    gone.append(_text(trip_id))
            elif not leased:
                lapsed.append(_text(trip_id))
        if gone:
            await self.redis.zrem(self._active, *gone)
        return lapsed

    async def _follow(self, pipe: Any, trip_id: str) -> None:
        """The indexes' half of a change the trip's script made: logged, not raised, if it
        fails (the change stands; the indexes are checked against the trip)."""
        try:
            await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("dispatch: the offer indexes of trip %s lag (%s); they are checked "
                        "against the trip", trip_id, error)
