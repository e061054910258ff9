"""Dispatch on a real Redis Cluster (tests/redis_cluster.py: three masters, one replica
each): positions spread over the shards by region, presence and offers by driver and
trip, no command refused for crossing slots, `nearest` across two server processes, and
a master killed mid-dispatch (last: it changes the cluster, and restores it).

The two-process tests of tests/test_dispatch_cluster.py are collected here a second time
with `hub_env` pointing at the cluster.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import RedisCluster as AsyncRedisCluster

from taxi_tornado.client import TaxiClient
from taxi_tornado.dispatch.cluster_geo import ClusterLocationIndex
from taxi_tornado.dispatch.cluster_offers import ClusterOfferBook
from taxi_tornado.dispatch.driving import DrivingTrips
from taxi_tornado.dispatch.offers import Dispatching
from taxi_tornado.dispatch.regions import Regions
from taxi_tornado.hub import HubKeys, publish, redis_client
from tests.link_proxy import LinkProxy, until
from tests.location_contract import CENTER, eventually, located, nearest_ids, offset
from tests.redis_cluster import ClusterNode, RedisCluster
from tests.test_cluster import Spawn, http, ready_pair, sign_up, wait_ready
from tests.test_cluster_hub import refused_commands

# The two-process dispatch tests, run here against the cluster (see the docstring).
from tests.test_dispatch import PICK_UP, claim, expect
from tests.test_dispatch_cluster import (  # noqa: F401
    dispatch_env,
    located_driver,
    test_cancel_and_status_across_processes,
    test_claim_on_one_process_starts_the_relay_from_the_drivers_socket_on_another,
    test_offer_decline_and_claim_on_different_processes,
    until_nearby,
)

# Cities far apart: each its own region at resolution 4, their tags spread over slots.
CITIES = {
    "berlin": (52.52, 13.405), "paris": (48.857, 2.352), "madrid": (40.417, -3.704),
    "rome": (41.903, 12.496), "vienna": (48.208, 16.373), "warsaw": (52.230, 21.012),
    "oslo": (59.914, 10.752), "lisbon": (38.722, -9.139), "athens": (37.984, 23.728),
    "dublin": (53.350, -6.260), "prague": (50.076, 14.438), "helsinki": (60.170, 24.938),
}


# A claim of a trip another driver took: refused (conflict), or the trip no longer seen.
REFUSED = ("conflict", "not_found")


@pytest.fixture
def prefix() -> str:
    return f"cd-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub_env(prefix: str, redis_cluster: RedisCluster) -> dict[str, str]:
    return {"TAXI_HUB_URL": redis_cluster.url, "TAXI_HUB_PREFIX": prefix}


@pytest.fixture(autouse=True)
def no_refusals(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here but the one that kills a master: no node refuses a command for
    its slot (CROSSSLOT, a script touching a key of another slot, MOVED...)."""
    if "killed" in request.node.name:
        yield
        return
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    before = refused_commands(cluster)
    errors = {node.address: node.info("INFO", "errorstats") for node in cluster.nodes}
    yield
    after = refused_commands(cluster)
    assert after == before, {node.address: (errors[node.address],
                                            node.info("INFO", "errorstats"))
                             for node in cluster.nodes if after[node.address] !=
                             before[node.address]}


@pytest.fixture
async def client(redis_cluster: RedisCluster, prefix: str) -> AsyncIterator[AsyncRedisCluster]:
    made = redis_client(redis_cluster.url)
    assert isinstance(made, AsyncRedisCluster)
    await made.initialize()
    yield made
    for key in [key async for key in made.scan_iter(f"*{prefix}*")]:
        await made.delete(key)
    await made.aclose()


def index(client: AsyncRedisCluster, prefix: str, node: str,
          resolution: int = 4) -> ClusterLocationIndex:
    return ClusterLocationIndex(client, HubKeys(prefix, tagged=True), node, 30, resolution)


# --- regions ------------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [4, 6])
def test_a_circles_regions_hold_every_point_of_it(resolution: int) -> None:
    """Points on and inside random circles (any latitude, across the antimeridian): each
    lies in a region `covering` names; and a small circle asks few regions."""
    regions = Regions(resolution)
    rng = random.Random(resolution)
    for _ in range(150):
        lat, lng = rng.uniform(-80, 80), rng.uniform(-180, 180)
        radius = rng.choice((500, 2000, 10_000, 20_000))
        covering = regions.covering(lat, lng, radius)
        assert covering is not None and covering[0] == regions.of(lat, lng)
        for step in range(48):
            bearing = 2 * math.pi * step / 48
            for share in (0.5, 0.999):
                point = offset(radius * share * math.cos(bearing),
                               radius * share * math.sin(bearing), (lat, lng))
                assert regions.of(*point) in covering, (lat, lng, radius, point)
    assert len(Regions(4).covering(*CENTER, 2000) or []) == 1  # Berlin's centre, 2 km
    assert Regions(4).covering(*CENTER, 5_000_000) is None  # past MAX_RINGS: all in use


# --- positions on every master ------------------------------------------------------------

