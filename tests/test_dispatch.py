"""Dispatch over real sockets with the memory hub (PROTOCOL.md, "Dispatch: who hears of
a trip"): nearest-first offers in widening circles, declines, claims, revocations, the
server's cancel, availability, and the nearby-drivers API. The same behaviour across
processes with Redis is in test_dispatch_cluster.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.settings import Settings
from tests.conftest import Client, RunningServer, make_settings
from tests.location_contract import CENTER, offset
from tests.redis_server import SHARED_REDIS, free_port
from tests.test_operations import eventually

Start = Callable[[Settings], Awaitable[RunningServer]]
PICK_UP = {"lat": CENTER[0], "lng": CENTER[1]}


def nearest(tmp_path: Path, **dispatch: Any) -> Settings:
    """Settings for `nearest` with short timers; a test names what it relies on."""
    values = {"mode": "nearest", "batch": 3, "offer_timeout": 30.0, "max_wait": 60.0,
              **dispatch}
    return make_settings(tmp_path, dispatch=values)


async def report(client: Client, north_m: float, east_m: float = 0,
                 heading: float | None = None) -> None:
    """Send a position, then a barrier: the socket's frames are handled in order."""
    lat, lng = offset(north_m, east_m)
    await client.send({"type": "driver.location",
                       "data": {"lat": lat, "lng": lng, "heading": heading}})
    assert (await client.request({"type": "echo.message", "data": "sync"}))["data"] == "sync"


async def driver_at(server: RunningServer, name: str, north_m: float, east_m: float = 0,
                    *, v2: bool = True) -> tuple[str, Client]:
    user, token = await server.user(name, "driver")
    client = await server.connect(token, v2=v2)
    await report(client, north_m, east_m)
    return user.id, client


async def rider(server: RunningServer, name: str = "rider", v2: bool = True) -> Client:
    _, token = await server.user(name, "rider")
    return await server.connect(token, v2=v2)


async def request(client: Client, pick_up: dict[str, float] | None = PICK_UP) -> dict[str, Any]:
    data: dict[str, Any] = {"pick_up_address": "Alexanderplatz", "drop_off_address": "Tegel"}
    if pick_up is not None:
        data["pick_up"] = pick_up
    reply = await client.request({"type": "trip.request", "id": "req", "data": data})
    assert reply["type"] == "trip.updated", reply
    trip: dict[str, Any] = reply["data"]
    return trip


async def expect(client: Client, kind: str, timeout: float = 5) -> dict[str, Any]:
    message = await client.receive(timeout)
    assert message["type"] == kind, message
    data: dict[str, Any] = message["data"]
    return data


async def claim(client: Client, trip_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = await client.request(
        {"type": "trip.update", "id": "claim", "data": {"id": trip_id, "status": "STARTED"}})
    return reply


async def error_code(client: Client, message: dict[str, Any]) -> str:
    reply = await client.request(message)
    assert reply["type"] == "error", reply
    code: str = reply["data"]["code"]
    return code


# --- offers ------------------------------------------------------------------------------

async def test_nearest_batch_gets_the_offer_and_farther_drivers_do_not(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=2))
    near_id, near = await driver_at(server, "near", 100)
    _, second = await driver_at(server, "second", 0, -400)
    _, far = await driver_at(server, "far", 1500)
    passenger = await rider(server)
    trip = await request(passenger)
    assert trip["pick_up"] == PICK_UP and trip["drop_off"] is None
    offer = await expect(near, "trip.offer")
    assert offer["trip"]["id"] == trip["id"]
    assert offer["trip"]["pick_up"] == PICK_UP
    assert offer["distance_m"] == pytest.approx(100, abs=2)
    assert offer["expires"].endswith("Z")
    assert (await expect(second, "trip.offer"))["distance_m"] == pytest.approx(400, abs=2)
    await far.nothing()
    assert near_id


async def test_decline_moves_on_to_the_next_batch_at_once(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1, offer_timeout=60))
    _, first = await driver_at(server, "first", 100)
    _, second = await driver_at(server, "second", 300)
    trip = await request(await rider(server))
    await expect(first, "trip.offer")
    await second.nothing(0.2)
    reply = await first.request({"type": "trip.decline", "id": 7, "data": {"id": trip["id"]}})
    assert reply == {"type": "trip.declined", "data": {"id": trip["id"]}, "id": 7}
    offer = await expect(second, "trip.offer", timeout=5)  # long before the 60 s expiry
    assert offer["trip"]["id"] == trip["id"]
    await first.nothing()  # a decliner gets no revocation, and never the trip again
    assert await error_code(first, {"type": "trip.decline", "data": {"id": trip["id"]}}) == (
        "not_found")


