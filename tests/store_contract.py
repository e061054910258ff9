"""The store contract, once, for every implementation (ARCHITECTURE.md, Store).

A test module subclasses `StoreContract` as `Test…` and overrides the `store_factory`
fixture: each call of the factory returns a new, not yet opened store on the same
database, so that the suite can also check reopening. Everything here goes through the
abstract `Store` interface only.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, timedelta

import pytest

from taxi_tornado.idempotency import RequestKeys
from taxi_tornado.store import (
    LatLng,
    RequestKey,
    Store,
    StoreError,
    Trip,
    TripStatus,
    User,
    UsernameTaken,
)

StoreFactory = Callable[[], Store]
BASE_URL = "https://taxi.example"
RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class StoreContract:
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError("a contract test module provides store_factory")

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        opened = store_factory()
        await opened.open()
        yield opened
        await opened.close()

    # Users

    async def test_created_user_fields_round_trip(self, store: Store) -> None:
        created = await store.create_user("Alice", "hash-1", "rider", "Alice", "Liddell",
                                          "a1b2.png")
        stored = await store.get_user(created.id)
        assert stored is not None
        assert (stored.id, stored.username, stored.group, stored.first_name, stored.last_name,
                stored.photo, stored.password_hash) == (
            created.id, "Alice", "rider", "Alice", "Liddell", "a1b2.png", "hash-1")
        assert stored.to_json(BASE_URL)["photo"] == f"{BASE_URL}/media/photos/a1b2.png"

    async def test_optional_user_fields_default_to_empty(self, store: Store) -> None:
        created = await store.create_user("bob", "hash", "driver")
        stored = await store.get_user(created.id)
        assert stored is not None
        assert (stored.first_name, stored.last_name, stored.photo) == ("", "", None)

    async def test_username_is_unique_ignoring_case(self, store: Store) -> None:
        await store.create_user("Alice", "hash", "rider")
        with pytest.raises(UsernameTaken):
            await store.create_user("aLICE", "other", "driver")

    async def test_user_is_found_by_username_ignoring_case(self, store: Store) -> None:
        created = await store.create_user("Alice", "hash", "rider")
        found = await store.get_user_by_username("ALICE")
        assert found is not None
        assert (found.id, found.username, found.password_hash) == (created.id, "Alice", "hash")

    async def test_username_is_one_name_after_compatibility_folding(self, store: Store) -> None:
        created = await store.create_user("john", "hash", "rider")
        for look_alike in ("\uff4a\uff4f\uff48\uff4e", "\uff2a\uff2f\uff28\uff2e"):  # fullwidth
            with pytest.raises(UsernameTaken):
                await store.create_user(look_alike, "other", "rider")
            found = await store.get_user_by_username(look_alike)
            assert found is not None and found.id == created.id

    async def test_unknown_ids_give_none(self, store: Store) -> None:
        assert await store.get_user(UNKNOWN_ID) is None
        assert await store.get_user_by_username("nobody") is None
        assert await store.get_trip(UNKNOWN_ID) is None

    # Trips

    async def test_new_trip_is_requested_with_rider_resolved(self, store: Store) -> None:
        rider = await store.create_user("rider", "hash", "rider", "Rita", photo="r.png")
        trip = await store.create_trip(rider.id, "1 Main St", "2 Side St")
        assert trip.status is TripStatus.REQUESTED
        assert (trip.pick_up_address, trip.drop_off_address) == ("1 Main St", "2 Side St")
        assert trip.driver is None
        assert isinstance(trip.rider, User)
        assert trip.rider.to_json(BASE_URL) == rider.to_json(BASE_URL)
        assert trip.created == trip.updated
        assert trip.created.utcoffset() == timedelta(0)

    async def test_trip_for_unknown_rider_is_refused(self, store: Store) -> None:
        with pytest.raises(StoreError):
            await store.create_trip(UNKNOWN_ID, "a", "b")

    async def test_trip_json_carries_rfc3339_microsecond_times(self, store: Store) -> None:
        rider = await store.create_user("rider", "hash", "rider")
        data = (await store.create_trip(rider.id, "a", "b")).to_json(BASE_URL)
        assert RFC3339_MICROS.match(data["created"]), data["created"]
        assert data["created"] == data["updated"]
        assert data["status"] == "REQUESTED"
        assert data["rider"]["id"] == rider.id
        assert data["driver"] is None

    async def test_trip_positions_round_trip(self, store: Store) -> None:
        rider = await store.create_user("rider", "hash", "rider")
        created = await store.create_trip(rider.id, "a", "b", pick_up=LatLng(52.5163, 13.3777),
                                          drop_off=LatLng(-33.8568, 151.2153))
        assert created.pick_up == LatLng(52.5163, 13.3777)
        assert created.drop_off == LatLng(-33.8568, 151.2153)
        stored = await store.get_trip(created.id)
        assert stored is not None
        assert stored.to_json(BASE_URL)["pick_up"] == {"lat": 52.5163, "lng": 13.3777}
        assert stored.to_json(BASE_URL)["drop_off"] == {"lat": -33.8568, "lng": 151.2153}
        listed, = await store.list_trips(rider)
        assert (listed.pick_up, listed.drop_off) == (created.pick_up, created.drop_off)

    async def test_trip_without_positions_has_null_positions(self, store: Store) -> None:
        rider = await store.create_user("rider", "hash", "rider")
        driver = await store.create_user("driver", "hash", "driver")
        trip = await store.create_trip(rider.id, "a", "b", pick_up=LatLng(1.5, 2.5))
        assert trip.drop_off is None
        assert trip.to_json(BASE_URL)["drop_off"] is None
        moved = await claimed(store, trip, driver)
        assert (moved.pick_up, moved.drop_off) == (LatLng(1.5, 2.5), None)

    async def test_stored_trip_equals_created_trip(self, store: Store) -> None:
        rider = await store.create_user("rider", "hash", "rider")
        created = await store.create_trip(rider.id, "a", "b")
        stored = await store.get_trip(created.id)
        assert stored is not None
        assert stored.to_json(BASE_URL) == created.to_json(BASE_URL)
        assert stored.created == created.created  # microseconds survive the round trip
        assert stored.created.astimezone(UTC) == created.created

    async def test_rider_sees_only_own_trips(self, store: Store) -> None:
        rider, other = await riders(store, "rider", "other")
        own = await store.create_trip(rider.id, "a", "b")
        await store.create_trip(other.id, "c", "d")
        assert ids(await store.list_trips(rider)) == [own.id]

    async def test_driver_sees_own_and_every_requested_trip(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, other = await drivers(store, "driver", "other")
        requested = await store.create_trip(rider.id, "a", "b")
        mine = await claimed(store, await store.create_trip(rider.id, "c", "d"), driver)
        theirs = await claimed(store, await store.create_trip(rider.id, "e", "f"), other)
        seen = ids(await store.list_trips(driver))
        assert sorted(seen) == sorted([requested.id, mine.id])
        assert theirs.id not in seen

    async def test_listed_trips_resolve_rider_and_driver(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        trip = await claimed(store, await store.create_trip(rider.id, "a", "b"), driver)
        listed, = await store.list_trips(rider)
        assert listed.to_json(BASE_URL) == trip.to_json(BASE_URL)
        assert listed.driver is not None and listed.driver.username == "driver"

    async def test_trips_are_listed_newest_first(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        made = []
        for number in range(4):
            made.append(await store.create_trip(rider.id, f"from {number}", "to"))
            await asyncio.sleep(0.002)  # distinct creation times on any clock
        listed = await store.list_trips(rider)
        assert ids(listed) == ids(reversed(made))
        assert [trip.created for trip in listed] == sorted(
            (trip.created for trip in made), reverse=True)

    async def test_trip_list_stops_at_the_limit_keeping_the_newest(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        made = await trips_in_order(store, rider, 5)
        assert ids(await store.list_trips(rider, limit=3)) == ids(reversed(made[2:]))

    async def test_trip_list_before_takes_those_created_strictly_earlier(
        self, store: Store,
    ) -> None:
        rider, = await riders(store, "rider")
        made = await trips_in_order(store, rider, 5)
        before_third = await store.list_trips(rider, before=made[2].created)
        assert ids(before_third) == ids(reversed(made[:2]))
        just_after = made[2].created + timedelta(microseconds=1)
        assert ids(await store.list_trips(rider, before=just_after)) == ids(reversed(made[:3]))
        assert await store.list_trips(rider, before=made[0].created) == []

    async def test_pages_of_a_drivers_list_join_up(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        made = await trips_in_order(store, rider, 7)
        await claimed(store, made[3], driver)
        first = await store.list_trips(driver, limit=4)
        rest = await store.list_trips(driver, before=first[-1].created, limit=4)
        assert ids(first) + ids(rest) == ids(reversed(made))

    async def test_active_trip_ids_as_rider_or_driver(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        requested = await store.create_trip(rider.id, "a", "b")
        started = await claimed(store, await store.create_trip(rider.id, "c", "d"), driver)
        done = await claimed(store, await store.create_trip(rider.id, "e", "f"), driver)
        await advanced(store, done, driver, TripStatus.COMPLETED)
        canceled = await store.create_trip(rider.id, "g", "h")
        await store.update_trip(canceled.id, expected_status=TripStatus.REQUESTED,
                                expected_driver_id=None, status=TripStatus.CANCELED,
                                driver_id=None)
        assert sorted(await store.active_trip_ids(rider.id)) == sorted([requested.id, started.id])
        assert await store.active_trip_ids(driver.id) == [started.id]
        assert await store.active_trip_ids(UNKNOWN_ID) == []

    # The compare-and-set

    async def test_update_with_right_expectations_claims_the_trip(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        trip = await store.create_trip(rider.id, "a", "b")
        updated = await store.update_trip(trip.id, expected_status=TripStatus.REQUESTED,
                                          expected_driver_id=None, status=TripStatus.STARTED,
                                          driver_id=driver.id)
        assert updated is not None
        assert updated.status is TripStatus.STARTED
        assert updated.driver is not None and updated.driver.id == driver.id
        assert updated.rider is not None and updated.rider.id == rider.id
        assert updated.created == trip.created
        assert updated.updated >= trip.updated
        stored = await store.get_trip(trip.id)
        assert stored is not None
        assert stored.to_json(BASE_URL) == updated.to_json(BASE_URL)

    async def test_holder_moves_the_trip_forward(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        trip = await claimed(store, await store.create_trip(rider.id, "a", "b"), driver)
        done = await advanced(store, trip, driver, TripStatus.COMPLETED)
        assert done.status is TripStatus.COMPLETED
        assert done.driver is not None and done.driver.id == driver.id

    async def test_update_on_wrong_status_gives_none(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        trip = await claimed(store, await store.create_trip(rider.id, "a", "b"), driver)
        result = await store.update_trip(trip.id, expected_status=TripStatus.REQUESTED,
                                         expected_driver_id=driver.id,
                                         status=TripStatus.IN_PROGRESS, driver_id=driver.id)
        assert result is None
        assert await status_of(store, trip) is TripStatus.STARTED

    async def test_update_on_wrong_driver_gives_none(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, other = await drivers(store, "driver", "other")
        trip = await claimed(store, await store.create_trip(rider.id, "a", "b"), driver)
        for expected in (other.id, None):
            result = await store.update_trip(trip.id, expected_status=TripStatus.STARTED,
                                             expected_driver_id=expected,
                                             status=TripStatus.IN_PROGRESS, driver_id=other.id)
            assert result is None
        stored = await store.get_trip(trip.id)
        assert stored is not None and stored.driver_id == driver.id

    async def test_update_of_missing_trip_gives_none(self, store: Store) -> None:
        driver, = await drivers(store, "driver")
        result = await store.update_trip(UNKNOWN_ID, expected_status=TripStatus.REQUESTED,
                                         expected_driver_id=None, status=TripStatus.STARTED,
                                         driver_id=driver.id)
        assert result is None

    async def test_concurrent_claims_have_exactly_one_winner(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        racers = await drivers(store, *(f"driver{number}" for number in range(20)))
        trip = await store.create_trip(rider.id, "a", "b")
        results = await asyncio.gather(*(
            store.update_trip(trip.id, expected_status=TripStatus.REQUESTED,
                              expected_driver_id=None, status=TripStatus.STARTED,
                              driver_id=driver.id)
            for driver in racers
        ))
        winners = [result for result in results if result is not None]
        assert len(winners) == 1
        stored = await store.get_trip(trip.id)
        assert stored is not None
        assert stored.driver_id == winners[0].driver_id
        assert stored.status is TripStatus.STARTED

    # Lifecycle

    async def test_ping_answers(self, store: Store) -> None:
        await store.ping()

    async def test_open_is_idempotent(self, store: Store) -> None:
        user = await store.create_user("alice", "hash", "rider")
        await store.open()
        assert await store.get_user(user.id) is not None
        with pytest.raises(UsernameTaken):
            await store.create_user("ALICE", "hash", "rider")

    async def test_reopened_database_keeps_data_and_constraints(
        self, store: Store, store_factory: StoreFactory,
    ) -> None:
        """Also: close() is idempotent (the fixture closes the store again)."""
        rider = await store.create_user("rider", "hash", "rider")
        trip = await store.create_trip(rider.id, "a", "b")
        await store.close()
        reopened = store_factory()
        await reopened.open()
        try:
            stored = await reopened.get_trip(trip.id)
            assert stored is not None
            assert stored.to_json(BASE_URL) == trip.to_json(BASE_URL)
            with pytest.raises(UsernameTaken):
                await reopened.create_user("RIDER", "hash", "rider")
        finally:
            await reopened.close()

    # Many askers at once (the SQLite store answers one loop turn's askers together)

    async def test_concurrent_lookups_each_get_their_own_answer(self, store: Store) -> None:
        people = await riders(store, *(f"rider{number}" for number in range(5)))
        people += await drivers(store, *(f"driver{number}" for number in range(5)))
        active: dict[str, list[str]] = {person.id: [] for person in people}
        for rider, driver in zip(people[:5], people[5:], strict=True):
            trip = await store.create_trip(rider.id, "a", "b")
            active[rider.id].append(trip.id)
            if driver.username != "driver0":  # driver0 holds nothing
                await claimed(store, trip, driver)
                active[driver.id].append(trip.id)
        own = await store.create_trip(people[0].id, "c", "d")  # rider0 has two
        active[people[0].id].append(own.id)
        missing = [f"{UNKNOWN_ID[:-2]}{number:02d}" for number in range(5)]
        asked = [*[person.id for person in people], *missing] * 5  # 50, each id 5 times
        users, trips = await asyncio.gather(
            asyncio.gather(*(store.get_user(user_id) for user_id in asked)),
            asyncio.gather(*(store.active_trip_ids(user_id) for user_id in reversed(asked))),
        )
        by_id = {person.id: person for person in people}
        assert [user.username if user else None for user in users] == [
            by_id[user_id].username if user_id in by_id else None for user_id in asked]
        assert [sorted(ids) for ids in trips] == [
            sorted(active.get(user_id, [])) for user_id in reversed(asked)]
        trips[0].append("mine")  # each asker got a list of its own
        assert all("mine" not in ids for ids in trips[1:])

    # Operators (staff) and their view of the whole deployment

    async def test_staff_user_round_trips_and_sees_no_trips(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        await store.create_trip(rider.id, "a", "b")
        staff = await store.create_user("Olga", "hash", "staff")
        stored = await store.get_user(staff.id)
        assert stored is not None and stored.group == "staff"
        by_name = await store.get_user_by_username("olga")
        assert by_name is not None and by_name.id == staff.id
        assert await store.list_trips(staff) == []

    async def test_trip_counts_cover_every_status(self, store: Store) -> None:
        assert await store.trip_counts() == dict.fromkeys(TripStatus, 0)
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        await store.create_trip(rider.id, "a", "b")
        second = await store.create_trip(rider.id, "c", "d")
        await advanced(store, await claimed(store, second, driver), driver,
                       TripStatus.COMPLETED)
        counts = await store.trip_counts()
        assert counts == {**dict.fromkeys(TripStatus, 0), TripStatus.REQUESTED: 1,
                          TripStatus.COMPLETED: 1}

    async def test_unfinished_trips_oldest_first_within_limit(self, store: Store) -> None:
        rider, = await riders(store, "rider")
        driver, = await drivers(store, "driver")
        made = [await store.create_trip(rider.id, f"from {number}", "to")
                for number in range(4)]
        await claimed(store, made[1], driver)
        await advanced(store, made[2], driver, TripStatus.COMPLETED)
        unfinished = await store.unfinished_trips(10)
        assert ids(unfinished) == ids([made[0], made[1], made[3]])
        assert unfinished[1].driver_id == driver.id and unfinished[1].rider_id == rider.id
        assert ids(await store.unfinished_trips(2)) == ids(made[:2])

    async def test_users_are_found_by_the_start_of_their_name(self, store: Store) -> None:
        for name in ("Rita", "rob", "Robert", "roberta", "ola", "\uff32occo"):  # fullwidth R
            await store.create_user(name, "hash", "rider")
        found = await store.find_users("RO", 10)
        assert [user.username for user in found] == ["rob", "Robert", "roberta", "\uff32occo"]
        assert found[0].group == "rider" and found[0].password_hash == "hash"
        assert [user.username for user in await store.find_users("rob", 2)] == ["rob", "Robert"]
        assert await store.find_users("robz", 10) == []
        assert [user.username for user in await store.find_users("", 2)] == ["ola", "Rita"]

    # Idempotency keys: a block of its own (taxi_tornado/idempotency.py).

    async def test_a_request_key_is_claimed_once_then_holds_its_answer(
            self, store: Store) -> None:
        assert await store.claim_key("u1", "k", "print-a", 60) is None
        assert await store.claim_key("u1", "k", "print-b", 60) == RequestKey("print-a", None)
        assert await store.claim_key("u2", "k", "print-b", 60) is None  # keys are per user
        await store.remember_key("u1", "k", "print-a", b'{"type":"x"}', 60)
        assert await store.claim_key("u1", "k", "print-a", 60) == RequestKey(
            "print-a", b'{"type":"x"}')
        await store.release_key("u1", "k")
        assert await store.claim_key("u1", "k", "print-c", 60) is None

    async def test_a_lapsed_request_key_is_claimed_anew(self, store: Store) -> None:
        assert await store.claim_key("u1", "lease", "print-a", 0.05) is None
        await store.remember_key("u1", "answered", "print-a", b"null", 0.05)
        await asyncio.sleep(0.1)
        assert await store.claim_key("u1", "lease", "print-b", 60) is None
        assert await store.claim_key("u1", "answered", "print-b", 60) is None
        assert await store.claim_key("u1", "answered", "print-c", 60) == RequestKey(
            "print-b", None)

    async def test_racing_claims_of_one_request_key_have_one_winner(
            self, store: Store) -> None:
        await store.claim_key("u1", "warm-up", "p", 60)  # the store is ready before the race
        results = await asyncio.gather(*(store.claim_key("u1", "race", f"print-{number}", 60)
                                         for number in range(8)))
        winners = [number for number, result in enumerate(results) if result is None]
        assert len(winners) == 1, results
        assert {result for result in results if result is not None} == {
            RequestKey(f"print-{winners[0]}", None)}

    async def test_a_claim_remembers_or_releases_only_while_it_holds_its_key(
            self, store: Store) -> None:
        await claims_keep_to_their_own(store)


async def claims_keep_to_their_own(keys: RequestKeys) -> None:
    """A claim whose lease lapsed and was taken over neither answers nor frees the key
    of the claim after it (any RequestKeys: the stores, and RedisKeys)."""
    assert await keys.claim_key("u1", "slow", "f" * 64, 0.05, "claim-a") is None
    await asyncio.sleep(0.1)
    assert await keys.claim_key("u1", "slow", "f" * 64, 60, "claim-b") is None
    assert await keys.remember_key("u1", "slow", "f" * 64, b'{"type":"a"}', 60,
                                   "claim-a") is False
    await keys.release_key("u1", "slow", "claim-a")
    assert await keys.claim_key("u1", "slow", "f" * 64, 60, "claim-c") == RequestKey(
        "f" * 64, None)
    assert await keys.remember_key("u1", "slow", "f" * 64, b'{"type":"b"}', 60,
                                   "claim-b") is True
    await keys.release_key("u1", "slow", "claim-b")  # answered: no claim to release
    assert await keys.claim_key("u1", "slow", "f" * 64, 60, "claim-c") == RequestKey(
        "f" * 64, b'{"type":"b"}')
    assert await keys.claim_key("u1", "freed", "e" * 64, 60, "claim-d") is None
    await keys.release_key("u1", "freed", "claim-d")
    assert await keys.claim_key("u1", "freed", "e" * 64, 60, "claim-e") is None


async def riders(store: Store, *names: str) -> list[User]:
    return [await store.create_user(name, "hash", "rider") for name in names]


async def drivers(store: Store, *names: str) -> list[User]:
    return [await store.create_user(name, "hash", "driver") for name in names]


async def claimed(store: Store, trip: Trip, driver: User) -> Trip:
    """`trip` claimed by `driver` (REQUESTED -> STARTED)."""
    return await advanced(store, trip, driver, TripStatus.STARTED)


async def advanced(store: Store, trip: Trip, driver: User, status: TripStatus) -> Trip:
    result = await store.update_trip(trip.id, expected_status=trip.status,
                                     expected_driver_id=trip.driver_id, status=status,
                                     driver_id=driver.id)
    assert result is not None, f"{driver.username} could not move {trip.id} to {status}"
    return result


async def status_of(store: Store, trip: Trip) -> TripStatus:
    stored = await store.get_trip(trip.id)
    assert stored is not None
    return stored.status


async def trips_in_order(store: Store, rider: User, count: int) -> list[Trip]:
    """`count` trips of `rider`, oldest first, each created at a later time."""
    made: list[Trip] = []
    for number in range(count):
        made.append(await store.create_trip(rider.id, f"from {number}", "to"))
        await asyncio.sleep(0.002)  # distinct creation times on any clock
    return made


def ids(trips: Iterable[Trip]) -> list[str]:
    return [trip.id for trip in trips]
