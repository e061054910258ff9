"""Operators (staff) and the admin API over real HTTP and sockets, one process.

PROTOCOL.md, "Operators (staff)": staff is made only from the terminal, cannot touch
trips over the socket, and is the only group the admin API and the `admin` group admit.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from taxi_tornado.settings import SettingsError, load_settings
from taxi_tornado.store import LatLng
from taxi_tornado.store.sqlite import SQLiteStore
from tests.conftest import PASSWORD, Client, RunningServer, make_settings
from tests.test_operations import moved, scrape

ADDRESSES = {"pick_up_address": "1 Dock Road", "drop_off_address": "9 Hill Street"}


async def staff_of(server: RunningServer, name: str = "olga") -> str:
    _, token = await server.user(name, "staff")
    return token


async def next_of(client: Client, kind: str, timeout: float = 5) -> dict[str, Any]:
    """The next frame of type `kind`, skipping others (admin.stats arrive every second)."""
    deadline = time.monotonic() + timeout
    while True:
        message: dict[str, Any] = await client.receive(max(0.01, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


async def no_admin_event(client: Client, wait: float = 1.5) -> None:
    """No `admin.*` frame arrives within `wait` seconds (other frames are fine)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            text = await asyncio.wait_for(client.ws.read_message(), left)
        except TimeoutError:
            return
        assert text is not None, "socket closed"
        assert not json.loads(text)["type"].startswith("admin."), text


