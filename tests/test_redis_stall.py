"""A Redis that stalls (CLIENT PAUSE: every command waits) past the hub's timeouts while a
frame is being handled: the frame gets its answer, and the socket stays open.

Most frames' handlers run inline, outside a Task of their own, up to their first wait
(handlers/inline.py). A timeout entered there, before that first wait, once belonged to
the task reading the socket's frames: when Redis stalled past it, that task was
cancelled and Tornado dropped the connection without a close frame (seen in the rolling
restart bench as sockets lost right after their resume, when a history read took more
than a second).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taxi_tornado.hub import redis_broker
from taxi_tornado.hub.redis_publisher import PUBLISH_TIMEOUT
from tests.conftest import make_settings
from tests.redis_server import RedisServer
from tests.test_dispatch import Start

STALL_MS = int((PUBLISH_TIMEOUT + 1.5) * 1000)


async def stall(redis_url: str) -> None:
    """Every client's next commands wait STALL_MS (this connection's own answer comes)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.execute_command("CLIENT", "PAUSE", STALL_MS, "ALL")
    finally:
        await client.aclose()


async def test_a_resume_whose_read_stalls_is_answered_and_the_socket_lives(
        tmp_path: Path, start: Start, private_redis: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_broker, "READ_TIMEOUT", PUBLISH_TIMEOUT)  # 5 s: too long here
    server = await start(make_settings(tmp_path, hub={"url": private_redis.url,
                                                      "prefix": "stall"}))
    user, token = await server.user("rider")
    rider = await server.connect(token, v2=True)
    await server.hub.send(f"user:{user.id}", {"type": "note", "data": 1})
    event = await rider.receive()
    await stall(private_redis.url)
    answer = await rider.request({"type": "session.resume", "id": 1, "data": {"positions": {
        f"user:{user.id}": {"offset": event["pos"]["offset"],
                            "epoch": event["pos"]["epoch"]}}}}, timeout=STALL_MS / 1000 + 5)
    assert answer["type"] == "session.resumed", answer
    assert answer["data"]["groups"][f"user:{user.id}"]["recovered"] is False  # timed out
    echoed = await rider.request({"type": "echo.message", "id": 2, "data": "still here"},
                                 timeout=STALL_MS / 1000 + 5)
    assert echoed["data"] == "still here", echoed


async def test_a_send_that_stalls_answers_and_the_socket_lives(
        tmp_path: Path, start: Start, private_redis: RedisServer) -> None:
    """driver.location relays to the trip's group at once (its first wait is the send)."""
    server = await start(make_settings(tmp_path, hub={"url": private_redis.url,
                                                      "prefix": "stall"}))
    _, rider_token = await server.user("rider")
    _, driver_token = await server.user("driver", "driver")
    rider = await server.connect(rider_token, v2=True)
    driver = await server.connect(driver_token, v2=True)
    trip = (await rider.request({"type": "trip.request", "id": 1, "data": {
        "pick_up_address": "A", "drop_off_address": "B"}}))["data"]
    claimed = await driver.request({"type": "trip.update", "id": 1, "data": {
        "id": trip["id"], "status": "STARTED"}})
    assert claimed["data"]["status"] == "STARTED", claimed
    await driver.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    await stall(private_redis.url)
    await driver.send({"type": "driver.location", "data": {"lat": 52.6, "lng": 13.4}})
    echoed = await driver.request({"type": "echo.message", "id": 2, "data": "still here"},
                                  timeout=STALL_MS / 1000 + 5)
    assert echoed["data"] == "still here", echoed


async def test_a_keyed_frame_while_redis_is_down_is_internal_with_a_retry_after(
        tmp_path: Path, start: Start, private_redis: RedisServer) -> None:
    """The keys live in Redis with a Redis hub: with Redis gone nothing was done, and the
    answer says when to send the same frame (same key) again."""
    server = await start(make_settings(tmp_path, hub={"url": private_redis.url,
                                                      "prefix": "down"}))
    _, token = await server.user("rider")
    rider = await server.connect(token, v2=True)
    private_redis.kill()
    frame = {"type": "trip.request", "id": 1, "key": "k-1", "data": {
        "pick_up_address": "A", "drop_off_address": "B"}}
    answer = await rider.request(frame, timeout=15)
    assert answer["type"] == "error", answer
    assert answer["data"]["code"] == "internal"
    assert answer["data"]["retry_after"] == 1.0, answer
    assert "Redis" not in answer["data"]["detail"]  # nothing about the server's insides
    private_redis.start()
    answer = await rider.request({**frame, "id": 2}, timeout=15)
    assert answer["type"] == "trip.updated" and answer["data"]["status"] == "REQUESTED", answer


async def test_a_group_that_sends_past_the_queue_while_a_resume_reads_closes_with_1013(
        tmp_path: Path, start: Start, private_redis: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While a resume reads a group's history its live events are held back, up to the
    outbound queue: past it the socket closes as a slow reader's does, and holds nothing
    more."""
    server = await start(make_settings(tmp_path, hub={"url": private_redis.url,
                                                      "prefix": "held"},
                                       limits={"outbound_queue": 8}))
    user, token = await server.user("rider")
    rider = await server.connect(token, v2=True)
    group = f"user:{user.id}"
    await server.hub.send(group, {"type": "note", "data": 0})
    pos = (await rider.receive())["pos"]
    resumes = server.hub.broker._resumes
    read, reading, go = resumes._fetch, asyncio.Event(), asyncio.Event()

    async def slow_read(wanted: list[Any]) -> dict[Any, Any]:
        reading.set()
        await go.wait()  # as a read waits for Redis
        return dict(await read(wanted))

    monkeypatch.setattr(resumes, "_fetch", slow_read)
    await rider.send({"type": "session.resume", "id": 1, "data": {"positions": {
        group: {"offset": pos["offset"], "epoch": pos["epoch"]}}}})
    await reading.wait()
    for n in range(1, 10):  # the ninth is one past the queue of 8
        await server.hub.send(group, {"type": "note", "data": n})
    assert await rider.ws.read_message() is None  # closed, the held events dropped
    assert rider.ws.close_code == 1013
    go.set()
