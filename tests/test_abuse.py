"""Hostile or broken HTTP clients cost little (issue 10, item 5), over real sockets.

Log-in floods meet a per-address budget and a hashing pool of their own; sockets and
unfinished trips have a ceiling per user; trip lists come in pages; oversized bodies get
a 413 with JSON; slow senders are cut off; odd headers, look-alike names, clock skew
and lost username races do no harm.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from taxi_tornado import auth
from taxi_tornado.auth import HashingBusy, HashingPool
from taxi_tornado.rate_limit import AddressRateLimit
from taxi_tornado.settings import SettingsError, load_settings
from tests.conftest import PASSWORD, SECRET, Client, RunningServer, ServerProcess, make_settings
from tests.test_http_api import PNG, SIGN_UP, multipart

Start = Callable[..., Awaitable[RunningServer]]
MIB = 1024 * 1024
FULLWIDTH_JOHN = "\uff4a\uff4f\uff48\uff4e"
FULLWIDTH_JOHN_UPPER = "\uff2a\uff2f\uff28\uff2e"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> RawResponse:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return RawResponse(int(status_line.split()[1]), headers, body)


async def exchange(port: int, head: str, body: bytes = b"", timeout: float = 10) -> RawResponse:
    """One request on a new connection (an IP literal: no resolver thread involved)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode("latin-1") + body)
        return await read_response(reader, timeout)
    finally:
        writer.close()


async def post_json(port: int, path: str, body: Any, headers: str = "",
                    timeout: float = 10) -> RawResponse:
    data = json.dumps(body).encode()
    return await exchange(port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                                f"Content-Type: application/json\r\n"
                                f"Content-Length: {len(data)}\r\n\r\n", data, timeout)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 10) -> bool:
    """Whether the server closes the connection within `timeout` (reads drain data)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True
    return False


def log_in_body(username: str = "rider@example.com") -> dict[str, str]:
    return {"username": username, "password": PASSWORD}


# --- log-in floods: a budget per address, a hashing pool of its own ---------------------

async def test_auth_requests_past_the_budget_get_429_before_any_field_is_checked(
    tmp_path: Path, start: Start,
) -> None:
    running = await start(make_settings(tmp_path, limits={"auth_rate": 3}))
    await running.user("rider@example.com")
    assert (await post_json(running.port, "/api/log_in/", log_in_body())).status == 200
    assert (await post_json(running.port, "/api/sign_up/", {})).status == 400
    assert (await post_json(running.port, "/api/token/refresh/", {})).status == 400
    for path in ("/api/log_in/", "/api/sign_up/", "/api/token/refresh/"):
        refused = await exchange(running.port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                               "Content-Length: 0\r\n\r\n")
        assert refused.status == 429
        assert "try again" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # a token every 20 s


async def test_each_client_address_has_its_own_auth_budget(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(tmp_path, limits={"auth_rate": 2},
                                        server={"port": 0, "xheaders": True}))
    first, second = "X-Real-IP: 203.0.113.1\r\n", "X-Real-IP: 203.0.113.2\r\n"
    statuses = [(await post_json(running.port, "/api/token/refresh/", {}, first)).status
                for _ in range(3)]
    assert statuses == [400, 400, 429]
    assert (await post_json(running.port, "/api/token/refresh/", {}, second)).status == 400


async def test_ipv6_addresses_of_one_slash_64_share_a_budget(
    tmp_path: Path, start: Start,
) -> None:
    running = await start(make_settings(tmp_path, limits={"auth_rate": 2},
                                        server={"port": 0, "xheaders": True}))
    statuses = [(await post_json(running.port, "/api/token/refresh/", {},
                                 f"X-Real-IP: 2001:db8:1:2::{number}\r\n")).status
                for number in range(1, 4)]
    assert statuses == [400, 400, 429]
    other = await post_json(running.port, "/api/token/refresh/", {},
                            "X-Real-IP: 2001:db8:1:3::1\r\n")
    assert other.status == 400


async def test_auth_rate_zero_turns_the_budget_off(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(tmp_path, limits={"auth_rate": 0}))
    statuses = {(await post_json(running.port, "/api/token/refresh/", {})).status
                for _ in range(40)}
    assert statuses == {400}


@pytest.mark.parametrize("key", ["limits.auth_rate", "limits.sockets_per_user",
                                 "limits.trips_per_rider", "auth.leeway",
                                 "server.header_timeout", "server.body_timeout"])
def test_bad_abuse_setting_names_its_key(key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(SettingsError, match=rf"^{re.escape(key)}: "):
        load_settings(environ={f"TAXI_{section.upper()}_{name.upper()}": "-1"},
                      create_secret=False)


def test_address_table_forgets_the_least_recent_past_its_bound() -> None:
    limit = AddressRateLimit(2, max_addresses=100)
    assert [limit.take("198.51.100.7") for _ in range(3)][:2] == [0, 0]
    for number in range(10_000):
        limit.take(f"10.{number // 256 % 256}.{number % 256}.1")
        limit.take("198.51.100.7")  # the flooder keeps its place and stays limited
    assert len(limit) == 100
    assert limit.take("198.51.100.7") > 0


async def test_log_in_does_not_wait_for_the_default_thread_pool(server: RunningServer) -> None:
    """Photo reads use the loop's default executor; hashing must not queue there."""
    await server.user("rider@example.com")
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    executor = ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    stuck = loop.run_in_executor(None, gate.wait, 30)  # the default pool's only thread
    try:
        response = await asyncio.wait_for(
            post_json(server.port, "/api/log_in/", log_in_body()), 20)
        assert response.status == 200
    finally:
        gate.set()
        await stuck
        executor.shutdown()


