"""The offer book in Redis (for the Redis hub): every process reads and changes the same
dispatches, each change one Lua script, so that it is atomic.

Keys, under `<hub.prefix>:dispatch:`: `trip:<id>` (a hash: rider, position, deadline,
round, radius, round end), `offers:<id>` (a hash: driver -> expiry in ms), `excluded:<id>`
(a set), `held:<driver>` (a sorted set: trip -> expiry, for what a driver may see),
`lease:<id>` (the node driving the trip, with an expiry), and `active` (a sorted set of
the open dispatches, which every process scans for lapsed leases).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis, RedisCluster

from taxi_tornado.dispatch.offers import Dispatching, OfferBook

BEGIN_ROUND = """
if redis.call('HGET', KEYS[1], 'round') ~= ARGV[1] then return false end
local ended = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(ended) do
  redis.call('SADD', KEYS[3], id)
  redis.call('ZREM', ARGV[4] .. id, ARGV[5])
end
redis.call('DEL', KEYS[2])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', ARGV[4] .. ARGV[i], ARGV[i + 1], ARGV[5])
end
redis.call('HSET', KEYS[1], 'round', tonumber(ARGV[1]) + 1, 'radius', ARGV[2], 'ends', ARGV[3])
return ended
"""

DECLINE = """
if not redis.call('HGET', KEYS[1], 'round') then return -1 end
local expires = redis.call('HGET', KEYS[2], ARGV[1])
if not expires or tonumber(expires) <= tonumber(ARGV[2]) then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZREM', ARGV[3] .. ARGV[1], ARGV[4])
return redis.call('HLEN', KEYS[2])
"""

FINISH = """
if not redis.call('HGET', KEYS[1], 'round') then return false end
local holders = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(holders) do redis.call('ZREM', ARGV[1] .. id, ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
redis.call('ZREM', KEYS[4], ARGV[2])
return holders
"""

LEASE = """
if not redis.call('HGET', KEYS[2], 'round') then return 0 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisOfferBook(OfferBook):
    def __init__(self, redis: Redis | RedisCluster, prefix: str) -> None:
        self.redis = redis
        self._prefix = f"{prefix}:dispatch:"
        self._active = self._prefix + "active"
        self._held = self._prefix + "held:"
        self._begin_round = redis.register_script(BEGIN_ROUND)
        self._decline = redis.register_script(DECLINE)
        self._finish = redis.register_script(FINISH)
        self._lease = redis.register_script(LEASE)
        self._release = redis.register_script(RELEASE)

    def _keys(self, trip_id: str) -> list[str]:
        p = self._prefix
        return [f"{p}trip:{trip_id}", f"{p}offers:{trip_id}", f"{p}excluded:{trip_id}"]

    def _lease_key(self, trip_id: str) -> str:
        return f"{self._prefix}lease:{trip_id}"

    async def open(self, dispatching: Dispatching, node: str, lease_s: float) -> None:
        trip_key = self._keys(dispatching.trip_id)[0]
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(trip_key, mapping={
            "rider": dispatching.rider_id, "lat": repr(dispatching.lat),
            "lng": repr(dispatching.lng), "base": dispatching.base_url,
            "deadline": _ms(dispatching.deadline), "round": 0, "radius": 0, "ends": 0,
        })
        pipe.zadd(self._active, {dispatching.trip_id: _ms(dispatching.deadline)})
        pipe.set(self._lease_key(dispatching.trip_id), node, px=_ms(lease_s))
        await pipe.execute()

    async def get(self, trip_id: str) -> Dispatching | None:
        trip_key, offers_key, excluded_key = self._keys(trip_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(trip_key)
        pipe.hgetall(offers_key)
        pipe.smembers(excluded_key)
        fields, offers, excluded = await pipe.execute()
        if not fields or b"round" not in fields:
            return None
        return Dispatching(
            trip_id=trip_id,
            rider_id=fields[b"rider"].decode(),
            lat=float(fields[b"lat"]),
            lng=float(fields[b"lng"]),
            base_url=fields[b"base"].decode(),
            deadline=int(fields[b"deadline"]) / 1000,
            round=int(fields[b"round"]),
            radius_m=float(fields[b"radius"]),
            round_ends=int(fields[b"ends"]) / 1000,
            offers={key.decode(): int(value) / 1000 for key, value in offers.items()},
            excluded=frozenset(member.decode() for member in excluded),
        )

    async def begin_round(self, trip_id: str, expected_round: int, radius_m: float,
                          offers: Mapping[str, float], round_ends: float) -> list[str] | None:
        pairs: list[Any] = []
        for driver_id, expires in offers.items():
            pairs += (driver_id, _ms(expires))
        ended = await self._begin_round(
            self._keys(trip_id),
            [expected_round, repr(radius_m), _ms(round_ends), self._held, trip_id, *pairs])
        return None if ended is None else [_text(driver_id) for driver_id in ended]

    async def decline(self, trip_id: str, driver_id: str) -> int | None:
        left = int(await self._decline(self._keys(trip_id),
                                       [driver_id, _ms(time.time()), self._held, trip_id]))
        return None if left < 0 else left

    async def holds(self, trip_id: str, driver_id: str) -> bool:
        expires = await self.redis.zscore(self._held + driver_id, trip_id)
        return expires is not None and expires > _ms(time.time())

    async def held_by(self, driver_id: str) -> set[str]:
        trips = await self.redis.zrangebyscore(self._held + driver_id,
                                               f"({_ms(time.time())}", "+inf")
        return {_text(trip_id) for trip_id in trips}

    async def finish(self, trip_id: str) -> list[str] | None:
        keys = [*self._keys(trip_id), self._active, self._lease_key(trip_id)]
        holders = await self._finish(keys, [self._held, trip_id])
        return None if holders is None else [_text(driver_id) for driver_id in holders]

    async def lease(self, trip_id: str, node: str, lease_s: float) -> bool:
        taken = await self._lease([self._lease_key(trip_id), self._keys(trip_id)[0]],
                                  [node, _ms(lease_s)])
        return bool(taken)

    async def release(self, trip_id: str, node: str) -> None:
        await self._release([self._lease_key(trip_id)], [node])

    async def unleased(self) -> list[str]:
        trips = [_text(trip_id) for trip_id in await self.redis.zrange(self._active, 0, -1)]
        if not trips:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for trip_id in trips:
            pipe.exists(self._lease_key(trip_id))
        leased = await pipe.execute()
        return [trip_id for trip_id, held in zip(trips, leased, strict=True) if not held]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
