"""Property-based fuzzing of a live socket: arbitrary frames and envelopes.

Every example is sent by a rider or a driver, followed by an echo with a unique id as a
barrier: the frames that arrive before the barrier's reply are the answers to the fuzzed
frame, and there must be exactly one, a reply or an error frame. The one exception is a
driver's valid `driver.location`, which has no reply (for a rider it is `forbidden`).
Meanwhile a second client's echo must keep working, and no frame may ever cause an
`internal` error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taxi_tornado.settings import replace
from tests.conftest import Client, RunningServer, make_settings, start_server

ERROR_CODES = {"invalid_json", "invalid_message", "unknown_type", "invalid", "forbidden",
               "not_found", "conflict", "invalid_transition"}
KNOWN_TYPES = ["echo.message", "trip.request", "create.trip", "trip.update", "update.trip",
               "trip.cancel", "driver.location", "sos.alert"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
trip_fields = st.fixed_dictionaries({}, optional={
    "id": st.uuids().map(str) | json_values,
    "status": st.sampled_from(["REQUESTED", "STARTED", "IN_PROGRESS", "COMPLETED",
                               "CANCELED", "nope"]) | json_values,
    "pick_up_address": st.text(max_size=300) | json_values,
    "drop_off_address": st.text(max_size=300) | json_values,
    "rider": json_values, "driver": json_values,
    "lat": st.floats() | json_values, "lng": st.floats() | json_values,
})
envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(KNOWN_TYPES) | st.text(max_size=80) | json_values},
    optional={
        "data": trip_fields | json_values,
        "id": st.integers() | st.text(max_size=20) | json_values,
        "extra": json_values,
    },
)
addresses = st.text(min_size=1, max_size=255).filter(str.strip)
valid_envelopes = st.one_of(
    st.builds(lambda a, b: {"type": "trip.request",
                            "data": {"pick_up_address": a, "drop_off_address": b}},
              addresses, addresses),
    st.builds(lambda lat, lng: {"type": "driver.location", "data": {"lat": lat, "lng": lng}},
              st.floats(-90, 90), st.floats(-180, 180)),
    st.builds(lambda data: {"type": "echo.message", "data": data}, json_values),
).flatmap(lambda envelope: st.sampled_from([envelope, {**envelope, "id": 7}]))
frames = (
    valid_envelopes.map(json.dumps)
    | envelopes.map(json.dumps)
    | json_values.map(json.dumps)  # valid JSON that is not an envelope
    | st.text(max_size=200)  # mostly not JSON at all
    | st.binary(max_size=200)  # binary frames
    | st.lists(st.sampled_from('{}[]":,1a '), max_size=80).map("".join)  # JSON-ish junk
)


@dataclass
class Fuzzing:
    server: RunningServer
    fuzzers: dict[str, Client]
    bystander: Client
    examples: int = 0


@pytest.fixture
async def fuzzing(tmp_path: Path) -> AsyncIterator[Fuzzing]:
    # The rate limit would drop frames silently (after one error a streak): lift it.
    server = await start_server(replace(make_settings(tmp_path),
                                        limits={"rate": 1e6, "burst": 1_000_000}))
    _, rider_token = await server.user("rider")
    _, driver_token = await server.user("driver", "driver")
    _, other_token = await server.user("bystander", "driver")
    fuzzers = {"rider": await server.connect(rider_token, v2=True),
               "driver": await server.connect(driver_token, v2=True)}
    fuzzing = Fuzzing(server, fuzzers, await server.connect(other_token, v2=True))
    yield fuzzing
    for client in (*fuzzers.values(), fuzzing.bystander):
        client.ws.close(1000)
    await server.server.stop()


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(frame=frames)
@pytest.mark.parametrize("role", ["rider", "driver"])
async def test_every_frame_gets_one_answer_and_nothing_breaks(
    fuzzing: Fuzzing, role: str, frame: str | bytes
) -> None:
    fuzzing.examples += 1
    barrier = f"barrier-{fuzzing.examples}"
    fuzzer = fuzzing.fuzzers[role]
    await fuzzer.ws.write_message(frame, binary=isinstance(frame, bytes))
    await fuzzer.send({"type": "echo.message", "data": barrier, "id": barrier})
    answers = await frames_until(fuzzer, barrier)
    if role == "driver" and _type_of(frame) == "driver.location":
        assert len(answers) <= 1, f"{frame!r} got {answers}"
    else:
        assert len(answers) == 1, f"{frame!r} got {answers}"
    for answer in answers:
        check_answer(frame, answer)
    # The bystander (a driver, so it also hears new trips) still gets its echo.
    await fuzzing.bystander.send({"type": "echo.message", "data": barrier, "id": barrier})
    await frames_until(fuzzing.bystander, barrier)


async def frames_until(client: Client, barrier: str) -> list[Any]:
    """The frames received before the reply to the barrier echo."""
    received: list[Any] = []
    while True:
        frame = await client.receive()
        if frame.get("id") == barrier and frame.get("data") == barrier:
            return received
        received.append(frame)


def check_answer(frame: str | bytes, answer: Any) -> None:
    assert isinstance(answer, dict) and isinstance(answer.get("type"), str), answer
    sent_id = _valid_id(frame)
    if sent_id is not None:
        assert answer.get("id") == sent_id, (frame, answer)
    if answer["type"] != "error":
        return
    data = answer["data"]
    assert data["code"] in ERROR_CODES, (frame, answer)  # never `internal`
    assert isinstance(data["detail"], str) and data["detail"]
    assert isinstance(data["errors"], dict)


def _type_of(frame: str | bytes) -> Any:
    try:
        envelope = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    return envelope.get("type") if isinstance(envelope, dict) else None


def _valid_id(frame: str | bytes) -> Any:
    """The frame's `id` when the server must echo it (a valid envelope with a valid id)."""
    try:
        envelope = orjson.loads(frame)  # the server's parser: no Infinity, no NaN
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict):
        return None
    frame_id = envelope.get("id")
    if isinstance(frame_id, bool) or not isinstance(frame_id, str | int):
        return None
    if isinstance(frame_id, int) and not -(2**63) <= frame_id < 2**64:
        return None  # orjson reads integers beyond 64 bits as floats: not a valid id
    message_type = envelope.get("type")
    if not isinstance(message_type, str) or not message_type or len(message_type) > 64:
        return None
    return frame_id