@pytest.mark.parametrize("hub", ["memory", "redis"])
async def test_one_drivers_decline_leaves_the_others_offer_live(
        tmp_path: Path, start: Start, hub: str) -> None:
    """A batch of two: the nearer driver declines, the other has not decided. Their offer
    stays live (no revocation, no next round): they still see the trip and may claim it."""
    hub_section = {} if hub == "memory" else {
        "url": SHARED_REDIS, "prefix": f"decline-{uuid.uuid4().hex[:12]}"}
    server = await start(make_settings(tmp_path, hub=hub_section, dispatch={
        "mode": "nearest", "batch": 2, "offer_timeout": 60.0, "max_wait": 120.0}))
    _, decliner = await driver_at(server, "decliner", 100)
    undecided_id, undecided = await driver_at(server, "undecided", 200)
    _, next_in_line = await driver_at(server, "next in line", 300)
    trip = await request(await rider(server))
    await expect(decliner, "trip.offer")
    await expect(undecided, "trip.offer")
    reply = await decliner.request({"type": "trip.decline", "data": {"id": trip["id"]}})
    assert reply["type"] == "trip.declined"
    await undecided.nothing()  # no trip.offer.revoked
    await next_in_line.nothing(0.1)  # the round goes on: one offer of it is still live
    status, listed, _ = await server.fetch(
        "/api/trip/", token=await token_of(server, "undecided"))
    assert status == 200 and [item["id"] for item in listed] == [trip["id"]]
    claimed = await claim(undecided, trip["id"])
    assert claimed["type"] == "trip.updated", claimed
    assert claimed["data"]["driver"]["id"] == undecided_id


async def test_expired_offer_widens_the_circle(tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1, radius_m=500, max_radius_m=4000,
                                 offer_timeout=1.0))
    _, inside = await driver_at(server, "inside", 200)
    _, outside = await driver_at(server, "outside", -800)
    trip = await request(await rider(server))
    await expect(inside, "trip.offer")
    await outside.nothing(0.3)
    revoked = await expect(inside, "trip.offer.revoked", timeout=5)
    assert revoked == {"id": trip["id"], "reason": "expired"}
    offer = await expect(outside, "trip.offer", timeout=5)
    assert offer["distance_m"] == pytest.approx(800, abs=2)  # the 1 km circle holds it
    # A former holder can neither see nor claim the trip.
    assert (await claim(inside, trip["id"]))["data"]["code"] == "not_found"


async def test_circle_with_nobody_new_widens_at_once(tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1, radius_m=250, max_radius_m=8000,
                                 offer_timeout=60))
    _, distant = await driver_at(server, "distant", 0, 3000)
    began = time.monotonic()
    await request(await rider(server))
    offer = await expect(distant, "trip.offer", timeout=5)
    assert offer["distance_m"] == pytest.approx(3000, abs=5)
    assert time.monotonic() - began < 30  # not after an offer_timeout of 60 s


async def test_driver_beyond_max_radius_is_never_offered_the_trip(
        tmp_path: Path, start: Start) -> None:
    """The circles widen 300 -> 600 -> 1000 m (capped, not 1200) in the first round, and
    stay at 1000 m in every later one: a driver at 1.1 km is never offered the trip, and
    it is canceled unmatched at max_wait."""
    server = await start(nearest(tmp_path, batch=1, radius_m=300, max_radius_m=1000,
                                 offer_timeout=0.3, max_wait=1.5))
    _, beyond = await driver_at(server, "beyond", 1100)
    passenger = await rider(server)
    trip = await request(passenger)
    canceled = await expect(passenger, "trip.updated", timeout=10)  # after several rounds
    assert canceled["id"] == trip["id"] and canceled["status"] == "CANCELED"
    assert await expect(passenger, "trip.unmatched") == {"id": trip["id"]}
    await beyond.nothing(0.1)


