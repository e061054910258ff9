"""Plugins found through real entry points: loading, conflicts, failures, the example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taxi_tornado.plugins.api import PluginError
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.settings import replace
from tests.conftest import FakeDistributions, RunningServer, make_settings

SHOUT = """
    async def shout(conn, data):
        return {"type": "shout.reply", "data": str(data).upper()}

    def setup(registry):
        registry.add_message_type("shout", shout, aliases=("yell",))
"""


def test_builtins_load_through_entry_points() -> None:
    registry, plugins = load_plugins()
    names = {plugin.name: plugin for plugin in plugins}
    assert names["echo"].types == ("echo.message",)
    assert set(names["trips"].types) == {"trip.request", "create.trip", "trip.update",
                                          "update.trip", "trip.cancel", "trip.decline",
                                          "driver.location"}
    assert names["dispatch"].types == ("driver.status",)
    assert registry.types["create.trip"].alias_of == "trip.request"
    assert {name: entry.plugin for name, entry in registry.dispatch_strategies.items()} == {
        "broadcast": "dispatch", "nearest": "dispatch"}


def test_two_plugins_registering_one_dispatch_strategy_name_both(
        fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("rival", """
        def setup(registry):
            registry.add_dispatch_strategy("nearest", lambda context: None)
    """)
    with pytest.raises(PluginError) as caught:
        load_plugins()
    message = str(caught.value)
    assert "'dispatch'" in message and "'rival'" in message and "'nearest'" in message


def test_two_plugins_claiming_one_type_name_both(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("copycat", """
        async def handler(conn, data):
            return None

        def setup(registry):
            registry.add_message_type("echo.message", handler)
    """)
    with pytest.raises(PluginError) as caught:
        load_plugins()
    assert "'copycat'" in str(caught.value) and "'echo'" in str(caught.value)
    assert "echo.message" in str(caught.value)


def test_override_replaces_a_type_on_purpose(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("zecho", """
        async def handler(conn, data):
            return None

        def setup(registry):
            registry.add_message_type("echo.message", handler, override=True)
    """)
    registry, _ = load_plugins()
    assert registry.types["echo.message"].plugin == "zecho"


def test_plugin_that_fails_to_import_is_named(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("broken", "import no_such_module_anywhere\n")
    with pytest.raises(PluginError) as caught:
        load_plugins()
    message = str(caught.value)
    assert "'broken'" in message and "failed to import" in message
    assert "no_such_module_anywhere" in message


def test_plugin_without_setup_is_refused(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("nosetup", "VALUE = 1\n")
    with pytest.raises(PluginError, match=r"'nosetup'.*no setup"):
        load_plugins()


def test_disabled_plugin_is_not_loaded(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("broken", "raise RuntimeError('boom')\n")
    registry, plugins = load_plugins(disabled=["broken", "echo"])
    assert "echo.message" not in registry.types
    assert {plugin.name for plugin in plugins} >= {"trips"}


def test_start_up_stops_with_one_line_naming_the_plugins(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("copycat", """
        def setup(registry):
            registry.add_message_type("trip.request", None)
    """)
    env = {**os.environ, "PYTHONPATH": f"{fake_plugins.root}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}", "TAXI_DATA_DIR": str(tmp_path / "d")}
    result = subprocess.run([sys.executable, "-m", "taxi_tornado", "serve"], env=env,
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'copycat'" in lines[0] and "'trips'" in lines[0]


async def test_plugin_type_and_alias_served_over_socket(
    fake_plugins: FakeDistributions, tmp_path: Path, start  # type: ignore[no-untyped-def]
) -> None:
    fake_plugins.add("shout", SHOUT)
    running = await start(make_settings(tmp_path))
    _, token = await running.user("rider")
    client = await running.connect(token)
    assert await client.request({"type": "yell", "data": "hi", "id": 1}) == {
        "type": "shout.reply", "data": "HI", "id": 1}


async def test_disabled_plugin_type_is_unknown(tmp_path: Path, start) -> None:  # type: ignore[no-untyped-def]
    settings = replace(make_settings(tmp_path), plugins={"disabled": ("echo",)})
    running = await start(settings)
    _, token = await running.user("rider")
    client = await running.connect(token)
    reply = await client.request({"type": "echo.message", "data": 1})
    assert reply["data"]["code"] == "unknown_type"


async def test_failing_handler_is_internal_without_details(
    fake_plugins: FakeDistributions, tmp_path: Path, start  # type: ignore[no-untyped-def]
) -> None:
    fake_plugins.add("faulty", """
        async def crash(conn, data):
            raise KeyError("secret internals at /srv/db")

        def setup(registry):
            registry.add_message_type("crash", crash)
    """)
    running = await start(make_settings(tmp_path))
    _, token = await running.user("rider")
    client = await running.connect(token)
    reply = await client.request({"type": "crash", "id": "c"})
    assert reply["data"]["code"] == "internal" and reply["id"] == "c"
    assert "secret" not in str(reply) and "KeyError" not in str(reply)
    assert (await client.request({"type": "echo.message", "data": 2}))["data"] == 2


async def test_connect_hook_and_protocol_error(
    fake_plugins: FakeDistributions, tmp_path: Path, start  # type: ignore[no-untyped-def]
) -> None:
    fake_plugins.add("lobby", """
        from taxi_tornado.plugins import ProtocolError

        async def joined(conn):
            await conn.join("lobby")
            conn.send({"type": "lobby.welcome", "data": conn.user.username})

        async def refuse(conn, data):
            raise ProtocolError("forbidden", "Not in the lobby.", {"who": ["nobody"]})

        def setup(registry):
            registry.on_connect(joined)
            registry.add_message_type("lobby.enter", refuse)
    """)
    running = await start(make_settings(tmp_path))
    _, token = await running.user("rider")
    client = await running.connect(token)
    assert await client.receive() == {"type": "lobby.welcome", "data": "rider"}
    await running.hub.send("lobby", {"type": "lobby.news"})
    assert await client.receive() == {"type": "lobby.news"}
    reply = await client.request({"type": "lobby.enter"})
    assert reply["data"] == {"code": "forbidden", "detail": "Not in the lobby.",
                             "for": "lobby.enter", "errors": {"who": ["nobody"]}}


# --- the example third-party plugin, pip-installed by the test command -----------------

def test_example_plugin_is_installed_and_listed(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "taxi_tornado", "plugins"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("\nsos (", 1)[1].split("\ntrips (", 1)[0]
    assert listing.startswith("taxi-plugin-sos")
    for line in ("    sos.alert", "    sos.ack", "    route GET /api/sos/alerts/ (auth required)",
                 "    task every 5s SosDesk.realert",
                 "    task on_shutdown SosDesk.report_unanswered",
                 "    setting plugins.sos.alert_group (str, default 'sos')",
                 "    setting plugins.sos.realert_after (float, default 60.0)"):
        assert line in listing.splitlines(), listing
    assert "    strategy nearest" in result.stdout.splitlines(), result.stdout


async def test_example_plugin_end_to_end(server: RunningServer) -> None:
    rider, rider_token = await server.user("rider")
    _, driver_token = await server.user("driver", "driver")
    _, staff_token = await server.user("desk", "staff")
    rider_ws = await server.connect(rider_token, v2=True)
    driver_ws = await server.connect(driver_token, v2=True)
    staff_ws = await server.connect(staff_token, v2=True)
    trip = (await rider_ws.request({"type": "trip.request", "data": {
        "pick_up_address": "A", "drop_off_address": "B"}}))["data"]
    await driver_ws.receive()
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": "STARTED"}})
    await rider_ws.receive()
    reply = await rider_ws.request({"type": "sos.alert", "data": {"trip": trip["id"],
                                                                  "note": "help"}, "id": 5})
    assert reply == {"type": "sos.sent", "data": {"trip": trip["id"]}, "id": 5}
    alert = {"type": "sos.alert", "data": {"trip": trip["id"], "from": rider.id,
                                           "note": "help", "repeat": 0}}
    driver_event = await driver_ws.receive()
    assert driver_event.pop("pos")["group"] == trip["id"]  # v2 events carry their position
    assert driver_event == alert
    staff_event = await staff_ws.receive()
    while staff_event["type"].startswith("admin."):  # staff hear the operators' group too
        staff_event = await staff_ws.receive()
    assert staff_event.pop("pos")["group"] == "sos"  # the plugin's alert group
    assert staff_event == alert
    _, stranger_token = await server.user("stranger")
    stranger = await server.connect(stranger_token)
    refused = await stranger.request({"type": "sos.alert", "data": {"trip": trip["id"]}})
    assert refused["data"]["code"] == "not_found"
