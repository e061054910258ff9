"""How a plugin author tests a plugin: a real server in the test's loop, real sockets.

Only taxi_tornado's public API is used: Settings, Server, the store and the tokens.
Run with `pytest` (pytest-asyncio in auto mode) after `pip install -e .`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from taxi_tornado.app import Server
from taxi_tornado.settings import Settings, replace


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = replace(Settings(), data_dir=tmp_path, server={"port": 0},  # type: ignore[arg-type]
                       auth={"secret_key": "a-test-secret-of-at-least-32-bytes!!"})
    server = Server(settings)
    await server.start()
    yield server
    await server.stop()


async def connect(
    server: Server, username: str, group: str
) -> tuple[str, WebSocketClientConnection]:
    services = server.services
    user = await services.store.create_user(username, password_hash="unused", group=group)
    token = services.tokens.issue_access(user, "http://test")
    url = f"ws://127.0.0.1:{server.port}/taxi/?token={token}"
    return user.id, await websocket_connect(url, subprotocols=["taxi.v2"])


async def ask(ws: WebSocketClientConnection, message: dict[str, object]) -> dict[str, object]:
    await ws.write_message(json.dumps(message))
    reply: dict[str, object] = json.loads(await ws.read_message() or "null")
    return reply


async def test_driver_hears_the_riders_sos(server: Server) -> None:
    rider_id, rider = await connect(server, "rita", "rider")
    _, driver = await connect(server, "dave", "driver")
    trip = (await ask(rider, {"type": "trip.request", "data": {
        "pick_up_address": "Station", "drop_off_address": "Airport"}}))["data"]
    assert isinstance(trip, dict)
    await driver.read_message()  # the new trip, sent to the drivers' pool
    await ask(driver, {"type": "trip.update", "data": {"id": trip["id"], "status": "STARTED"}})
    await rider.read_message()  # the rider sees the trip start

    reply = await ask(rider, {"type": "sos.alert", "data": {"trip": trip["id"], "note": "lost"}})

    assert reply == {"type": "sos.sent", "data": {"trip": trip["id"]}}
    alert = json.loads(await driver.read_message() or "null")
    assert alert.pop("pos")["group"] == trip["id"]  # a v2 event: its place in the trip's group
    assert alert == {"type": "sos.alert",
                     "data": {"trip": trip["id"], "from": rider_id, "note": "lost"}}


async def test_sos_about_someone_elses_trip_is_not_found(server: Server) -> None:
    _, stranger = await connect(server, "sam", "rider")
    reply = await ask(stranger, {"type": "sos.alert", "data": {"trip": "no-such-trip"}})
    assert reply["type"] == "error"
    assert isinstance(reply["data"], dict) and reply["data"]["code"] == "not_found"
