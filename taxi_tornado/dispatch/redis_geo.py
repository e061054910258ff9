"""The shared location index on Redis GEO (for the Redis hub): every process sees every
driver.

Keys, under `<hub.prefix>:dispatch:`:
- `geo` (GEOADD) and `seen` (a sorted set of report times in ms): positions;
- `headings` (a hash): the last heading of each driver;
- `drv:<id>` (a hash): `n:<node>` = "1" or "2" (the highest protocol version the driver
  has open on that process), `off` when their status is unavailable, `busy` when on a trip;
- `connected` (a set), `node:<node>` (a set of the drivers connected on that process),
  `nodes` (a sorted set of heartbeats): so that the drivers of a process that died
  without closing its sockets are forgotten by the others.

Reports are written behind: the positions reported within FLUSH_DELAY_S leave in one
pipeline, so that thousands of `driver.location` frames a second cost a few round trips
(a query on this process writes what is pending first, so it never misses a report).
Positions are compared with wall-clock time: the processes' clocks must agree to well
within `dispatch.location_ttl` (NTP does that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from taxi_tornado.dispatch.locations import (
    Census,
    LocatedDriver,
    LocationIndex,
    NearbyDriver,
)

log = logging.getLogger("taxi_tornado.dispatch")

# A process whose heartbeat is older than this is taken for dead: its drivers' presence
# is dropped (their positions stopped counting long before: they are no longer reported).
NODE_TIMEOUT_MS = 30_000
PURGE_BATCH = 1000
FLUSH_DELAY_S = 0.05

Report = tuple[float, float, float | None, int]  # lat, lng, heading, when (ms)

LEAVE = """
local field = 'n:' .. ARGV[1]
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], field, ARGV[3])
  return 0
end
redis.call('HDEL', KEYS[1], field)
redis.call('SREM', KEYS[2], ARGV[2])
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 2) == 'n:' then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('SREM', KEYS[6], ARGV[2])
return 1
"""

REAP = """
local field = 'n:' .. ARGV[1]
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[2] .. id
  redis.call('HDEL', key, field)
  local left = false
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if string.sub(name, 1, 2) == 'n:' then left = true end
  end
  if not left then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('SREM', KEYS[5], id)
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[6], ARGV[1])
return 1
"""

# Shared by NEAREST and CENSUS: 2 = offerable (a v2 connection), 1 = available over v1
# only, 0 = not available (not connected, unavailable or busy).
DRIVER_STATE = """
local function driver_state(key)
  local state = redis.call('HGETALL', key)
  local best = 0
  for j = 1, #state, 2 do
    local name = state[j]
    if name == 'off' or name == 'busy' then return 0 end
    if string.sub(name, 1, 2) == 'n:' then
      if state[j + 1] == '2' then best = 2 elseif best == 0 then best = 1 end
    end
  end
  return best