async def test_claim_by_an_offered_driver_wins_and_the_others_hear_taken(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=3))
    winner_id, winner = await driver_at(server, "winner", 100)
    _, loser = await driver_at(server, "loser", 200)
    _, third = await driver_at(server, "third", 300)
    _, bystander = await driver_at(server, "bystander", 5000)
    passenger = await rider(server)
    trip = await request(passenger)
    for driver in (winner, loser, third):
        await expect(driver, "trip.offer")
    reply = await claim(winner, trip["id"])
    assert reply["type"] == "trip.updated" and reply["data"]["status"] == "STARTED"
    assert reply["data"]["driver"]["id"] == winner_id
    assert (await expect(passenger, "trip.updated"))["status"] == "STARTED"
    for driver in (loser, third):
        assert await expect(driver, "trip.offer.revoked") == {"id": trip["id"],
                                                              "reason": "taken"}
    assert (await claim(loser, trip["id"]))["data"]["code"] == "conflict"
    await winner.nothing()
    await bystander.nothing(0.1)  # offered trips send no pool notices
    _, _, response = await server.fetch("/metrics")
    text = response.body.decode()
    assert "taxi_dispatch_offers_made_total" in text
    assert "taxi_dispatch_offers_taken_total" in text
    assert "taxi_dispatch_first_offer_seconds_count" in text
    assert "taxi_dispatch_claim_seconds_count" in text


async def test_driver_without_the_offer_gets_not_found_and_never_sees_the_trip(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1))
    holder, token_holder = await server.user("holder", "driver")
    other, token_other = await server.user("other", "driver")
    holder_ws = await server.connect(token_holder, v2=True)
    other_ws = await server.connect(token_other, v2=True)
    await report(holder_ws, 100)
    await report(other_ws, 900)
    trip = await request(await rider(server))
    await expect(holder_ws, "trip.offer")
    assert (await claim(other_ws, trip["id"]))["data"]["code"] == "not_found"
    status, listed, _ = await server.fetch("/api/trip/", token=token_other)
    assert status == 200 and listed == []
    status, _, _ = await server.fetch(f"/api/trip/{trip['id']}/", token=token_other)
    assert status == 404
    status, listed, _ = await server.fetch("/api/trip/", token=token_holder)
    assert [item["id"] for item in listed] == [trip["id"]]
    status, detail, _ = await server.fetch(f"/api/trip/{trip['id']}/", token=token_holder)
    assert status == 200 and detail["pick_up"] == PICK_UP
    assert holder.id != other.id


async def test_rider_cancel_revokes_every_offer(tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=2))
    _, first = await driver_at(server, "first", 100)
    _, second = await driver_at(server, "second", 200)
    passenger = await rider(server)
    trip = await request(passenger)
    await expect(first, "trip.offer")
    await expect(second, "trip.offer")
    reply = await passenger.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert reply["data"]["status"] == "CANCELED"
    for driver in (first, second):
        assert await expect(driver, "trip.offer.revoked") == {"id": trip["id"],
                                                              "reason": "canceled"}
        await driver.nothing(0.1)  # and no trip.updated: the pool was never told


async def test_trip_nobody_takes_is_canceled_after_max_wait(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1, offer_timeout=0.6, max_wait=1.5))
    _, staff_token = await server.user("olga", "staff")
    staff = await server.connect(staff_token, v2=True)
    _, ignoring = await driver_at(server, "ignoring", 100)
    passenger = await rider(server)
    trip = await request(passenger)
    await expect(ignoring, "trip.offer")
    canceled = await expect(passenger, "trip.updated", timeout=10)
    assert canceled["id"] == trip["id"] and canceled["status"] == "CANCELED"
    assert await expect(passenger, "trip.unmatched") == {"id": trip["id"]}
    await eventually(lambda: server.hub.members(trip["id"]) == 0)  # the group is let go
    # The operators' table hears of the server's cancel as of any other change.
    deadline = time.monotonic() + 5
    while True:  # past admin.stats (every second) and the admin.trip of the request
        assert time.monotonic() < deadline, "staff never heard of the cancel"
        event = await staff.receive(5)
        if event["type"] == "admin.trip" and event["data"]["status"] == "CANCELED":
            break
    assert event["data"]["id"] == trip["id"]
    # The offer expired after 0.6 s (never offered again); nothing else reaches the driver.
    assert await expect(ignoring, "trip.offer.revoked") == {"id": trip["id"],
                                                            "reason": "expired"}
    stored = await server.store.get_trip(trip["id"])
    assert stored.status == "CANCELED"
    await ignoring.nothing(0.2)


