"""Several real server processes sharing a real Redis behave as one server.

Every process is `python -m taxi_tornado serve` on its own port with one data dir (one
SQLite file) and one secret; each test has its own hub.prefix so that tests sharing
127.0.0.1:6379 never hear each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import PASSWORD, Client, ServerProcess, free_port, wait_healthy
from tests.redis_server import SHARED_REDIS, RedisServer

Spawn = Callable[..., ServerProcess]
API_KEY = "cluster-test-key"


@pytest.fixture
def prefix() -> str:
    return f"cluster-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub_env(prefix: str) -> dict[str, str]:
    return {"TAXI_HUB_URL": SHARED_REDIS, "TAXI_HUB_PREFIX": prefix,
            "TAXI_HUB_API_KEY": API_KEY}


async def http(url: str, method: str = "GET", body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = HTTPRequest(url, method=method, headers={
        "Content-Type": "application/json", **(headers or {})},
        body=None if body is None else json.dumps(body), request_timeout=10)
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as error:
        assert error.response is not None, error
        response = error.response
    return response.code, json.loads(response.body) if response.body else None


async def sign_up(server: ServerProcess, group: str) -> tuple[str, str]:
    """A new user signed up and logged in over HTTP: (user id, access token)."""
    username = f"{group}-{uuid.uuid4().hex[:8]}"
    status, user = await http(f"{server.url}/api/sign_up/", "POST", {
        "username": username, "password1": PASSWORD, "password2": PASSWORD,
        "group": group, "first_name": group.title(), "last_name": "Test"})
    assert status == 201, user
    status, tokens = await http(f"{server.url}/api/log_in/", "POST",
                                {"username": username, "password": PASSWORD})
    assert status == 200, tokens
    return user["id"], tokens["access"]


async def connect(server: ServerProcess, token: str, v2: bool = True) -> Client:
    ws = await websocket_connect(HTTPRequest(f"{server.ws_url}?token={token}"),
                                 subprotocols=["taxi.v2"] if v2 else None)
    return Client(ws)


async def hub_publish(server: ServerProcess, group: str, message: Any) -> None:
    status, body = await http(f"{server.url}/api/hub/publish/", "POST",
                              {"group": group, "message": message},
                              {"Authorization": f"Apikey {API_KEY}"})
    assert status == 202, body


async def event(client: Client) -> Any:
    """The next frame without its `pos` (v2 events carry one; test_sessions checks them)."""
    message = await client.receive()
    message.pop("pos", None)
    return message


async def ready_status(server: ServerProcess) -> int:
    status, _ = await http(f"{server.url}/readyz")
    return status


async def wait_ready(server: ServerProcess, expected: int, timeout: float = 15) -> None:
    """Poll /readyz until it answers `expected`; the process must stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"server died:\n{server.log()}"
        status = await ready_status(server)
        if status == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz stayed {status}, wanted {expected}:\n{server.log()}")


async def receive_type(client: Client, kind: str) -> Any:
    message = await client.receive()
    assert message["type"] == kind, message
    return message


async def ready_pair(processes: Spawn, env: dict[str, str]) -> tuple[ServerProcess,
                                                                      ServerProcess]:
    """Two server processes sharing the hub in `env`, both answering /readyz."""
    a = processes(env=env, name="a")
    b = processes(env=env, name="b")
    await wait_ready(a, 200)
    await wait_ready(b, 200)
    return a, b


# --- the trip lifecycle across processes -------------------------------------------------

