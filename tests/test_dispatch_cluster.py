"""`nearest` dispatch across real server processes sharing a real Redis: the request, the
offer, the decline and the claim each land on a different process, and a dispatch whose
process is killed (SIGKILL) is finished by another."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, ServerProcess, make_settings
from tests.location_contract import CENTER, offset
from tests.redis_server import SHARED_REDIS, RedisServer
from tests.test_cluster import Spawn, connect, http, ready_pair, sign_up
from tests.test_dispatch import PICK_UP, Start, claim, expect, request


@pytest.fixture
def hub_env() -> dict[str, str]:
    """The shared Redis, under a prefix of this test's own."""
    return {"TAXI_HUB_URL": SHARED_REDIS,
            "TAXI_HUB_PREFIX": f"dispatch-{uuid.uuid4().hex[:12]}"}


def dispatch_env(hub_env: dict[str, str], **dispatch: Any) -> dict[str, str]:
    values = {"mode": "nearest", "batch": 1, "offer_timeout": 30, "max_wait": 60, **dispatch}
    return {**hub_env, **{f"TAXI_DISPATCH_{key.upper()}": str(value)
                          for key, value in values.items()}}


async def located_driver(server: ServerProcess, north_m: float) -> tuple[str, str, Client]:
    """A driver signed up and connected (v2) to `server`, reporting a position."""
    driver_id, token = await sign_up(server, "driver")
    client = await connect(server, token)
    await report(client, north_m)
    return driver_id, token, client


async def report(client: Client, north_m: float) -> None:
    lat, lng = offset(north_m, 0)
    await client.send({"type": "driver.location", "data": {"lat": lat, "lng": lng}})
    assert (await client.request({"type": "echo.message", "data": 1}))["data"] == 1