async def test_max_wait_revokes_the_live_offer_as_canceled(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1, offer_timeout=30, max_wait=1.0))
    _, holder = await driver_at(server, "holder", 100)
    passenger = await rider(server, v2=False)  # a v1 rider hears only of the trip itself
    trip = await request(passenger)
    await expect(holder, "trip.offer")
    assert await expect(holder, "trip.offer.revoked", timeout=10) == {
        "id": trip["id"], "reason": "canceled"}
    assert (await expect(passenger, "trip.updated"))["status"] == "CANCELED"
    await passenger.nothing(0.3)


# --- availability ------------------------------------------------------------------------

async def test_unavailable_busy_disconnected_or_stale_drivers_get_no_offer(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=5, location_ttl=1.0))
    _, busy = await driver_at(server, "busy", 150)
    broadcast_trip = await request(await rider(server, "other rider"), pick_up=None)
    await expect(busy, "trip.updated")  # a trip without a position reaches everybody
    assert (await claim(busy, broadcast_trip["id"]))["data"]["status"] == "STARTED"
    await report(busy, 150)
    _, stale = await driver_at(server, "stale", 50)
    await eventually_nearby(server, 0)  # its position expired (and "busy" is busy)
    _, unavailable = await driver_at(server, "unavailable", 100)
    reply = await unavailable.request({"type": "driver.status", "id": 1,
                                       "data": {"status": "unavailable"}})
    assert reply == {"type": "driver.status", "data": {"status": "unavailable"}, "id": 1}
    # Status belongs to the driver: a second socket does not reset it.
    second_socket = await server.connect(await token_of(server, "unavailable"), v2=True)
    _, gone = await driver_at(server, "gone", 200)
    gone.close()
    _, old = await driver_at(server, "v1 only", 250, v2=False)
    _, chosen = await driver_at(server, "chosen", 3000)
    await eventually_nearby(server, 2, radius_m=5000)  # "v1 only" and "chosen"
    trip = await request(await rider(server))
    offer = await expect(chosen, "trip.offer")
    assert offer["trip"]["id"] == trip["id"]
    for driver in (stale, unavailable, second_socket, busy, old):
        await driver.nothing(0.1)


async def test_status_is_forgotten_when_the_last_socket_closes(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, batch=1))
    user, token = await server.user("driver", "driver")
    first = await server.connect(token, v2=True)
    await first.request({"type": "driver.status", "data": {"status": "unavailable"}})
    await report(first, 100)
    await eventually_nearby(server, 0)
    first.close()
    await eventually_forgotten(server, user.id)
    again = await server.connect(token, v2=True)
    await report(again, 100)
    await request(await rider(server))
    await expect(again, "trip.offer")


async def test_driver_status_is_validated(tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path))
    _, driver = await driver_at(server, "driver", 0)
    reply = await driver.request({"type": "driver.status", "data": {"status": "asleep"}})
    assert reply["data"]["code"] == "invalid" and "status" in reply["data"]["errors"]
    passenger = await rider(server)
    assert await error_code(passenger, {"type": "driver.status",
                                        "data": {"status": "available"}}) == "forbidden"
    assert await error_code(passenger, {"type": "trip.decline", "data": {"id": "x"}}) == (
        "forbidden")
    assert await error_code(driver, {"type": "trip.decline", "data": {}}) == "invalid"
    assert await error_code(driver, {"type": "trip.decline",
                                     "data": {"id": "no-such-trip"}}) == "not_found"


# --- positions and broadcast -------------------------------------------------------------

