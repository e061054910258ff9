"""The `dispatch` plugin: the built-in strategies, `driver.status`, and driver presence.

Registered through its entry point like any third-party plugin, so that `broadcast` and
`nearest` are chosen by `dispatch.mode` exactly as a plugin's own strategy would be.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.dispatch.broadcast import BroadcastStrategy
from taxi_tornado.dispatch.nearest import NearestStrategy
from taxi_tornado.dispatch.service import dispatch_of
from taxi_tornado.plugins.api import Connection, Registry

STATUSES = ("available", "unavailable")
STATUS = {"type": "object", "required": ["status"],
          "properties": {"status": {"enum": list(STATUSES)}}}


def setup(registry: Registry) -> None:
    registry.add_dispatch_strategy("broadcast", BroadcastStrategy)
    registry.add_dispatch_strategy("nearest", NearestStrategy)
    registry.add_message_type("driver.status", driver_status, senders=("driver",),
                              schema=STATUS, reply={"driver.status": STATUS})
    registry.on_connect(driver_connected)
    registry.on_disconnect(driver_disconnected)


async def driver_status(conn: Connection, data: Any) -> dict[str, Any]:
    """Whether the driver wants offers; it belongs to the driver, not to this socket.
    `data` passed STATUS, and the sender is a driver."""
    status = data["status"]
    await dispatch_of(conn).locations.set_available(conn.user.id, status == "available")
    return {"type": "driver.status", "data": {"status": status}}


async def driver_connected(conn: Connection) -> None:
    if conn.user.group == "driver" and conn.dispatch is not None:
        await conn.dispatch.driver_connected(conn)


async def driver_disconnected(conn: Connection) -> None:
    if conn.user.group == "driver" and conn.dispatch is not None:
        await conn.dispatch.driver_disconnected(conn)
