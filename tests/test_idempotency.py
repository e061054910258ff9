"""Idempotent requests: a keyed frame sent again (same key, type and data), on another
socket or another process, gets the first answer and nothing happens twice."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taxi_tornado import idempotency
from taxi_tornado import services as services_module
from taxi_tornado.hub.keys import HubKeys
from taxi_tornado.idempotency import Idempotency, RedisKeys, fingerprint_of
from taxi_tornado.store.mongo import MongoStore
from taxi_tornado.store.sqlite import SQLiteStore
from tests.conftest import FakeDistributions, RunningServer, make_settings
from tests.mongomock_async import AsyncMockClient
from tests.redis_server import SHARED_REDIS
from tests.store_contract import claims_keep_to_their_own
from tests.test_cluster import connect, http, sign_up

Start = Callable[..., Awaitable[RunningServer]]
ADDRESSES = {"pick_up_address": "1 Main St", "drop_off_address": "2 Oak Ave"}


@pytest.fixture(params=["sqlite", "mongomock"])
async def one_process(request: pytest.FixtureRequest, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch, start: Start) -> RunningServer:
    """One server on the memory hub, so keys live in the store: SQLite or MongoDB (on
    mongomock)."""
    if request.param == "mongomock":
        client = AsyncMockClient()
        monkeypatch.setattr(services_module, "open_store", lambda url: MongoStore(
            "mongodb://mongomock.invalid/taxi", client=client))  # type: ignore[arg-type]
    return await start(make_settings(tmp_path))


async def test_a_resent_trip_request_gets_the_same_trip_and_makes_one(
        one_process: RunningServer) -> None:
    server = one_process
    rider, token = await server.user("rider")
    _, driver_token = await server.user("dora", "driver")
    driver = await server.connect(driver_token, v2=True)
    first_socket = await server.connect(token, v2=True)
    frame = {"type": "trip.request", "data": ADDRESSES, "key": "trip-1"}
    first = await first_socket.request({**frame, "id": 1})
    assert first["type"] == "trip.updated" and first["id"] == 1
    first_socket.close()
    second_socket = await server.connect(token, v2=True)  # the phone came back
    again = await second_socket.request({**frame, "id": "again"})
    assert again == {**first, "id": "again"}
    assert len(await server.store.list_trips(rider)) == 1
    heard = await driver.receive()
    assert heard["type"] == "trip.updated" and heard["data"]["id"] == first["data"]["id"]
    await driver.nothing()  # nothing happened for the repeat
    # `create.trip` is the same type; key order and number spelling do not matter.
    alias = await second_socket.request({"type": "create.trip", "key": "trip-1",
                                         "data": dict(reversed(ADDRESSES.items()))})
    assert alias["data"] == first["data"]


async def test_the_same_key_for_another_request_is_key_reused(
        one_process: RunningServer) -> None:
    server = one_process
    rider, token = await server.user("rider")
    client = await server.connect(token, v2=True)
    first = await client.request({"type": "trip.request", "data": ADDRESSES, "key": "k"})
    trip_id = first["data"]["id"]
    other_data = await client.request({"type": "trip.request", "key": "k", "id": 5,
                                       "data": {**ADDRESSES, "drop_off_address": "Elsewhere"}})
    assert other_data["id"] == 5 and other_data["data"]["code"] == "key_reused"
    assert other_data["data"]["for"] == "trip.request"
    other_type = await client.request({"type": "trip.cancel", "key": "k",
                                       "data": {"id": trip_id}})
    assert other_type["data"]["code"] == "key_reused"
    trips = await server.store.list_trips(rider)
    assert [(trip.id, trip.status.value) for trip in trips] == [(trip_id, "REQUESTED")]
    # Another user's key of the same name is theirs alone.
    _, other_token = await server.user("other")
    other = await server.connect(other_token, v2=True)
    theirs = await other.request({"type": "trip.request", "data": ADDRESSES, "key": "k"})
    assert theirs["type"] == "trip.updated" and theirs["data"]["id"] != trip_id


async def test_two_at_once_make_one_trip(one_process: RunningServer) -> None:
    server = one_process
    rider, token = await server.user("rider")
    phone, tablet = await server.connect(token, v2=True), await server.connect(token, v2=True)
    frame = {"type": "trip.request", "data": ADDRESSES, "key": "both", "id": 1}
    answers = await asyncio.gather(phone.request(frame), tablet.request(frame))
    trips = await server.store.list_trips(rider)
    assert len(trips) == 1
    for answer in answers:
        if answer["type"] == "error":
            assert answer["data"]["code"] == "in_progress", answer
        else:
            assert answer["data"]["id"] == trips[0].id, answer
    assert any(answer["type"] == "trip.updated" for answer in answers)


async def test_remembered_errors_answer_again_and_retriable_ones_let_it_run(
    fake_plugins: FakeDistributions, tmp_path: Path, start: Start,
) -> None:
    fake_plugins.add("flaky", """
        from taxi_tornado.plugins import ProtocolError

        CALLS = []

        async def act(conn, data):
            CALLS.append(data)
            if len(CALLS) == 1:
                raise RuntimeError("a bug")  # internal: the key may be tried again
            if len(CALLS) == 2:
                raise ProtocolError("rate_limited", "Slow down.")  # tried again too
            raise ProtocolError("conflict", "Taken.")  # remembered

        def setup(registry):
            registry.add_message_type("flaky.act", act, keyed=True)
            registry.add_message_type("flaky.plain", act)
    """)
    import fake_flaky  # type: ignore[import-not-found]

    server = await start(make_settings(tmp_path))
    _, token = await server.user("rider")
    client = await server.connect(token, v2=True)
    frame = {"type": "flaky.act", "data": {"n": 1}, "key": "once"}
    codes = [(await client.request(frame))["data"]["code"] for _ in range(4)]
    assert codes == ["internal", "rate_limited", "conflict", "conflict"]
    assert len(fake_flaky.CALLS) == 3
    # Without a key, or on a type that is not keyed, every frame runs.
    await client.request({"type": "flaky.act", "data": {"n": 1}})
    await client.request({"type": "flaky.plain", "data": {"n": 1}, "key": "once"})
    await client.request({"type": "flaky.plain", "data": {"n": 1}, "key": "once"})
    assert len(fake_flaky.CALLS) == 6


@pytest.mark.parametrize("key", ["", "x" * 65, "with space", "ümlaut", 7, {"a": "b"}])
async def test_a_malformed_key_is_invalid_message(server: RunningServer, key: Any) -> None:
    _, token = await server.user("rider")
    client = await server.connect(token)
    reply = await client.request({"type": "trip.request", "data": ADDRESSES, "key": key,
                                  "id": "m"})
    assert reply["data"]["code"] == "invalid_message" and reply["id"] == "m", reply
    fine = await client.request({"type": "echo.message", "data": 1,
                                 "key": "A-z_0.9:" + "x" * 56})
    assert fine["data"] == 1


def test_data_is_compared_as_json_values() -> None:
    same = fingerprint_of("t", {"a": 1, "b": [1.0, {"c": 2e0, "d": None}]})
    assert same == fingerprint_of("t", {"b": [1, {"d": None, "c": 2}], "a": 1.0})
    assert same != fingerprint_of("u", {"a": 1, "b": [1.0, {"c": 2e0, "d": None}]})
    assert same != fingerprint_of("t", {"a": 1.5, "b": [1.0, {"c": 2e0, "d": None}]})
    assert fingerprint_of("t", 1e300) != fingerprint_of("t", 1e299)


# --- several processes on the Redis hub -------------------------------------------------

async def test_a_resend_on_another_process_gets_the_same_trip(
        processes: Callable[..., Any]) -> None:
    prefix = f"keys-{uuid.uuid4().hex[:12]}"
    env = {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": prefix}
    one, two = processes(env=env, name="one"), processes(env=env, name="two")
    _, token = await sign_up(one, "rider")
    frame = {"type": "trip.request", "data": ADDRESSES, "key": "lost-in-a-tunnel"}
    first_socket = await connect(one, token)
    first = await first_socket.request({**frame, "id": 1})
    assert first["type"] == "trip.updated"
    first_socket.close()
    second_socket = await connect(two, token)
    again = await second_socket.request({**frame, "id": 2})
    assert again == {**first, "id": 2}
    reused = await second_socket.request({"type": "trip.request", "key": "lost-in-a-tunnel",
                                          "data": {**ADDRESSES, "pick_up_address": "X"}})
    assert reused["data"]["code"] == "key_reused"
    redis = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        assert await redis.exists(f"{prefix}:keys:{first['data']['rider']['id']}:"
                                  "lost-in-a-tunnel") == 1
    finally:
        await redis.aclose()
    status, trips = await http(f"{two.url}/api/trip/", headers={
        "Authorization": f"Bearer {token}"})
    assert status == 200 and [trip["id"] for trip in trips] == [first["data"]["id"]]



# --- every path settles its claim (review finding 4) ------------------------------------

async def test_an_answer_that_cannot_be_kept_frees_its_key(
    fake_plugins: FakeDistributions, tmp_path: Path, start: Start,
) -> None:
    """A plugin's malformed error frame, or an answer that is not JSON, is `internal`,
    and the key is free again at once, not `in_progress` for a minute."""
    fake_plugins.add("sloppy", """
        CALLS = []

        async def act(conn, data):
            CALLS.append(data)
            if data["n"] == 1:
                return {"type": "error", "data": "not an error frame"}
            if data["n"] == 2:
                return {"type": "sloppy.acted", "data": {1, 2}}  # a set is not JSON
            return {"type": "sloppy.acted", "data": len(CALLS)}

        def setup(registry):
            registry.add_message_type("sloppy.act", act, keyed=True)
    """)
    import fake_sloppy  # type: ignore[import-not-found]

    server = await start(make_settings(tmp_path))
    _, token = await server.user("rider")
    client = await server.connect(token, v2=True)
    for number in (1, 2):
        frame = {"type": "sloppy.act", "data": {"n": number}, "key": f"k{number}"}
        assert (await client.request(frame))["data"]["code"] == "internal"
        assert (await client.request(frame))["data"]["code"] == "internal"  # ran again
    assert len(fake_sloppy.CALLS) == 4
    frame = {"type": "sloppy.act", "data": {"n": 3}, "key": "k3"}
    assert await client.request(frame) == await client.request(frame)
    assert len(fake_sloppy.CALLS) == 5


async def test_a_handler_slower_than_its_lease_does_not_overwrite_the_next_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idempotency, "CLAIM_LEASE", 0.05)
    store = SQLiteStore(str(tmp_path / "taxi.db"))
    await store.open()
    try:
        steps = Idempotency(store, 60)
        slow_may_end = asyncio.Event()

        async def slow() -> dict[str, Any]:
            await slow_may_end.wait()
            return {"type": "slow"}

        async def fast() -> dict[str, Any]:
            return {"type": "fast"}

        first = asyncio.create_task(steps.answer("u1", "k", "t", "t", {}, slow))
        await asyncio.sleep(0.1)  # the first claim lapses; a retry claims anew
        assert await steps.answer("u1", "k", "t", "t", {}, fast) == {"type": "fast"}
        slow_may_end.set()
        assert await first == {"type": "slow"}  # its sender is answered all the same
        assert await steps.answer("u1", "k", "t", "t", {}, slow) == {"type": "fast"}
    finally:
        await store.close()


async def test_request_keys_in_redis_keep_to_their_own_claims() -> None:
    client = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        await claims_keep_to_their_own(RedisKeys(client, HubKeys(
            f"test-{uuid.uuid4().hex[:12]}")))
    finally:
        await client.aclose()


# --- the budget of keyed frames (review finding 2) --------------------------------------

def _decline(key: str) -> dict[str, Any]:
    """A keyed frame anybody can make up: it answers not_found, and is remembered."""
    return {"type": "trip.decline", "key": key, "data": {"id": str(uuid.uuid4())}}


async def test_keyed_frames_spend_one_budget_per_user_across_sockets(
        tmp_path: Path, start: Start) -> None:
    server = await start(make_settings(tmp_path, limits={"keyed_requests": 3}))
    driver, token = await server.user("dora", "driver")
    phone, tablet = await server.connect(token, v2=True), await server.connect(token, v2=True)
    frames = [_decline(f"k{number}") for number in range(5)]
    answers = [await (phone, tablet)[number % 2].request(frame)
               for number, frame in enumerate(frames)]
    assert [answer["data"]["code"] for answer in answers] == ["not_found"] * 3 + [
        "rate_limited"] * 2
    assert answers[3]["data"]["retry_after"] >= 1 and answers[3]["data"]["for"] == (
        "trip.decline")
    assert await tablet.request(frames[0]) == answers[0]  # a repeat costs nothing
    assert (await phone.request(frames[4]))["data"]["code"] == "rate_limited"
    # No key was kept for a refused frame.
    with sqlite3.connect(tmp_path / "data" / "taxi.db") as database:
        (kept,) = database.execute("SELECT count(*) FROM request_keys WHERE user_id = ?",
                                   (driver.id,)).fetchone()
    assert kept == 3
    # Frames without a key, and other users, spend nothing of it.
    unkeyed = await phone.request({"type": "trip.decline", "data": {"id": "x"}})
    assert unkeyed["data"]["code"] == "not_found"
    _, other_token = await server.user("otto", "driver")
    other = await server.connect(other_token, v2=True)
    assert (await other.request(_decline("k0")))["data"]["code"] == "not_found"


async def test_keyed_frames_spend_one_budget_across_processes(
        processes: Callable[..., Any]) -> None:
    prefix = f"budget-{uuid.uuid4().hex[:12]}"
    env = {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": prefix,
           "TAXI_LIMITS_KEYED_REQUESTS": "3"}
    one, two = processes(env=env, name="one"), processes(env=env, name="two")
    driver_id, token = await sign_up(one, "driver")
    on_one, on_two = await connect(one, token), await connect(two, token)
    codes = [(await client.request(_decline(f"k{number}")))["data"]["code"]
             for number, client in enumerate((on_one, on_two, on_one, on_two))]
    assert codes == ["not_found"] * 3 + ["rate_limited"]
    redis = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        kept = [name async for name in redis.scan_iter(f"{prefix}:keys:{driver_id}:*")]
    finally:
        await redis.aclose()
    assert len(kept) == 3