async def test_trip_lifecycle_with_rider_and_drivers_on_different_processes(
    processes: Spawn, hub_env: dict[str, str]
) -> None:
    a, b = await ready_pair(processes, hub_env)
    _, rider_token = await sign_up(a, "rider")
    driver_b_id, driver_b_token = await sign_up(b, "driver")
    _, driver_a_token = await sign_up(a, "driver")
    _, old_driver_token = await sign_up(a, "driver")
    rider = await connect(a, rider_token)
    driver_b = await connect(b, driver_b_token)
    driver_a = await connect(a, driver_a_token)
    old_driver = await connect(a, old_driver_token, v2=False)

    reply = await rider.request({"type": "trip.request", "id": 1, "data": {
        "pick_up_address": "A street", "drop_off_address": "B street"}})
    assert reply["type"] == "trip.updated" and reply["id"] == 1
    trip = reply["data"]
    assert trip["status"] == "REQUESTED"
    for driver in (driver_b, driver_a, old_driver):
        assert (await receive_type(driver, "trip.updated"))["data"]["id"] == trip["id"]

    claimed = await driver_b.request({"type": "trip.update", "data": {
        "id": trip["id"], "status": "STARTED", "driver": driver_b_id}})
    assert claimed["data"]["status"] == "STARTED"
    started = await receive_type(rider, "trip.updated")
    assert started["data"]["status"] == "STARTED"
    assert started["data"]["driver"]["id"] == driver_b_id
    taken = await receive_type(driver_a, "trip.updated")  # v2: the pool hears it is taken
    assert taken["data"]["status"] == "STARTED"
    # B's next send to the pool is a barrier: the v1 driver on A must skip the notice.
    await hub_publish(b, "drivers", {"type": "barrier"})
    assert await old_driver.receive() == {"type": "barrier"}
    assert await event(driver_a) == {"type": "barrier"}
    assert await event(driver_b) == {"type": "barrier"}

    await driver_b.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    location = await receive_type(rider, "driver.location")
    assert location["data"]["trip"] == trip["id"]

    for status in ("IN_PROGRESS", "COMPLETED"):
        reply = await driver_b.request({"type": "trip.update", "data": {
            "id": trip["id"], "status": status}})
        assert reply["data"]["status"] == status
        assert (await receive_type(rider, "trip.updated"))["data"]["status"] == status
    for client in (rider, driver_b, driver_a, old_driver):
        client.close()


# --- publishing from elsewhere -----------------------------------------------------------

async def test_publish_from_an_outside_process_and_the_http_api_reach_every_process(
    processes: Spawn, hub_env: dict[str, str], prefix: str
) -> None:
    a, b = await ready_pair(processes, hub_env)
    _, token = await sign_up(a, "driver")
    drivers = [await connect(server, token) for server in (a, b, a, b)]
    rider_id, rider_token = await sign_up(b, "rider")
    rider = await connect(b, rider_token, v2=False)

    message = {"type": "fleet.notice", "data": {"text": "Airport queue open"}}
    script = ("import json, sys; from taxi_tornado.hub import publish_sync; "
              "print(publish_sync(sys.argv[1], 'drivers', json.loads(sys.argv[2]), "
              "prefix=sys.argv[3]))")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script, SHARED_REDIS, json.dumps(message), prefix],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"  # both processes have drivers
    for driver in drivers:
        assert await event(driver) == message

    await hub_publish(a, f"user:{rider_id}", {"type": "fare.receipt", "data": 12.5})
    assert await rider.receive() == {"type": "fare.receipt", "data": 12.5}
    await hub_publish(a, "drivers", {"type": "fleet.notice", "data": 2})
    for driver in drivers:
        assert await event(driver) == {"type": "fleet.notice", "data": 2}


# --- Redis dies and comes back -----------------------------------------------------------

async def test_redis_restart_does_not_stop_processes_and_delivery_resumes(
    processes: Spawn, private_redis: RedisServer, prefix: str
) -> None:
    env = {"TAXI_HUB_URL": private_redis.url, "TAXI_HUB_PREFIX": prefix,
           "TAXI_HUB_API_KEY": API_KEY}
    a, b = await ready_pair(processes, env)
    _, rider_token = await sign_up(a, "rider")
    _, driver_a_token = await sign_up(a, "driver")
    _, driver_b_token = await sign_up(b, "driver")
    rider = await connect(a, rider_token)
    driver_a = await connect(a, driver_a_token)
    driver_b = await connect(b, driver_b_token)
    await hub_publish(a, "drivers", {"type": "before"})
    assert await event(driver_b) == {"type": "before"}
    assert await event(driver_a) == {"type": "before"}

    private_redis.kill()
    await wait_ready(a, 503)
    await wait_ready(b, 503)
    _, body = await http(f"{a.url}/readyz")
    assert "hub" in body["failures"], body
    # Local delivery goes on, and a send never fails the sender.
    await hub_publish(a, "drivers", {"type": "during"})
    assert await event(driver_a) == {"type": "during"}
    reply = await rider.request({"type": "trip.request", "data": {
        "pick_up_address": "Here", "drop_off_address": "There"}})
    assert reply["type"] == "trip.updated"
    assert (await receive_type(driver_a, "trip.updated"))["data"]["id"] == reply["data"]["id"]

    private_redis.start()
    await wait_ready(a, 200)
    await wait_ready(b, 200)
    # The same sockets: nobody reconnected.
    await hub_publish(a, "drivers", {"type": "after"})
    assert await event(driver_b) == {"type": "after"}  # "during" was never queued
    assert await event(driver_a) == {"type": "after"}
    reply = await rider.request({"type": "trip.request", "data": {
        "pick_up_address": "Here again", "drop_off_address": "There"}})
    assert (await receive_type(driver_b, "trip.updated"))["data"]["id"] == reply["data"]["id"]
    assert (await receive_type(driver_a, "trip.updated"))["data"]["id"] == reply["data"]["id"]
    for server in (a, b):
        assert server.process.poll() is None
        log = server.log()
        assert log.count("lost Redis") == 1, log
        assert log.count("restored after") == 1, log


