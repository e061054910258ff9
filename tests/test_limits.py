"""Limits that one user could get around (issues 18 and 19): a group's history bounded in
bytes, the history of a trip's group let go once the trip ended, resume offsets past
what Lua's numbers print, the riders' trip-request budget, and the trip quota's locks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from taxi_tornado.hub import HistoryLimits, Hub, MemoryBroker, MemoryHistory, Position, Replay
from taxi_tornado.hub.budget import MemoryBudgets
from taxi_tornado.hub.redis_broker import RedisBroker
from taxi_tornado.plugins.trip_quota import TripQuota
from taxi_tornado.settings import Settings, SettingsError, load_settings
from tests.conftest import Client, RunningServer, make_settings
from tests.redis_server import SHARED_REDIS

Start = Callable[[Settings], Any]


class Inbox:
    """A v2 hub member that keeps the payloads it is handed."""

    version = 2

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    def deliver(self, frame: bytes) -> None:
        self.frames.put_nowait(frame)

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        self.frames.put_nowait(frame)

    async def next(self) -> Any:
        frame = await asyncio.wait_for(self.frames.get(), 5)
        size = frame[1] & 0x7F
        return orjson.loads(frame[{126: 4, 127: 10}.get(size, 2):])


def payload(n: int, length: int) -> dict[str, Any]:
    """A message whose encoding is exactly `length` bytes."""
    head = orjson.dumps({"type": "t", "data": n, "pad": ""})
    return {"type": "t", "data": n, "pad": "x" * (length - len(head))}


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(SHARED_REDIS)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_hub(request: pytest.FixtureRequest,
                   prefix: str) -> AsyncIterator[Callable[[HistoryLimits], Any]]:
    """Start a Hub with the given history limits on the memory broker, then on Redis."""
    started: list[Hub] = []

    async def _hub(limits: HistoryLimits) -> Hub:
        broker = (MemoryBroker(limits) if request.param == "memory"
                  else RedisBroker(SHARED_REDIS, prefix, limits))
        hub = Hub(broker)
        await hub.start()
        started.append(hub)
        return hub

    yield _hub
    for hub in started:
        await hub.stop()


# --- history_bytes -----------------------------------------------------------------------

def test_memory_history_keeps_at_most_history_bytes_oldest_first() -> None:
    history = MemoryHistory(HistoryLimits(size=100, ttl=60, bytes=25))
    first, second, third = (history.append("g", b"%010d" % n) for n in range(3))
    before = Position(0, first.epoch)
    assert history.since("g", before) is None  # the first of 10 bytes went for the third
    replay = history.since("g", first)
    assert replay is not None and [pos.offset for pos, _ in replay.events] == [2, 3]
    assert history.since("g", third) == Replay([])
    assert second.offset == 2


async def test_a_groups_history_is_bounded_in_bytes(make_hub: Any) -> None:
    hub = await make_hub(HistoryLimits(size=100, ttl=60, bytes=1000))
    member = Inbox()
    await hub.join(member, "g")
    for n in range(5):
        await hub.send("g", payload(n, 300))
    positions = [(await member.next())["pos"] for _ in range(5)]
    epoch = positions[0]["epoch"]
    kept = await hub.replay({"g": Position(2, epoch)})  # three of 300 bytes: 900
    assert kept["g"] is not None
    assert [orjson.loads(body)["data"] for _, body in kept["g"].events] == [2, 3, 4]
    assert (await hub.replay({"g": Position(1, epoch)}))["g"] is None  # a fourth: gone


async def test_an_event_longer_than_history_bytes_is_sent_but_not_kept(make_hub: Any) -> None:
    hub = await make_hub(HistoryLimits(size=100, ttl=60, bytes=1000))
    member = Inbox()
    await hub.join(member, "g")
    await hub.send("g", payload(0, 100))
    await hub.send("g", payload(1, 1001))
    await hub.send("g", payload(2, 100))
    events = [await member.next() for _ in range(3)]
    assert [event["data"] for event in events] == [0, 1, 2]  # the long one reached it
    epoch = events[0]["pos"]["epoch"]
    assert [event["pos"]["offset"] for event in events] == [1, 2, 3]
    assert (await hub.replay({"g": Position(1, epoch)}))["g"] is None  # needs the long one
    after = (await hub.replay({"g": Position(2, epoch)}))["g"]
    assert after is not None and [p.offset for p, _ in after.events] == [3]


async def test_redis_history_keys_hold_at_most_history_bytes(
    prefix: str, redis_client: aioredis.Redis,
) -> None:
    hub = Hub(RedisBroker(SHARED_REDIS, prefix, HistoryLimits(size=100, ttl=60, bytes=1000)))
    await hub.start()
    try:
        for n in range(50):
            await hub.send("g", payload(n, 300))
        stream, sizes, meta = (f"{prefix}:{kind}:g" for kind in ("stream", "sizes", "meta"))
        assert await redis_client.xlen(stream) == 3
        assert await redis_client.lrange(sizes, 0, -1) == [b"300"] * 3
        assert await redis_client.hget(meta, "bytes") == b"900"
        await hub.send("g", payload(50, 1001))
        assert (await redis_client.exists(stream), await redis_client.exists(sizes)) == (0, 0)
    finally:
        await hub.stop()


def test_history_bytes_is_a_checked_setting(tmp_path: Path) -> None:
    base = {"TAXI_DATA_DIR": str(tmp_path)}
    for value in ("0", "-1", "lots"):
        with pytest.raises(SettingsError) as caught:
            load_settings(environ={**base, "TAXI_HUB_HISTORY_BYTES": value},
                          create_secret=False)
        assert str(caught.value).startswith("hub.history_bytes: "), caught.value
    assert load_settings(environ=base, create_secret=False).hub.history_bytes == 1048576


# --- ended groups ------------------------------------------------------------------------

def test_an_ended_groups_counter_goes_with_its_events() -> None:
    history = MemoryHistory(HistoryLimits(size=10, ttl=0.2))
    history.append("trip", b"{}")
    history.append("pool", b"{}")
    history.end("trip")
    assert history.position("trip") is not None  # its events still live
    time.sleep(0.3)
    history.append("other", b"{}")  # an append sweeps what expired
    assert history.position("trip") is None
    assert history.position("pool") is not None  # not ended: its counter lives a day
    history.append("silent", b"{}")
    history.end("silent")
    history.end("never-sent")
    assert history.position("never-sent") is None


async def test_an_ended_groups_meta_hash_lives_as_long_as_its_events_in_redis(
    prefix: str, redis_client: aioredis.Redis,
) -> None:
    hub = Hub(RedisBroker(SHARED_REDIS, prefix, HistoryLimits(size=10, ttl=5)))
    await hub.start()
    try:
        for group in ("trip", "pool"):
            await hub.send(group, {"type": "t"})
        await hub.end("trip")
        await hub.send("trip", {"type": "after the end"})  # still short-lived
        assert 0 < await redis_client.pttl(f"{prefix}:meta:trip") <= 5000
        assert await redis_client.pttl(f"{prefix}:meta:pool") > 3600 * 1000
        await hub.end("unknown")
        assert not await redis_client.exists(f"{prefix}:meta:unknown")
    finally:
        await hub.stop()


@pytest.fixture(params=["memory", "redis"])
def short_history(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    hub: dict[str, Any] = {"history_ttl": 0.5}
    if request.param == "redis":
        hub |= {"url": SHARED_REDIS, "prefix": f"test-{uuid.uuid4().hex[:12]}"}
    return make_settings(tmp_path, hub=hub)


async def trip_request(client: Client) -> Any:
    return await client.request({"type": "trip.request",
                                 "data": {"pick_up_address": "A", "drop_off_address": "B"}})


async def test_a_canceled_trips_group_leaves_nothing_behind(
    short_history: Settings, start: Start,
) -> None:
    server: RunningServer = await start(short_history)
    _, token = await server.user("rider@example.com")
    rider = await server.connect(token, v2=True)
    trip = (await trip_request(rider))["data"]["id"]
    canceled = await rider.request({"type": "trip.cancel", "data": {"id": trip}})
    assert canceled["data"]["status"] == "CANCELED"
    broker = server.hub.broker
    if isinstance(broker, RedisBroker):
        client = aioredis.Redis.from_url(SHARED_REDIS)
        try:
            ttl = await client.pttl(f"{short_history.hub.prefix}:meta:{trip}")
        finally:
            await client.aclose()
        assert 0 < ttl <= 500
        return
    assert broker.history is not None
    assert broker.history.position(trip) is not None
    await asyncio.sleep(0.6)
    await server.hub.send("elsewhere", {"type": "t"})  # sweeps what expired
    assert broker.history.position(trip) is None


# --- resume offsets past Lua's numbers ---------------------------------------------------

@pytest.mark.parametrize("offset", [10**15, 2**63, 10**30])
async def test_a_huge_resume_offset_is_not_recovered_and_spoils_no_other_group(
    prefix: str, offset: int, caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub(RedisBroker(SHARED_REDIS, prefix))
    await hub.start()
    try:
        member = Inbox()
        await hub.join(member, "a")
        await hub.send("a", {"type": "t"})
        pos = (await member.next())["pos"]
        with caplog.at_level(logging.WARNING, logger="taxi_tornado.hub"):
            replays = await hub.replay({"a": Position(0, pos["epoch"]),
                                        "b": Position(offset, pos["epoch"]),
                                        "c": Position(offset, "unknown")})
        assert replays["b"] is None and replays["c"] is None
        assert replays["a"] is not None and len(replays["a"].events) == 1
        assert not [r for r in caplog.records if r.name == "taxi_tornado.hub"]
    finally:
        await hub.stop()


# --- the trip-request budget -------------------------------------------------------------

def test_a_budget_allows_a_burst_then_refills_evenly_and_forgets_idle_keys() -> None:
    now = [1000.0]
    budgets = MemoryBudgets(clock=lambda: now[0])
    assert [budgets.spend("r", 7) for _ in range(7)] == [0.0] * 7  # a burst of as many
    assert budgets.spend("r", 7) == pytest.approx(60 / 7)  # refused: nothing spent
    assert budgets.spend("other", 7) == 0.0  # budgets are per key
    now[0] += 60 / 7
    assert budgets.spend("r", 7) == 0.0  # one came back
    assert budgets.spend("r", 7) == pytest.approx(60 / 7)
    now[0] += 61  # a minute after their last use
    budgets.spend("third", 7)
    assert len(budgets) == 1  # "r" and "other" are caught up: forgotten


async def test_the_redis_budget_is_shared_by_two_processes(prefix: str) -> None:
    a, b = (Hub(RedisBroker(SHARED_REDIS, prefix)) for _ in range(2))
    for hub in (a, b):
        await hub.start()
    try:
        assert [await hub.spend("rider-1", 3) for hub in (a, b, a)] == [0.0] * 3
        wait = await b.spend("rider-1", 3)
        assert 19 < wait <= 20  # a minute / 3, less the few ms the three took
        assert await a.spend("rider-2", 3) == 0.0
    finally:
        for hub in (a, b):
            await hub.stop()


@pytest.fixture(params=["memory", "redis"])
def budget_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Three trip requests a minute, no quota of unfinished trips; memory, then Redis."""
    hub: dict[str, Any] = {}
    if request.param == "redis":
        hub = {"url": SHARED_REDIS, "prefix": f"test-{uuid.uuid4().hex[:12]}"}
    return make_settings(tmp_path, hub=hub, limits={"trip_requests": 3, "trips_per_rider": 0})


