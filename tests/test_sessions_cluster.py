"""Sessions that survive a phone across two real server processes sharing Redis.

The rider is the Python client (taxi_tornado.client) behind a TCP proxy that stands for
its link and the load balancer: it loses its link like a phone in a tunnel (the TCP
connection drops, no close frame) and comes back on the other process with its last
positions.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets

from taxi_tornado.client import TaxiClient
from taxi_tornado.hub import HistoryLimits, Hub, RedisBroker, publish
from tests.conftest import PASSWORD, Client, ServerProcess
from tests.link_proxy import LinkProxy, until
from tests.redis_server import SHARED_REDIS, RedisServer
from tests.test_cluster import connect, http, ready_pair, wait_ready

Spawn = Callable[..., ServerProcess]


@pytest.fixture
def prefix() -> str:
    return f"sessions-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def link() -> AsyncIterator[LinkProxy]:
    """The rider's link and load balancer: a proxy in front of A, then of B."""
    proxy = LinkProxy(0)
    await proxy.start()
    yield proxy
    await proxy.stop()


class Rider:
    """A TaxiClient, its access token, and what its listeners heard."""

    def __init__(self, client: TaxiClient, token: str) -> None:
        self.client = client
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.resumed: list[dict[str, Any]] = []
        client.on("trip.updated", lambda _, frame: self.events.append(frame))
        client.on("driver.location", lambda _, frame: self.events.append(frame))
        client.on("trip.fare_estimate", lambda _, frame: self.events.append(frame))
        client.on("resumed", self.resumed.append)

    async def next_resume(self) -> dict[str, Any]:
        await until(lambda: self.resumed, "session.resumed")
        return self.resumed.pop(0)

    async def events_until(self, count: int) -> list[dict[str, Any]]:
        await until(lambda: len(self.events) >= count, f"{count} events")
        return self.events


async def account(server: ServerProcess, group: str) -> tuple[str, str, str]:
    """A new user signed up and logged in over HTTP: (id, access token, refresh token)."""
    username = f"{group}-{uuid.uuid4().hex[:8]}"
    status, user = await http(f"{server.url}/api/sign_up/", "POST", {
        "username": username, "password1": PASSWORD, "password2": PASSWORD,
        "group": group})
    assert status == 201, user
    status, tokens = await http(f"{server.url}/api/log_in/", "POST",
                                {"username": username, "password": PASSWORD})
    assert status == 200, tokens
    return user["id"], tokens["access"], tokens["refresh"]


async def rider_with_a_position(
    a: ServerProcess, b: ServerProcess, redis_url: str, prefix: str, link: LinkProxy
) -> tuple[Rider, str, Client, dict[str, Any]]:
    """A rider on A (through `link`) with a REQUESTED trip whose group it holds a
    position in (a fare estimate that another service published), and a v2 driver on B
    who saw the trip."""
    _, access, _ = await account(a, "rider")
    _, driver_access, _ = await account(b, "driver")
    link.upstream_port = a.port
    rider = Rider(TaxiClient(link.url, lambda: access, reconnect=(0.05, 0.2)), access)
    await rider.client.connect()
    driver = await connect(b, driver_access)
    trip = await rider.client.request("trip.request", {"pick_up_address": "Station",
                                                       "drop_off_address": "Airport"})
    assert (await driver.receive())["data"]["id"] == trip["id"]
    await publish(redis_url, trip["id"], {"type": "trip.fare_estimate", "data": 23.5},
                  prefix=prefix)
    estimate = (await rider.events_until(1))[0]
    assert estimate["type"] == "trip.fare_estimate"
    assert estimate["pos"]["group"] == trip["id"] and estimate["pos"]["offset"] == 1
    return rider, trip["id"], driver, estimate["pos"]


async def tunnel_to(link: LinkProxy, rider: Rider, server: ServerProcess) -> None:
    """The rider's link drops without a close frame; the next one goes to `server`."""
    link.offline()
    await until(lambda: rider.client.state != "connected", "the client to notice the drop")
    link.upstream_port = server.port


async def move(driver: Client, trip_id: str, status: str) -> None:
    reply = await driver.request({"type": "trip.update", "data": {"id": trip_id,
                                                                  "status": status}})
    assert reply["data"]["status"] == status, reply


