"""The course's React client, call for call (client/src/services and components).

It signs up with FormData, logs in with JSON, decodes the access token with atob(), opens
ws://…/taxi/?token=… without a subprotocol, sends create.trip / update.trip (the whole
trip from GET /api/trip/:id/ with the driver's id), and treats every frame it receives
as a trip. This test does the same with an independent client library (websockets).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
import websockets

from tests.conftest import PASSWORD, RunningServer, make_settings
from tests.test_http_api import PNG, multipart

ORIGIN = "http://localhost:3001"
# The Trip object as amended for dispatch (PROTOCOL.md): the course's client ignores the
# positions, which its trips carry as null.
TRIP_KEYS = {"id", "created", "updated", "pick_up_address", "drop_off_address", "status",
             "rider", "driver", "pick_up", "drop_off"}


def atob_payload(token: str) -> dict[str, Any]:
    """window.atob: standard base64 only; '-' and '_' are errors."""
    payload = token.split(".")[1]
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except binascii.Error as error:
        raise AssertionError(f"atob() would throw on {payload!r}") from error
    claims: dict[str, Any] = json.loads(raw)
    return claims


async def sign_up_and_log_in(server: RunningServer, username: str, group: str,
                             first_name: str) -> tuple[dict[str, Any], str]:
    fields = {"username": username, "first_name": first_name, "last_name": "Tester",
              "password1": PASSWORD, "password2": PASSWORD, "group": group}
    body, content_type = multipart(fields, {"photo": ("me.png", PNG, "image/png")})
    status, _, _ = await server.fetch("/api/sign_up/", "POST", raw_body=body,
                                      headers={"Content-Type": content_type, "Origin": ORIGIN})
    assert status == 201
    status, tokens, response = await server.fetch(
        "/api/log_in/", "POST", body={"username": username, "password": PASSWORD},
        headers={"Origin": ORIGIN})
    assert status == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    return atob_payload(tokens["access"]), tokens["access"]


def assert_trip_frame(frame: str | bytes) -> dict[str, Any]:
    message = json.loads(frame)
    assert message["type"] == "trip.updated", message
    assert set(message["data"]) == TRIP_KEYS
    trip: dict[str, Any] = message["data"]
    return trip


@pytest.mark.parametrize("mode", ["broadcast", "nearest"])
async def test_course_client_flow(tmp_path, start, mode) -> None:  # type: ignore[no-untyped-def]
    server = await start(make_settings(tmp_path, server={"port": 0,
                                                         "allowed_origins": (ORIGIN,)},
                                       dispatch={"mode": mode}))
    rider, rider_token = await sign_up_and_log_in(server, "rider@example.com", "rider",
                                                  "Why? -> ~Ann~")
    driver, driver_token = await sign_up_and_log_in(server, "driver@example.com", "driver",
                                                    "Dan>>?")
    assert rider["group"] == "rider" and driver["group"] == "driver"
    assert rider["first_name"] == "Why? -> ~Ann~"
    assert rider["photo"].startswith(server.url + "/media/photos/")

    url = server.ws_url
    async with websockets.connect(f"{url}?token={rider_token}", origin=ORIGIN) as rider_ws, \
            websockets.connect(f"{url}?token={driver_token}", origin=ORIGIN) as driver_ws:
        await rider_ws.send(json.dumps({"type": "create.trip", "data": {
            "pick_up_address": "1 Main St", "drop_off_address": "2 Oak Ave",
            "rider": rider["id"]}}))
        trip = assert_trip_frame(await rider_ws.recv())
        assert assert_trip_frame(await driver_ws.recv())["id"] == trip["id"]

        status, listed, _ = await server.fetch("/api/trip/", token=driver_token)
        assert status == 200 and [t["id"] for t in listed] == [trip["id"]]
        status, detail, _ = await server.fetch(f"/api/trip/{trip['id']}/", token=driver_token)
        assert status == 200
        for new_status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
            await driver_ws.send(json.dumps({"type": "update.trip", "data": {
                **detail, "status": new_status, "driver": driver["id"],
                "rider": rider["id"]}}))
            detail = assert_trip_frame(await driver_ws.recv())
            assert detail["status"] == new_status
            assert detail["driver"]["id"] == driver["id"]
            seen = assert_trip_frame(await rider_ws.recv())
            assert seen == detail

    status, listed, _ = await server.fetch("/api/trip/", token=rider_token)
    assert listed[0]["status"] == "COMPLETED"
    assert listed[0]["driver"]["first_name"] == "Dan>>?"