async def test_trip_request_positions_are_validated_under_their_names(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path))
    passenger = await rider(server)
    reply = await passenger.request({"type": "trip.request", "data": {
        "pick_up_address": "A", "drop_off_address": "B",
        "pick_up": {"lat": 95, "lng": 13.4}, "drop_off": [52.5, 13.4]}})
    assert reply["data"]["code"] == "invalid"
    errors = reply["data"]["errors"]
    assert set(errors) == {"pick_up", "drop_off"}
    assert "lat" in errors["pick_up"][0]
    reply = await passenger.request({"type": "trip.request", "data": {
        "pick_up_address": "A", "drop_off_address": "B", "pick_up": {"lng": 13.4}}})
    assert set(reply["data"]["errors"]) == {"pick_up"}
    trip = await request(passenger, {"lat": 52.5, "lng": 13.4})
    _, listed, _ = await server.fetch("/api/trip/", token=await token_of(server, "rider"))
    assert listed[0]["pick_up"] == {"lat": 52.5, "lng": 13.4} and listed[0]["id"] == trip["id"]


@pytest.mark.parametrize("mode", ["nearest", "broadcast"])
async def test_request_without_a_position_is_broadcast(
        tmp_path: Path, start: Start, mode: str) -> None:
    server = await start(nearest(tmp_path, mode=mode))
    _, new = await driver_at(server, "new", 100)
    _, old = await driver_at(server, "old", 100, v2=False)
    passenger = await rider(server, v2=False)  # the course's client sends no positions
    await passenger.send({"type": "create.trip", "data": {
        "pick_up_address": "1 Main St", "drop_off_address": "2 Oak Ave"}})
    trip = (await passenger.receive())["data"]
    assert trip["pick_up"] is None
    assert (await expect(new, "trip.updated"))["id"] == trip["id"]
    assert (await expect(old, "trip.updated"))["id"] == trip["id"]
    assert (await claim(old, trip["id"]))["data"]["status"] == "STARTED"
    assert (await expect(new, "trip.updated"))["status"] == "STARTED"  # v2 pool notice
    await old.nothing(0.1)


async def test_broadcast_mode_sends_trips_with_positions_to_every_driver(
        tmp_path: Path, start: Start) -> None:
    server = await start(make_settings(tmp_path))  # the default mode
    _, near = await driver_at(server, "near", 100)
    _, far = await driver_at(server, "far", 50_000)
    trip = await request(await rider(server))
    for driver in (near, far):
        assert (await expect(driver, "trip.updated"))["id"] == trip["id"]


# --- nearby ------------------------------------------------------------------------------

async def test_nearby_returns_available_drivers_nearest_first_without_ids(
        tmp_path: Path, start: Start) -> None:
    server = await start(nearest(tmp_path, max_radius_m=5000))
    _, b = await driver_at(server, "b", 300)
    _, a = await driver_at(server, "a", 100)
    _, c = await driver_at(server, "c", 0, 2000, v2=False)  # any protocol version counts
    _, d = await driver_at(server, "d", 0, 4000)
    await d.request({"type": "driver.status", "data": {"status": "unavailable"}})
    _, e = await driver_at(server, "e", 0, 6000)  # beyond the largest circle
    token = await token_of(server, "rider", create=True)
    lat, lng = CENTER
    status, body, _ = await server.fetch(f"/api/drivers/nearby/?lat={lat}&lng={lng}",
                                         token=token)
    assert status == 200 and body["count"] == 3
    assert [driver["lat"] for driver in body["drivers"]] == pytest.approx(
        [offset(100, 0)[0], offset(300, 0)[0], CENTER[0]], abs=1e-6)
    assert all(set(driver) == {"lat", "lng", "heading"} for driver in body["drivers"])
    status, body, _ = await server.fetch(
        f"/api/drivers/nearby/?lat={lat}&lng={lng}&radius_m=500", token=token)
    assert body["count"] == 2
    status, body, _ = await server.fetch(
        f"/api/drivers/nearby/?lat={lat}&lng={lng}&radius_m=99999", token=token)
    assert body["count"] == 3  # capped to dispatch.max_radius_m
    status, body, _ = await server.fetch("/api/drivers/nearby/?lat=91&lng=x&radius_m=-1",
                                         token=token)
    assert status == 400 and set(body) == {"lat", "lng", "radius_m"}
    assert body["radius_m"] == ["Must be a positive number of metres."]
    assert body["lat"] == ["Must be a number from -90 to 90."]
    status, body, _ = await server.fetch("/api/drivers/nearby/", token=token)
    assert status == 400 and body["lat"] == ["This field is required."]
    status, _, _ = await server.fetch(f"/api/drivers/nearby/?lat={lat}&lng={lng}")
    assert status == 401
    for client in (a, b, c, e):
        client.close()


