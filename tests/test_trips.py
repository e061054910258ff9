"""The trips plugin over real sockets: request, claim race, progress, cancel, location."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.store import TripStatus, User
from tests.conftest import Client, RunningServer, make_settings

ADDRESSES = {"pick_up_address": "123 Main Street", "drop_off_address": "456 Piney Road"}


async def rider_and_driver(server: RunningServer, v2: bool = False) -> tuple[
    User, Client, User, Client
]:
    rider, rider_token = await server.user("rider@example.com")
    driver, driver_token = await server.user("driver@example.com", "driver")
    return (rider, await server.connect(rider_token, v2=v2),
            driver, await server.connect(driver_token, v2=v2))


async def request(client: Client, **data: Any) -> dict[str, Any]:
    reply = await client.request({"type": "trip.request", "data": {**ADDRESSES, **data}})
    assert reply["type"] == "trip.updated", reply
    trip: dict[str, Any] = reply["data"]
    return trip


async def heard(client: Client, trip: dict[str, Any], status: str) -> dict[str, Any]:
    """The client's next frame: the event that `trip` is now `status`."""
    event: dict[str, Any] = await client.receive()
    assert event["type"] == "trip.updated", event
    assert (event["data"]["id"], event["data"]["status"]) == (trip["id"], status), event
    return event


def error_code(reply: dict[str, Any]) -> str:
    assert reply["type"] == "error", reply
    code: str = reply["data"]["code"]
    return code


# --- the course's test_websocket.py counterparts -------------------------------------

async def test_request_trip(server: RunningServer) -> None:
    rider, token = await server.user("rider@example.com")
    client = await server.connect(token)
    reply = await client.request({"type": "create.trip", "data": {**ADDRESSES, "rider": rider.id}})
    trip = reply["data"]
    assert reply["type"] == "trip.updated"
    assert trip["id"]
    assert trip["pick_up_address"] == "123 Main Street"
    assert trip["drop_off_address"] == "456 Piney Road"
    assert trip["status"] == "REQUESTED"
    assert trip["rider"]["username"] == rider.username
    assert trip["driver"] is None
    assert await server.store.get_trip(trip["id"]) is not None


async def test_driver_alerted_on_request(server: RunningServer) -> None:
    rider, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    alert = await driver_ws.receive()
    assert alert == {"type": "trip.updated", "data": trip}
    assert alert["data"]["rider"]["username"] == rider.username
    assert alert["data"]["driver"] is None


async def test_create_trip_group(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    trip = await request(client)
    message = {"type": "echo.message", "data": "This is a test message."}
    await server.hub.send(trip["id"], message)
    assert await client.receive() == message


async def test_join_trip_group_on_connect(server: RunningServer) -> None:
    rider, token = await server.user("rider@example.com")
    trip = await server.store.create_trip(rider.id, "A", "B")
    client = await server.connect(token)
    message = {"type": "echo.message", "data": "This is a test message."}
    await server.hub.send(trip.id, message)
    assert await client.receive() == message


async def test_driver_can_update_trip(server: RunningServer) -> None:
    rider, rider_token = await server.user("rider@example.com")
    trip = await server.store.create_trip(rider.id, "A", "B")
    rider_ws = await server.connect(rider_token)
    driver, driver_token = await server.user("driver@example.com", "driver")
    driver_ws = await server.connect(driver_token)
    reply = await driver_ws.request({"type": "update.trip", "data": {
        "id": trip.id, "pick_up_address": "A", "drop_off_address": "B",
        "status": "IN_PROGRESS", "driver": driver.id}})
    event = await rider_ws.receive()
    assert event == reply
    assert event["data"]["id"] == trip.id
    assert event["data"]["rider"]["username"] == rider.username
    assert event["data"]["driver"]["username"] == driver.username


async def test_driver_join_trip_group_on_connect(server: RunningServer) -> None:
    rider, _ = await server.user("rider@example.com")
    driver, token = await server.user("driver@example.com", "driver")
    trip = await server.store.create_trip(rider.id, "A", "B")
    await server.assign(trip.id, "STARTED", driver.id)
    client = await server.connect(token)
    message = {"type": "echo.message", "data": "This is a test message."}
    await server.hub.send(trip.id, message)
    assert await client.receive() == message


# --- lifecycle -------------------------------------------------------------------------

async def test_whole_lifecycle_rider_sees_every_step(server: RunningServer) -> None:
    _, rider_ws, driver, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    assert (await driver_ws.receive())["data"]["id"] == trip["id"]
    for status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
        reply = await driver_ws.request({"type": "trip.update", "data": {
            "id": trip["id"], "status": status}, "id": status})
        assert reply["id"] == status
        assert reply["data"]["status"] == status
        assert reply["data"]["driver"]["id"] == driver.id
        seen = await rider_ws.receive()
        assert seen == {"type": "trip.updated", "data": reply["data"]}
    await driver_ws.nothing()
    await rider_ws.nothing()
    stored = await server.store.get_trip(trip["id"])
    assert stored.status is TripStatus.COMPLETED and stored.driver_id == driver.id


async def test_sender_gets_exactly_one_frame_per_change(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server, v2=True)
    trip = await request(rider_ws)
    await rider_ws.nothing()
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "STARTED"}})
    await driver_ws.nothing()


