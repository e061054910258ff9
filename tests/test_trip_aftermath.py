"""Once a trip change is stored it has happened: a failure of what follows it (the hub
gone between the store and the follow) is logged, and the sender gets the trip, never
`internal`, which would free the key and let the phone's retry make a second trip.

The failures are a monkeypatched step in the in-process server: a Redis cannot be made
to fail at exactly that point otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taxi_tornado.plugins import trips as trips_plugin
from tests.conftest import RunningServer

ADDRESSES = {"pick_up_address": "1 Main St", "drop_off_address": "2 Oak Ave"}


async def _fails(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("the hub went away")


async def test_a_request_whose_follow_fails_answers_the_trip_and_makes_one(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(trips_plugin, "follow", _fails)
    monkeypatch.setattr(trips_plugin, "_tell_staff", _fails)  # a step in the middle too
    rider, token = await server.user("rider")
    _, driver_token = await server.user("dora", "driver")
    driver = await server.connect(driver_token)
    client = await server.connect(token, v2=True)
    frame = {"type": "trip.request", "data": ADDRESSES, "key": "trip-1"}
    first = await client.request({**frame, "id": 1})
    assert first["type"] == "trip.updated", first
    trip_id = first["data"]["id"]
    heard = await driver.receive()  # dispatch ran, after the failing step before it
    assert heard["data"]["id"] == trip_id
    again = await client.request({**frame, "id": 2})
    assert again == {**first, "id": 2}
    assert [trip.id for trip in await server.store.list_trips(rider)] == [trip_id]
    failures = [record for record in caplog.records
                if record.levelno == logging.ERROR and trip_id in record.getMessage()]
    assert len(failures) == 2, caplog.text


async def test_a_claim_and_a_cancel_whose_events_fail_answer_the_trip(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rider, token = await server.user("rider")
    _, driver_token = await server.user("dora", "driver")
    client = await server.connect(token, v2=True)
    driver = await server.connect(driver_token, v2=True)
    requested = await client.request({"type": "trip.request", "data": ADDRESSES})
    trip_id = requested["data"]["id"]
    await driver.receive()
    monkeypatch.setattr(trips_plugin, "follow", _fails)
    monkeypatch.setattr(trips_plugin, "unfollow", _fails)
    claim = {"type": "trip.update", "data": {"id": trip_id, "status": "STARTED"},
             "key": "claim-1"}
    claimed = await driver.request(claim)
    assert claimed["type"] == "trip.updated" and claimed["data"]["status"] == "STARTED"
    assert await driver.request(claim) == claimed
    cancel = {"type": "trip.cancel", "data": {"id": trip_id}, "key": "cancel-1"}
    await client.receive()  # the claim's event
    canceled = await client.request(cancel)
    assert canceled["type"] == "trip.updated" and canceled["data"]["status"] == "CANCELED"
    assert await client.request(cancel) == canceled
    trips = await server.store.list_trips(rider)
    assert [(trip.id, trip.status.value) for trip in trips] == [(trip_id, "CANCELED")]