# --- start-up ----------------------------------------------------------------------------

def test_unknown_mode_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "taxi_tornado", "serve"], cwd=tmp_path, capture_output=True,
        text=True, timeout=30, env={**os.environ, "TAXI_DATA_DIR": str(tmp_path / "data"),
                                    "TAXI_SERVER_PORT": str(free_port()),
                                    "TAXI_DISPATCH_MODE": "closest-free"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("taxi-tornado: dispatch.mode: ") and "closest-free" in lines[0]


# --- helpers -----------------------------------------------------------------------------

async def token_of(server: RunningServer, username: str, create: bool = False) -> str:
    user = await server.store.get_user_by_username(username)
    if user is None and create:
        user, token = await server.user(username, "rider")
        return token
    return server.tokens.issue_access(user, server.url)


async def eventually_nearby(server: RunningServer, count: int, radius_m: float = 2000,
                            timeout: float = 10) -> None:
    """Wait until the nearby API shows `count` available drivers around CENTER."""
    token = await token_of(server, "nearby-watcher", create=True)
    lat, lng = CENTER
    deadline = time.monotonic() + timeout
    while True:
        _, body, _ = await server.fetch(
            f"/api/drivers/nearby/?lat={lat}&lng={lng}&radius_m={radius_m}", token=token)
        if body["count"] == count:
            return
        assert time.monotonic() < deadline, f"nearby shows {body}, wanted {count}"
        await asyncio.sleep(0.05)


async def eventually_forgotten(server: RunningServer, driver_id: str,
                               timeout: float = 5) -> None:
    """Wait until the server ran the disconnect of the driver's last socket."""
    index = server.server.services.dispatch.locations
    deadline = time.monotonic() + timeout
    while (await index.census()).connected:
        assert time.monotonic() < deadline, "the driver's socket never closed"
        await asyncio.sleep(0.02)
    assert driver_id


async def test_location_relay_follows_claims_and_ends_with_the_trip(
        tmp_path: Path, start: Start) -> None:
    """What a driver drives is remembered between reports: a claim or a completion
    must change it at once."""
    server = await start(make_settings(tmp_path))
    _, driver = await driver_at(server, "driver", 100)  # a report while driving nothing
    passenger = await rider(server)
    trip = await request(passenger, pick_up=None)
    await expect(driver, "trip.updated")
    await claim(driver, trip["id"])
    await expect(passenger, "trip.updated")
    await report(driver, 120)
    relayed = await expect(passenger, "driver.location")
    assert relayed["trip"] == trip["id"]
    await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                           "status": "COMPLETED"}})
    await expect(passenger, "trip.updated")
    await report(driver, 140)
    await passenger.nothing()
    await eventually_nearby(server, 1)  # free again: available


async def test_a_socket_connecting_as_its_drivers_trip_is_canceled_leaves_them_available(
        tmp_path: Path, start: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connect reads the busy mark and writes it with the presence; a trip change in
    between (the rider cancels) waits its turn, so the mark written last is the cancel's
    and the driver gets offers again."""
    server = await start(nearest(tmp_path))
    _, driver = await driver_at(server, "driver", 100)
    passenger = await rider(server)
    trip = await request(passenger, pick_up=None)  # broadcast: the driver may claim it
    await expect(driver, "trip.updated")
    assert (await claim(driver, trip["id"]))["data"]["status"] == "STARTED"
    index = server.server.services.dispatch.locations
    connect = index.connect
    entered, go = asyncio.Event(), asyncio.Event()

    async def slow_connect(driver_id: str, version: int, busy: bool = False) -> None:
        assert busy  # read before the cancel
        entered.set()
        await go.wait()  # as behind another socket's close of the same driver
        await connect(driver_id, version, busy)

    monkeypatch.setattr(index, "connect", slow_connect)
    second = asyncio.ensure_future(server.connect(await token_of(server, "driver"), v2=True))
    await entered.wait()
    await passenger.send({"type": "trip.cancel", "id": "cancel", "data": {"id": trip["id"]}})
    await asyncio.sleep(0.3)  # room for the cancel's mark to be written before the connect's
    go.set()
    await second
    while (await passenger.receive()).get("id") != "cancel":
        pass
    await report(driver, 100)
    await eventually_nearby(server, 1)
