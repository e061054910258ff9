"""Property-based fuzzing of a live socket: arbitrary frames and envelopes.

Every example is sent by a rider or a driver, followed by an echo with a unique id as a
barrier: the frames that arrive before the barrier's reply are the answers to the fuzzed
frame, and there must be exactly one, a reply or an error frame. The one exception is a
driver's valid `driver.location`, which has no reply (for a rider it is `forbidden`).
Meanwhile a second client's echo must keep working, and no frame may ever cause an
`internal` error.

Random envelopes almost never put a wrongly typed value in a field a handler reads, so
the second half sends, for every field of every built-in type (aliases too), values of
every JSON type in otherwise valid frames, and checks the exact documented answer.
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
from taxi_tornado.store import TripStatus
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
    user_ids: dict[str, str]
    examples: int = 0


@pytest.fixture
async def fuzzing(tmp_path: Path) -> AsyncIterator[Fuzzing]:
    # The rate limit would drop frames silently (after one error a streak), and the
    # fuzzing rider requests far more trips than limits.trips_per_rider and
    # limits.trip_requests allow: lift all three.
    server = await start_server(replace(make_settings(tmp_path), limits={
        "rate": 1e6, "burst": 1_000_000, "trips_per_rider": 0, "trip_requests": 0}))
    rider, rider_token = await server.user("rider")
    driver, driver_token = await server.user("driver", "driver")
    _, other_token = await server.user("bystander", "driver")
    fuzzers = {"rider": await server.connect(rider_token, v2=True),
               "driver": await server.connect(driver_token, v2=True)}
    fuzzing = Fuzzing(server, fuzzers, await server.connect(other_token, v2=True),
                      {"rider": rider.id, "driver": driver.id})
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



# --- every JSON type in every field of every built-in type ----------------------------------
#
# One field of an otherwise valid frame (or its whole `data`) gets a value of any JSON type.
# The frames of a batch go out back to back, each with its own id, then a barrier echo;
# each must get exactly the answer PROTOCOL.md gives for the data the server parsed, down
# to the fields an `invalid` error names (a valid `driver.location` gets none).

OWN_ID = "<the sender's id>"  # sentinels, replaced when a frame is built
FRESH_TRIP = "<a fresh trip's id>"
STATUSES = [status.value for status in TripStatus]
ROLES = {"trip.request": "rider", "create.trip": "rider", "trip.cancel": "rider",
         "trip.update": "driver", "update.trip": "driver", "driver.location": "driver",
         "echo.message": "rider"}
CANONICAL = {"create.trip": "trip.request", "update.trip": "trip.update"}
VALID_DATA: dict[str, dict[str, Any]] = {
    "trip.request": {"pick_up_address": "1 Main St", "drop_off_address": "2 Oak Ave"},
    "trip.update": {"id": FRESH_TRIP, "status": "STARTED"},
    "trip.cancel": {"id": FRESH_TRIP},
    "driver.location": {"lat": 52.5, "lng": 13.4},
}
FIELDS = {
    "trip.request": ["pick_up_address", "drop_off_address", "rider", "data"],
    "trip.update": ["id", "status", "driver", "data"],
    "trip.cancel": ["id", "data"],
    "driver.location": ["lat", "lng", "heading", "speed", "data"],
    "echo.message": ["data"],
}
CASES = [(kind, field) for kind in ROLES for field in FIELDS[CANONICAL.get(kind, kind)]]
EDGE_VALUES: list[Any] = [
    None, True, False, 0, -1, 7, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
    10**30, 0.0, -0.0, 1.5, -90.000001, 180.5, 1e-300, 1e308, -1e308,
    "", " \t\n", "x" * 255, "x" * 256, "x" * 20_000, "🚕 Ünïcödé 中文 \u202e\u0000\u2028 ",
    *STATUSES, "started", OWN_ID, FRESH_TRIP, "00000000-0000-4000-8000-000000000000",
    [], [None], [1, "two", [3.0]], {}, {"id": FRESH_TRIP}, {"lat": 1, "lng": 2},
    {"a": {"b": {"c": [None, True, {"d": -0.5}]}}}, [[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]],
]
scalars = (
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=300)
    | st.sampled_from([*STATUSES, "", " ", OWN_ID, FRESH_TRIP])
)
any_json = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _is_address(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= 255


def _number_in(low: float, high: float, *, optional: bool = False) -> Any:
    def valid(value: Any) -> bool:
        if value is None:
            return optional
        return (not isinstance(value, bool) and isinstance(value, int | float)
                and low <= value <= high)
    return valid


def field_errors(kind: str, data: Any, own_id: str) -> set[str]:
    """The fields PROTOCOL.md's table says are wrong in the `data` of a `kind` frame."""
    if kind == "echo.message":
        return set()
    if not isinstance(data, dict):
        return {"data"}
    def own_or_absent(value: Any) -> bool:
        return value is None or value == own_id

    def trip_id(value: Any) -> bool:
        return isinstance(value, str) and value != ""

    checks: dict[str, Any] = {
        "trip.request": {"pick_up_address": _is_address, "drop_off_address": _is_address,
                         "rider": own_or_absent},
        "trip.update": {"id": trip_id, "status": lambda value: value in STATUSES,
                        "driver": own_or_absent},
        "trip.cancel": {"id": trip_id},
        "driver.location": {"lat": _number_in(-90, 90), "lng": _number_in(-180, 180),
                            "heading": _number_in(0, 360, optional=True),
                            "speed": _number_in(0, 1000, optional=True)},
    }[kind]
    return {name for name, valid in checks.items() if not valid(data.get(name))}


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def expected_answer(kind: str, envelope: dict[str, Any], own_id: str,
                    trip_id: str | None) -> tuple[str, Any] | None:
    """("error", code or (code, fields)), ("trip.updated", status), ("echo", data) or None."""
    if _depth(envelope) > 32:
        return ("error", "invalid_message")
    canonical = CANONICAL.get(kind, kind)
    data = envelope["data"]
    errors = field_errors(canonical, data, own_id)
    if errors:
        return ("error", ("invalid", errors))
    if canonical == "echo.message":
        return ("echo", data)
    if canonical == "driver.location":
        return None
    if canonical == "trip.request":
        return ("trip.updated", "REQUESTED")
    status = data.get("status", "CANCELED")  # trip.cancel has none: it cancels
    if canonical == "trip.update" and status == "CANCELED":
        return ("error", "forbidden")
    if data["id"] != trip_id:
        return ("error", "not_found")
    if status == "REQUESTED":
        return ("error", "invalid_transition")
    return ("trip.updated", status)