async def test_skipping_statuses_is_allowed(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    reply = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "COMPLETED"}})
    assert reply["data"]["status"] == "COMPLETED"
    assert (await rider_ws.receive())["data"]["status"] == "COMPLETED"


# --- the claim race ---------------------------------------------------------------------

async def test_two_drivers_racing_exactly_one_wins(tmp_path: Path, start: Any) -> None:
    # One rider requests 25 trips in a row: past limits.trip_requests, lifted here.
    server: RunningServer = await start(make_settings(tmp_path, limits={"trip_requests": 0}))
    _, rider_token = await server.user("rider@example.com")
    rider_ws = await server.connect(rider_token)
    drivers = []
    for name in ("d1", "d2"):
        user, token = await server.user(name, "driver")
        drivers.append((user, await server.connect(token)))
    for round_number in range(25):
        trip = await request(rider_ws)
        for _, ws in drivers:
            await heard(ws, trip, "REQUESTED")
        claim = {"type": "trip.update", "data": {"id": trip["id"], "status": "STARTED"},
                 "id": round_number}
        replies = await asyncio.gather(*(ws.request(claim) for _, ws in drivers))
        winners = [user for (user, _), reply in zip(drivers, replies, strict=True)
                   if reply["type"] == "trip.updated"]
        losers = [reply for reply in replies if reply["type"] == "error"]
        assert len(winners) == 1, replies
        assert [error_code(reply) for reply in losers] == ["conflict"]
        assert losers[0]["id"] == round_number
        stored = await server.store.get_trip(trip["id"])
        assert stored.driver_id == winners[0].id
        assert (await rider_ws.receive())["data"]["driver"]["id"] == winners[0].id
        await server.store.update_trip(  # done, so that the rider stays within trips_per_rider
            trip["id"], expected_status=TripStatus.STARTED, expected_driver_id=winners[0].id,
            status=TripStatus.COMPLETED, driver_id=winners[0].id)


async def test_trip_held_by_another_driver_is_conflict(server: RunningServer) -> None:
    _, rider_ws, driver, driver_ws = await rider_and_driver(server)
    _, other_token = await server.user("other", "driver")
    other_ws = await server.connect(other_token)
    trip = await request(rider_ws)
    await heard(other_ws, trip, "REQUESTED")
    claim = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "STARTED"}})
    assert claim["type"] == "trip.updated" and claim["data"]["driver"]["id"] == driver.id
    # The trip is held now: the other driver's updates meet the ownership check, not a claim.
    for status in ("IN_PROGRESS", "STARTED", "COMPLETED"):
        reply = await other_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                         "status": status}})
        assert error_code(reply) == "conflict"
    stored = await server.store.get_trip(trip["id"])
    assert (stored.status, stored.driver_id) == (TripStatus.STARTED, driver.id)


async def test_v2_pool_hears_trip_taken_v1_pool_does_not(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    _, v1_token = await server.user("v1driver", "driver")
    _, v2_token = await server.user("v2driver", "driver")
    v1_ws, v2_ws = await server.connect(v1_token), await server.connect(v2_token, v2=True)
    trip = await request(rider_ws)
    for ws in (driver_ws, v1_ws, v2_ws):
        await heard(ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "STARTED"}})
    await heard(v2_ws, trip, "STARTED")
    await v1_ws.nothing()


# --- forbidden and invalid ----------------------------------------------------------------

