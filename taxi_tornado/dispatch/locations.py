"""The location index contract: where drivers are, and which of them can take a trip.

Two implementations pass one contract suite (tests/location_contract.py): in process on
Uber's H3 grid (dispatch/h3_index.py) for the memory hub, and Redis GEO
(dispatch/redis_geo.py) for the Redis hub, where every process sees every driver.

A driver is *available* when some connection of theirs is open, their status is
available, they are not busy with a trip, and they reported a position within the
index's `ttl` seconds. Status, busy mark and position are forgotten when the driver's
last connection (on any process) closes.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass

# Redis GEO (like every Web Mercator map) stops short of the poles; positions beyond are
# not indexed by either implementation, so that both answer alike.
MAX_INDEXED_LATITUDE = 85.05112878


@dataclass(frozen=True, slots=True)
class NearbyDriver:
    """One answer of `nearest`: a driver, how far from the point, and where."""

    driver_id: str
    distance_m: float
    lat: float
    lng: float
    heading: float | None


@dataclass(frozen=True, slots=True)
class LocatedDriver:
    """One answer of `located`: a driver with a fresh position, for the operators' map.
    `state` is "available", "busy" (holds a trip) or "unavailable" (status off, or no
    connection open)."""

    driver_id: str
    lat: float
    lng: float
    heading: float | None
    state: str


@dataclass(frozen=True, slots=True)
class Census:
    """Drivers connected, with a fresh position, and available (for /metrics)."""

    connected: int
    located: int
    available: int


class LocationIndex(abc.ABC):
    """Driver positions and availability, queried nearest first."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl  # seconds a position counts (dispatch.location_ttl)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    @abc.abstractmethod
    async def connect(self, driver_id: str, version: int, busy: bool = False) -> None:
        """A connection of the driver speaking protocol `version` opened here; `busy`
        is set_busy's mark, written with the presence (one round trip, not two, for
        each driver of a reconnect storm)."""

    @abc.abstractmethod
    async def disconnect(self, driver_id: str, version: int) -> bool:
        """A connection opened with `connect` closed. When it was the driver's last one
        on every process, forget the driver and return True."""

    async def put(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        """Record the driver's position now; it counts for `ttl` seconds. Positions
        beyond MAX_INDEXED_LATITUDE are ignored."""
        if indexable(lat):
            await self._put(driver_id, lat, lng, heading)

    @abc.abstractmethod
    async def _put(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        """`put` for an indexable position."""

    @abc.abstractmethod
    async def forget(self, driver_id: str) -> None:
        """Drop the driver's position, status and busy mark."""

    @abc.abstractmethod
    async def set_available(self, driver_id: str, available: bool) -> None:
        """The driver's own status (`driver.status`); every driver starts available."""

    @abc.abstractmethod
    async def set_busy(self, driver_id: str, busy: bool) -> None:
        """Whether the driver holds a STARTED or IN_PROGRESS trip."""

    async def nearest(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        count: int,
        *,
        exclude: Collection[str] = (),
        v2_only: bool = False,
    ) -> list[NearbyDriver]:
        """At most `count` available drivers within `radius_m` metres of the point,
        nearest first, leaving out `exclude`; with `v2_only`, only drivers with an open
        v2 connection (those who can receive offers)."""
        if count <= 0 or not indexable(lat):
            return []
        return await self._nearest(lat, lng, radius_m, count, exclude, v2_only)

    @abc.abstractmethod
    async def _nearest(self, lat: float, lng: float, radius_m: float, count: int,
                       exclude: Collection[str], v2_only: bool) -> list[NearbyDriver]:
        """`nearest` for a positive count and an indexable point."""

    @abc.abstractmethod
    async def census(self) -> Census: ...

    @abc.abstractmethod
    async def located(self, limit: int) -> list[LocatedDriver]:
        """At most `limit` drivers with a fresh position, whatever their state (the
        operators' map), in no particular order."""

    @abc.abstractmethod
    async def maintain(self) -> None:
        """Periodic upkeep: drop expired positions (and, shared, drivers of dead processes)."""


def indexable(lat: float) -> bool:
    return -MAX_INDEXED_LATITUDE <= lat <= MAX_INDEXED_LATITUDE