async def test_positions_in_different_regions_land_on_every_master(
        client: AsyncRedisCluster, prefix: str, redis_cluster: RedisCluster) -> None:
    here = index(client, prefix, "node")
    for city, place in CITIES.items():
        await here.connect(city, 2)
        await here.put(city, *place, None)
    for city, (lat, lng) in CITIES.items():  # each found from its own city only
        assert [d.driver_id for d in await here.nearest(lat, lng, 10_000, 5)] == [city]
    keys = HubKeys(prefix, tagged=True)
    holders = {}
    for city, place in CITIES.items():
        geo = keys.dispatch_region("geo", here.regions.of(*place))
        holders[city] = redis_cluster.node_for(geo)
        assert city in holders[city].cli("ZRANGE", geo, "0", "-1").split(), city
    assert {node.port for node in holders.values()} == {
        node.port for node in redis_cluster.masters()}  # all three, not one
    census = await here.census()
    assert (census.connected, census.located, census.available) == (12, 12, 12)


async def test_a_driver_moving_to_another_region_is_found_only_where_they_are(
        client: AsyncRedisCluster, prefix: str) -> None:
    """Each process writes its reports behind: a query on the writer sends them first."""
    a, b = index(client, prefix, "a"), index(client, prefix, "b")
    await located(a, "driver", 0)
    assert await nearest_ids(a, 5000) == ["driver"]
    berlin, paris = CITIES["berlin"], CITIES["paris"]
    await a.put("driver", *paris, None)
    await a.census()
    assert await nearest_ids(b, 5000) == []  # Berlin: the old entry is gone
    assert [d.driver_id for d in await b.nearest(*paris, 5000, 3)] == ["driver"]
    await b.connect("driver", 2)  # a second socket, on b, reporting from Berlin
    await b.put("driver", *berlin, None)
    await b.census()
    assert await nearest_ids(a, 5000) == ["driver"]
    assert await a.nearest(*paris, 5000, 3) == []
    located_now = await a.located(10)
    assert [(d.driver_id, round(d.lat, 3)) for d in located_now] == [("driver", berlin[0])]
    assert await b.disconnect("driver", 2) is False
    assert await a.disconnect("driver", 2) is True  # the last socket: forgotten everywhere
    assert (await a.census()).located == 0


async def test_the_drivers_of_a_process_that_stopped_answering_are_forgotten(
        client: AsyncRedisCluster, prefix: str) -> None:
    dead, alive = index(client, prefix, "dead"), index(client, prefix, "alive")
    await dead.maintain()
    await located(dead, "orphan", 100)
    await located(dead, "shared", 200)
    await dead.census()  # writes the reports held back
    await alive.connect("shared", 2)
    await client.zadd(HubKeys(prefix, tagged=True).dispatch_shared("nodes"), {"dead": 1})
    await alive.maintain()
    census = await alive.census()
    assert (census.connected, census.located) == (1, 1)
    assert await nearest_ids(alive) == ["shared"]


async def test_offers_across_shards_keep_the_books_contract(
        client: AsyncRedisCluster, prefix: str) -> None:
    """Trips whose tags sit on different shards, offered to the same drivers."""
    book = ClusterOfferBook(client, HubKeys(prefix, tagged=True))
    ends = time.time() + 30
    trips = [f"trip-{n}" for n in range(6)]
    for trip_id in trips:
        await book.open(Dispatching(trip_id, "rider", 52.5, 13.4, "http://h", ends), "a", 5)
        assert await book.begin_round(trip_id, 0, 2000, {"d1": ends, "d2": ends}, ends) == []
    assert await book.held_by("d1") == set(trips)
    assert await book.decline(trips[0], "d1") == 1
    assert sorted(await book.finish(trips[1]) or []) == ["d1", "d2"]
    assert await book.held_by("d1") == set(trips[2:])
    assert await book.held_by("d2") == {trips[0], *trips[2:]}


# --- a master dies (last: they change the cluster, and restore it) ------------------------

class OneTrip:
    """A store that says every driver drives one trip, and counts the asks."""

    def __init__(self) -> None:
        self.asked = 0

    async def active_trip_ids(self, driver_id: str) -> list[str]:
        self.asked += 1
        return ["trip"]


async def test_trips_notices_are_heard_again_after_their_master_is_killed(
        redis_cluster: RedisCluster, prefix: str) -> None:
    channel = HubKeys(prefix, tagged=True).dispatch_shared("driving")
    clients = [redis_client(redis_cluster.url) for _ in range(2)]
    store = OneTrip()
    sender, listener = (DrivingTrips(store, client, channel)  # type: ignore[arg-type]
                        for client in clients)
    victim = redis_cluster.node_for(channel)
    try:
        for trips in (sender, listener):
            await trips.start()

        async def heard() -> bool:
            await listener.of("driver")  # asks the store when it forgot
            await sender.changed("driver")
            await asyncio.sleep(0.05)
            return listener.answers() == 0

        await eventually(heard)
        await asyncio.to_thread(redis_cluster.fail_over, victim)
        await eventually(heard, timeout=15)
    finally:
        for trips in (sender, listener):
            await trips.stop()
        for client in clients:
            await client.aclose()
        await asyncio.to_thread(redis_cluster.restore, victim)


