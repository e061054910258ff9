"""The admin API across two real server processes sharing a real Redis hub.

Each process writes its sample to Redis; whichever process answers GET /api/admin/
counts every live one. Staff actions made on one process reach sockets on the other.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PASSWORD, ServerProcess
from tests.redis_server import SHARED_REDIS
from tests.test_cluster import connect, http, ready_pair, receive_type, sign_up

Spawn = Callable[..., ServerProcess]


@pytest.fixture
def hub_env() -> dict[str, str]:
    return {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": f"admin-{uuid.uuid4().hex[:12]}"}


async def staff_token(tmp_path: Path, server: ServerProcess) -> str:
    """A staff user made with the CLI on the processes' database, logged in over HTTP."""
    made = subprocess.run(
        [sys.executable, "-m", "taxi_tornado", "createuser", "olga", "--staff",
         "--password-stdin"], input=PASSWORD + "\n", capture_output=True, text=True,
        env={**os.environ, "TAXI_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path, timeout=60)
    assert made.returncode == 0, made.stderr
    status, tokens = await http(f"{server.url}/api/log_in/", "POST",
                                {"username": "olga", "password": PASSWORD})
    assert status == 200, tokens
    token: str = tokens["access"]
    return token


async def overview_until(server: ServerProcess, token: str, check: Callable[[Any], bool],
                         timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await http(f"{server.url}/api/admin/",
                                  headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        if check(body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)


async def test_overview_counts_every_process(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str],
) -> None:
    a, b = await ready_pair(processes, hub_env)
    token = await staff_token(tmp_path, a)
    _, rider_token = await sign_up(a, "rider")
    _, driver_token = await sign_up(b, "driver")
    await connect(a, rider_token, v2=False)
    await connect(b, driver_token)
    for server in (a, b):
        body = await overview_until(server, token, lambda body: (
            len(body["nodes"]) == 2 and body["connections"]["total"] == 2))
        assert body["connections"]["by_version"] == {"1": 1, "2": 1}
        assert body["drivers"]["connected"] == 1
        assert body["complete"] is True and body["health"] == {"store": True, "hub": True}
        assert len({node["id"] for node in body["nodes"]}) == 2
        assert len({node["pid"] for node in body["nodes"]}) == 2
        assert sorted(node["connections"]["total"] for node in body["nodes"]) == [1, 1]
        assert sorted(node["listen"] for node in body["nodes"]) == sorted(
            [[f"127.0.0.1:{a.port}"], [f"127.0.0.1:{b.port}"]])


async def test_a_stopped_process_leaves_the_overview(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str],
) -> None:
    a, b = await ready_pair(processes, hub_env)
    token = await staff_token(tmp_path, a)
    await overview_until(a, token, lambda body: len(body["nodes"]) == 2)
    assert b.stop() == 0
    body = await overview_until(a, token, lambda body: len(body["nodes"]) == 1, timeout=3)
    assert body["nodes"][0]["pid"] == a.process.pid


async def test_staff_closes_a_users_sockets_on_every_process(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str],
) -> None:
    a, b = await ready_pair(processes, hub_env)
    token = await staff_token(tmp_path, a)
    rider_id, rider_token = await sign_up(a, "rider")
    _, other_token = await sign_up(b, "rider")
    on_a, on_b = await connect(a, rider_token), await connect(b, rider_token, v2=False)
    other = await connect(b, other_token)
    status, body = await http(f"{a.url}/api/admin/user/{rider_id}/disconnect/", "POST", {},
                              {"Authorization": f"Bearer {token}"})
    assert status == 202, body
    assert await on_a.closed() == 4000
    assert await on_b.closed() == 4000
    echo = {"type": "echo.message", "data": "still here"}
    assert await other.request(echo) == echo
    assert "staff olga" in a.log() and rider_id in a.log()


async def test_staff_cancel_on_one_process_reaches_everyone_on_the_other(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str],
) -> None:
    a, b = await ready_pair(processes, hub_env)
    token = await staff_token(tmp_path, a)
    _, rider_token = await sign_up(b, "rider")
    _, driver_token = await sign_up(b, "driver")
    staff = await connect(b, token)
    rider = await connect(b, rider_token)
    driver = await connect(b, driver_token)
    trip = (await rider.request({"type": "trip.request", "data": {
        "pick_up_address": "a", "drop_off_address": "b"}}))["data"]
    await receive_type(driver, "trip.updated")
    status, body = await http(f"{a.url}/api/admin/trip/{trip['id']}/cancel/", "POST", {},
                              {"Authorization": f"Bearer {token}"})
    assert status == 200 and body["status"] == "CANCELED", body
    assert (await receive_type(rider, "trip.updated"))["data"]["status"] == "CANCELED"
    assert (await receive_type(driver, "trip.updated"))["data"]["status"] == "CANCELED"
    statuses = []
    while "CANCELED" not in statuses:
        message = await staff.receive()
        if message["type"] == "admin.trip":
            assert "pos" not in message, message  # live only: the page reads admin.stats
            statuses.append(message["data"]["status"])
    assert statuses == ["REQUESTED", "CANCELED"]
    # The operators' and the processes' own groups keep no history in Redis (each send
    # one PUBLISH, not the history script); the trip's group and the drivers' pool do.
    prefix = hub_env["TAXI_HUB_PREFIX"]
    redis = aioredis.Redis.from_url(SHARED_REDIS)
    try:
        streams = {key.decode() for key in await redis.keys(f"{prefix}:stream:*")}
    finally:
        await redis.aclose()
    assert {f"{prefix}:stream:{trip['id']}", f"{prefix}:stream:drivers"} <= streams, streams
    assert not streams & {f"{prefix}:stream:{group}"
                          for group in ("admin", "admin:control", "trips:follow")}, streams


async def test_staff_socket_gets_one_stats_event_per_interval_whatever_the_processes(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str],
) -> None:
    a, _ = await ready_pair(processes, hub_env)
    token = await staff_token(tmp_path, a)
    staff = await connect(a, token)
    first = await receive_type(staff, "admin.stats")
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < 3:
        message = await staff.receive()
        count += message["type"] == "admin.stats"
    assert count <= 4, "more than one process pushed stats to one socket"
    assert first["data"]["page"]["socket_path"] == "/taxi/"
