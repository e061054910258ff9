"""The `echo` plugin: sends a frame's data back to its sender.

Registered through its entry point like any third-party plugin, so the core uses its own
plugin API.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.plugins.api import Connection, Registry


def setup(registry: Registry) -> None:
    # Any JSON value is welcome, and comes back as it was.
    registry.add_message_type("echo.message", echo, schema={},
                              reply={"echo.message": {"description": "The data sent."}})


async def echo(conn: Connection, data: Any) -> dict[str, Any]:
    return {"type": "echo.message", "data": data}
