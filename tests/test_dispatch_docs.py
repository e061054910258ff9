"""The example strategy of docs/dispatch.md, loaded from the page and run on a live
server: the docs cannot drift from what works."""

from __future__ import annotations

import re
import types
from pathlib import Path

from taxi_tornado.app import Server
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.services import build_services
from tests.conftest import ROOT, RunningServer, make_settings
from tests.test_dispatch import claim, driver_at, expect, request, rider

DOC = ROOT / "docs" / "dispatch.md"


def example_plugin() -> types.ModuleType:
    text = DOC.read_text()
    section = text[text.index("## A strategy of your own"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/dispatch.md lost its example"
    module = types.ModuleType("radius_example")
    exec(compile(code.group(1), str(DOC), "exec"), module.__dict__)
    return module


async def test_docs_example_strategy_reaches_only_drivers_within_the_radius(
        tmp_path: Path) -> None:
    registry, plugins = load_plugins()
    registry.plugin = "radius-example"
    example_plugin().setup(registry)
    settings = make_settings(tmp_path, dispatch={"mode": "radius", "radius_m": 1000.0})
    server = Server(settings, build_services(settings, registry, plugins))
    await server.start()
    try:
        running = RunningServer(server, settings)
        near_id, near = await driver_at(running, "near", 300)
        _, also_near = await driver_at(running, "also near", -700)
        _, far = await driver_at(running, "far", 2500)
        trip = await request(await rider(running))
        assert (await expect(near, "trip.updated"))["id"] == trip["id"]
        assert (await expect(also_near, "trip.updated"))["id"] == trip["id"]
        await far.nothing()
        claimed = await claim(near, trip["id"])
        assert claimed["data"]["driver"]["id"] == near_id
        assert (await expect(also_near, "trip.updated"))["status"] == "STARTED"
    finally:
        await server.stop()
    assert registry.dispatch_strategies["radius"].plugin == "radius-example"
