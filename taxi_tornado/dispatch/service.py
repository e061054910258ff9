"""Dispatch as one server process runs it: the location index, the offer book and the
strategy named by `dispatch.mode`, with the upkeep that keeps them honest.

With the memory hub everything lives in process (H3 index, memory offer book); with a
Redis hub, in Redis (GEO index, Redis offer book) through a client of our own built
from hub.url and hub.prefix, so that every process sees every driver and every offer;
in a Redis Cluster, in keys sharded by region, trip and driver (cluster_geo.py,
cluster_offers.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from taxi_tornado import metrics
from taxi_tornado.background import cancel_and_wait
from taxi_tornado.dispatch.cluster_geo import ClusterLocationIndex
from taxi_tornado.dispatch.cluster_offers import ClusterOfferBook
from taxi_tornado.dispatch.driving import DrivingTrips
from taxi_tornado.dispatch.h3_index import H3LocationIndex
from taxi_tornado.dispatch.locations import LocationIndex
from taxi_tornado.dispatch.offers import MemoryOfferBook, OfferBook
from taxi_tornado.dispatch.redis_geo import RedisLocationIndex
from taxi_tornado.dispatch.redis_offers import RedisOfferBook
from taxi_tornado.dispatch.strategy import DispatchContext, DispatchStrategy, StrategyFactory
from taxi_tornado.hub import Hub, hub_keys, redis_client
from taxi_tornado.keyed_locks import KeyedLocks
from taxi_tornado.settings import Settings, SettingsError
from taxi_tornado.store import Store

if TYPE_CHECKING:
    from taxi_tornado.dispatch.strategy import Connection, TripListener

log = logging.getLogger("taxi_tornado.dispatch")

REDIS_OPTIONS = {"socket_connect_timeout": 1.0, "socket_timeout": 5.0}
# Upkeep (expired positions, gauges, heartbeats) runs at least this often.
MAX_UPKEEP_INTERVAL = 5.0


class Dispatch:
    """What handlers and plugins reach as `conn.dispatch`: `locations` and `strategy`."""

    def __init__(self, settings: Settings, hub: Hub, store: Store,
                 strategies: Mapping[str, StrategyFactory],
                 trip_listeners: Sequence[TripListener] = ()) -> None:
        factory = strategy_factory(settings, strategies)
        self.settings = settings
        self.node = uuid.uuid4().hex
        self.redis: Redis | RedisCluster | None = None
        self._busy_turns = KeyedLocks()
        ttl = settings.dispatch.location_ttl
        self.locations: LocationIndex
        offers: OfferBook
        if settings.hub.url.startswith("memory://"):
            self.locations, offers = H3LocationIndex(ttl), MemoryOfferBook()
            self.trips = DrivingTrips(store)
        else:
            # One Redis, or a Redis Cluster: there positions are sharded by region, a
            # trip's dispatch by trip and presence by driver (hub/keys.py).
            self.redis = redis_client(settings.hub.url, **REDIS_OPTIONS)
            keys = hub_keys(settings.hub.url, settings.hub.prefix)
            if keys.tagged:
                self.locations = ClusterLocationIndex(
                    self.redis, keys, self.node, ttl, settings.dispatch.region_resolution)
                offers = ClusterOfferBook(self.redis, keys)
            else:
                self.locations = RedisLocationIndex(self.redis, keys.prefix, self.node, ttl)
                offers = RedisOfferBook(self.redis, keys.prefix)
            self.trips = DrivingTrips(store, self.redis, keys.dispatch_shared("driving"))
        context = DispatchContext(settings, hub, store, self.locations, offers, self.node,
                                  tuple(trip_listeners))
        self.strategy: DispatchStrategy = factory(context)
        self._upkeep: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if isinstance(self.redis, RedisCluster):
            # The cluster's map before the first command: commands sent at once to a
            # client that has none can meet a MOVED meanwhile.
            try:
                await self.redis.initialize()
            except (RedisError, RedisClusterException, OSError) as error:
                log.warning("dispatch: cannot reach the Redis Cluster yet (%s)", error)
        await self.trips.start()
        await self.locations.start()
        await self.strategy.start()
        self._upkeep = asyncio.ensure_future(self._keep_up())

    async def stop(self) -> None:
        await cancel_and_wait(self._upkeep)
        await self.strategy.stop()
        await self.locations.stop()
        await self.trips.stop()
        if self.redis is not None:
            await self.redis.aclose()

    # Drivers (called by the dispatch plugin's hooks and by the trips plugin)

    async def driver_connected(self, conn: Connection) -> None:
        driver_id = conn.user.id
        async with self._busy_turns.hold(driver_id):  # see trip_changed
            busy = await self.driving(driver_id)
            await self.locations.connect(driver_id, conn.version, busy)

    async def driver_disconnected(self, conn: Connection) -> None:
        await self.locations.disconnect(conn.user.id, conn.version)

    async def driving(self, driver_id: str) -> bool:
        """Whether the driver holds a STARTED or IN_PROGRESS trip."""
        return bool(await self.trips.of(driver_id))

    async def trip_changed(self, driver_id: str) -> None:
        """A trip the driver holds changed (claimed, moved on, canceled): update what we
        know of what they drive, and whether that keeps them busy.

        A driver's busy mark is read and written in turn here: a socket connecting while a
        trip is canceled could read "busy" before the cancel and write it after, and the
        driver would get no offer until their next trip changed.
        """
        async with self._busy_turns.hold(driver_id):
            await self.trips.changed(driver_id)
            await self.locations.set_busy(driver_id, await self.driving(driver_id))

    async def _keep_up(self) -> None:
        config = self.settings.dispatch
        interval = min(config.location_ttl / 2, MAX_UPKEEP_INTERVAL)
        while True:
            try:
                await self.locations.maintain()
                census = await self.locations.census()
                metrics.DRIVERS_CONNECTED.set(census.connected)
                metrics.DRIVERS_LOCATED.set(census.located)
                metrics.DRIVERS_AVAILABLE.set(census.available)
            except (RedisError, OSError) as error:
                log.warning("dispatch: location upkeep failed: %s", error)
            await asyncio.sleep(interval)


def strategy_factory(settings: Settings,
                     strategies: Mapping[str, StrategyFactory]) -> StrategyFactory:
    """The factory `dispatch.mode` names, of those the plugins registered; a mode no
    plugin registers stops start-up."""
    mode = settings.dispatch.mode
    factory = strategies.get(mode)
    if factory is None:
        known = ", ".join(sorted(strategies)) or "none"
        raise SettingsError(
            f"dispatch.mode: no plugin registers a dispatch strategy named {mode!r} "
            f"(registered: {known})")
    return factory


class Dispatched(Protocol):
    """A connection, as far as finding its Dispatch goes."""

    dispatch: Dispatch | None


def dispatch_of(conn: Dispatched) -> Dispatch:
    """The connection's Dispatch; every socket the server opens has one."""
    if conn.dispatch is None:
        raise RuntimeError(f"{conn!r} was made without the server's Dispatch")
    return conn.dispatch
