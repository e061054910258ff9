"""Message schemas: a type's `data` is checked against its JSON Schema before its handler
runs, senders and versions are refused before that, and a bad schema stops start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.plugins.api import PluginError, Registry
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.schemas import MAX_ERRORS, MAX_MESSAGE, compile_check
from tests.conftest import FakeDistributions, make_settings

# A plugin whose handler records every call in a list the test can read back.
FARES = """
    import builtins

    CALLS = builtins.__dict__.setdefault("fare_calls", [])
    QUOTE = {"type": "object", "required": ["km"],
             "properties": {"km": {"type": "number", "exclusiveMinimum": 0, "maximum": 500},
                            "note": {"type": "string", "maxLength": 5}}}

    async def quote(conn, data):
        CALLS.append(data)
        return {"type": "fare.quoted", "data": {"eur": 2 * data["km"]}}

    def setup(registry):
        registry.add_message_type("fare.quote", quote, schema=QUOTE, senders=("rider",),
                                  reply={"fare.quoted": {"type": "object"}})
        registry.add_message_type("fare.v2", quote, schema=QUOTE, min_version=2)
"""


@pytest.fixture
def fare_calls() -> list[Any]:
    import builtins

    calls: list[Any] = builtins.__dict__.setdefault("fare_calls", [])
    calls.clear()
    return calls


async def test_a_plugins_schema_rejects_bad_data_before_its_handler_runs(
    fake_plugins: FakeDistributions, fare_calls: list[Any], tmp_path: Path,
    start,  # type: ignore[no-untyped-def]
) -> None:
    fake_plugins.add("fares", FARES)
    running = await start(make_settings(tmp_path))
    _, token = await running.user("rider")
    client = await running.connect(token)
    reply = await client.request({"type": "fare.quote", "data": {"km": -1, "note": "longer"},
                                  "id": "q"})
    assert reply == {"type": "error", "id": "q", "data": {
        "code": "invalid", "detail": "The fare.quote data is not valid.", "for": "fare.quote",
        "errors": {"km": ["Must be more than 0."],
                   "note": ["Ensure this field has no more than 5 characters."]}}}
    reply = await client.request({"type": "fare.quote", "data": [1]})
    assert reply["data"]["errors"] == {"data": ["Expected an object."]}
    reply = await client.request({"type": "fare.quote", "data": {}})
    assert reply["data"]["errors"] == {"km": ["This field is required."]}
    assert fare_calls == []
    reply = await client.request({"type": "fare.quote", "data": {"km": 3}})
    assert reply == {"type": "fare.quoted", "data": {"eur": 6}}
    assert fare_calls == [{"km": 3}]


async def test_senders_and_versions_are_refused_before_the_data_is_looked_at(
    fake_plugins: FakeDistributions, fare_calls: list[Any], tmp_path: Path,
    start,  # type: ignore[no-untyped-def]
) -> None:
    fake_plugins.add("fares", FARES)
    running = await start(make_settings(tmp_path))
    _, token = await running.user("dora", "driver")
    v1 = await running.connect(token)
    reply = await v1.request({"type": "fare.quote", "data": "not even an object"})
    assert reply["data"]["code"] == "forbidden", reply
    reply = await v1.request({"type": "fare.v2", "data": "not even an object"})
    assert reply["data"]["code"] == "unknown_type", reply
    v2 = await running.connect(token, v2=True)
    reply = await v2.request({"type": "fare.v2", "data": {"km": 1}})
    assert reply["type"] == "fare.quoted", reply
    assert fare_calls == [{"km": 1}]


async def test_built_in_types_name_every_wrong_field_in_readable_words(
    server,  # type: ignore[no-untyped-def]
) -> None:
    _, token = await server.user("rider")
    rider = await server.connect(token)
    reply = await rider.request({"type": "trip.request", "data": {
        "pick_up_address": "   ", "drop_off_address": "x" * 256,
        "pick_up": {"lat": 91, "lng": "east"}, "drop_off": [1, 2]}})
    assert reply["data"]["errors"] == {
        "pick_up_address": ["This field may not be blank."],
        "drop_off_address": ["Ensure this field has no more than 255 characters."],
        "pick_up": ["lat: Must be at most 90.", "lng: Expected a number."],
        "drop_off": ["Expected an object or null."],
    }
    _, driver_token = await server.user("dora", "driver")
    driver = await server.connect(driver_token)
    reply = await driver.request({"type": "trip.update", "data": {"id": "x", "status": "GO"}})
    assert reply["data"]["errors"] == {"status": ['"GO" is not a valid choice.']}


@pytest.mark.parametrize("schema", [
    {"type": "objekt"},
    {"properties": {"km": {"minimum": "zero"}}},
    {"$ref": "#/$defs/missing"},
    ["not", "a", "schema"],
])
def test_a_schema_that_is_not_json_schema_stops_start_up_naming_the_plugin(
    schema: Any,
) -> None:
    registry = Registry(plugin="fares")
    with pytest.raises(PluginError) as caught:
        registry.add_message_type("fare.quote", _noop, schema=schema)
    message = str(caught.value)
    assert "'fares'" in message and "'fare.quote'" in message and "JSON Schema" in message


def test_reply_and_event_schemas_are_checked_too() -> None:
    registry = Registry(plugin="fares")
    with pytest.raises(PluginError, match="'fares'"):
        registry.add_message_type("fare.quote", _noop, reply={"fare.quoted": {"type": 7}})
    with pytest.raises(PluginError, match="'fares'"):
        registry.add_message_type("fare.quote", _noop, events={"fare.news": {"type": 7}})


def test_a_bad_schema_in_an_installed_plugin_stops_loading(
        fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("broken", """
        async def handler(conn, data):
            return None

        def setup(registry):
            registry.add_message_type("broken.type", handler, schema={"type": "objekt"})
    """)
    with pytest.raises(PluginError, match="'broken'"):
        load_plugins()


def test_a_schema_that_accepts_anything_costs_no_check() -> None:
    assert compile_check(None) is None
    assert compile_check({}) is None
    assert compile_check(True) is None
    check = compile_check({"type": "integer"})
    assert check is not None and check(3) is None and check("3") == {
        "data": ["Expected an integer."]}


async def test_a_resume_of_thousands_of_groups_is_refused_briefly(
    server,  # type: ignore[no-untyped-def]
) -> None:
    """A 64 KiB resume of empty positions once cost the loop seconds and answered 0.5 MB."""
    _, token = await server.user("rita")
    attacker = await server.connect(token, v2=True)
    bystander = await server.connect((await server.user("bob"))[1])
    positions = {f"{number:x}": {} for number in range(6900)}
    frame = json.dumps({"type": "session.resume", "id": "r", "data": {"positions": positions}},
                       separators=(",", ":"))
    assert len(frame) < server.settings.server.max_message_size
    for _ in range(3):
        await attacker.send(frame)
    answers = [await attacker.ws.read_message() for _ in range(3)]
    assert all(isinstance(text, str) and len(text) < 1000 for text in answers), answers
    assert json.loads(answers[0]) == {"type": "error", "id": "r", "data": {
        "code": "invalid", "detail": "The session.resume data is not valid.",
        "for": "session.resume",
        "errors": {"positions": ["Ensure this field has no more than 256 entries."]}}}
    echo = await bystander.request({"type": "echo.message", "data": 1})
    assert echo == {"type": "echo.message", "data": 1}
    few = {f"g{number}": {"offset": 0, "epoch": "e"} for number in range(256)}
    reply = await attacker.request({"type": "session.resume", "data": {"positions": few}})
    assert reply["type"] == "session.resumed", reply


def test_field_errors_are_few_and_short_whatever_the_data() -> None:
    check = compile_check({"type": "array", "items": {"enum": ["a", "b"]}})
    assert check is not None
    errors = check([{"note": "x" * 5000, "ok": True}] * 60)
    assert errors is not None and len(errors) == MAX_ERRORS
    assert errors["0"] == ['{"note":"' + "x" * (MAX_MESSAGE - 10) + "…"]
    assert all(len(message) <= MAX_MESSAGE for messages in errors.values()
               for message in messages)
    assert check([None]) == {"0": ["null is not a valid choice."]}


def test_large_invalid_data_gets_its_first_error_only() -> None:
    check = compile_check({"type": "object", "additionalProperties": {
        "type": "object", "required": ["a", "b"]}})
    assert check is not None
    assert check({f"k{number}": {} for number in range(5000)}) == {
        "k0": ["a: This field is required."]}
    assert check({"k0": {}, "k1": {}}) == {"k0": ["a: This field is required.",
                                                  "b: This field is required."],
                                           "k1": ["a: This field is required.",
                                                  "b: This field is required."]}


async def _noop(conn: Any, data: Any) -> None:
    return None
