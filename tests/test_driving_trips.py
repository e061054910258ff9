"""What each driver drives, kept between location reports (dispatch/driving.py), on a real
SQLite store: asked once, forgotten on a change, asked again in rounds, dropped when
nobody reads it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taxi_tornado.dispatch import driving
from taxi_tornado.dispatch.driving import DrivingTrips
from taxi_tornado.store import Store, TripStatus, open_store


class Clock:
    """Seconds that pass when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'taxi.db'}")
    await opened.open()
    yield opened
    await opened.close()


async def driving_trip(store: Store, driver_id: str) -> str:
    rider = await store.create_user(username=f"r-{driver_id}", password_hash="x",
                                    group="rider")
    trip = await store.create_trip(rider.id, "A", "B")
    moved = await store.update_trip(trip.id, expected_status=TripStatus.REQUESTED,
                                    expected_driver_id=None, status=TripStatus.STARTED,
                                    driver_id=driver_id)
    assert moved is not None
    return trip.id


async def cancel_behind_its_back(store: Store, trip_id: str, driver_id: str) -> None:
    """A change nobody announces (a plugin writing the store itself)."""
    moved = await store.update_trip(trip_id, expected_status=TripStatus.STARTED,
                                    expected_driver_id=driver_id,
                                    status=TripStatus.CANCELED, driver_id=driver_id)
    assert moved is not None


async def test_answer_is_kept_until_a_change_is_announced(store: Store) -> None:
    trips = DrivingTrips(store)
    driver = await store.create_user(username="d", password_hash="x", group="driver")
    assert await trips.of(driver.id) == []
    trip_id = await driving_trip(store, driver.id)
    assert await trips.of(driver.id) == []  # kept: nobody said
    await trips.changed(driver.id)
    assert await trips.of(driver.id) == [trip_id]


async def test_unannounced_change_is_seen_within_max_age(store: Store) -> None:
    clock = Clock()
    trips = DrivingTrips(store, clock=clock)
    drivers = [await store.create_user(username=f"d{i}", password_hash="x", group="driver")
               for i in range(45)]
    last = drivers[-1]  # asked last: the latest to come round
    trip_id = await driving_trip(store, last.id)
    for driver in drivers:
        await trips.of(driver.id)
    await cancel_behind_its_back(store, trip_id, last.id)
    start = clock.now
    while await trips.of(last.id) == [trip_id]:
        assert clock.now - start <= driving.MAX_AGE_S + 2 * driving.REFRESH_S, "still stale"
        for driver in drivers:  # every driver reports between two rounds
            await trips.of(driver.id)
        clock.now += driving.REFRESH_S
        await trips.refresh()
    assert clock.now - start >= driving.MAX_AGE_S / 2  # young answers are not asked again
    assert trips.answers() == len(drivers)


class ChangingMeanwhile:
    """The real store; while each answer is on its way, a trip of another driver changes
    (announced): busy hours, on a busy process."""

    def __init__(self, store: Store, other: str) -> None:
        self.store, self.other = store, other
        self.trips: DrivingTrips | None = None

    async def active_trip_ids(self, user_id: str) -> list[str]:
        answer = await self.store.active_trip_ids(user_id)
        if self.trips is not None and user_id != self.other:
            await self.trips.changed(self.other)
        return answer


async def test_changes_of_other_drivers_do_not_hold_up_the_rounds(store: Store) -> None:
    clock = Clock()
    busy = await store.create_user(username="busy", password_hash="x", group="driver")
    wrapper = ChangingMeanwhile(store, busy.id)
    trips = DrivingTrips(wrapper, clock=clock)  # type: ignore[arg-type]
    wrapper.trips = trips
    driver = await store.create_user(username="d", password_hash="x", group="driver")
    trip_id = await driving_trip(store, driver.id)
    assert await trips.of(driver.id) == [trip_id]
    await cancel_behind_its_back(store, trip_id, driver.id)
    for _ in range(int(driving.MAX_AGE_S / driving.REFRESH_S) + 2):
        await trips.of(driver.id)
        clock.now += driving.REFRESH_S
        await trips.refresh()
    assert await trips.of(driver.id) == []
    assert trips.answers() == 1


async def test_answers_nobody_reads_are_dropped(store: Store) -> None:
    clock = Clock()
    trips = DrivingTrips(store, clock=clock)
    staying = await store.create_user(username="staying", password_hash="x", group="driver")
    leaving = await store.create_user(username="leaving", password_hash="x", group="driver")
    await trips.of(leaving.id)
    await trips.of(staying.id)
    for second in range(2 * int(driving.MAX_AGE_S / driving.REFRESH_S)):
        await trips.of(staying.id)
        clock.now += driving.REFRESH_S
        await trips.refresh()
        if clock.now - 1000.0 < driving.MAX_AGE_S / 2:  # not reporting yet, just connected
            assert trips.answers() == 2, second
    assert trips.answers() == 1
    assert await trips.of(staying.id) == []


class HeldAnswers:
    """The real store, whose answers about active trips wait for `release` once read:
    an ask whose answer is on its way while a change happens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def active_trip_ids(self, user_id: str) -> list[str]:
        answer = await self.store.active_trip_ids(user_id)
        self.read.set()
        await self.release.wait()
        return answer


async def test_a_change_during_an_ask_is_not_overwritten_by_its_answer(store: Store) -> None:
    held = HeldAnswers(store)
    trips = DrivingTrips(held)  # type: ignore[arg-type]
    driver = await store.create_user(username="d", password_hash="x", group="driver")
    asking = asyncio.ensure_future(trips.of(driver.id))
    await held.read.wait()  # the answer of before the change is on its way
    trip_id = await driving_trip(store, driver.id)
    await trips.changed(driver.id)
    held.release.set()
    assert await asking == []  # the answer of its time
    assert await trips.of(driver.id) == [trip_id]  # but not kept past the change
