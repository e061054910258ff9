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
from taxi_tornado.hub.redis_broker import RedisBroker
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
