"""The location index contract on every implementation (in process, one Redis, a Redis
Cluster), and what only Redis adds: several processes sharing one index."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as AsyncRedisCluster

from taxi_tornado.dispatch.cluster_geo import ClusterLocationIndex
from taxi_tornado.dispatch.h3_index import H3LocationIndex
from taxi_tornado.dispatch.locations import LocationIndex
from taxi_tornado.dispatch.redis_geo import NODE_TIMEOUT_MS, RedisLocationIndex
from taxi_tornado.hub import HubKeys, redis_client
from tests.location_contract import (
    CENTER,
    IndexFactory,
    LocationContract,
    eventually,
    located,
    nearest_ids,
    offset,
)
from tests.redis_cluster import RedisCluster
from tests.redis_server import SHARED_REDIS, RedisServer


class TestH3LocationIndex(LocationContract):
    @pytest.fixture
    def index_factory(self) -> IndexFactory:
        async def make(ttl: float) -> LocationIndex:
            return H3LocationIndex(ttl)

        return make


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(SHARED_REDIS)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    name = f"geo-test-{uuid.uuid4().hex[:10]}"
    yield name
    keys = [key async for key in redis.scan_iter(f"{name}:*")]
    if keys:
        await redis.delete(*keys)


class TestRedisLocationIndex(LocationContract):
    @pytest.fixture
    def index_factory(self, redis: Redis, prefix: str) -> IndexFactory:
        async def make(ttl: float) -> LocationIndex:
            return RedisLocationIndex(redis, prefix, uuid.uuid4().hex, ttl)

        return make


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedisCluster]:
    client = redis_client(redis_cluster.url)
    assert isinstance(client, AsyncRedisCluster)
    yield client
    await client.aclose()


@pytest.fixture
async def cluster_prefix(cluster_client: AsyncRedisCluster) -> AsyncIterator[str]:
    name = f"geo-test-{uuid.uuid4().hex[:10]}"
    yield name
    keys = [key async for key in cluster_client.scan_iter(f"*{name}*")]
    for key in keys:
        await cluster_client.delete(key)


class TestClusterLocationIndex(LocationContract):
    """On a Redis Cluster, at the default resolution (a search asks 1 to 3 regions) and
    at a fine one (cells of about 5 km²: searches merge dozens of regions)."""

    @pytest.fixture(params=[4, 7])
    def index_factory(self, request: pytest.FixtureRequest,
                      cluster_client: AsyncRedisCluster, cluster_prefix: str) -> IndexFactory:
        keys = HubKeys(cluster_prefix, tagged=True)

        async def make(ttl: float) -> LocationIndex:
            return ClusterLocationIndex(cluster_client, keys, uuid.uuid4().hex, ttl,
                                        request.param)

        return make


async def test_driver_on_two_processes_stays_until_their_last_socket_closes(
        redis: Redis, prefix: str) -> None:
    a = RedisLocationIndex(redis, prefix, "node-a", 30)
    b = RedisLocationIndex(redis, prefix, "node-b", 30)
    await located(a, "driver", 100)
    await b.connect("driver", 1)

    async def b_sees_the_report() -> bool:  # a writes reports behind, within a loop turn
        return await nearest_ids(b, v2_only=True) == ["driver"]

    await eventually(b_sees_the_report)
    assert await a.disconnect("driver", 2) is False  # still on b, over v1
    assert await nearest_ids(b) == ["driver"]
    assert await nearest_ids(b, v2_only=True) == []
    assert await b.disconnect("driver", 1) is True
    assert await nearest_ids(a) == []


async def test_drivers_of_a_process_that_stopped_answering_are_forgotten(
        redis: Redis, prefix: str) -> None:
    dead = RedisLocationIndex(redis, prefix, "node-dead", 30)
    alive = RedisLocationIndex(redis, prefix, "node-alive", 30)
    await dead.maintain()
    await located(dead, "orphan", 100)
    await located(dead, "shared", 200)
    await dead.census()  # a query writes the reports still held back
    await alive.connect("shared", 2)
    await alive.set_available("shared", False)
    # The dead process's last heartbeat is older than the timeout.
    await redis.zadd(f"{prefix}:dispatch:nodes", {"node-dead": 1})
    await alive.maintain()
    census = await alive.census()
    assert (census.connected, census.located) == (1, 1)  # "shared" is still connected here
    await alive.set_available("shared", True)
    assert await nearest_ids(alive) == ["shared"]
    assert await redis.zscore(f"{prefix}:dispatch:nodes", "node-dead") is None
    assert NODE_TIMEOUT_MS > 1


async def test_process_taken_for_dead_announces_its_drivers_again(
        redis: Redis, prefix: str) -> None:
    slow = RedisLocationIndex(redis, prefix, "node-slow", 30)
    other = RedisLocationIndex(redis, prefix, "node-other", 30)
    await slow.maintain()
    await located(slow, "driver", 100)
    await redis.zadd(f"{prefix}:dispatch:nodes", {"node-slow": 1})
    await other.maintain()  # reaps node-slow's presence
    assert await nearest_ids(other) == []
    await slow.maintain()  # its heartbeat finds itself gone: it writes its drivers back
    await slow.put("driver", *offset(100, 0), None)

    async def seen_again() -> bool:
        return await nearest_ids(other) == ["driver"]

    await eventually(seen_again)


async def test_reports_of_one_loop_turn_leave_in_one_pipeline(
        redis: Redis, prefix: str) -> None:
    index = RedisLocationIndex(redis, prefix, "node", 30)
    for number in range(200):
        await index.connect(f"d{number}", 2)
    for number in range(200):
        await index.put(f"d{number}", *offset(number, 0), None)
    found = await index.nearest(*CENTER, 1000, 200)
    assert len(found) == 200


async def test_presence_writes_of_different_drivers_do_not_wait_for_each_other(
        private_redis: RedisServer) -> None:
    """A storm of reconnecting drivers (a rolling restart) must not queue one by one: while
    Redis holds writes back, every driver's presence write is already on its way."""
    admin = Redis.from_url(private_redis.url)
    name = f"geo-{uuid.uuid4().hex[:8]}"
    client = redis_client(private_redis.url, client_name=name)
    index = RedisLocationIndex(client, name, "node", 30)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        writes = [asyncio.ensure_future(index.connect(f"d{number}", 2)) for number in range(3)]

        async def all_three_waiting_in_redis() -> bool:
            clients = [row for row in await admin.client_list() if row.get("name") == name]
            return sum("b" in row["flags"] for row in clients) == 3

        await eventually(all_three_waiting_in_redis)
        await admin.execute_command("CLIENT", "UNPAUSE")
        await asyncio.gather(*writes)
        assert await client.scard(f"{name}:dispatch:connected") == 3
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await client.aclose()