end
"""

NEAREST = DRIVER_STATE + """
local want = tonumber(ARGV[4])
local fresh = tonumber(ARGV[5])
local need = tonumber(ARGV[6])
local skip = {}
for i = 8, #ARGV do skip[ARGV[i]] = true end
local fetch = want * 2 + (#ARGV - 7) + 8
local radius = tonumber(ARGV[3])
local r = radius / 8
-- Small circles are searched whole; and a radius so tiny that an eighth of it is 0 must
-- never be doubled from 0 (that loop would not end, and Redis would answer BUSY).
if not (r >= 100) then r = radius end
while true do
  if r > radius then r = radius end
  local hits = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                          'BYRADIUS', r, 'm', 'ASC', 'COUNT', fetch,
                          'WITHDIST', 'WITHCOORD')
  if #hits < fetch and r < radius then
    -- GEOSEARCH sorts every member of its circle: in a dense city, a small circle
    -- that already holds `fetch` drivers is far cheaper than the whole radius.
    r = r * 2
  else
    local out = {}
    for _, hit in ipairs(hits) do
      local id = hit[1]
      if not skip[id] then
        local seen = redis.call('ZSCORE', KEYS[2], id)
        if seen and tonumber(seen) >= fresh and driver_state(ARGV[7] .. id) >= need then
          out[#out + 1] = {id, hit[2], hit[3][1], hit[3][2], redis.call('HGET', KEYS[3], id) or ''}
          if #out >= want then return out end
        end
      end
    end
    if #hits < fetch then return out end
    fetch = fetch * 4
  end
end
"""

CENSUS = DRIVER_STATE + """
local available = 0
local located = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf')
for _, id in ipairs(located) do
  if driver_state(ARGV[2] .. id) > 0 then available = available + 1 end
end
return {redis.call('SCARD', KEYS[1]), #located, available}
"""

# The operators' map: fresh positions with each driver's state, in one round trip.
LOCATED = """
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local place = redis.call('GEOPOS', KEYS[2], id)[1]
  if place then
    local connected, off, busy = false, false, false
    local flags = redis.call('HGETALL', ARGV[3] .. id)
    for j = 1, #flags, 2 do
      local name = flags[j]
      if name == 'off' then off = true
      elseif name == 'busy' then busy = true
      elseif string.sub(name, 1, 2) == 'n:' then connected = true end
    end
    local state = 'available'
    if busy then state = 'busy' elseif off or not connected then state = 'unavailable' end
    out[#out + 1] = {id, place[1], place[2], redis.call('HGET', KEYS[3], id) or '', state}
  end
end
return out
"""

PURGE = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #stale
"""


class RedisLocationIndex(LocationIndex):
    """Positions in one Redis GEO set; presence per process, so a crash is noticed."""

    def __init__(self, redis: Redis | RedisCluster, prefix: str, node: str,
                 ttl: float) -> None:
        super().__init__(ttl)
        self.redis = redis
        self.node = node
        self._prefix = f"{prefix}:dispatch:"
        self._geo = self._prefix + "geo"
        self._seen = self._prefix + "seen"
        self._headings = self._prefix + "headings"
        self._connected = self._prefix + "connected"
        self._nodes = self._prefix + "nodes"
        self._drv = self._prefix + "drv:"
        self._local: dict[str, list[int]] = {}  # driver -> [v1 sockets, v2 sockets] here
        # Presence writes keep each driver's order (a socket's open and close must reach
        # Redis in that order), not one order for everybody: a global lock held across
        # a round trip made a storm of reconnecting drivers queue one by one (a rolling
        # restart's 2,500 sockets took 14-28 s to get back in). An announce, which writes
        # every driver, waits for the writes in flight and holds new ones back.
        self._driver_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._announcing = asyncio.Lock()
        self._writes = 0
        self._no_writes = asyncio.Event()
        self._no_writes.set()
        self._pending: dict[str, Report] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._flush_now = asyncio.Event()
        self._failing = False
        self._leave = redis.register_script(LEAVE)
        self._reap = redis.register_script(REAP)
        self._nearest_script = redis.register_script(NEAREST)
        self._census = redis.register_script(CENSUS)
        self._located = redis.register_script(LOCATED)
        self._purge = redis.register_script(PURGE)

    def _node_set(self, node: str) -> str:
        return f"{self._prefix}node:{node}"

    def _drv_key(self, driver_id: str) -> str:
        return self._drv + driver_id

    async def stop(self) -> None:
        await self._written()
        try:
            await self.redis.zrem(self._nodes, self.node)
        except RedisError as error:
            log.warning("dispatch: could not sign this process off in Redis: %s", error)

    # Presence

    @contextlib.asynccontextmanager
    async def _in_order(self, driver_id: str) -> AsyncIterator[None]:
        """Hold `driver_id`'s presence writes in order, and out of an announce's way."""
        async with self._announcing:  # no wait unless an announce is running
            self._writes += 1
            self._no_writes.clear()
        entry = self._driver_locks.get(driver_id)
        if entry is None:
            entry = self._driver_locks[driver_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._driver_locks[driver_id]
            self._writes -= 1
            if not self._writes:
                self._no_writes.set()

    async def connect(self, driver_id: str, version: int, busy: bool = False) -> None:
        async with self._in_order(driver_id):
            counts = self._local.setdefault(driver_id, [0, 0])
            before = _highest(counts)
            counts[1 if version >= 2 else 0] += 1
            after = _highest(counts)
            if after == before:
                await self.set_busy(driver_id, busy)
                return
            key = self._drv_key(driver_id)
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, f"n:{self.node}", str(after))
            if busy:
                pipe.hset(key, "busy", "1")
            else:
                pipe.hdel(key, "busy")
            pipe.sadd(self._connected, driver_id)
            pipe.sadd(self._node_set(self.node), driver_id)
            await pipe.execute()

    async def disconnect(self, driver_id: str, version: int) -> bool:
        async with self._in_order(driver_id):
            counts = self._local.get(driver_id)
            if counts is None:
                return False
            before = _highest(counts)
            slot = 1 if version >= 2 else 0
            counts[slot] = max(0, counts[slot] - 1)
            after = _highest(counts)
            if not after:
                del self._local[driver_id]
            if after == before:
                return False
            if after:
                await self.redis.hset(self._drv_key(driver_id), f"n:{self.node}", str(after))
                return False
            await self._written()  # a report still on its way must not outlive the driver
            return await self._gone(driver_id)

    async def _gone(self, driver_id: str) -> bool:
        """The driver's last socket here closed: leave their presence, and forget them
        if it was their last anywhere (True)."""
        keys = [self._drv_key(driver_id), self._node_set(self.node), self._geo, self._seen,
                self._headings, self._connected]
        return bool(await self._leave(keys, [self.node, driver_id, ""]))

    # Reports

    async def _put(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        self._pending[driver_id] = (lat, lng, heading, _now_ms())
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Write what was reported, one pipeline at a time, until nothing is left."""
        try:
            with contextlib.suppress(TimeoutError):  # let more reports join
                await asyncio.wait_for(self._flush_now.wait(), FLUSH_DELAY_S)
            self._flush_now.clear()
            while self._pending:
                batch, self._pending = self._pending, {}
                await self._write(batch)
        finally:
            self._flushing = None

    async def _write(self, batch: dict[str, Report]) -> None:
        try:
            await self._store(batch)
        except (RedisError, OSError) as error:
            if not self._failing:
                self._failing = True
                log.warning("dispatch: could not record %d driver positions in Redis (%s); "
                            "they are dropped until Redis answers", len(batch), error)
            return
        if self._failing:
            self._failing = False
            log.warning("dispatch: driver positions reach Redis again")

    async def _store(self, batch: dict[str, Report]) -> None:
        """One pipeline: every position of the batch, its report time and heading."""
        places: list[Any] = []
        seen: dict[str, int] = {}
        headings: dict[str, str] = {}
        for driver_id, (lat, lng, heading, at) in batch.items():
            places += (lng, lat, driver_id)
            seen[driver_id] = at
            headings[driver_id] = "" if heading is None else repr(heading)
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("GEOADD", self._geo, *places)
        pipe.zadd(self._seen, seen)
        pipe.hset(self._headings, mapping=headings)  # type: ignore[arg-type]
        await pipe.execute()

    async def _written(self) -> None:
        """Wait until every report made so far is in Redis (writing them now)."""
        flushing = self._flushing
        if flushing is not None:
            self._flush_now.set()
            await asyncio.shield(flushing)

    async def forget(self, driver_id: str) -> None:
        await self._written()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self._geo, driver_id)
        pipe.zrem(self._seen, driver_id)
        pipe.hdel(self._headings, driver_id)
        pipe.hdel(self._drv_key(driver_id), "off", "busy")
        await pipe.execute()

    async def set_available(self, driver_id: str, available: bool) -> None:
        await self._flag(driver_id, "off", not available)

    async def set_busy(self, driver_id: str, busy: bool) -> None:
        await self._flag(driver_id, "busy", busy)

    async def _flag(self, driver_id: str, name: str, on: bool) -> None:
        if on:
            await self.redis.hset(self._drv_key(driver_id), name, "1")
        else:
            await self.redis.hdel(self._drv_key(driver_id), name)

    # Queries

    async def _nearest(self, lat: float, lng: float, radius_m: float, count: int,
                       exclude: Collection[str], v2_only: bool) -> list[NearbyDriver]:
        await self._written()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        rows = await self._nearest_script(
            [self._geo, self._seen, self._headings],
            [lng, lat, radius_m, count, fresh_since, 2 if v2_only else 1, self._drv,
             *exclude],
        )
        return [NearbyDriver(_text(row[0]), float(row[1]), float(row[3]), float(row[2]),
                             float(row[4]) if row[4] else None) for row in rows]

    async def census(self) -> Census:
        await self._written()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        connected, located, available = await self._census(
            [self._connected, self._seen], [fresh_since, self._drv])
        return Census(int(connected), int(located), int(available))

    async def located(self, limit: int) -> list[LocatedDriver]:
        await self._written()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        rows = await self._located([self._seen, self._geo, self._headings],
                                   [fresh_since, limit, self._drv])
        return [LocatedDriver(_text(row[0]), float(row[2]), float(row[1]),
                              float(row[3]) if row[3] else None, _text(row[4]))
                for row in rows]

    async def maintain(self) -> None:
        """Heartbeat, forget the drivers of dead processes, drop expired positions."""
        now = _now_ms()
        if await self.redis.zadd(self._nodes, {self.node: now}):
            await self._announce()  # new, or taken for dead while we were away
        for dead in await self.redis.zrangebyscore(self._nodes, "-inf", now - NODE_TIMEOUT_MS):
            node = _text(dead)
            if node != self.node:
                log.warning("dispatch: process %s stopped answering; forgetting its drivers",
                            node)
                await self._reap_node(node)
        await self._drop_positions_before(now - int(self.ttl * 1000))

    async def _reap_node(self, node: str) -> None:
        """Forget the drivers whose sockets a dead process held."""
        await self._reap([self._node_set(node), self._geo, self._seen, self._headings,
                          self._connected, self._nodes], [node, self._drv])

    async def _drop_positions_before(self, cutoff_ms: int) -> None:
        await self._purge([self._seen, self._geo, self._headings], [cutoff_ms, PURGE_BATCH])

    async def _announce(self) -> None:
        async with self._announcing:
            await self._no_writes.wait()
            if not self._local:
                return
            pipe = self.redis.pipeline(transaction=False)
            for driver_id, counts in self._local.items():
                pipe.hset(self._drv_key(driver_id), f"n:{self.node}", str(_highest(counts)))
                pipe.sadd(self._connected, driver_id)
                pipe.sadd(self._node_set(self.node), driver_id)
            await pipe.execute()


def _highest(counts: list[int]) -> int:
    """The highest protocol version with an open socket (0 when none)."""
    return 2 if counts[1] else (1 if counts[0] else 0)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