async def test_hashing_pool_runs_at_most_its_workers_and_refuses_past_its_queue() -> None:
    pool = HashingPool(workers=2, queue=5)
    gate = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        gate.wait(10)
        with lock:
            running -= 1

    jobs = [asyncio.ensure_future(pool.run(job)) for _ in range(5)]
    await wait_until(lambda: pool.pending == 5 and running == 2)
    with pytest.raises(HashingBusy):
        await pool.run(job)
    gate.set()
    await asyncio.gather(*jobs)
    assert peak == 2
    assert pool.pending == 0


async def test_log_in_is_429_while_the_hashing_queue_is_full(server: RunningServer) -> None:
    await server.user("rider@example.com")
    pool = auth._pool
    gate = threading.Event()
    fillers = [asyncio.ensure_future(pool.run(gate.wait, 10))
               for _ in range(pool.queue - pool.pending)]
    try:
        await wait_until(lambda: pool.pending >= pool.queue)
        refused = await post_json(server.port, "/api/log_in/", log_in_body())
        assert refused.status == 429
        assert refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["detail"]
    finally:
        gate.set()
        await asyncio.gather(*fillers)
    assert (await post_json(server.port, "/api/log_in/", log_in_body())).status == 200


async def test_concurrent_log_ins_keep_peak_memory_low(
    processes: Callable[..., ServerProcess],
) -> None:
    """30 log-ins at once once took the process from 44 to 427 MiB."""
    running = processes(env={"TAXI_LIMITS_AUTH_RATE": "0"})
    before = peak_rss_mib(running.process.pid)
    responses = await asyncio.gather(*(
        post_json(running.port, "/api/log_in/", log_in_body(f"nobody{number}"), timeout=90)
        for number in range(30)))
    assert {response.status for response in responses} == {401}
    grown = peak_rss_mib(running.process.pid) - before
    assert grown < 100, f"peak memory grew by {grown} MiB"


def peak_rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM in /proc")


async def test_hashes_of_the_old_parameters_still_verify(server: RunningServer) -> None:
    from argon2 import PasswordHasher

    old_hash = PasswordHasher(memory_cost=65536, time_cost=3, parallelism=4).hash(PASSWORD)
    await server.store.create_user("veteran", old_hash, "rider")
    response = await post_json(server.port, "/api/log_in/", log_in_body("veteran"))
    assert response.status == 200


# --- sockets per user, unfinished trips per rider -------------------------------------

async def test_upgrade_past_sockets_per_user_is_429_json(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(tmp_path, limits={"sockets_per_user": 2}))
    user, token = await running.user("rider@example.com")
    first, _second = await running.connect(token), await running.connect(token)
    with pytest.raises(HTTPClientError) as caught:
        await websocket_connect(HTTPRequest(f"{running.ws_url}?token={token}"))
    assert caught.value.code == 429
    assert caught.value.response is not None
    assert "at most 2" in json.loads(caught.value.response.body)["detail"]
    _, other_token = await running.user("other")
    (await running.connect(other_token)).close()  # another user is not counted
    first.close()
    await wait_until(lambda: running.hub.members(f"user:{user.id}") == 1)
    await running.connect(token)


async def test_racing_upgrades_of_one_user_open_at_most_the_limit(
    tmp_path: Path, start: Start,
) -> None:
    running = await start(make_settings(tmp_path, limits={"sockets_per_user": 2}))
    _, token = await running.user("rider@example.com")
    results = await asyncio.gather(*(
        websocket_connect(HTTPRequest(f"{running.ws_url}?token={token}")) for _ in range(8)
    ), return_exceptions=True)
    opened = [result for result in results if not isinstance(result, BaseException)]
    refused = [result.code for result in results if isinstance(result, HTTPClientError)]
    assert (len(opened), refused) == (2, [429] * 6), results