async def test_a_rider_past_the_trip_request_budget_is_rate_limited_and_gets_no_trip(
    budget_settings: Settings, start: Start,
) -> None:
    server: RunningServer = await start(budget_settings)
    rider, token = await server.user("rider@example.com")
    _, driver_token = await server.user("driver@example.com", "driver")
    driver = await server.connect(driver_token)
    phone, tablet = await server.connect(token), await server.connect(token)
    made = [await trip_request(client) for client in (phone, tablet, phone)]
    assert [reply["type"] for reply in made] == ["trip.updated"] * 3
    refused = await trip_request(tablet)  # the fourth, on either socket
    assert refused["type"] == "error", refused
    assert refused["data"]["code"] == "rate_limited"
    assert refused["data"]["retry_after"] == 20  # a minute / 3, in whole seconds
    assert "3 trips within a minute" in refused["data"]["detail"]
    assert len(await server.store.active_trip_ids(rider.id)) == 3
    heard = [await driver.receive() for _ in range(3)]
    assert [event["data"]["id"] for event in heard] == [r["data"]["id"] for r in made]
    await driver.nothing()


async def test_the_budget_spans_processes_with_the_redis_hub(
    tmp_path: Path, start: Start,
) -> None:
    """Two servers sharing one store and one Redis: one rider, one budget."""
    shared = {"hub": {"url": SHARED_REDIS, "prefix": f"test-{uuid.uuid4().hex[:12]}"},
              "limits": {"trip_requests": 2, "trips_per_rider": 0},
              "store": {"url": f"sqlite:///{tmp_path / 'taxi.db'}"}}
    first: RunningServer = await start(make_settings(tmp_path / "a", **shared))
    second: RunningServer = await start(make_settings(tmp_path / "b", **shared))
    _, token = await first.user("rider@example.com")
    one, other = await first.connect(token), await second.connect(token)
    assert (await trip_request(one))["type"] == "trip.updated"
    assert (await trip_request(one))["type"] == "trip.updated"
    refused = await trip_request(other)
    assert refused["data"]["code"] == "rate_limited", refused
    assert refused["data"]["retry_after"] == 30