async def test_a_trip_requested_before_a_master_is_killed_is_claimed_once_after(
        processes: Spawn, hub_env: dict[str, str], prefix: str,
        redis_cluster: RedisCluster) -> None:
    """The master holding the trip's dispatch (and its group) is SIGKILLed with the
    offers out; once its replica took over, two drivers holding offers claim at once:
    exactly one gets the trip, and the rider, cut off meanwhile, resumes on the other
    process and hears it once."""
    a, b = await ready_pair(processes, dispatch_env(hub_env, batch=2, offer_timeout=60,
                                                    max_wait=120))
    _, rider_token = await sign_up(a, "rider")
    first_id, _, first = await located_driver(b, 100)
    second_id, _, second = await located_driver(a, 200)
    await until_nearby(a, rider_token, 2)
    proxy = LinkProxy(0)
    await proxy.start()
    proxy.upstream_port = a.port
    rider = TaxiClient(proxy.url, lambda: rider_token, reconnect=(0.05, 0.2))
    heard: list[dict[str, Any]] = []
    resumed: list[dict[str, Any]] = []
    rider.on("trip.updated", lambda _, frame: heard.append(frame))
    rider.on("resumed", resumed.append)
    estimates: list[dict[str, Any]] = []
    rider.on("trip.fare_estimate", lambda _, frame: estimates.append(frame))
    victim: ClusterNode | None = None
    try:
        await rider.connect()
        trip = await rider.request("trip.request", {
            "pick_up_address": "Alexanderplatz", "drop_off_address": "Tegel",
            "pick_up": PICK_UP})
        for driver in (first, second):
            assert (await expect(driver, "trip.offer"))["trip"]["id"] == trip["id"]
        # A position in the trip's group, for the resume (another service's estimate).
        await publish(hub_env["TAXI_HUB_URL"], trip["id"],
                      {"type": "trip.fare_estimate", "data": 23.5}, prefix=prefix)
        await until(lambda: estimates, "the rider hears the estimate")
        keys = HubKeys(prefix, tagged=True)
        victim = redis_cluster.node_for(keys.dispatch_trip("trip", trip["id"]))
        assert victim is redis_cluster.node_for(keys.channel(trip["id"]))
        await asyncio.to_thread(replicated, victim)

        proxy.offline()  # the rider in a tunnel
        await until(lambda: rider.state != "connected", "the rider to notice")
        proxy.upstream_port = b.port
        await asyncio.to_thread(redis_cluster.fail_over, victim)
        for server in (a, b):  # each hub linked to the promoted replica
            await wait_ready(server, 200, timeout=20)

        replies = await asyncio.gather(claim_until_answered(first, trip["id"]),
                                       claim_until_answered(second, trip["id"]))
        started = [reply for reply in replies if reply["type"] == "trip.updated"]
        assert len(started) == 1, replies
        winner = started[0]["data"]["driver"]["id"]
        assert winner in (first_id, second_id)
        loser = next(reply for reply in replies if reply is not started[0])
        assert loser["data"]["code"] in REFUSED, loser

        proxy.online()
        await until(lambda: resumed, "session.resumed", timeout=15)
        assert resumed[0]["groups"][trip["id"]] == {"recovered": True, "missed": 1}
        await until(lambda: any(frame["data"]["status"] == "STARTED" for frame in heard),
                    "the rider hears the claim", timeout=10)
        await asyncio.sleep(0.3)
        assert [frame["data"]["status"] for frame in heard].count("STARTED") == 1
        status, stored = await http(f"{a.url}/api/trip/{trip['id']}/",
                                    headers={"Authorization": f"Bearer {rider_token}"})
        assert status == 200 and stored["status"] == "STARTED", stored
        assert stored["driver"]["id"] == winner
    finally:
        await rider.close()
        await proxy.stop()
        if victim is not None:
            await asyncio.to_thread(redis_cluster.restore, victim)


async def claim_until_answered(driver: Any, trip_id: str, timeout: float = 20) -> Any:
    """A claim, again while the cluster is still settling (an internal error, a lost
    reply); the first answer that decides: the trip, or a conflict."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await claim(driver, trip_id)
        except (AssertionError, TimeoutError):
            reply = None
        if reply is not None and (reply["type"] == "trip.updated" or
                                  reply["data"].get("code") in REFUSED):
            return reply
        assert time.monotonic() < deadline, f"no claim decided: {reply}"
        await asyncio.sleep(0.2)


def replicated(master: ClusterNode, timeout: float = 10) -> None:
    """Wait until the master's replica has every write the master has (replication is
    asynchronous: a failover loses what had not reached the replica)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = master.info("INFO", "replication")
        offset_now = int(info.get("master_repl_offset", "0"))
        replica = dict(part.split("=") for part in info.get("slave0", "").split(",")
                       if "=" in part)
        if replica and int(replica.get("offset", "-1")) >= offset_now:
            return
        time.sleep(0.05)
    raise AssertionError(f"the replica of {master.address} did not catch up")

