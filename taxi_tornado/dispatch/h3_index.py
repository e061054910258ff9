"""The in-process location index on Uber's H3 hexagonal grid (for the memory hub).

Each located driver sits in the set of its resolution-9 cell (edges about 175 m). A
query walks the rings of cells around the pick-up's cell, nearest ring first, and stops
as soon as the drivers it holds are provably the nearest ones: so its cost follows the
density of drivers near the point, not the size of the city.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from functools import lru_cache
from typing import Any

import h3.api.basic_int as h3
from h3 import H3BaseException

from taxi_tornado.dispatch.locations import (
    Census,
    LocatedDriver,
    LocationIndex,
    NearbyDriver,
    indexable,
)

RESOLUTION = 9
# Cell sizes vary over the globe by up to about a factor of two; the local spacing is
# measured per cell, and taken 10% smaller still, so that a ring count never falls short.
SPACING_MARGIN = 0.9
HALF_SQRT3 = math.sqrt(3) / 2
TWO_OVER_SQRT3 = 2 / math.sqrt(3)


class _Driver:
    __slots__ = ("busy", "cell", "heading", "lat", "lng", "seen", "unavailable", "v1", "v2")

    def __init__(self) -> None:
        self.v1 = 0
        self.v2 = 0
        self.unavailable = False
        self.busy = False
        self.cell: int | None = None
        self.lat = 0.0
        self.lng = 0.0
        self.heading: float | None = None
        self.seen = -math.inf


class H3LocationIndex(LocationIndex):
    """One process is the whole world: positions and connection counts live here."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl)
        self._clock = clock
        self._drivers: dict[str, _Driver] = {}
        self._cells: dict[int, set[str]] = {}
        # Located drivers, oldest report first: upkeep stops at the first fresh one.
        self._by_report: OrderedDict[str, None] = OrderedDict()

    async def connect(self, driver_id: str, version: int, busy: bool = False) -> None:
        driver = self._drivers.get(driver_id)
        if driver is None:
            driver = self._drivers[driver_id] = _Driver()
        driver.busy = busy
        if version >= 2:
            driver.v2 += 1
        else:
            driver.v1 += 1

    async def disconnect(self, driver_id: str, version: int) -> bool:
        driver = self._drivers.get(driver_id)
        if driver is None:
            return False
        if version >= 2:
            driver.v2 = max(0, driver.v2 - 1)
        else:
            driver.v1 = max(0, driver.v1 - 1)
        if driver.v1 or driver.v2:
            return False
        await self.forget(driver_id)
        return True

    async def put(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        # Once a second per driver: the base class's checks and the work here in one
        # coroutine, not two.
        if indexable(lat):
            self._record(driver_id, lat, lng, heading)

    async def _put(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        self._record(driver_id, lat, lng, heading)

    def _record(self, driver_id: str, lat: float, lng: float, heading: float | None) -> None:
        driver = self._drivers.get(driver_id)
        if driver is None:
            driver = self._drivers[driver_id] = _Driver()
        cell = h3.latlng_to_cell(lat, lng, RESOLUTION)
        if cell != driver.cell:
            self._leave_cell(driver_id, driver)
            self._cells.setdefault(cell, set()).add(driver_id)
            driver.cell = cell
        driver.lat, driver.lng, driver.heading = lat, lng, heading
        driver.seen = self._clock()
        self._by_report[driver_id] = None
        self._by_report.move_to_end(driver_id)

    async def forget(self, driver_id: str) -> None:
        driver = self._drivers.get(driver_id)
        if driver is None:
            return
        self._leave_cell(driver_id, driver)
        self._by_report.pop(driver_id, None)
        driver.cell, driver.seen = None, -math.inf
        driver.unavailable = driver.busy = False
        if not (driver.v1 or driver.v2):
            del self._drivers[driver_id]

    async def set_available(self, driver_id: str, available: bool) -> None:
        driver = self._drivers.get(driver_id)
        if driver is not None:
            driver.unavailable = not available

    async def set_busy(self, driver_id: str, busy: bool) -> None:
        driver = self._drivers.get(driver_id)
        if driver is not None:
            driver.busy = busy

    async def _nearest(self, lat: float, lng: float, radius_m: float, count: int,
                       exclude: Collection[str], v2_only: bool) -> list[NearbyDriver]:
        center = h3.latlng_to_cell(lat, lng, RESOLUTION)
        spacing = cell_spacing(center)
        last_ring = rings_to_cover(radius_m, spacing)
        fresh_since = self._clock() - self.ttl
        found: list[tuple[float, str, _Driver]] = []
        for ring in range(last_ring + 1):
            for cell in ring_cells(center, ring):
                for driver_id in self._cells.get(cell, ()):
                    driver = self._drivers[driver_id]
                    if (driver.seen < fresh_since or driver.unavailable or driver.busy
                            or not (driver.v2 or (driver.v1 and not v2_only))
                            or driver_id in exclude):
                        continue
                    distance = h3.great_circle_distance((lat, lng), (driver.lat, driver.lng),
                                                        "m")
                    if distance <= radius_m:
                        found.append((distance, driver_id, driver))
            if len(found) >= count:
                found.sort(key=_by_distance)
                if found[count - 1][0] <= covered_radius(ring, spacing):
                    break
        found.sort(key=_by_distance)
        return [NearbyDriver(driver_id, distance, driver.lat, driver.lng, driver.heading)
                for distance, driver_id, driver in found[:count]]

    async def census(self) -> Census:
        fresh_since = self._clock() - self.ttl
        connected = located = available = 0
        for driver in self._drivers.values():
            is_connected = bool(driver.v1 or driver.v2)
            is_located = driver.seen >= fresh_since
            connected += is_connected
            located += is_located
            available += (is_connected and is_located and not driver.unavailable
                          and not driver.busy)
        return Census(connected, located, available)

    async def located(self, limit: int) -> list[LocatedDriver]:
        fresh_since = self._clock() - self.ttl
        found: list[LocatedDriver] = []
        for driver_id, driver in self._drivers.items():
            if len(found) >= limit:
                break
            if driver.seen < fresh_since:
                continue
            found.append(LocatedDriver(driver_id, driver.lat, driver.lng, driver.heading,
                                       _state(driver)))
        return found

    async def maintain(self) -> None:
        """Drop positions past their ttl, and drivers left with nothing to remember; the
        cost follows the expired positions, not the drivers."""
        fresh_since = self._clock() - self.ttl
        while self._by_report:
            driver_id = next(iter(self._by_report))
            driver = self._drivers.get(driver_id)
            if driver is not None and driver.seen >= fresh_since:
                return
            del self._by_report[driver_id]
            if driver is None:
                continue
            self._leave_cell(driver_id, driver)
            driver.cell = None
            if not (driver.v1 or driver.v2):
                del self._drivers[driver_id]

    def _leave_cell(self, driver_id: str, driver: _Driver) -> None:
        if driver.cell is None:
            return
        members = self._cells.get(driver.cell)
        if members is not None:
            members.discard(driver_id)
            if not members:
                del self._cells[driver.cell]


def _state(driver: _Driver) -> str:
    if driver.busy:
        return "busy"
    if driver.unavailable or not (driver.v1 or driver.v2):
        return "unavailable"
    return "available"


def _by_distance(item: tuple[float, str, Any]) -> float:
    return item[0]


@lru_cache(maxsize=4096)
def cell_spacing(cell: int) -> float:
    """A safe lower bound, in metres, of the distance between neighbouring cell centres
    around `cell`."""
    center = h3.cell_to_latlng(cell)
    distances = [h3.great_circle_distance(center, h3.cell_to_latlng(neighbour), "m")
                 for neighbour in h3.grid_ring(cell, 1)]
    return float(min(distances)) * SPACING_MARGIN


def covered_radius(ring: int, spacing: float) -> float:
    """Every point closer than this to the query point lies in rings 0..`ring`.

    A point at distance d sits in a cell whose centre is within d + 2R of the query
    cell's centre (R = spacing / sqrt 3, a hexagon's circumradius), and cells `g` rings
    apart have centres at least g * spacing * sqrt(3)/2 apart. So a point outside ring
    `ring` is at least (ring + 1) * spacing * sqrt(3)/2 - 2R away.
    """
    return (ring + 1) * spacing * HALF_SQRT3 - TWO_OVER_SQRT3 * spacing


def rings_to_cover(radius_m: float, spacing: float) -> int:
    """The fewest rings around the query cell holding every point within `radius_m`."""
    return max(0, math.ceil((radius_m + TWO_OVER_SQRT3 * spacing) / (spacing * HALF_SQRT3)) - 1)


def ring_cells(center: int, ring: int) -> list[int]:
    if ring == 0:
        return [center]
    try:
        return list(h3.grid_ring(center, ring))
    except H3BaseException:  # a pentagon nearby: take the disk difference
        return list(set(h3.grid_disk(center, ring)) - set(h3.grid_disk(center, ring - 1)))