async def test_one_drivers_presence_keeps_its_order_through_an_announce(
        redis: Redis, prefix: str) -> None:
    """Opens and closes of one driver's sockets reach Redis in order, and a process writing
    all its drivers back (taken for dead) neither waits forever nor revives a gone one."""
    index = RedisLocationIndex(redis, prefix, "node", 30)
    await index.maintain()

    async def open_and_close(driver_id: str) -> None:
        for _ in range(5):
            await index.connect(driver_id, 2)
            await index.disconnect(driver_id, 2)

    await index.connect("stays", 2)
    await asyncio.gather(*(open_and_close(f"d{number}") for number in range(20)),
                         index._announce())
    assert await redis.smembers(f"{prefix}:dispatch:connected") == {b"stays"}
    assert index._driver_locks == {}  # nothing kept per driver once its writes are done


async def test_more_concurrent_writes_than_pooled_connections_wait_for_one(
        private_redis: RedisServer) -> None:
    """Past the pool's size a command waits for a free connection instead of failing with
    "Too many connections" (a driver's handshake then failed with a 500)."""
    admin = Redis.from_url(private_redis.url)
    client = redis_client(private_redis.url)
    index = RedisLocationIndex(client, "pool", "node", 30)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        await asyncio.gather(*(index.connect(f"d{number}", 2) for number in range(150)))
        assert await client.scard("pool:dispatch:connected") == 150
    finally:
        await admin.aclose()
        await client.aclose()