async def nearby(server: ServerProcess, token: str, radius_m: float = 5000) -> int:
    lat, lng = CENTER
    status, body = await http(
        f"{server.url}/api/drivers/nearby/?lat={lat}&lng={lng}&radius_m={radius_m}",
        headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    count: int = body["count"]
    return count


async def until_nearby(server: ServerProcess, token: str, count: int,
                       timeout: float = 10) -> None:
    """Wait until `server` sees `count` available drivers (reports are written behind)."""
    deadline = time.monotonic() + timeout
    while (seen := await nearby(server, token)) != count:
        assert time.monotonic() < deadline, f"{server.url} sees {seen} drivers, not {count}"
        await asyncio.sleep(0.05)


async def test_offer_decline_and_claim_on_different_processes(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, dispatch_env(hub_env))
    _, rider_token = await sign_up(a, "rider")
    _, _, first = await located_driver(b, 100)
    second_id, second_token, second_on_a = await located_driver(a, 400)
    second_on_b = await connect(b, second_token)
    await until_nearby(a, rider_token, 2)
    await until_nearby(b, rider_token, 2)

    rider = await connect(a, rider_token)
    trip = await request(rider)  # dispatched by a
    assert (await expect(first, "trip.offer"))["trip"]["id"] == trip["id"]  # heard on b
    # A driver without the offer, on either process, neither sees nor claims the trip.
    assert (await claim(second_on_b, trip["id"]))["data"]["code"] == "not_found"
    status, listed = await http(f"{b.url}/api/trip/",
                                headers={"Authorization": f"Bearer {second_token}"})
    assert status == 200 and listed == []

    reply = await first.request({"type": "trip.decline", "data": {"id": trip["id"]}})
    assert reply["type"] == "trip.declined"  # declined on b: b offers the next batch
    for socket in (second_on_a, second_on_b):
        offer = await expect(socket, "trip.offer")
        assert offer["trip"]["id"] == trip["id"] and offer["trip"]["pick_up"] == PICK_UP
    claimed = await claim(second_on_b, trip["id"])  # claimed on b, the offer made by b
    assert claimed["data"]["status"] == "STARTED"
    assert claimed["data"]["driver"]["id"] == second_id
    assert (await expect(rider, "trip.updated"))["status"] == "STARTED"  # rider on a
    assert (await claim(first, trip["id"]))["data"]["code"] == "conflict"
    await first.nothing()
    # The busy driver is no longer available, on any process.
    await until_nearby(a, rider_token, 1)


async def test_cancel_and_status_across_processes(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, dispatch_env(hub_env, batch=2))
    _, rider_token = await sign_up(a, "rider")
    _, driver_token, on_a = await located_driver(a, 100)
    _, _, other = await located_driver(b, 300)
    await until_nearby(b, rider_token, 2)
    # Status set on one process holds for the driver's socket on the other.
    on_b = await connect(b, driver_token)
    await on_b.request({"type": "driver.status", "data": {"status": "unavailable"}})
    await until_nearby(a, rider_token, 1)
    await on_b.request({"type": "driver.status", "data": {"status": "available"}})
    await until_nearby(a, rider_token, 2)

    rider = await connect(b, rider_token)
    trip = await request(rider)
    for socket in (on_a, on_b, other):
        await expect(socket, "trip.offer")
    reply = await rider.request({"type": "trip.cancel", "data": {"id": trip["id"]}})
    assert reply["data"]["status"] == "CANCELED"
    for socket in (on_a, on_b, other):
        assert await expect(socket, "trip.offer.revoked") == {"id": trip["id"],
                                                              "reason": "canceled"}
    # The driver's last socket closing (first on a, then on b) forgets them everywhere.
    on_a.close()
    await asyncio.sleep(0.2)
    assert await nearby(a, rider_token) == 2
    on_b.close()
    await until_nearby(a, rider_token, 1)


async def test_sigkill_of_the_dispatching_process_and_another_finishes_the_dispatch(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, dispatch_env(hub_env, offer_timeout=2, max_wait=60))
    _, rider_token = await sign_up(b, "rider")
    _, _, near = await located_driver(b, 100)
    far_id, _, far = await located_driver(b, 900)
    await until_nearby(a, rider_token, 2)
    rider_on_a = await connect(a, rider_token)
    trip = await request(rider_on_a)  # a dispatches and holds the lease
    offer = await expect(near, "trip.offer")
    assert offer["trip"]["id"] == trip["id"]
    killed_at = time.monotonic()
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    # b takes the lapsed lease over and ends the round when the offer expires.
    assert await expect(near, "trip.offer.revoked", timeout=10) == {"id": trip["id"],
                                                                   "reason": "expired"}
    offer = await expect(far, "trip.offer", timeout=5)
    assert offer["trip"]["id"] == trip["id"]
    assert time.monotonic() - killed_at < 2 + 2 + 3  # offer_timeout, the next one, slack
    rider = await connect(b, rider_token)
    claimed = await claim(far, trip["id"])
    assert claimed["data"]["status"] == "STARTED" and claimed["data"]["driver"]["id"] == far_id
    assert (await expect(rider, "trip.updated"))["status"] == "STARTED"
    await near.nothing(0.3)


async def test_unmatched_trip_is_canceled_by_a_process_other_than_the_one_that_died(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, dispatch_env(hub_env, offer_timeout=1, max_wait=3))
    _, rider_token = await sign_up(a, "rider")
    rider_on_a = await connect(a, rider_token)
    trip = await request(rider_on_a)  # nobody near: rounds go on at the largest circle
    rider_on_b = await connect(b, rider_token)  # joins the trip's group
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    canceled = await expect(rider_on_b, "trip.updated", timeout=15)
    assert canceled["id"] == trip["id"] and canceled["status"] == "CANCELED"
    assert await expect(rider_on_b, "trip.unmatched") == {"id": trip["id"]}


async def test_request_while_redis_is_down_is_dispatched_once_it_is_back(
        tmp_path: Path, start: Start, private_redis: RedisServer) -> None:
    server = await start(make_settings(
        tmp_path, hub={"url": private_redis.url, "prefix": "down"},
        dispatch={"mode": "nearest", "offer_timeout": 1.0, "max_wait": 60.0}))
    _, token = await server.user("driver", "driver")
    driver = await server.connect(token, v2=True)
    passenger = await server.connect((await server.user("rider"))[1], v2=True)
    private_redis.kill()
    trip = await request(passenger)  # stored, answered; its dispatch waits for Redis
    assert trip["status"] == "REQUESTED"
    private_redis.start()  # empty: positions are reported again
    deadline = time.monotonic() + 20
    while True:
        lat, lng = offset(100, 0)
        await driver.send({"type": "driver.location", "data": {"lat": lat, "lng": lng}})
        try:
            message = await driver.receive(0.5)
        except AssertionError:  # nothing within 0.5 s: report again
            assert time.monotonic() < deadline, "no offer after Redis came back"
            continue
        assert message["type"] == "trip.offer", message
        assert message["data"]["trip"]["id"] == trip["id"]
        break


async def test_claim_on_one_process_starts_the_relay_from_the_drivers_socket_on_another(
        processes: Spawn, hub_env: dict[str, str]) -> None:
    a, b = await ready_pair(processes, dispatch_env(hub_env, mode="broadcast"))
    _, rider_token = await sign_up(a, "rider")
    _, token, on_b = await located_driver(b, 100)  # b now knows the driver drives nothing
    on_a = await connect(a, token)
    rider = await connect(a, rider_token)
    trip = await request(rider, pick_up=None)
    await expect(on_a, "trip.updated")
    await expect(on_b, "trip.updated")
    assert (await claim(on_a, trip["id"]))["data"]["status"] == "STARTED"
    await expect(rider, "trip.updated")
    await expect(on_b, "trip.updated")  # the pool's notice that the trip is taken
    deadline = time.monotonic() + 5  # far less than the 30 s an answer may be kept
    while True:
        await report(on_b, 150)  # sent on b, after the claim on a
        try:
            relayed = await expect(rider, "driver.location", timeout=0.3)
        except TimeoutError:
            assert time.monotonic() < deadline, "b kept relaying to nothing"
            continue
        break
    assert relayed["trip"] == trip["id"]