async def test_rider_past_trips_per_rider_is_forbidden(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    rider = await server.connect(token)
    trips = [await request_trip(rider) for _ in range(3)]
    assert all(reply["type"] == "trip.updated" for reply in trips)
    refused = await request_trip(rider)
    assert refused["type"] == "error"
    assert refused["data"]["code"] == "forbidden"
    assert "3 unfinished trips" in refused["data"]["detail"]
    canceled = await rider.request({"type": "trip.cancel", "data": {"id": trips[0]["data"]["id"]}})
    assert canceled["data"]["status"] == "CANCELED"
    assert (await request_trip(rider))["type"] == "trip.updated"


async def test_racing_trip_requests_from_two_sockets_stay_within_the_limit(
    server: RunningServer,
) -> None:
    user, token = await server.user("rider@example.com")
    phone, tablet = await server.connect(token), await server.connect(token)
    frame = {"type": "trip.request", "data": {"pick_up_address": "A", "drop_off_address": "B"}}
    await asyncio.gather(*(client.send(frame) for _ in range(5) for client in (phone, tablet)))
    replies = [await client.receive() for client in (phone, tablet) for _ in range(5)]
    made = [reply for reply in replies if reply["type"] == "trip.updated"]
    assert len(made) == 3, replies
    assert len(await server.store.active_trip_ids(user.id)) == 3


async def request_trip(client: Client) -> Any:
    return await client.request({"type": "trip.request",
                                 "data": {"pick_up_address": "A", "drop_off_address": "B"}})


# --- trip list pages ------------------------------------------------------------------

async def test_trip_list_pages_a_hundred_newest_first(server: RunningServer) -> None:
    rider, token = await server.user("rider@example.com")
    made = []
    for number in range(105):
        trip = await server.store.create_trip(rider.id, f"from {number}", "to")
        made.append(trip.id)
        if number in (4, 5):
            await asyncio.sleep(0.002)  # the page boundary falls between distinct times
    status, first, _ = await server.fetch("/api/trip/", token=token)
    assert status == 200 and isinstance(first, list)
    assert len(first) == 100
    assert [trip["created"] for trip in first] == sorted(
        (trip["created"] for trip in first), reverse=True)
    last = first[-1]["created"]
    status, rest, _ = await server.fetch(f"/api/trip/?before={last}", token=token)
    assert status == 200
    assert all(trip["created"] < last for trip in rest)
    assert sorted(trip["id"] for trip in first + rest) == sorted(made)


@pytest.mark.parametrize("before", ["yesterday", "2026-11-21", "2026-11-21T17:03:04",
                                    "2026-13-01T00:00:00Z", ""])
async def test_bad_before_is_400_with_field_errors(server: RunningServer, before: str) -> None:
    _, token = await server.user("rider@example.com")
    status, body, _ = await server.fetch(f"/api/trip/?before={before}", token=token)
    assert status == 400
    assert list(body) == ["before"] and "RFC 3339" in body["before"][0]


# --- bodies over the limits: 413 with JSON -----------------------------------------------

async def test_declared_body_over_the_limit_is_413_before_any_body_is_sent(
    server: RunningServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /api/log_in/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n")
    try:
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 413
    assert response.json() == {"detail": f"The request body is larger than {MIB} bytes."}


async def test_body_over_a_mib_sent_whole_is_413_json(server: RunningServer) -> None:
    body = b'{"username": "' + b"x" * (2 * MIB) + b'"}'
    response = await exchange(server.port, "POST /api/log_in/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           "Content-Type: application/json\r\n"
                                           f"Content-Length: {len(body)}\r\n\r\n", body)
    assert response.status == 413
    assert "larger than" in response.json()["detail"]


async def test_expect_continue_body_over_the_limit_is_413_and_closed(
    server: RunningServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /api/hub/publish/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
    try:
        response = await read_response(reader)
        assert response.status == 413  # not "100 Continue": no body is asked for
        assert "larger than" in response.json()["detail"]
        assert await closed_by_server(reader)
    finally:
        writer.close()


async def test_chunked_body_over_the_limit_is_413_json(server: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /api/token/refresh/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    try:
        for _ in range(2 * MIB // len(chunk)):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 413
    assert "larger than" in response.json()["detail"]


async def test_sign_up_takes_its_photo_limit_plus_a_mib(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(tmp_path, media={"max_photo_bytes": 2 * MIB}))
    photo = PNG + b"\0" * (3 * MIB // 2)  # 1.5 MiB: over the 1 MiB of other requests
    body, content_type = multipart(SIGN_UP, {"photo": ("photo.png", photo, "image/png")})
    status, data, _ = await running.fetch("/api/sign_up/", "POST", raw_body=body,
                                          headers={"Content-Type": content_type})
    assert status == 201, data
    too_big = b"x" * (3 * MIB + 1)
    response = await exchange(running.port, "POST /api/sign_up/ HTTP/1.1\r\n"
                                            f"Host: 127.0.0.1\r\nContent-Type: {content_type}"
                                            f"\r\nContent-Length: {len(too_big)}\r\n\r\n",
                              too_big)
    assert response.status == 413
    assert response.json() == {"detail": f"The request body is larger than {3 * MIB} bytes."}


# --- odd headers, slow senders --------------------------------------------------------

async def test_non_ascii_api_key_is_403_json_without_traceback(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture,
) -> None:
    running = await start(make_settings(tmp_path, hub={"api_key": "k3y"}))
    body = b'{"group": "drivers", "message": {"type": "x"}}'
    head = ("POST /api/hub/publish/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nAuthorization: Apikey ").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(head + "ключ".encode() + b"\r\n\r\n" + body)
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 403
    assert response.json() == {"detail": "Invalid API key."}
    assert not [record for record in caplog.records if record.exc_info], caplog.text


async def test_connection_with_unfinished_headers_is_closed(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(
        tmp_path, server={"port": 0, "header_timeout": 0.5, "body_timeout": 60}))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert await closed_by_server(reader)
    finally:
        writer.close()


async def test_connection_with_unfinished_body_is_closed(tmp_path: Path, start: Start) -> None:
    running = await start(make_settings(
        tmp_path, server={"port": 0, "header_timeout": 60, "body_timeout": 0.5}))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        writer.write(b"POST /api/log_in/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user")
        assert await closed_by_server(reader)
    finally:
        writer.close()


# --- sign-up races, look-alike names, clock skew ----------------------------------------

async def test_sign_ups_that_lose_the_username_race_leave_no_photo(
    server: RunningServer,
) -> None:
    body, content_type = multipart(SIGN_UP, {"photo": ("photo.png", PNG, "image/png")})
    results = await asyncio.gather(*(
        server.fetch("/api/sign_up/", "POST", raw_body=body,
                     headers={"Content-Type": content_type}) for _ in range(6)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] + [400] * 5, results
    user = await server.store.get_user_by_username(SIGN_UP["username"])
    photos = sorted(path.name for path in server.settings.photos_dir.iterdir())
    assert photos == [user.photo]


async def test_fullwidth_username_is_the_same_name_at_sign_up_and_log_in(
    server: RunningServer,
) -> None:
    fields = {**SIGN_UP, "username": "john"}
    status, john, _ = await server.fetch("/api/sign_up/", "POST", body=fields)
    assert status == 201
    status, body, _ = await server.fetch("/api/sign_up/", "POST",
                                         body={**fields, "username": FULLWIDTH_JOHN})
    assert (status, body) == (400, {"username": ["A user with that username already exists."]})
    status, tokens, _ = await server.fetch("/api/log_in/", "POST", body={
        "username": FULLWIDTH_JOHN_UPPER, "password": PASSWORD})
    assert status == 200
    assert jwt.decode(tokens["access"], SECRET, algorithms=["HS256"])["id"] == john["id"]


@pytest.mark.parametrize(("claim", "offset", "status"), [
    ("iat", 2, 200), ("iat", 15, 200), ("iat", 90, 401),
    ("nbf", 15, 200), ("nbf", 90, 401),
    ("exp", -15, 200), ("exp", -90, 401),
])
async def test_clock_skew_within_the_leeway_is_tolerated(
    server: RunningServer, claim: str, offset: int, status: int,
) -> None:
    user, _ = await server.user("rider@example.com")
    now = int(time.time())
    claims: dict[str, Any] = {"token_type": "access", "exp": now + 600, "iat": now,
                              "jti": "j", "id": user.id}
    claims[claim] = now + offset
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    got, body, _ = await server.fetch("/api/trip/", token=token)
    assert got == status, body


async def test_socket_opens_with_a_token_issued_two_seconds_ahead(
    server: RunningServer,
) -> None:
    user, _ = await server.user("rider@example.com")
    now = int(time.time())
    token = jwt.encode({"token_type": "access", "exp": now + 600, "iat": now + 2, "jti": "j",
                        "id": user.id}, SECRET, algorithm="HS256")
    client = await server.connect(token)
    assert await client.request({"type": "echo.message", "data": 1}) == {
        "type": "echo.message", "data": 1}


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