@pytest.mark.parametrize(("current", "wanted"), [
    ("STARTED", "STARTED"), ("IN_PROGRESS", "STARTED"), ("COMPLETED", "IN_PROGRESS"),
    ("COMPLETED", "COMPLETED"), ("IN_PROGRESS", "REQUESTED"),
])
async def test_same_or_earlier_status_is_invalid_transition(
    server: RunningServer, current: str, wanted: str
) -> None:
    rider, _ = await server.user("rider@example.com")
    driver, token = await server.user("driver@example.com", "driver")
    trip = await server.store.create_trip(rider.id, "A", "B")
    await server.assign(trip.id, current, driver.id)
    ws = await server.connect(token)
    reply = await ws.request({"type": "trip.update", "data": {"id": trip.id, "status": wanted}})
    assert error_code(reply) == "invalid_transition"
    assert (await server.store.get_trip(trip.id)).status is TripStatus(current)


async def test_requested_to_requested_is_invalid_transition(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    reply = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "REQUESTED"}})
    assert error_code(reply) == "invalid_transition"


async def test_rider_cannot_update_trip(server: RunningServer) -> None:
    _, rider_ws, _, _ = await rider_and_driver(server)
    trip = await request(rider_ws)
    reply = await rider_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                     "status": "STARTED"}})
    assert error_code(reply) == "forbidden"


async def test_driver_cannot_request_trip(server: RunningServer) -> None:
    _, _, _, driver_ws = await rider_and_driver(server)
    reply = await driver_ws.request({"type": "trip.request", "data": ADDRESSES})
    assert error_code(reply) == "forbidden"


async def test_driver_cannot_cancel(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    for message in ({"type": "trip.cancel", "data": {"id": trip["id"]}},
                    {"type": "trip.update", "data": {"id": trip["id"], "status": "CANCELED"}}):
        assert error_code(await driver_ws.request(message)) == "forbidden"


async def test_unknown_trip_is_not_found(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    missing = "00000000-0000-4000-8000-000000000000"
    reply = await driver_ws.request({"type": "trip.update", "data": {"id": missing,
                                                                      "status": "STARTED"}})
    assert error_code(reply) == "not_found"
    reply = await rider_ws.request({"type": "trip.cancel", "data": {"id": "nope"}})
    assert error_code(reply) == "not_found"


@pytest.mark.parametrize(("data", "field"), [
    ({"drop_off_address": "B"}, "pick_up_address"),
    ({"pick_up_address": "A", "drop_off_address": ""}, "drop_off_address"),
    ({"pick_up_address": "A" * 256, "drop_off_address": "B"}, "pick_up_address"),
    ({**ADDRESSES, "rider": "somebody-else"}, "rider"),
])
async def test_invalid_trip_request_names_the_field(
    server: RunningServer, data: dict[str, Any], field: str
) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    reply = await rider_ws.request({"type": "trip.request", "data": data, "id": 1})
    assert error_code(reply) == "invalid"
    assert field in reply["data"]["errors"]
    assert reply["data"]["for"] == "trip.request"
    await driver_ws.nothing()


async def test_invalid_status_value(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    reply = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "FLYING"}})
    assert error_code(reply) == "invalid"
    assert "status" in reply["data"]["errors"]


async def test_claim_for_another_driver_is_invalid(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    reply = await driver_ws.request({"type": "trip.update", "data": {
        "id": trip["id"], "status": "STARTED", "driver": "someone-else"}})
    assert error_code(reply) == "invalid"
    assert (await server.store.get_trip(trip["id"])).driver is None


# --- cancel --------------------------------------------------------------------------------

async def test_rider_cancels_requested_trip_v2_pool_told(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server, v2=True)
    _, v1_token = await server.user("v1driver", "driver")
    v1_ws = await server.connect(v1_token)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    await heard(v1_ws, trip, "REQUESTED")
    reply = await rider_ws.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert reply["data"]["status"] == "CANCELED"
    await heard(driver_ws, trip, "CANCELED")
    await v1_ws.nothing()
    claim = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "STARTED"}})
    assert error_code(claim) == "invalid_transition"


async def test_rider_cancels_started_trip_driver_told(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "STARTED"}})
    await heard(rider_ws, trip, "STARTED")
    reply = await rider_ws.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert reply["data"]["status"] == "CANCELED"
    await heard(driver_ws, trip, "CANCELED")
    again = await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                                      "status": "COMPLETED"}})
    assert error_code(again) == "invalid_transition"


async def test_cannot_cancel_in_progress_or_completed(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "IN_PROGRESS"}})
    await heard(rider_ws, trip, "IN_PROGRESS")
    reply = await rider_ws.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert error_code(reply) == "invalid_transition"