async def test_a_budget_of_zero_is_off_and_others_are_not_charged(
    tmp_path: Path, start: Start,
) -> None:
    server: RunningServer = await start(make_settings(
        tmp_path, limits={"trip_requests": 0, "trips_per_rider": 0}))
    _, token = await server.user("rider@example.com")
    rider = await server.connect(token)
    replies = [await trip_request(rider) for _ in range(12)]
    assert {reply["type"] for reply in replies} == {"trip.updated"}


async def test_a_driver_asking_for_a_trip_spends_no_riders_budget(
    tmp_path: Path, start: Start,
) -> None:
    server: RunningServer = await start(make_settings(
        tmp_path, limits={"trip_requests": 1}))
    _, driver_token = await server.user("driver@example.com", "driver")
    driver = await server.connect(driver_token)
    assert [(await trip_request(driver))["data"]["code"] for _ in range(2)] == [
        "forbidden"] * 2  # the role's refusal, never the budget's


def test_trip_requests_is_a_checked_setting(tmp_path: Path) -> None:
    base = {"TAXI_DATA_DIR": str(tmp_path)}
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={**base, "TAXI_LIMITS_TRIP_REQUESTS": "-1"},
                      create_secret=False)
    assert str(caught.value).startswith("limits.trip_requests: "), caught.value
    assert load_settings(environ=base, create_secret=False).limits.trip_requests == 10