# --- server.processes --------------------------------------------------------------------

def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(item) for item in path.read_text().split()] if path.exists() else []


async def test_two_forked_workers_share_one_port_and_their_groups(
    tmp_path: Path, processes: Spawn, hub_env: dict[str, str], prefix: str
) -> None:
    # One driver opens many sockets while the kernel spreads them over the workers; the
    # per-user socket cap (per process) must not end the search before both hold some.
    server = processes(env={**hub_env, "TAXI_SERVER_PROCESSES": "2",
                            "TAXI_LIMITS_SOCKETS_PER_USER": "0"}, name="forked")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 15
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = child_pids(server.process.pid)
            await asyncio.sleep(0.05)
        assert len(workers) == 2, server.log()
        await wait_ready(server, 200)
        # Open driver sockets until both workers hold some (each worker subscribes to
        # `drivers` with its first driver); the kernel picks the worker per connection.
        redis_client = aioredis.Redis.from_url(SHARED_REDIS)
        _, token = await sign_up(server, "driver")
        drivers = []
        try:
            while len(drivers) < 60:
                drivers.append(await connect(server, token))
                counts = await redis_client.pubsub_numsub(f"{prefix}:group:drivers")
                if len(drivers) >= 4 and counts[0][1] == 2:
                    break
            assert counts[0][1] == 2, "every socket landed on one worker"
        finally:
            await redis_client.aclose()
        await hub_publish(server, "drivers", {"type": "fleet.notice", "data": "all"})
        for driver in drivers:
            assert await event(driver) == {"type": "fleet.notice", "data": "all"}
        _, rider_token = await sign_up(server, "rider")
        rider = await connect(server, rider_token)
        reply = await rider.request({"type": "trip.request", "data": {
            "pick_up_address": "Here", "drop_off_address": "There"}})
        for driver in drivers:
            assert (await receive_type(driver, "trip.updated"))["data"] == reply["data"]
    finally:
        server.process.send_signal(signal.SIGTERM)
    # The parent forwards the signal; each worker drains (the sockets answer its 1001)
    # and the parent exits 0 with them.
    assert await asyncio.to_thread(server.process.wait, 20) == 0, server.log()


def test_several_processes_with_the_memory_hub_are_refused(tmp_path: Path) -> None:
    done = run_serve(tmp_path, {"TAXI_SERVER_PROCESSES": "2", "TAXI_HUB_URL": "memory://"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.processes" in lines[0], done.stderr


@pytest.mark.parametrize("command", ["serve", "check"])
def test_malformed_hub_url_stops_start_up_with_one_line(tmp_path: Path, command: str) -> None:
    done = run_serve(tmp_path, {"TAXI_HUB_URL": "redis://:hunter2@host:notaport/0"}, command)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taxi-tornado: hub.url: "), done.stderr
    assert "hunter2" not in done.stderr


def test_unreachable_redis_at_start_is_not_fatal(tmp_path: Path, processes: Spawn) -> None:
    server = processes(env={"TAXI_HUB_URL": f"redis://127.0.0.1:{free_port()}/0"})
    wait_healthy(server)
    status = asyncio.run(ready_status(server))
    assert status == 503
    assert server.process.poll() is None
    assert server.log().count("cannot reach Redis") == 1


def run_serve(tmp_path: Path, env: dict[str, str],
              command: str = "serve") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taxi_tornado", command], cwd=tmp_path, capture_output=True,
        text=True, timeout=30, env={**os.environ, "TAXI_DATA_DIR": str(tmp_path / "data"),
                                    "TAXI_SERVER_PORT": str(free_port()), **env})
