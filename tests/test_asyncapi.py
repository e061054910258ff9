"""GET /api/asyncapi.json: the registry as an AsyncAPI 3.0 document, valid against the
official schema, printed alike by `taxi-tornado asyncapi`, and the message table of
docs/protocol.md generated from it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from taxi_tornado.asyncapi import build_document, message_table, table_in
from taxi_tornado.plugins.api import Registry
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.settings import Settings
from tests.conftest import ROOT, RunningServer

OFFICIAL_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.json"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def asyncapi_validator() -> Any:
    return jsonschema_rs.validator_for(json.loads(OFFICIAL_SCHEMA.read_text()))


def assert_valid(validator: Any, document: Any) -> None:
    errors = [f"{list(error.instance_path)}: {error.message[:300]}"
              for error in validator.iter_errors(document)]
    assert not errors, "\n".join(errors[:5])


async def test_the_served_document_is_valid_asyncapi_3(
        server: RunningServer, asyncapi_validator: Any) -> None:
    status, document, _ = await server.fetch("/api/asyncapi.json")
    assert status == 200
    assert_valid(asyncapi_validator, document)
    assert not asyncapi_validator.is_valid({**document, "asyncapi": "2.6.0"})  # it judges
    messages = document["components"]["messages"]
    request = messages["client.trip.request"]
    assert request["x-taxi-senders"] == ["rider"] and request["x-taxi-keyed"] is True
    assert request["payload"]["properties"]["data"]["required"] == [
        "pick_up_address", "drop_off_address"]
    assert messages["client.session.resume"]["x-taxi-versions"] == [2]
    assert messages["server.trip.updated"]["x-taxi-versions"] == [1, 2]
    assert messages["server.trip.offer"]["x-taxi-versions"] == [2]
    assert document["components"]["schemas"]["Trip"]["properties"]["status"]["enum"][0] == (
        "REQUESTED")
    assert set(messages["server.error"]["x-taxi-error-codes"]) >= {
        "invalid", "key_reused", "in_progress", "internal"}
    assert "4001" in document["channels"]["taxi"]["x-taxi-close-codes"]
    operation = document["operations"]["client.trip.request"]
    assert operation["action"] == "receive"
    assert {ref["$ref"] for ref in operation["reply"]["messages"]} == {
        "#/components/messages/server.trip.updated", "#/components/messages/server.error"}


@pytest.mark.skipif(not any(dist.metadata["Name"] == "taxi-plugin-sos"
                            for dist in importlib.metadata.distributions()),
                    reason="the SOS example plugin is not installed")
async def test_an_installed_plugins_types_are_listed(
        server: RunningServer, asyncapi_validator: Any) -> None:
    _, document, _ = await server.fetch("/api/asyncapi.json")
    messages = document["components"]["messages"]
    ack = messages["client.sos.ack"]
    assert ack["x-taxi-plugin"] == "sos" and ack["x-taxi-senders"] == ["staff"]
    assert ack["payload"]["properties"]["data"]["required"] == ["trip"]
    assert messages["server.sos.alert"]["x-taxi-versions"] == [2]  # a new event: v2 only
    assert "server.sos.acknowledged" in messages
    assert "client.sos.alert" in document["channels"]["taxi"]["messages"]


def test_a_plugins_declarations_make_a_valid_document(asyncapi_validator: Any) -> None:
    registry = Registry(plugin="fares")
    quote = {"type": "object", "required": ["km"], "title": "Quote",
             "properties": {"km": {"type": "number"}}}
    registry.add_message_type("fare.quote", _noop, schema=quote, senders=("rider",),
                              min_version=2, keyed=True, aliases=("fare.ask",),
                              reply={"fare.quoted": {"type": "number"}},
                              events={"fare.news": {"type": "string"}})
    registry.add_message_type("fare.any", _noop)
    document = build_document(registry, Settings())
    assert_valid(asyncapi_validator, document)
    messages = document["components"]["messages"]
    assert messages["client.fare.ask"]["x-taxi-alias-of"] == "fare.quote"
    assert messages["client.fare.quote"]["payload"]["properties"]["data"] == {
        "$ref": "#/components/schemas/Quote"}
    assert "key" in messages["client.fare.quote"]["payload"]["properties"]
    assert "key" not in messages["client.fare.any"]["payload"]["properties"]
    assert messages["client.fare.any"]["payload"]["properties"]["data"] == {}
    assert document["operations"]["server.fare.news"]["x-taxi-after"] == ["fare.quote"]


def test_the_cli_prints_the_served_document(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    printed = subprocess.run([sys.executable, "-m", "taxi_tornado", "asyncapi"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    registry, _ = load_plugins()
    assert json.loads(printed.stdout) == json.loads(json.dumps(
        build_document(registry, Settings())))


def test_the_protocol_docs_table_is_current() -> None:
    registry, plugins = load_plugins()
    built_in = [plugin.name for plugin in plugins if plugin.distribution == "taxi-tornado"]
    expected = message_table(build_document(registry, Settings()), built_in)
    assert table_in(PROTOCOL_DOC) == expected, (
        "docs/protocol.md's message table is stale: run "
        "`taxi-tornado asyncapi --update-docs docs/protocol.md`")


def test_update_docs_rewrites_a_stale_table(tmp_path: Path) -> None:
    doc = tmp_path / "protocol.md"
    shutil.copy(PROTOCOL_DOC, doc)
    doc.write_text(doc.read_text().replace("| `echo.message` |", "| `echo.massage` |"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    command = [sys.executable, "-m", "taxi_tornado", "asyncapi", "--update-docs", str(doc)]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0 and "table updated" in first.stdout, first.stderr
    assert doc.read_text() == PROTOCOL_DOC.read_text()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
    assert "table up to date" in again.stdout


async def _noop(conn: Any, data: Any) -> None:
    return None
