"""Plugins' tasks: start-up hooks before anything is served, periodic tasks that never
overlap or kill the process, shutdown hooks in the drain while the store still works."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.plugins.api import PluginError
from taxi_tornado.testing import TaxiServer, start_server
from tests.conftest import FakeDistributions

LIFECYCLE = """
    EVENTS = []

    async def started(context):
        EVENTS.append(("startup", context.plugin, context.config.get("label")))

    async def tick(context):
        EVENTS.append(("tick",))

    async def disconnected(conn):
        EVENTS.append(("disconnect", conn.user.username))

    async def first_down(context):
        users = [await context.store.get_user_by_username(n) for n in ("ann", "bob")]
        EVENTS.append(("shutdown-first", [u.username for u in users if u]))

    async def last_down(context):
        await context.publish("lobby", {"type": "lobby.bye"})
        EVENTS.append(("shutdown-last",))

    def setup(registry):
        registry.on_startup(started)
        registry.every(0.05, tick)
        registry.on_disconnect(disconnected)
        registry.on_shutdown(last_down)
        registry.on_shutdown(first_down)
"""


def events(module: str) -> list[Any]:
    found: list[Any] = sys.modules[module].EVENTS
    return found


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_hooks_run_at_start_and_in_the_drain_in_order(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("lifecycle", LIFECYCLE)
    server = await start_server(tmp_path / "data", {"plugins": {"lifecycle": {"label": "L"}}})
    assert events("fake_lifecycle") == [("startup", "lifecycle", "L")]
    ann = await server.rider(username="ann")
    socket = await ann.connect()
    await wait_for(lambda: ("tick",) in events("fake_lifecycle"), "a periodic run")

    await server.stop()

    assert await socket.wait_closed() == 1001
    after_ticks = [event for event in events("fake_lifecycle") if event != ("tick",)]
    assert after_ticks == [("startup", "lifecycle", "L"), ("disconnect", "ann"),
                           ("shutdown-first", ["ann"]), ("shutdown-last",)]
    last_tick = max(i for i, e in enumerate(events("fake_lifecycle")) if e == ("tick",))
    assert last_tick < events("fake_lifecycle").index(("disconnect", "ann"))
    count = len(events("fake_lifecycle"))
    await asyncio.sleep(0.2)
    assert len(events("fake_lifecycle")) == count  # the periodic task stopped for good


async def test_failing_periodic_task_is_logged_counted_and_keeps_its_schedule(
    fake_plugins: FakeDistributions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_plugins.add("flaky", """
        RUNS = []

        async def flaky(context):
            RUNS.append(len(RUNS))
            if len(RUNS) <= 2:
                raise RuntimeError("the weather service is down")

        def setup(registry):
            registry.every(0.05, flaky)
    """)
    with caplog.at_level(logging.ERROR, logger="taxi_tornado.plugins"):
        server = await start_server(tmp_path / "data")
        try:
            runs = sys.modules["fake_flaky"].RUNS
            await wait_for(lambda: len(runs) >= 5, "runs after the failures")
            text = (await server.client().get("/metrics")).text
            health = await server.client().get("/healthz")
        finally:
            await server.close()

    assert metric(text, "taxi_plugin_task_failures_total", plugin="flaky", task="flaky") >= 2
    assert metric(text, "taxi_plugin_task_runs_total", plugin="flaky", task="flaky") >= 5
    assert health.status == 200
    failures = [r for r in caplog.records if "periodic task flaky of plugin flaky" in
                r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)


async def test_periodic_task_never_overlaps_itself(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("slow", """
        import asyncio

        STATE = {"running": 0, "most": 0, "runs": 0}

        async def slow(context):
            STATE["running"] += 1
            STATE["most"] = max(STATE["most"], STATE["running"])
            await asyncio.sleep(0.12)
            STATE["running"] -= 1
            STATE["runs"] += 1

        def setup(registry):
            registry.every(0.03, slow)
    """)
    server = await start_server(tmp_path / "data")
    state = sys.modules["fake_slow"].STATE
    await wait_for(lambda: state["runs"] >= 3, "three runs")
    await server.close()
    assert state["most"] == 1
    assert state["running"] == 0  # the run under way at the drain finished


async def test_failing_startup_hook_stops_start_up_naming_the_plugin(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("grumpy", """
        async def refuse(context):
            raise ConnectionError("cannot reach the fleet API")

        def setup(registry):
            registry.on_startup(refuse)
    """)
    with pytest.raises(PluginError) as caught:
        await start_server(tmp_path / "data", {"server": {"port": 0}})
    assert str(caught.value) == ("plugin 'grumpy' failed in its start-up hook refuse: "
                                 "ConnectionError: cannot reach the fleet API")


async def test_failing_shutdown_hook_does_not_stop_the_drain(
    fake_plugins: FakeDistributions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_plugins.add("sloppy", """
        DONE = []

        async def broken(context):
            raise RuntimeError("oops")

        async def fine(context):
            DONE.append(True)

        def setup(registry):
            registry.on_shutdown(fine)
            registry.on_shutdown(broken)
    """)
    server: TaxiServer = await start_server(tmp_path / "data")
    with caplog.at_level(logging.ERROR, logger="taxi_tornado.plugins"):
        await server.stop()
    assert sys.modules["fake_sloppy"].DONE == [True]
    assert any("shutdown hook broken of plugin sloppy failed" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("seconds", ["0", "-1", "'often'"])
def test_every_needs_a_positive_number_of_seconds(
    fake_plugins: FakeDistributions, seconds: str
) -> None:
    from taxi_tornado.plugins.loader import load_plugins

    fake_plugins.add("eager", f"""
        async def task(context):
            pass

        def setup(registry):
            registry.every({seconds}, task)
    """)
    with pytest.raises(PluginError, match="positive number of seconds"):
        load_plugins()
