"""The shared location index in a Redis Cluster: positions sharded by region, presence
by driver, every script on the keys of one hash tag (a script whose keys span two slots
fails in a cluster).

Keys (names from hub/keys.py):
- per region, a coarse H3 cell (dispatch/regions.py), tagged by it: `geo`, `seen` and
  `headings`, as the one-Redis index keeps them for the whole world;
- per driver, tagged by the driver: `drv` (a hash: `n:<node>` per process with a socket
  of theirs, `off`, `busy`, and `r`: the region their position was last written in, so
  that leaving, or moving to another region, drops the old entry);
- per process: `node` (its drivers); shared: `connected`, `nodes` (heartbeats) and
  `regions` (the regions in use, for upkeep and census).

A report batch is one pipeline, whose commands redis-py sends to each shard at once:
per region of the batch a GEOADD, a ZADD and an HSET, plus, for a driver whose region
this process has not written before, a swap of `r` (and, when it names another region,
a second pipeline dropping the old entry). A search asks every region its circle covers
at once for its nearest fresh candidates (one script per region), merges them by
distance in Python, and reads the candidates' presence (one pipeline); a region whose
answer was cut short is asked for more only when the merged list needs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster

from taxi_tornado.dispatch.locations import Census, LocatedDriver, NearbyDriver
from taxi_tornado.dispatch.redis_geo import (
    PURGE,
    PURGE_BATCH,
    RedisLocationIndex,
    Report,
    _now_ms,
    _text,
)
from taxi_tornado.dispatch.regions import Regions
from taxi_tornado.hub.keys import HubKeys

log = logging.getLogger("taxi_tornado.dispatch")

# One region's nearest fresh candidates not excluded, nearest first: {cut short, rows}
# with rows {id, distance, lng, lat, heading, reported at}. "Cut short" means `fetch`
# rows were found before the circle was searched whole: more may lie farther out.
REGION_NEAREST = """
local fetch = tonumber(ARGV[4])
local fresh = tonumber(ARGV[5])
local skip = {}
for i = 6, #ARGV do skip[ARGV[i]] = true end
local scan = fetch + (#ARGV - 5) + 8
local radius = tonumber(ARGV[3])
local r = radius / 8
if not (r >= 100) then r = radius end
while true do
  if r > radius then r = radius end
  local hits = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                          'BYRADIUS', r, 'm', 'ASC', 'COUNT', scan,
                          'WITHDIST', 'WITHCOORD')
  if #hits < scan and r < radius then
    r = r * 2
  else
    local out = {}
    for _, hit in ipairs(hits) do
      local id = hit[1]
      if not skip[id] then
        local seen = redis.call('ZSCORE', KEYS[2], id)
        if seen and tonumber(seen) >= fresh then
          out[#out + 1] = {id, hit[2], hit[3][1], hit[3][2],
                           redis.call('HGET', KEYS[3], id) or '', seen}
          if #out >= fetch then return {1, out} end
        end
      end
    end
    if #hits < scan then return {0, out} end
    scan = scan * 4
  end
end
"""

# One region's fresh positions: {id, lng, lat, heading, reported at}.
REGION_LOCATED = """
local out = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES',
                       'LIMIT', 0, ARGV[2])
for i = 1, #ids, 2 do
  local id = ids[i]
  local place = redis.call('GEOPOS', KEYS[2], id)[1]
  if place then
    out[#out + 1] = {id, place[1], place[2], redis.call('HGET', KEYS[3], id) or '',
                     ids[i + 1]}
  end
end
return out
"""

# A report in a region this process has not written the driver in: record it as the
# driver's region, and return the one it replaces ('' for none); nothing (nil) while
# the driver has no presence (their next report tries again).
PLACE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local old = redis.call('HGET', KEYS[1], 'r') or ''
redis.call('HSET', KEYS[1], 'r', ARGV[1])
return old
"""

