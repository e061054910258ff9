"""The offer book's contract on every implementation (in process, one Redis, a Redis
Cluster): the atomic steps that keep processes sharing a dispatch from disagreeing."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from taxi_tornado.dispatch.cluster_offers import ClusterOfferBook
from taxi_tornado.dispatch.offers import Dispatching, MemoryOfferBook, OfferBook
from taxi_tornado.dispatch.redis_offers import RedisOfferBook
from taxi_tornado.hub import HubKeys, redis_client
from tests.redis_cluster import RedisCluster
from tests.redis_server import SHARED_REDIS


@pytest.fixture(params=["memory", "redis", "cluster"])
async def book(request: pytest.FixtureRequest) -> AsyncIterator[OfferBook]:
    if request.param == "memory":
        yield MemoryOfferBook()
        return
    prefix = f"offers-test-{uuid.uuid4().hex[:10]}"
    if request.param == "cluster":
        async with cluster_book(request, prefix) as book:
            yield book
        return
    client = Redis.from_url(SHARED_REDIS)
    yield RedisOfferBook(client, prefix)
    keys = [key async for key in client.scan_iter(f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@contextlib.asynccontextmanager
async def cluster_book(request: pytest.FixtureRequest,
                       prefix: str) -> AsyncIterator[ClusterOfferBook]:
    """An offer book on the session's Redis Cluster, its keys deleted afterwards."""
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    client = redis_client(cluster.url)
    try:
        yield ClusterOfferBook(client, HubKeys(prefix, tagged=True))
    finally:
        for key in [key async for key in client.scan_iter(f"*{prefix}*")]:
            await client.delete(key)
        await client.aclose()


def later(seconds: float = 30) -> float:
    return time.time() + seconds


async def opened(book: OfferBook, trip_id: str = "trip", node: str = "a") -> Dispatching:
    dispatching = Dispatching(trip_id, "rider", 52.5, 13.4, "http://host", later(120))
    await book.open(dispatching, node, 5)
    return dispatching


async def test_open_dispatch_reads_back_at_round_zero(book: OfferBook) -> None:
    made = await opened(book)
    read = await book.get("trip")
    assert read is not None
    assert (read.rider_id, read.lat, read.lng, read.base_url) == ("rider", 52.5, 13.4,
                                                                  "http://host")
    assert read.deadline == pytest.approx(made.deadline, abs=0.002)
    assert (read.round, dict(read.offers), read.excluded) == (0, {}, frozenset())
    assert await book.get("unknown") is None


async def test_rounds_replace_offers_and_exclude_the_holders_of_the_last(
        book: OfferBook) -> None:
    await opened(book)
    ends = later()
    assert await book.begin_round("trip", 0, 2000, {"d1": ends, "d2": ends}, ends) == []
    assert await book.holds("trip", "d1") and await book.held_by("d2") == {"trip"}
    ended = await book.begin_round("trip", 1, 4000, {"d3": ends}, ends)
    assert sorted(ended or []) == ["d1", "d2"]
    read = await book.get("trip")
    assert read is not None
    assert (read.round, read.radius_m, set(read.offers)) == (2, 4000, {"d3"})
    assert read.excluded == {"d1", "d2"}
    assert not await book.holds("trip", "d1") and await book.held_by("d1") == set()


async def test_only_one_of_two_racing_rounds_begins(book: OfferBook) -> None:
    await opened(book)
    ends = later()
    results = await asyncio.gather(book.begin_round("trip", 0, 2000, {"d1": ends}, ends),
                                   book.begin_round("trip", 0, 2000, {"d2": ends}, ends))
    assert sorted(result is None for result in results) == [False, True]
    read = await book.get("trip")
    assert read is not None and read.round == 1 and len(read.offers) == 1


async def test_decline_counts_only_for_a_live_offer(book: OfferBook) -> None:
    await opened(book)
    ends = later()
    await book.begin_round("trip", 0, 2000, {"d1": ends, "d2": ends}, ends)
    assert await book.decline("trip", "d1") == 1
    assert await book.decline("trip", "d1") is None  # once
    assert await book.decline("trip", "stranger") is None
    assert await book.decline("trip", "d2") == 0
    read = await book.get("trip")
    assert read is not None and read.excluded == {"d1", "d2"} and not read.offers


async def test_expired_offer_is_neither_held_nor_declinable(book: OfferBook) -> None:
    await opened(book)
    gone = time.time() + 0.05
    await book.begin_round("trip", 0, 2000, {"d1": gone}, gone)
    await asyncio.sleep(0.1)
    assert not await book.holds("trip", "d1")
    assert await book.held_by("d1") == set()
    assert await book.decline("trip", "d1") is None


async def test_finish_returns_the_holders_once(book: OfferBook) -> None:
    await opened(book)
    ends = later()
    await book.begin_round("trip", 0, 2000, {"d1": ends, "d2": ends}, ends)
    assert sorted(await book.finish("trip") or []) == ["d1", "d2"]
    assert await book.finish("trip") is None
    assert await book.get("trip") is None
    assert not await book.holds("trip", "d1")
    assert await book.begin_round("trip", 1, 4000, {"d3": ends}, ends) is None
    assert await book.decline("trip", "d2") is None


async def test_lease_belongs_to_one_node_until_it_lapses(book: OfferBook) -> None:
    await opened(book, node="a")
    assert await book.lease("trip", "a", 0.2)  # renewal by the holder
    assert not await book.lease("trip", "b", 5)
    assert await book.unleased() == []
    await asyncio.sleep(0.3)
    assert await book.unleased() == ["trip"]
    assert await book.lease("trip", "b", 5)  # taken over
    assert not await book.lease("trip", "a", 5)
    await book.release("trip", "a")  # not the holder: nothing happens
    assert not await book.lease("trip", "a", 5)
    await book.release("trip", "b")
    assert await book.unleased() == ["trip"]


async def test_finished_dispatch_cannot_be_leased(book: OfferBook) -> None:
    await opened(book)
    await book.finish("trip")
    assert not await book.lease("trip", "a", 5)
    assert await book.unleased() == []


async def test_a_cluster_books_held_index_never_shows_an_offer_that_ended(
        request: pytest.FixtureRequest) -> None:
    """In a cluster the per-driver index follows the trip's script in a second step: an
    entry left behind (its process died in between) is not an offer held."""
    prefix = f"offers-test-{uuid.uuid4().hex[:10]}"
    async with cluster_book(request, prefix) as book:
        await opened(book, "t1")
        await opened(book, "t2")
        ends = later()
        await book.begin_round("t1", 0, 2000, {"d1": ends}, ends)
        await book.begin_round("t2", 0, 2000, {"d1": ends}, ends)
        assert await book.held_by("d1") == {"t1", "t2"}
        await book.redis.hdel(book.keys.dispatch_trip("offers", "t1"), "d1")  # as if ended
        assert await book.held_by("d1") == {"t2"} and not await book.holds("t1", "d1")


async def test_a_cluster_books_finished_trip_left_in_active_is_dropped_after_its_deadline(
        request: pytest.FixtureRequest) -> None:
    prefix = f"offers-test-{uuid.uuid4().hex[:10]}"
    async with cluster_book(request, prefix) as book:
        await opened(book, "live")
        active = book.keys.dispatch_shared("active")
        await book.redis.zadd(active, {"died-mid-finish": 1, "opening": later() * 1000})
        await book.redis.delete(book.keys.dispatch_trip("lease", "live"))
        assert await book.unleased() == ["live"]
        assert {member.decode() for member in await book.redis.zrange(active, 0, -1)} == {
            "live", "opening"}
