"""The location index contract, once, for every implementation (ARCHITECTURE.md, Dispatch).

A test module subclasses `LocationContract` as `Test…` and provides the `index_factory`
fixture: `index_factory(ttl)` returns a started index, empty, that the module cleans up.
Everything here goes through the abstract `LocationIndex` interface only.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from taxi_tornado.dispatch.locations import MAX_INDEXED_LATITUDE, LocationIndex

IndexFactory = Callable[[float], Awaitable[LocationIndex]]
CENTER = (52.5200, 13.4050)  # Berlin
EARTH_RADIUS_M = 6_371_008.8


def offset(north_m: float, east_m: float, origin: tuple[float, float] = CENTER) -> tuple[
        float, float]:
    """The point `north_m` metres north and `east_m` metres east of `origin`."""
    lat, lng = origin
    return (lat + math.degrees(north_m / EARTH_RADIUS_M),
            lng + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat)))))


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


async def located(index: LocationIndex, driver_id: str, north_m: float, east_m: float = 0,
                  *, version: int = 2, heading: float | None = None) -> None:
    """A connected driver at a position."""
    await index.connect(driver_id, version)
    await index.put(driver_id, *offset(north_m, east_m), heading)


async def nearest_ids(index: LocationIndex, radius_m: float = 5000, count: int = 10,
                      **options: object) -> list[str]:
    found = await index.nearest(*CENTER, radius_m, count, **options)  # type: ignore[arg-type]
    return [driver.driver_id for driver in found]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


class LocationContract:
    @pytest.fixture
    def index_factory(self) -> IndexFactory:
        raise NotImplementedError("a contract test module provides index_factory")

    @pytest.fixture
    async def index(self, index_factory: IndexFactory) -> LocationIndex:
        return await index_factory(30)

    async def test_nearest_first_within_the_radius(self, index: LocationIndex) -> None:
        await located(index, "far", 1800)
        await located(index, "near", 0, 300, heading=90.5)
        await located(index, "middle", -900)
        await located(index, "outside", 0, -2600)
        found = await index.nearest(*CENTER, 2000, 10)
        assert [driver.driver_id for driver in found] == ["near", "middle", "far"]
        near = found[0]
        assert near.distance_m == pytest.approx(300, rel=0.01)
        assert (near.lat, near.lng) == pytest.approx(offset(0, 300), abs=1e-5)
        assert near.heading == 90.5
        assert found[1].heading is None
        assert found[2].distance_m == pytest.approx(1800, rel=0.01)

    async def test_count_keeps_the_nearest(self, index: LocationIndex) -> None:
        for number in range(8):
            await located(index, f"d{number}", 100 * (8 - number))
        assert await nearest_ids(index, count=3) == ["d7", "d6", "d5"]
        assert await nearest_ids(index, count=0) == []

    async def test_excluded_drivers_are_skipped(self, index: LocationIndex) -> None:
        for number in range(5):
            await located(index, f"d{number}", 100 * (number + 1))
        assert await nearest_ids(index, count=2, exclude={"d0", "d2"}) == ["d1", "d3"]

    async def test_unavailable_status_hides_a_driver_until_available(
            self, index: LocationIndex) -> None:
        await located(index, "a", 100)
        await located(index, "b", 200)
        await index.set_available("a", False)
        assert await nearest_ids(index) == ["b"]
        await index.set_available("a", True)
        assert await nearest_ids(index) == ["a", "b"]

    async def test_busy_driver_is_not_available(self, index: LocationIndex) -> None:
        await located(index, "a", 100)
        await located(index, "b", 200)
        await index.set_busy("a", True)
        assert await nearest_ids(index) == ["b"]
        await index.set_busy("a", False)
        assert await nearest_ids(index) == ["a", "b"]

    async def test_connect_writes_the_busy_mark_with_the_presence(
            self, index: LocationIndex) -> None:
        await located(index, "a", 100)
        await located(index, "b", 200)
        await index.connect("a", 2, True)  # a second socket: the mark, no new presence
        assert await nearest_ids(index) == ["b"]
        await index.connect("a", 1, False)
        assert await nearest_ids(index) == ["a", "b"]
        await index.connect("c", 2, True)  # a new driver, busy from the start
        await index.put("c", *offset(50, 0), None)
        assert await nearest_ids(index) == ["a", "b"]
        await index.disconnect("c", 2)
        await index.connect("c", 2)  # busy no more: the mark goes with the presence
        await index.put("c", *offset(50, 0), None)
        assert await nearest_ids(index) == ["c", "a", "b"]

    async def test_position_without_a_connection_is_not_available(
            self, index: LocationIndex) -> None:
        await index.put("ghost", *CENTER, None)
        await located(index, "a", 500)
        assert await nearest_ids(index) == ["a"]

    async def test_v2_only_leaves_out_drivers_with_v1_sockets_only(
            self, index: LocationIndex) -> None:
        await located(index, "old", 100, version=1)
        await located(index, "new", 200, version=2)
        await located(index, "both", 300, version=1)
        await index.connect("both", 2)
        assert await nearest_ids(index) == ["old", "new", "both"]
        assert await nearest_ids(index, v2_only=True) == ["new", "both"]
        await index.disconnect("both", 2)
        assert await nearest_ids(index, v2_only=True) == ["new"]

    async def test_last_disconnect_forgets_position_and_status(
            self, index: LocationIndex) -> None:
        await located(index, "a", 100)
        await index.connect("a", 1)
        await index.set_available("a", False)
        assert await index.disconnect("a", 1) is False  # a v2 socket is still open
        assert await index.disconnect("a", 2) is True
        assert await nearest_ids(index) == []
        await index.connect("a", 2)  # a new connection: status starts available again
        assert await nearest_ids(index) == []  # and no position until one is reported
        await index.put("a", *offset(100, 0), None)
        assert await nearest_ids(index) == ["a"]

    async def test_disconnect_of_an_unknown_driver_is_harmless(
            self, index: LocationIndex) -> None:
        assert await index.disconnect("nobody", 2) is False

    async def test_moving_driver_is_found_where_they_are_now(
            self, index: LocationIndex) -> None:
        await located(index, "a", 4000)
        assert await nearest_ids(index, radius_m=1000) == []
        await index.put("a", *offset(50, 50), None)
        assert await nearest_ids(index, radius_m=1000) == ["a"]
        await index.put("a", *offset(-4000, 0), None)
        assert await nearest_ids(index, radius_m=1000) == []

    async def test_forget_drops_position_but_not_the_connection(
            self, index: LocationIndex) -> None:
        await located(index, "a", 100)
        await index.forget("a")
        assert await nearest_ids(index) == []
        await index.put("a", *CENTER, None)
        assert await nearest_ids(index) == ["a"]

    async def test_stale_positions_stop_counting_and_census_follows(
            self, index_factory: IndexFactory) -> None:
        index = await index_factory(0.4)
        await located(index, "a", 100)
        await located(index, "b", 200)
        await index.connect("c", 2)
        await index.set_busy("b", True)
        census = await index.census()
        assert (census.connected, census.located, census.available) == (3, 2, 1)

        async def stale() -> bool:
            return await nearest_ids(index) == []

        await eventually(stale)
        await index.maintain()
        census = await index.census()
        assert (census.connected, census.located, census.available) == (3, 0, 0)
        await index.put("a", *CENTER, None)  # a new report counts again
        assert await nearest_ids(index) == ["a"]

    async def test_located_lists_fresh_positions_with_each_drivers_state(
        self, index_factory: IndexFactory,
    ) -> None:
        index = await index_factory(1)
        await located(index, "free", 100, heading=45.0)
        await located(index, "driving", 200)
        await index.set_busy("driving", True)
        await located(index, "resting", 300, version=1)
        await index.set_available("resting", False)
        await index.put("gone", *offset(400, 0), None)  # a position, no connection
        found = {driver.driver_id: driver for driver in await index.located(10)}
        assert {name: driver.state for name, driver in found.items()} == {
            "free": "available", "driving": "busy", "resting": "unavailable",
            "gone": "unavailable"}
        assert (found["free"].lat, found["free"].lng) == pytest.approx(offset(100, 0),
                                                                       abs=1e-5)
        assert found["free"].heading == 45.0 and found["driving"].heading is None
        assert len(await index.located(2)) == 2
        await eventually(lambda: _none_located(index), timeout=5)

    async def test_positions_near_the_poles_are_not_indexed(self, index: LocationIndex) -> None:
        await index.connect("polar", 2)
        await index.put("polar", 89.9, 0.0, None)
        assert await index.nearest(89.9, 0.0, 10_000, 5) == []

    async def test_unindexable_position_costs_no_other_drivers_report(
            self, index: LocationIndex) -> None:
        """Reports of one moment (Redis writes them as one batch): positions beyond the
        indexed latitudes are dropped alone, those at its very edge count."""
        edge = (MAX_INDEXED_LATITUDE, 180.0)
        for driver_id in ("before", "north pole", "edge", "south pole", "after"):
            await index.connect(driver_id, 2)
        await index.put("before", *offset(100, 0), None)
        await index.put("north pole", 90.0, 13.4, None)
        await index.put("edge", *edge, None)
        await index.put("south pole", -89.9, -180.0, None)
        await index.put("after", *offset(200, 0), None)
        assert await nearest_ids(index) == ["before", "after"]
        assert [driver.driver_id for driver in await index.nearest(*edge, 1000, 5)] == [
            "edge"]
        census = await index.census()
        assert (census.located, census.available) == (3, 3)

    async def test_agrees_with_brute_force_on_a_random_city(self, index: LocationIndex) -> None:
        rng = random.Random(12)
        places: dict[str, tuple[float, float]] = {}
        for number in range(400):
            north, east = rng.uniform(-6000, 6000), rng.uniform(-6000, 6000)
            driver_id = f"d{number:03d}"
            await located(index, driver_id, north, east)
            places[driver_id] = offset(north, east)
        for radius, count in ((300, 5), (1500, 3), (2500, 40), (12_000, 400)):
            for _ in range(3):
                point = offset(rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
                found = await index.nearest(*point, radius, count)
                expected = sorted((distance_m(point, place), driver_id)
                                  for driver_id, place in places.items()
                                  if distance_m(point, place) <= radius - 1)[:count]
                assert len(found) >= len(expected)
                got = [driver.distance_m for driver in found]
                assert got == sorted(got)
                for mine, (theirs, _) in zip(got, expected, strict=False):
                    assert mine == pytest.approx(theirs, rel=0.002, abs=0.5)


    async def test_a_crowd_of_unavailable_drivers_does_not_hide_farther_ones(
            self, index: LocationIndex) -> None:
        """Sixty drivers round the point who may not take the trip (unavailable, busy or
        excluded), the available ones at 1.2-1.9 km: those are found, nearest first."""
        excluded = []
        for number in range(60):
            driver_id = f"crowd{number:02d}"
            await located(index, driver_id, 20 + number, 5)
            if number % 3 == 0:
                await index.set_available(driver_id, False)
            elif number % 3 == 1:
                await index.set_busy(driver_id, True)
            else:
                excluded.append(driver_id)
        for number, north in enumerate((1900, 1200, 1500)):
            await located(index, f"far{number}", north)
        assert await nearest_ids(index, 2000, 2, exclude=excluded) == ["far1", "far2"]
        assert await nearest_ids(index, 2000, 5, exclude=excluded) == ["far1", "far2", "far0"]

    async def test_tiny_radii_find_nobody_and_return(self, index: LocationIndex) -> None:
        await located(index, "near", 0.5)
        for radius in (5e-324, 1e-300, 0.1):
            assert await asyncio.wait_for(nearest_ids(index, radius, 3), 5) == []
        assert await nearest_ids(index, 1, 3) == ["near"]

async def _none_located(index: LocationIndex) -> bool:
    """Once every position is past its ttl (and upkeep ran), none is listed."""
    await index.maintain()
    return await index.located(10) == []
