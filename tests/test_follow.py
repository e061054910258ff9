"""A user's other sockets follow a trip that one of them requested or claimed: on the
same process and, through Redis, on another (plugins/follow.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from taxi_tornado.hub import Position
from taxi_tornado.plugins.follow import FOLLOW, FOLLOW_TYPE, UNFOLLOW_TYPE, unfollow
from taxi_tornado.store import TripStatus
from tests.conftest import Client, RunningServer
from tests.redis_server import SHARED_REDIS
from tests.test_cluster import API_KEY, Spawn, connect, hub_publish, ready_pair, sign_up
from tests.test_operations import eventually
from tests.test_trips import heard, request

LOCATION = {"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}}
Publish = Callable[[dict[str, Any]], Awaitable[Any]]


@pytest.fixture
def hub_env() -> dict[str, str]:
    return {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": f"follow-{uuid.uuid4().hex[:12]}",
            "TAXI_HUB_API_KEY": API_KEY}


async def hear_the_trip(joiners: Iterable[Client], publish: Publish,
                        members: Iterable[Client] = ()) -> None:
    """Send probes to the trip's group until each of `joiners` heard one: all are in the
    group by then (they join in the background). Then every socket, the group's other
    `members` too, reads the probes up to the last one, so that its next frame is what
    the test sends next."""
    joiners = list(joiners)
    waiting = set(joiners)
    deadline = time.monotonic() + 5
    last = -1
    while waiting:
        assert time.monotonic() < deadline, "a socket never joined the trip's group"
        last += 1
        await publish({"type": "probe", "data": last})
        for joiner in list(waiting):
            try:
                frame = await joiner.receive(0.1)
            except AssertionError:  # nothing within 0.1 s: not in the group yet
                continue
            assert frame["type"] == "probe", frame
            waiting.discard(joiner)
            if frame["data"] == last:
                joiner.held.appendleft(frame)  # read again below, with the rest
    for client in [*joiners, *members]:
        while (frame := await client.receive())["data"] != last:
            assert frame["type"] == "probe", frame


async def test_a_riders_other_sockets_follow_the_trip_it_requested(
        server: RunningServer) -> None:
    _, rider_token = await server.user("rider")
    phone = await server.connect(rider_token, v2=True)
    tablet = await server.connect(rider_token, v2=True)
    old_app = await server.connect(rider_token)
    _, driver_token = await server.user("driver", "driver")
    driver = await server.connect(driver_token, v2=True)
    trip = await request(phone)
    await hear_the_trip([tablet, old_app],
                        lambda message: server.hub.send(trip["id"], message), [phone])
    await heard(driver, trip, "REQUESTED")
    await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                          "status": "STARTED"}})
    for device in (phone, tablet, old_app):
        await heard(device, trip, "STARTED")
    await driver.send(LOCATION)
    for device in (phone, tablet):
        assert (await device.receive())["type"] == "driver.location"
    await old_app.nothing()  # v1 never gets locations


async def test_a_drivers_other_socket_follows_the_trip_it_claimed(
        server: RunningServer) -> None:
    _, rider_token = await server.user("rider")
    rider = await server.connect(rider_token, v2=True)
    _, driver_token = await server.user("driver", "driver")
    phone = await server.connect(driver_token, v2=True)
    tablet = await server.connect(driver_token, v2=True)
    trip = await request(rider)
    for device in (phone, tablet):
        await heard(device, trip, "REQUESTED")
    await phone.request({"type": "trip.update", "data": {"id": trip["id"],
                                                         "status": "STARTED"}})
    await heard(tablet, trip, "STARTED")  # the pool's notice that it was taken (v2)
    await heard(rider, trip, "STARTED")
    await hear_the_trip([tablet], lambda message: server.hub.send(trip["id"], message),
                        [phone, rider])
    await phone.request({"type": "trip.update", "data": {"id": trip["id"],
                                                         "status": "IN_PROGRESS"}})
    await heard(tablet, trip, "IN_PROGRESS")
    await heard(rider, trip, "IN_PROGRESS")


async def test_a_follow_joins_only_the_users_own_unfinished_trip(
        server: RunningServer) -> None:
    """`/api/hub/publish/` may post to `trips:follow` too: a follow naming a group that is
    not an unfinished trip of that user's (the operators' group, another rider's trip,
    their own canceled trip) joins nothing."""
    rider, rider_token = await server.user("rider")
    phone = await server.connect(rider_token, v2=True)
    tablet = await server.connect(rider_token, v2=True)
    _, other_token = await server.user("other-rider")
    other_trip = await request(await server.connect(other_token, v2=True))
    ended = await server.store.create_trip(rider.id, "A street", "B street", None, None)
    assert await server.store.update_trip(
        ended.id, expected_status=TripStatus.REQUESTED, expected_driver_id=None,
        status=TripStatus.CANCELED, driver_id=None) is not None
    for group in ("admin", other_trip["id"], "user:someone-else", ended.id):
        await server.hub.send(FOLLOW, {"type": FOLLOW_TYPE,
                                       "data": {"user": rider.id, "trip": group}})
    own_trip = await request(phone)  # its follow is asked for after the three above
    await hear_the_trip([tablet], lambda message: server.hub.send(own_trip["id"], message),
                        [phone])
    for group in ("admin", other_trip["id"], ended.id):
        await server.hub.send(group, {"type": "not.for.you"})
    await tablet.nothing()
    await phone.nothing()


async def test_sockets_on_another_process_follow_through_redis(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, hub_env)
    _, rider_token = await sign_up(a, "rider")
    driver_id, driver_token = await sign_up(b, "driver")
    phone = await connect(a, rider_token)
    tablet = await connect(b, rider_token)
    driver_phone = await connect(b, driver_token)
    driver_tablet = await connect(a, driver_token)
    trip = await request(phone)
    await hear_the_trip([tablet], lambda message: hub_publish(a, trip["id"], message), [phone])
    for device in (driver_phone, driver_tablet):
        await heard(device, trip, "REQUESTED")
    await driver_phone.request({"type": "trip.update", "data": {
        "id": trip["id"], "status": "STARTED", "driver": driver_id}})
    await heard(driver_tablet, trip, "STARTED")  # the pool's notice (v2)
    for device in (phone, tablet):
        await heard(device, trip, "STARTED")
    await hear_the_trip([driver_tablet], lambda message: hub_publish(b, trip["id"], message),
                        [phone, tablet, driver_phone])
    await driver_phone.send(LOCATION)
    for device in (phone, tablet):
        assert (await device.receive())["type"] == "driver.location"
    for client in (phone, tablet, driver_phone, driver_tablet):
        client.close()


async def test_every_socket_lets_an_ended_trips_group_go(server: RunningServer) -> None:
    """Completed or canceled, a trip's group is left by every socket in it: a socket
    open all day is not in the group of every trip of the day."""
    _, rider_token = await server.user("rider")
    phone = await server.connect(rider_token, v2=True)
    tablet = await server.connect(rider_token, v2=True)
    _, driver_token = await server.user("driver", "driver")
    driver = await server.connect(driver_token, v2=True)
    trip = await request(phone)
    await hear_the_trip([tablet], lambda message: server.hub.send(trip["id"], message),
                        [phone])
    await heard(driver, trip, "REQUESTED")
    for status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
        await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": status}})
        for device in (phone, tablet):
            await heard(device, trip, status)
    await eventually(lambda: server.hub.members(trip["id"]) == 0)
    second = await request(tablet)
    await heard(driver, second, "REQUESTED")
    await hear_the_trip([phone], lambda message: server.hub.send(second["id"], message),
                        [tablet])
    await tablet.request({"type": "trip.cancel", "data": {"id": second["id"]}})
    await heard(phone, second, "CANCELED")
    await heard(driver, second, "CANCELED")  # the pool's notice (v2)
    await eventually(lambda: server.hub.members(second["id"]) == 0)
    third = await request(phone)  # claimed straight to COMPLETED, as the protocol allows
    await heard(driver, third, "REQUESTED")
    await driver.request({"type": "trip.update", "data": {"id": third["id"],
                                                          "status": "COMPLETED"}})
    await heard(phone, third, "COMPLETED")
    await eventually(lambda: server.hub.members(third["id"]) == 0)
    assert not {trip["id"], second["id"], third["id"]} & set(server.hub.groups)


async def test_an_unfollow_leaves_only_ended_trips(server: RunningServer) -> None:
    """An unfollow (from `/api/hub/publish/`, say) naming the drivers' pool or a trip
    under way takes nobody out of it."""
    _, rider_token = await server.user("rider")
    rider = await server.connect(rider_token, v2=True)
    _, driver_token = await server.user("driver", "driver")
    driver = await server.connect(driver_token, v2=True)
    trip = await request(rider)
    await heard(driver, trip, "REQUESTED")
    for group in ("drivers", trip["id"]):
        await server.hub.send(FOLLOW, {"type": UNFOLLOW_TYPE, "data": {"trip": group}})
    await unfollow(server.hub, trip["id"])  # the same, through the plugin's own call
    await asyncio.sleep(0.2)  # the listener reads the store in the background
    assert server.hub.members("drivers") == 1
    assert server.hub.members(trip["id"]) == 1
    await server.hub.send("drivers", {"type": "still.here"})
    assert (await driver.receive())["type"] == "still.here"


async def test_a_group_left_during_a_resume_keeps_no_position(server: RunningServer) -> None:
    """The trip ends (and its group is left) while a resume holds the group back: the
    held events still go out, and no position is kept for a group the socket left."""
    _, rider_token = await server.user("rider")
    phone = await server.connect(rider_token, v2=True)
    trip = await request(phone)
    (handler,) = server.server.services.sockets
    conn = handler.connection
    conn.hold(trip["id"])
    await server.hub.send(trip["id"], {"type": "held.back"})
    await conn.leave(trip["id"])
    conn.release(trip["id"], Position(5, "epoch"))
    assert (await phone.receive())["type"] == "held.back"
    assert conn.received(trip["id"]) is None