async def overview_until(server: RunningServer, token: str, check: Any,
                         timeout: float = 5) -> dict[str, Any]:
    """GET /api/admin/ until `check(body)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = await server.fetch("/api/admin/", token=token)
        assert status == 200, body
        if check(body) or time.monotonic() > deadline:
            assert check(body), body
            return body
        await asyncio.sleep(0.1)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


# --- who is staff ---------------------------------------------------------------------

async def test_staff_token_says_staff_and_others_do_not(server: RunningServer) -> None:
    await server.user("olga", "staff")
    await server.user("rita", "rider")
    tokens = {}
    for name in ("olga", "rita"):
        status, body, _ = await server.fetch("/api/log_in/", "POST",
                                             {"username": name, "password": PASSWORD})
        assert status == 200, body
        tokens[name] = claims_of(body["access"])
    assert tokens["olga"]["group"] == "staff" and tokens["olga"]["staff"] is True
    assert tokens["rita"]["group"] == "rider" and "staff" not in tokens["rita"]


async def test_sign_up_refuses_the_staff_group(server: RunningServer) -> None:
    status, body, _ = await server.fetch("/api/sign_up/", "POST", {
        "username": "mallory", "password1": PASSWORD, "password2": PASSWORD, "group": "staff"})
    assert status == 400
    assert body == {"group": ['"staff" is not a valid choice.']}


@pytest.mark.parametrize("flags", [["--staff"], ["--group", "staff"]])
def test_createuser_makes_staff_from_the_terminal(tmp_path: Path, flags: list[str]) -> None:
    env = {"TAXI_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    made = subprocess.run([sys.executable, "-m", "taxi_tornado", "createuser", "olga", *flags,
                           "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60)
    assert made.returncode == 0, made.stderr

    async def group() -> str | None:
        store = SQLiteStore(str(tmp_path / "data" / "taxi.db"))
        await store.open()
        try:
            user = await store.get_user(made.stdout.strip())
        finally:
            await store.close()
        return user.group if user else None

    assert asyncio.run(group()) == "staff"


async def test_staff_cannot_request_claim_or_cancel_trips(server: RunningServer) -> None:
    rider, _ = await server.user("rita")
    trip = await server.store.create_trip(rider.id, "a", "b")
    staff = await server.connect(await staff_of(server), v2=True)
    frames = [
        {"type": "trip.request", "data": ADDRESSES},
        {"type": "trip.update", "data": {"id": trip.id, "status": "STARTED"}},
        {"type": "trip.cancel", "data": {"id": trip.id}},
    ]
    for number, frame in enumerate(frames):
        await staff.send({**frame, "id": number})
        reply = await next_of(staff, "error")
        assert (reply["id"], reply["data"]["code"]) == (number, "forbidden")
    stored = await server.store.get_trip(trip.id)
    assert stored is not None and stored.status.value == "REQUESTED"
    assert await server.store.list_trips(await server.store.get_user_by_username("olga")) == []


# --- the API's doors ------------------------------------------------------------------

async def test_admin_api_wants_a_valid_token(server: RunningServer) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        status, body, _ = await server.fetch("/api/admin/", headers=headers)
        assert status == 401
        assert body == {"detail": "Token is invalid or expired", "code": "token_not_valid"}
    refresh = server.tokens.issue_refresh((await server.user("olga", "staff"))[0].id)
    status, body, _ = await server.fetch("/api/admin/", token=refresh)
    assert status == 401


async def test_riders_and_drivers_get_403_from_every_admin_call(
    server: RunningServer,
) -> None:
    rider, rider_token = await server.user("rita")
    _, driver_token = await server.user("dan", "driver")
    trip = await server.store.create_trip(rider.id, "a", "b")
    calls = [("/api/admin/", "GET"), (f"/api/admin/trip/{trip.id}/cancel/", "POST"),
             (f"/api/admin/user/{rider.id}/disconnect/", "POST"),
             ("/api/admin/users/?q=ri", "GET")]
    for token in (rider_token, driver_token):
        for path, method in calls:
            body = {} if method == "POST" else None
            status, answer, _ = await server.fetch(path, method, body, token=token)
            assert (status, answer) == (403, {"detail": "Only staff can use the admin API."})
    stored = await server.store.get_trip(trip.id)
    assert stored is not None and stored.status.value == "REQUESTED"


async def test_a_user_moved_out_of_staff_loses_the_api_with_the_old_token(
    server: RunningServer,
) -> None:
    """The API wants both the token's `staff` claim and the stored group: a staff token
    outlives a change of group (up to auth.access_ttl), the stored group does not."""
    olga, token = await server.user("olga", "staff")
    status, _, _ = await server.fetch("/api/admin/", token=token)
    assert status == 200
    assert isinstance(server.store, SQLiteStore)  # no store method changes a group
    await server.store.db.execute("UPDATE users SET grp = 'rider' WHERE id = ?", (olga.id,))
    calls = [("/api/admin/", "GET"), (f"/api/admin/user/{olga.id}/disconnect/", "POST")]
    for path, method in calls:
        body = {} if method == "POST" else None
        status, answer, _ = await server.fetch(path, method, body, token=token)
        assert (status, answer) == (403, {"detail": "Only staff can use the admin API."})


async def test_a_user_moved_into_staff_needs_a_new_token(server: RunningServer) -> None:
    """The other way round: the stored group alone is not enough either."""
    rita, token = await server.user("rita")
    assert isinstance(server.store, SQLiteStore)
    await server.store.db.execute("UPDATE users SET grp = 'staff' WHERE id = ?", (rita.id,))
    status, answer, _ = await server.fetch("/api/admin/", token=token)
    assert (status, answer) == (403, {"detail": "Only staff can use the admin API."})
    status, tokens, _ = await server.fetch("/api/log_in/", "POST",
                                           {"username": "rita", "password": PASSWORD})
    assert status == 200
    status, _, _ = await server.fetch("/api/admin/", token=tokens["access"])
    assert status == 200


async def test_admin_disabled_removes_page_api_and_group(tmp_path: Path, start: Any) -> None:
    server = await start(make_settings(tmp_path, admin={"enabled": False}))
    staff_token = await staff_of(server)
    for path in ("/admin/", "/admin/admin.js", "/api/admin/"):
        status, body, _ = await server.fetch(path, token=staff_token)
        assert (status, body) == (404, {"detail": "Not found."}), path
    staff = await server.connect(staff_token, v2=True)
    _, rider_token = await server.user("rita")
    rider = await server.connect(rider_token, v2=True)
    await rider.request({"type": "trip.request", "data": ADDRESSES})
    await no_admin_event(staff)


def test_admin_settings_are_checked(tmp_path: Path) -> None:
    settings = load_settings(environ={"TAXI_ADMIN_ENABLED": "false",
                                      "TAXI_ADMIN_TILE_URL": "https://t.example/{z}/{x}/{y}.png"},
                             create_secret=False, path=None)
    assert settings.admin.enabled is False
    assert settings.admin.tile_url == "https://t.example/{z}/{x}/{y}.png"
    for bad in ("https://t.example/{z}.png", "ftp://t.example/{z}/{x}/{y}",
                "https://t.example;script-src */{z}/{x}/{y}", "https://t.example/{z}/{x}/{y} x"):
        with pytest.raises(SettingsError, match=r"^admin\.tile_url: must be an http"):
            load_settings(environ={"TAXI_ADMIN_TILE_URL": bad}, create_secret=False)


# --- the page -------------------------------------------------------------------------

async def test_page_loads_for_anyone_with_a_content_security_policy(
    server: RunningServer,
) -> None:
    status, _, response = await server.fetch("/admin/")
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert b'type="module"' in response.body
    status, _, script = await server.fetch("/admin/admin.js")
    assert status == 200 and "javascript" in script.headers["Content-Type"]
    status, body, _ = await server.fetch("/admin/no-such-file.js")
    assert (status, body) == (404, {"detail": "Not found."})
    redirect = await AsyncHTTPClient().fetch(HTTPRequest(server.url + "/admin",
                                                         follow_redirects=False),
                                             raise_error=False)
    assert redirect.code == 302 and redirect.headers["Location"] == "/admin/"


async def test_tile_url_host_is_allowed_for_images_only(tmp_path: Path, start: Any) -> None:
    settings = make_settings(tmp_path, admin={"tile_url": "https://tiles.example:8443/{z}/{x}/{y}.png"})
    server = await start(settings)
    _, _, response = await server.fetch("/admin/")
    policy = response.headers["Content-Security-Policy"]
    assert "img-src 'self' data: https://tiles.example:8443;" in policy
    assert "connect-src 'self';" in policy
    status, body, _ = await server.fetch("/api/admin/", token=await staff_of(server))
    assert status == 200
    assert body["page"]["tile_url"] == "https://tiles.example:8443/{z}/{x}/{y}.png"


# --- what the overview says -----------------------------------------------------------

async def test_overview_counts_connections_drivers_and_trips(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    rider, rider_token = await server.user("rita")
    driver, driver_token = await server.user("dan", "driver")
    await server.user("dora", "driver")  # not connected
    rider_ws = await server.connect(rider_token)  # v1
    driver_v2 = await server.connect(driver_token, v2=True)
    driver_v1 = await server.connect(driver_token)  # the same driver twice counts once
    waiting = await rider_ws.request({"type": "trip.request", "data": ADDRESSES})
    taken = await server.store.create_trip(rider.id, "c", "d",
                                           drop_off=LatLng(51.5154, -0.1755))
    await server.assign(taken.id, "IN_PROGRESS", driver.id)
    done = await server.store.create_trip(rider.id, "e", "f")
    await server.assign(done.id, "COMPLETED", driver.id)

    body = await overview_until(server, staff_token,
                                lambda body: body["connections"]["total"] == 3)
    assert body["connections"] == {"total": 3, "by_version": {"1": 2, "2": 1}, "staff": 0}
    assert body["drivers"]["connected"] == 1 and body["drivers"]["on_trip"] == 1
    assert body["trips"]["by_status"] == {"REQUESTED": 1, "STARTED": 0, "IN_PROGRESS": 1,
                                          "COMPLETED": 1, "CANCELED": 0}
    assert body["trips"]["unfinished_total"] == 2
    rows = body["trips"]["unfinished"]
    assert [row["id"] for row in rows] == [waiting["data"]["id"], taken.id]  # oldest first
    assert rows[0]["rider"] == {"id": rider.id, "username": "rita"}
    assert rows[0]["driver"] is None and rows[0]["status"] == "REQUESTED"
    assert rows[1]["driver"] == {"id": driver.id, "username": "dan"}
    assert rows[1]["drop_off"] == {"lat": 51.5154, "lng": -0.1755}
    assert rows[0]["pick_up_address"] == "1 Dock Road" and rows[0]["age_s"] >= 0
    assert rows[0]["drop_off_address"] == "9 Hill Street" and rows[0]["drop_off"] is None
    assert body["health"] == {"store": True, "hub": True}
    assert body["complete"] is True
    node, = body["nodes"]
    assert node["id"] == server.hub.broker.node_id and node["version"]
    assert node["listen"] == [f"127.0.0.1:{server.port}"]
    assert node["uptime_s"] >= 0 and node["ready"] == {"store": True, "hub": True,
                                                        "draining": False}
    assert body["messages"]["in"]["trip.request"] >= 1
    assert body["page"]["socket_path"] == "/taxi/"

    # The counts follow sockets as they close: the driver stays while one socket is open.
    rider_ws.ws.close(1000)
    driver_v1.ws.close(1000)
    body = await overview_until(server, staff_token,
                                lambda body: body["connections"]["total"] == 1)
    assert body["connections"]["by_version"] == {"2": 1}
    assert body["drivers"]["connected"] == 1
    driver_v2.ws.close(1000)
    body = await overview_until(server, staff_token,
                                lambda body: body["connections"]["total"] == 0)
    assert body["connections"]["by_version"] == {} and body["drivers"]["connected"] == 0


async def test_internal_messages_are_no_frames_out(server: RunningServer) -> None:
    """`trip.follow` (to every process's follow listener) and `admin.close_user` (to the
    control listener) reach no client: neither /metrics' taxi_frames_out_total nor the
    overview's messages count them; the trip's own event is counted."""
    staff_token = await staff_of(server)
    rider, rider_token = await server.user("rita")
    before = await scrape(server.url)
    phone, _tablet = await server.connect(rider_token), await server.connect(rider_token)
    await phone.request({"type": "trip.request", "data": ADDRESSES})  # sends trip.follow
    status, _, _ = await server.fetch(f"/api/admin/user/{rider.id}/disconnect/", "POST", {},
                                      token=staff_token)
    assert status == 202 and await phone.closed() == 4000
    after = await scrape(server.url)
    assert moved(before, after, "taxi_frames_out_total", type="trip.updated") >= 1
    for internal in ("trip.follow", "admin.close_user"):
        assert moved(before, after, "taxi_frames_out_total", type=internal) == 0, internal
    body = await overview_until(server, staff_token, lambda body: True)
    assert "trip.follow" not in body["messages"]["out"]
    assert "admin.close_user" not in body["messages"]["out"]


async def test_overview_counts_error_frames_by_code(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    _, token = await server.user("rita")
    client = await server.connect(token)
    before = (await overview_until(server, staff_token, lambda body: True))["messages"]
    reply = await client.request({"type": "no.such.type"})
    assert reply["data"]["code"] == "unknown_type"
    after = (await overview_until(server, staff_token, lambda body: True))["messages"]
    assert after["errors"]["unknown_type"] == before["errors"].get("unknown_type", 0) + 1
    assert after["errors_per_s"]["unknown_type"] > 0


# --- finding users ---------------------------------------------------------------------

async def test_staff_find_users_by_the_start_of_their_name(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    rita, _ = await server.user("Rita")
    rick, _ = await server.user("rick", "driver")
    await server.user("bob")
    status, body, _ = await server.fetch("/api/admin/users/?q=RI", token=staff_token)
    assert status == 200
    assert body["more"] is False
    assert [(user["id"], user["username"], user["group"]) for user in body["users"]] == [
        (rick.id, "rick", "driver"), (rita.id, "Rita", "rider")]
    assert set(body["users"][0]) == {"id", "username", "first_name", "last_name", "group",
                                     "photo"}
    status, body, _ = await server.fetch("/api/admin/users?q=nobody", token=staff_token)
    assert (status, body) == (200, {"users": [], "more": False})


async def test_user_search_answers_a_bounded_list(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    for number in range(23):
        await server.store.create_user(f"user{number:02}", "hash", "rider")
    status, body, _ = await server.fetch("/api/admin/users/?q=user", token=staff_token)
    assert status == 200 and body["more"] is True
    assert [user["username"] for user in body["users"]] == [f"user{n:02}" for n in range(20)]
    status, body, _ = await server.fetch("/api/admin/users/?q=user2", token=staff_token)
    assert [user["username"] for user in body["users"]] == ["user20", "user21", "user22"]
    assert body["more"] is False


async def test_user_search_wants_a_name(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    for query in ("", "?q=", "?q=%20%20"):
        status, body, _ = await server.fetch(f"/api/admin/users/{query}", token=staff_token)
        assert (status, body) == (400, {"q": ["This field is required."]})
    status, body, _ = await server.fetch("/api/admin/users/?q=" + "a" * 151,
                                         token=staff_token)
    assert (status, body) == (400, {"q": ["Ensure this field has no more than 150 characters."]})
    status, body, _ = await server.fetch("/api/admin/users/?q=a")
    assert status == 401


# --- live: the admin group ------------------------------------------------------------

async def test_staff_socket_hears_every_trip_change(server: RunningServer) -> None:
    staff = await server.connect(await staff_of(server), v2=True)
    _, rider_token = await server.user("rita")
    _, driver_token = await server.user("dan", "driver")
    rider = await server.connect(rider_token)
    driver = await server.connect(driver_token, v2=True)
    trip = (await rider.request({"type": "trip.request", "data": ADDRESSES}))["data"]
    event = await next_of(staff, "admin.trip")
    assert event["data"]["id"] == trip["id"] and event["data"]["status"] == "REQUESTED"
    assert "pos" not in event  # live only (Hub.live_only): nothing to resume, nothing kept
    for status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
        await driver.send({"type": "trip.update", "data": {"id": trip["id"], "status": status}})
        event = await next_of(staff, "admin.trip")
        assert (event["data"]["id"], event["data"]["status"]) == (trip["id"], status)
        assert event["data"]["driver"]["username"] == "dan"


async def test_staff_socket_gets_stats_every_second(server: RunningServer) -> None:
    staff = await server.connect(await staff_of(server), v2=True)
    first = await next_of(staff, "admin.stats", timeout=3)
    # The operator's own socket is no connection of the service: it is counted apart.
    assert first["data"]["connections"] == {"total": 0, "by_version": {}, "staff": 1}
    assert first["data"]["nodes"][0]["connections"]["staff"] == 1
    _, driver_token = await server.user("dan", "driver")
    await server.connect(driver_token, v2=True)
    deadline = time.monotonic() + 3
    while True:
        stats = await next_of(staff, "admin.stats", timeout=3)
        if stats["data"]["drivers"]["connected"] == 1:
            break
        assert time.monotonic() < deadline, stats
    assert "pos" not in stats  # a direct push to this connection, not a group event


async def test_only_v2_staff_join_the_admin_group(server: RunningServer) -> None:
    _, rider_token = await server.user("rita")
    _, driver_token = await server.user("dan", "driver")
    staff_token = await staff_of(server)
    listeners = [await server.connect(rider_token, v2=True),
                 await server.connect(driver_token, v2=True),
                 await server.connect(staff_token)]  # staff on v1
    rider = await server.connect(rider_token)
    await rider.request({"type": "trip.request", "data": ADDRESSES})
    await server.hub.send("admin", {"type": "admin.note", "data": "from the hub API"})
    for client in listeners:
        await no_admin_event(client, wait=1.2)
    assert server.hub.members("admin") == 0


async def test_hub_api_can_publish_to_the_admin_group(tmp_path: Path, start: Any) -> None:
    server = await start(make_settings(tmp_path, hub={"api_key": "k"}))
    staff = await server.connect(await staff_of(server), v2=True)
    status, _, _ = await server.fetch("/api/hub/publish/", "POST", {
        "group": "admin", "message": {"type": "admin.note", "data": "shift change"}},
        headers={"Authorization": "Apikey k"})
    assert status == 202
    note = await next_of(staff, "admin.note")
    assert note["data"] == "shift change"


# --- actions --------------------------------------------------------------------------

async def test_staff_cancel_reaches_rider_drivers_and_staff(
    server: RunningServer, caplog: pytest.LogCaptureFixture,
) -> None:
    staff_token = await staff_of(server)
    staff = await server.connect(staff_token, v2=True)
    _, rider_token = await server.user("rita")
    _, driver_token = await server.user("dan", "driver")
    rider = await server.connect(rider_token)
    driver = await server.connect(driver_token, v2=True)
    trip = (await rider.request({"type": "trip.request", "data": ADDRESSES}))["data"]
    assert (await driver.receive())["data"]["status"] == "REQUESTED"
    assert (await next_of(staff, "admin.trip"))["data"]["status"] == "REQUESTED"
    caplog.set_level(logging.INFO, "taxi_tornado.admin")

    status, body, _ = await server.fetch(f"/api/admin/trip/{trip['id']}/cancel/", "POST",
                                         {}, token=staff_token)
    assert status == 200 and body["status"] == "CANCELED" and body["id"] == trip["id"]
    heard = await rider.receive()
    assert heard == {"type": "trip.updated", "data": body}
    pool = await driver.receive()  # the drivers' pool hears a REQUESTED trip is gone
    assert pool["data"]["status"] == "CANCELED"
    event = await next_of(staff, "admin.trip")
    assert event["data"]["status"] == "CANCELED"
    assert any("staff olga" in record.message and trip["id"] in record.message
               for record in caplog.records)

    status, body, _ = await server.fetch(f"/api/admin/trip/{trip['id']}/cancel/", "POST",
                                         {}, token=staff_token)
    assert (status, body["code"]) == (409, "invalid_transition")
    status, body, _ = await server.fetch("/api/admin/trip/nope/cancel/", "POST", {},
                                         token=staff_token)
    assert (status, body["code"]) == (404, "not_found")


async def test_staff_cancel_of_a_started_trip_tells_its_driver(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    rider, _ = await server.user("rita")
    driver, driver_token = await server.user("dan", "driver")
    trip = await server.store.create_trip(rider.id, "a", "b")
    await server.assign(trip.id, "STARTED", driver.id)
    driver_ws = await server.connect(driver_token)  # joins the trip's group on connect
    status, body, _ = await server.fetch(f"/api/admin/trip/{trip.id}/cancel/", "POST", {},
                                         token=staff_token)
    assert status == 200
    assert await driver_ws.receive() == {"type": "trip.updated", "data": body}


async def test_staff_closes_every_socket_of_a_user(
    server: RunningServer, caplog: pytest.LogCaptureFixture,
) -> None:
    staff_token = await staff_of(server)
    rider, rider_token = await server.user("rita")
    _, other_token = await server.user("rob")
    first, second = await server.connect(rider_token), await server.connect(rider_token, v2=True)
    other = await server.connect(other_token)
    caplog.set_level(logging.INFO, "taxi_tornado.admin")
    status, body, _ = await server.fetch(f"/api/admin/user/{rider.id}/disconnect/", "POST",
                                         {}, token=staff_token)
    assert (status, body) == (202, {"user": rider.id, "close_code": 4000})
    assert await first.closed() == 4000
    assert await second.closed() == 4000
    echo = {"type": "echo.message", "data": "still here"}
    assert await other.request(echo) == echo
    again = await server.connect(rider_token)  # they may reconnect at once
    assert await again.request(echo) == echo
    assert any("staff olga" in record.message and rider.id in record.message
               for record in caplog.records)
    status, body, _ = await server.fetch("/api/admin/user/nobody/disconnect/", "POST", {},
                                         token=staff_token)
    assert (status, body) == (404, {"detail": "Not found."})


async def test_admin_actions_refuse_other_methods(server: RunningServer) -> None:
    staff_token = await staff_of(server)
    status, _, _ = await server.fetch("/api/admin/", "POST", {}, token=staff_token)
    assert status == 405
    rider, _ = await server.user("rita")
    status, _, _ = await server.fetch(f"/api/admin/user/{rider.id}/disconnect/",
                                      token=staff_token)
    assert status == 405