# A process leaves the driver: drop its field; when none is left, the driver is gone
# everywhere: delete the hash and return their region ('' for none), else nil.
LEAVE_DRIVER = """
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1])
for _, name in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(name, 1, 2) == 'n:' then return false end
end
local region = redis.call('HGET', KEYS[1], 'r') or ''
redis.call('DEL', KEYS[1])
return region
"""


@dataclass(frozen=True, slots=True)
class _Candidate:
    region: str
    driver_id: str
    distance_m: float
    lng: float
    lat: float
    heading: float | None
    seen: int


class ClusterLocationIndex(RedisLocationIndex):
    """Positions per region, presence per driver, on a Redis Cluster."""

    def __init__(self, redis: Redis | RedisCluster, keys: HubKeys, node: str, ttl: float,
                 resolution: int) -> None:
        super().__init__(redis, keys.prefix, node, ttl)
        self.keys = keys
        self.regions = Regions(resolution)
        self._connected = keys.dispatch_shared("connected")
        self._nodes = keys.dispatch_shared("nodes")
        self._in_use = keys.dispatch_shared("regions")
        self._placed: dict[str, str] = {}  # driver -> region their `r` names (written here)
        self._listed: set[str] = set()  # regions this process added to `in use`
        self._region_nearest = redis.register_script(REGION_NEAREST)
        self._region_located = redis.register_script(REGION_LOCATED)
        self._leave_driver = redis.register_script(LEAVE_DRIVER)
        self._purge_region = redis.register_script(PURGE)

    def _node_set(self, node: str) -> str:
        return self.keys.dispatch_node(node)

    def _drv_key(self, driver_id: str) -> str:
        return self.keys.dispatch_driver("drv", driver_id)

    def _region_keys(self, region: str) -> list[str]:
        key = self.keys.dispatch_region
        return [key("geo", region), key("seen", region), key("headings", region)]

    # Presence

    async def disconnect(self, driver_id: str, version: int) -> bool:
        gone = await super().disconnect(driver_id, version)
        if driver_id not in self._local:
            self._placed.pop(driver_id, None)  # another process may move them meanwhile
        return gone

    async def _gone(self, driver_id: str) -> bool:
        region = await self._leave_driver([self._drv_key(driver_id)], [self.node])
        pipe = self.redis.pipeline(transaction=False)
        pipe.srem(self._node_set(self.node), driver_id)
        if region is not None:
            pipe.srem(self._connected, driver_id)
            self._unplace(pipe, driver_id, {_text(region), self._placed.get(driver_id, "")})
        await pipe.execute()
        return region is not None

    def _unplace(self, pipe: Any, driver_id: str, regions: Iterable[str]) -> None:
        for region in regions:
            if region:
                geo, seen, headings = self._region_keys(region)
                pipe.zrem(geo, driver_id)
                pipe.zrem(seen, driver_id)
                pipe.hdel(headings, driver_id)

    async def _announce(self) -> None:
        self._placed.clear()  # taken for dead: our drivers' `r` may be gone
        await super()._announce()

    # Reports

    async def _store(self, batch: dict[str, Report]) -> None:
        by_region: dict[str, tuple[list[Any], dict[str, int], dict[str, str]]] = {}
        moved: list[tuple[str, str]] = []
        region_of = self.regions.of
        placed = self._placed
        for driver_id, (lat, lng, heading, at) in batch.items():
            region = region_of(lat, lng)
            entry = by_region.get(region)
            if entry is None:
                entry = by_region[region] = ([], {}, {})
            entry[0].extend((lng, lat, driver_id))
            entry[1][driver_id] = at
            entry[2][driver_id] = "" if heading is None else repr(heading)
            if placed.get(driver_id) != region:
                moved.append((driver_id, region))
        pipe = self.redis.pipeline(transaction=False)
        for region, (places, seen, headings) in by_region.items():
            geo, seen_key, headings_key = self._region_keys(region)
            pipe.execute_command("GEOADD", geo, *places)
            pipe.zadd(seen_key, seen)
            pipe.hset(headings_key, mapping=headings)  # type: ignore[arg-type]
        new = [region for region in by_region if region not in self._listed]
        if new:
            pipe.sadd(self._in_use, *new)
        for driver_id, region in moved:
            pipe.eval(PLACE, 1, self._drv_key(driver_id), region)
        results = await pipe.execute()
        self._listed.update(new)
        if moved:
            await self._moved(moved, results[len(results) - len(moved):])

    async def _moved(self, moved: list[tuple[str, str]], swaps: list[Any]) -> None:
        """Remember where drivers were written; drop their entries in former regions."""
        stale = self.redis.pipeline(transaction=False)
        count = 0
        for (driver_id, region), former in zip(moved, swaps, strict=True):
            if former is None:
                continue  # no presence (yet): the next report tries again
            self._placed[driver_id] = region
            former = _text(former)
            if former and former != region:
                self._unplace(stale, driver_id, [former])
                count += 1
        if count:
            await stale.execute()

    async def forget(self, driver_id: str) -> None:
        await self._written()
        key = self._drv_key(driver_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key, "r")
        pipe.hdel(key, "off", "busy")
        region, _ = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        self._unplace(pipe, driver_id,
                      {_text(region) if region else "", self._placed.get(driver_id, "")})
        await pipe.execute()

    # Queries

    async def _nearest(self, lat: float, lng: float, radius_m: float, count: int,
                       exclude: Collection[str], v2_only: bool) -> list[NearbyDriver]:
        await self._written()
        regions = self.regions.covering(lat, lng, radius_m) or await self._regions_in_use()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        need = 2 if v2_only else 1
        skip = list(exclude)
        fetch = dict.fromkeys(regions, count * 2 + 8)
        found: dict[str, list[_Candidate]] = {}
        cut: dict[str, bool] = {}
        states: dict[str, int] = {}
        while True:
            answers = await asyncio.gather(*(
                self._region_nearest(self._region_keys(region),
                                     [lng, lat, radius_m, fetch[region], fresh_since, *skip])
                for region in fetch))
            for region, (short, rows) in zip(fetch, answers, strict=True):
                found[region] = [_candidate(region, row) for row in rows]
                cut[region] = bool(short)
            chosen, decided = await self._choose(found, cut, states, count, need)
            if len(chosen) >= count or decided:
                return chosen
            fetch = {region: fetch[region] * 4 for region in found if cut[region]}

    async def _choose(self, found: dict[str, list[_Candidate]], cut: dict[str, bool],
                      states: dict[str, int], count: int,
                      need: int) -> tuple[list[NearbyDriver], bool]:
        """The nearest available candidates, as far as every region answered in full;
        and whether that is the answer (no region cut short below what is needed)."""
        bound = min((rows[-1].distance_m for region, rows in found.items()
                     if cut[region] and rows), default=float("inf"))
        newest: dict[str, _Candidate] = {}
        for rows in found.values():
            for row in rows:
                known = newest.get(row.driver_id)
                if known is None or row.seen > known.seen:  # moving: the newest entry
                    newest[row.driver_id] = row
        ordered = sorted((row for row in newest.values() if row.distance_m <= bound),
                         key=lambda row: row.distance_m)
        unknown = [row.driver_id for row in ordered if row.driver_id not in states]
        states.update(zip(unknown, await self._states(unknown), strict=True))
        chosen = [NearbyDriver(row.driver_id, row.distance_m, row.lat, row.lng, row.heading)
                  for row in ordered if states[row.driver_id] >= need][:count]
        return chosen, bound == float("inf")

    async def _states(self, driver_ids: list[str]) -> list[int]:
        """Each driver's availability: 2 offerable (a v2 socket), 1 over v1 only, 0 not."""
        return [_state(fields) for fields in await self._presence(driver_ids)]

    async def _presence(self, driver_ids: list[str]) -> list[dict[bytes, bytes]]:
        if not driver_ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for driver_id in driver_ids:
            pipe.hgetall(self._drv_key(driver_id))
        return list(await pipe.execute())

    async def _regions_in_use(self) -> list[str]:
        return sorted(_text(region) for region in await self.redis.smembers(self._in_use))

    async def census(self) -> Census:
        await self._written()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        regions = await self._regions_in_use()
        connected: int = await self.redis.scard(self._connected)
        located = cast(list[list[bytes]], await asyncio.gather(*(
            self.redis.zrangebyscore(self._region_keys(region)[1], fresh_since, "+inf")
            for region in regions)))
        drivers = sorted({_text(driver_id) for ids in located for driver_id in ids})
        available = sum(1 for state in await self._states(drivers) if state > 0)
        return Census(int(connected), len(drivers), available)

    async def located(self, limit: int) -> list[LocatedDriver]:
        await self._written()
        fresh_since = _now_ms() - int(self.ttl * 1000)
        regions = await self._regions_in_use()
        answers = await asyncio.gather(*(
            self._region_located(
                [self.keys.dispatch_region(name, region) for name in ("seen", "geo", "headings")],
                [fresh_since, limit])
            for region in regions))
        newest: dict[str, list[Any]] = {}
        for rows in answers:
            for row in rows:
                driver_id = _text(row[0])
                known = newest.get(driver_id)
                if known is None or float(row[4]) > float(known[4]):
                    newest[driver_id] = row
        rows = list(newest.values())[:limit]
        presence = await self._presence([_text(row[0]) for row in rows])
        return [LocatedDriver(_text(row[0]), float(row[2]), float(row[1]),
                              float(row[3]) if row[3] else None, _shown_state(fields))
                for row, fields in zip(rows, presence, strict=True)]

    async def _drop_positions_before(self, cutoff_ms: int) -> None:
        """Each region's expired positions, the regions at once."""
        regions = await self._regions_in_use()
        await asyncio.gather(*(self._purge_region(
            [self.keys.dispatch_region(name, region) for name in ("seen", "geo", "headings")],
            [cutoff_ms, PURGE_BATCH]) for region in regions))

    async def _reap_node(self, node: str) -> None:
        """Leave every driver of a dead process (one script per driver, in one pipeline),
        then drop the positions of those it was the last process of."""
        drivers = [_text(driver_id)
                   for driver_id in await self.redis.smembers(self._node_set(node))]
        if drivers:
            pipe = self.redis.pipeline(transaction=False)
            for driver_id in drivers:
                pipe.eval(LEAVE_DRIVER, 1, self._drv_key(driver_id), node)
            regions = await pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for driver_id, region in zip(drivers, regions, strict=True):
                if region is not None:
                    pipe.srem(self._connected, driver_id)
                    self._unplace(pipe, driver_id, [_text(region)])
            await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self._node_set(node))
        pipe.zrem(self._nodes, node)
        await pipe.execute()


def _candidate(region: str, row: list[Any]) -> _Candidate:
    return _Candidate(region, _text(row[0]), float(row[1]), float(row[2]), float(row[3]),
                      float(row[4]) if row[4] else None, int(float(row[5])))


def _state(fields: dict[bytes, bytes]) -> int:
    best = 0
    for name, value in fields.items():
        if name in (b"off", b"busy"):
            return 0
        if name.startswith(b"n:"):
            if value == b"2":
                best = 2
            elif best == 0:
                best = 1
    return best


def _shown_state(fields: dict[bytes, bytes]) -> str:
    """The operators' word for a driver's presence (as the one-Redis LOCATED script)."""
    if b"busy" in fields:
        return "busy"
    if b"off" in fields or not any(name.startswith(b"n:") for name in fields):
        return "unavailable"
    return "available"