async def test_other_rider_cannot_cancel(server: RunningServer) -> None:
    _, rider_ws, _, _ = await rider_and_driver(server)
    trip = await request(rider_ws)
    _, other_token = await server.user("other-rider")
    other_ws = await server.connect(other_token)
    reply = await other_ws.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert error_code(reply) == "not_found"
    assert (await server.store.get_trip(trip["id"])).status is TripStatus.REQUESTED


# --- location ----------------------------------------------------------------------------------

async def test_location_reaches_own_rider_only_and_v2_only(server: RunningServer) -> None:
    _rider, rider_token = await server.user("rider@example.com")
    rider_v2 = await server.connect(rider_token, v2=True)
    _, other_rider_token = await server.user("other-rider")
    other_v2 = await server.connect(other_rider_token, v2=True)
    driver, driver_token = await server.user("driver@example.com", "driver")
    driver_ws = await server.connect(driver_token, v2=True)
    _, other_driver_token = await server.user("other-driver", "driver")
    other_driver_ws = await server.connect(other_driver_token, v2=True)
    trip = await request(rider_v2)
    rider_v1 = await server.connect(rider_token)  # joins the trip's group on connect
    await heard(other_driver_ws, trip, "REQUESTED")
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "STARTED"}})
    await heard(rider_v2, trip, "STARTED")
    await heard(rider_v1, trip, "STARTED")
    await heard(other_driver_ws, trip, "STARTED")  # v2 pool: taken
    await driver_ws.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4,
                                                             "heading": 90, "speed": 8.5}})
    seen = await rider_v2.receive()
    assert seen["type"] == "driver.location"
    data = seen["data"]
    assert (data["driver"], data["trip"], data["lat"], data["lng"]) == (
        driver.id, trip["id"], 52.5, 13.4)
    assert data["heading"] == 90 and data["speed"] == 8.5 and data["at"].endswith("Z")
    for ws in (rider_v1, other_v2, other_driver_ws, driver_ws):
        await ws.nothing(0.2)


async def test_location_without_active_trip_reaches_nobody(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server, v2=True)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.send({"type": "driver.location", "data": {"lat": 1, "lng": 2}})
    await rider_ws.nothing()
    await driver_ws.nothing()


@pytest.mark.parametrize("data", [{"lat": 91, "lng": 0}, {"lat": 0}, {"lat": "1", "lng": 2},
                                  {"lat": 0, "lng": -181}, {"lat": True, "lng": 0}])
async def test_invalid_location(server: RunningServer, data: dict[str, Any]) -> None:
    _, _, _, driver_ws = await rider_and_driver(server, v2=True)
    reply = await driver_ws.request({"type": "driver.location", "data": data})
    assert error_code(reply) == "invalid"


async def test_rider_cannot_send_location(server: RunningServer) -> None:
    _, rider_ws, _, _ = await rider_and_driver(server, v2=True)
    reply = await rider_ws.request({"type": "driver.location", "data": {"lat": 1, "lng": 1}})
    assert error_code(reply) == "forbidden"


# --- reconnect -----------------------------------------------------------------------------------

async def test_reconnect_rejoins_active_trips_not_finished_ones(server: RunningServer) -> None:
    rider, token = await server.user("rider@example.com")
    driver, _ = await server.user("driver@example.com", "driver")
    active = await server.store.create_trip(rider.id, "A", "B")
    done = await server.store.create_trip(rider.id, "C", "D")
    canceled = await server.store.create_trip(rider.id, "E", "F")
    await server.assign(done.id, "COMPLETED", driver.id)
    await server.assign(canceled.id, "CANCELED", None)
    first = await server.connect(token)
    first.close()
    client = await server.connect(token)
    for trip_id in (done.id, canceled.id):
        await server.hub.send(trip_id, {"type": "echo.message", "data": trip_id})
    await server.hub.send(active.id, {"type": "echo.message", "data": active.id})
    assert await client.receive() == {"type": "echo.message", "data": active.id}
    await client.nothing()


async def test_failed_write_tells_nobody(server: RunningServer) -> None:
    _, rider_ws, _, driver_ws = await rider_and_driver(server)
    await server.store.close()  # every write now fails
    reply = await rider_ws.request({"type": "trip.request", "data": ADDRESSES, "id": 9})
    assert error_code(reply) == "internal"
    assert reply["id"] == 9
    assert "Traceback" not in reply["data"]["detail"]
    await driver_ws.nothing()
    await server.store.open()