async def test_rider_cut_on_a_hears_on_b_what_the_driver_did_meanwhile(
    processes: Spawn, prefix: str, link: LinkProxy
) -> None:
    env = {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": prefix}
    a, b = await ready_pair(processes, env)
    rider, trip_id, driver, _ = await rider_with_a_position(a, b, SHARED_REDIS, prefix,
                                                            link)

    await tunnel_to(link, rider, b)  # mid-trip, in a tunnel
    await move(driver, trip_id, "STARTED")
    await move(driver, trip_id, "IN_PROGRESS")
    link.online()  # comes back on B: the load balancer's choice

    assert await rider.next_resume() == {"groups": {trip_id: {"recovered": True,
                                                              "missed": 2}}}
    missed = (await rider.events_until(3))[1:]
    assert [(e["data"]["status"], e["pos"]["offset"]) for e in missed] == [
        ("STARTED", 2), ("IN_PROGRESS", 3)]
    await driver.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    await move(driver, trip_id, "COMPLETED")
    live = (await rider.events_until(5))[3:]
    assert [(e["type"], e["pos"]["offset"]) for e in live] == [
        ("driver.location", 4), ("trip.updated", 5)]
    await asyncio.sleep(0.3)
    assert len(rider.events) == 5, "an event came twice"
    assert b.log().count("socket open user=") == 2  # the driver and the returning rider
    await rider.client.close()


async def test_events_published_while_the_replay_runs_come_once_and_in_order(
    processes: Spawn, prefix: str, link: LinkProxy
) -> None:
    # Room for every send: however many live sends land before the resume is read, the
    # history holds all that the client missed.
    size = 1000
    env = {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": prefix,
           "TAXI_HUB_HISTORY_SIZE": str(size)}
    a, b = await ready_pair(processes, env)
    rider, trip_id, _, pos = await rider_with_a_position(a, b, SHARED_REDIS, prefix, link)
    token = rider.token
    await rider.client.close()  # from here on the raw frames are read, in arrival order
    for n in range(60):  # missed while away
        await publish(SHARED_REDIS, trip_id, {"type": "fleet.notice", "data": n},
                      prefix=prefix, history_size=size)
    live_sends = 60

    # Another service, sending fast.
    service = Hub(RedisBroker(SHARED_REDIS, prefix, HistoryLimits(size, 300)))
    await service.start()

    async def publish_live() -> None:
        for n in range(live_sends):
            await service.send(trip_id, {"type": "fleet.notice", "data": 100 + n})

    ws = await websockets.connect(b.ws_url, subprotocols=[  # type: ignore[list-item]
        "taxi.v2", f"bearer.{token}"], proxy=None, ping_interval=None, max_queue=None)
    publisher = asyncio.ensure_future(publish_live())
    await asyncio.sleep(0.01)
    await ws.send(json.dumps({"type": "session.resume", "id": "r", "data": {"positions": {
        trip_id: {"offset": pos["offset"], "epoch": pos["epoch"]}}}}))
    final = pos["offset"] + 60 + live_sends
    before: list[int] = []
    after: list[int] = []
    resumed = None
    seen_final = False
    while not (resumed and seen_final):
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == "session.resumed":
            resumed = frame
            continue
        assert frame["pos"]["epoch"] == pos["epoch"]
        (after if resumed else before).append(frame["pos"]["offset"])
        seen_final = seen_final or frame["pos"]["offset"] == final  # it may come first
    await publisher
    await service.stop()
    received = before + after
    assert sorted(received) == list(range(pos["offset"] + 1, final + 1))  # none lost
    assert len(set(received)) == len(received)  # none twice
    assert resumed["data"] == {"groups": {trip_id: {"recovered": True,
                                                    "missed": resumed["data"]["groups"][
                                                        trip_id]["missed"]}}}
    assert after == sorted(after) and (not after or not before or after[0] > max(before))
    # Before the answer: live events from before the resume frame, then the replay and
    # the events held during it, each run in order.
    descents = sum(1 for x, y in itertools.pairwise(before) if y < x)
    assert descents <= 1, before
    await ws.close()


async def test_redis_restarted_without_persistence_means_reload_over_http(
    processes: Spawn, private_redis: RedisServer, prefix: str, link: LinkProxy
) -> None:
    env = {"TAXI_HUB_URL": private_redis.url, "TAXI_HUB_PREFIX": prefix}
    a, b = await ready_pair(processes, env)
    rider, trip_id, driver, pos = await rider_with_a_position(a, b, private_redis.url,
                                                              prefix, link)
    await tunnel_to(link, rider, b)
    await move(driver, trip_id, "STARTED")
    private_redis.kill()
    private_redis.start()  # empty: the history and its epoch are gone
    await wait_ready(a, 200)
    await wait_ready(b, 200)
    link.online()

    # Not recovered: the app reloads over HTTP; the client forgets the old position.
    assert await rider.next_resume() == {"groups": {trip_id: {"recovered": False,
                                                              "missed": 0}}}
    assert trip_id not in rider.client.positions and len(rider.events) == 1
    await move(driver, trip_id, "IN_PROGRESS")  # a new history: a new epoch, from 1
    event = (await rider.events_until(2))[1]
    assert event["data"]["status"] == "IN_PROGRESS"
    assert event["pos"]["offset"] == 1 and event["pos"]["epoch"] != pos["epoch"]
    assert rider.client.positions[trip_id] == {"offset": 1, "epoch": event["pos"]["epoch"]}
    await rider.client.close()


async def test_the_token_is_in_no_line_of_a_debug_log(
    tmp_path: Path, processes: Spawn
) -> None:
    server = processes(env={"TAXI_LOG_LEVEL": "debug"})
    _, access, refresh = await account(server, "rider")
    rider = TaxiClient(server.ws_url, lambda: access)
    await rider.connect()
    assert "exp" in await rider.request("auth.refresh", {"token": access})
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(server.ws_url, subprotocols=[  # type: ignore[list-item]
            f"bearer.{access}"], proxy=None)
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(server.ws_url, subprotocols=[  # type: ignore[list-item]
            "taxi.v2", f"bearer.{access[:-3]}abc"], proxy=None)
    await rider.close()
    await asyncio.sleep(0.2)
    log = server.log()
    assert "socket open" in log and " 401 " in log and " 400 " in log, log
    for secret in (access, refresh, access.split(".")[2], access[:-3]):
        assert secret not in log