# --- the quota's per-rider locks ---------------------------------------------------------

async def test_the_quotas_per_rider_locks_go_once_the_requests_are_answered(
    server: RunningServer,
) -> None:
    handler = server.server.services.registry.types["trip.request"].handler
    quota = handler.__self__  # type: ignore[attr-defined]
    assert isinstance(quota, TripQuota)
    _, token = await server.user("rider@example.com")
    phone, tablet = await server.connect(token), await server.connect(token)
    frame = {"type": "trip.request", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
    await asyncio.gather(*(client.send(frame) for _ in range(3) for client in (phone, tablet)))
    replies = [await client.receive() for client in (phone, tablet) for _ in range(3)]
    assert sum(reply["type"] == "trip.updated" for reply in replies) == 3, replies
    assert len(quota) == 0
    assert (await trip_request(phone))["data"]["code"] == "forbidden"  # one at a time
    assert len(quota) == 0


async def test_a_repeat_answered_from_its_key_spends_nothing(
    tmp_path: Path, start: Start,
) -> None:
    server: RunningServer = await start(make_settings(
        tmp_path, limits={"trip_requests": 1, "trips_per_rider": 0}))
    rider, token = await server.user("rider@example.com")
    phone = await server.connect(token)
    frame = {"type": "trip.request", "key": "ride-1",
             "data": {"pick_up_address": "A", "drop_off_address": "B"}}
    first = await phone.request(frame)
    again = await phone.request(frame)  # the same key: the first reply, nothing spent
    assert first["type"] == "trip.updated" and again == first
    other = await phone.request({**frame, "key": "ride-2"})
    assert other["data"]["code"] == "rate_limited"  # the one of this minute went first
    assert len(await server.store.active_trip_ids(rider.id)) == 1