def check_expected(answer: dict[str, Any], expected: tuple[str, Any], kind: str,
                   trip_id: str | None) -> None:
    what, detail = expected
    if what == "echo":
        assert answer["type"] == "echo.message" and answer["data"] == detail, answer
    elif what == "trip.updated":
        assert answer["type"] == "trip.updated", answer
        assert answer["data"]["status"] == detail, answer
        assert trip_id is None or answer["data"]["id"] == trip_id, answer
    else:
        code, fields = detail if isinstance(detail, tuple) else (detail, None)
        assert answer["type"] == "error", answer
        assert answer["data"]["code"] == code, answer  # so never `internal`
        assert isinstance(answer["data"]["detail"], str) and answer["data"]["detail"]
        if fields is not None:
            assert set(answer["data"]["errors"]) == fields, answer
            assert answer["data"]["for"] == kind, answer


def build_data(kind: str, field: str, value: Any, own_id: str, trip_id: str | None) -> Any:
    """The valid data of a `kind` frame with `field` set to `value` (sentinels replaced)."""
    replacements = {OWN_ID: own_id, **({FRESH_TRIP: trip_id} if trip_id else {})}

    def real(item: Any) -> Any:
        return replacements.get(item, item) if isinstance(item, str) else item

    if field == "data":
        return {k: real(v) for k, v in value.items()} if isinstance(value, dict) else real(value)
    valid = VALID_DATA[CANONICAL.get(kind, kind)]
    return {**{k: real(v) for k, v in valid.items()}, field: real(value)}


async def fuzz_field(fuzzing: Fuzzing, kind: str, field: str, values: list[Any]) -> None:
    """Send one frame per value, back to back, and check every answer by its id."""
    role = ROLES[kind]
    client, own_id = fuzzing.fuzzers[role], fuzzing.user_ids[role]
    sent: list[tuple[str, str, str | None, tuple[str, Any] | None]] = []
    for value in values:
        fuzzing.examples += 1
        frame_id = f"fuzz-{fuzzing.examples}"
        trip_id = None
        if CANONICAL.get(kind, kind) in ("trip.update", "trip.cancel"):
            trip = await fuzzing.server.store.create_trip(fuzzing.user_ids["rider"], "A", "B")
            trip_id = trip.id
        envelope = {"type": kind, "data": build_data(kind, field, value, own_id, trip_id),
                    "id": frame_id}
        text = json.dumps(envelope, ensure_ascii=False)
        parsed = orjson.loads(text)  # what the server reads: huge integers become floats
        sent.append((frame_id, text, trip_id, expected_answer(kind, parsed, own_id, trip_id)))
        await client.ws.write_message(text)
    barrier = f"barrier-{fuzzing.examples}"
    await client.send({"type": "echo.message", "data": barrier, "id": barrier})
    received = await frames_until(client, barrier)
    answers: dict[str, list[Any]] = {}
    for frame in received:
        if "id" in frame:  # events to a group never carry one
            answers.setdefault(frame["id"], []).append(frame)
    assert set(answers) <= {frame_id for frame_id, *_ in sent}, answers
    for frame_id, text, trip_id, expected in sent:
        got = answers.get(frame_id, [])
        assert len(got) == (0 if expected is None else 1), (text[:500], got)
        if expected is not None:
            try:
                check_expected(got[0], expected, kind, trip_id)
            except AssertionError as error:
                raise AssertionError(f"{text[:500]} -> {error}") from None
    assert client.ws.close_code is None
    await fuzzing.bystander.send({"type": "echo.message", "data": barrier, "id": barrier})
    await frames_until(fuzzing.bystander, barrier)


@pytest.mark.parametrize(("kind", "field"), CASES)
async def test_every_json_type_in_a_known_field_gets_the_documented_answer(
    fuzzing: Fuzzing, kind: str, field: str
) -> None:
    await fuzz_field(fuzzing, kind, field, EDGE_VALUES)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), values=st.lists(any_json, min_size=1, max_size=8))
async def test_random_values_in_known_fields_get_the_documented_answer(
    fuzzing: Fuzzing, case: tuple[str, str], values: list[Any]
) -> None:
    await fuzz_field(fuzzing, *case, values)
