"""The `admin` plugin: the operators' (staff's) live channel and their commands.

- A v2 staff connection joins the `admin` group on connect; nobody else ever does, so
  the events sent there (types starting with `admin.`) reach operators only.
- Closing a user's sockets must reach every process, since a user's sockets may be held
  by any of them. The command travels as a message to the `admin:control` group, in
  which each process keeps one ControlListener (not a connection): whichever process
  holds sockets of that user closes them.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.dispatch.strategy import DispatchContext
from taxi_tornado.frames import DecodeError, decode, frame_payload
from taxi_tornado.hub import Hub, Position
from taxi_tornado.plugins.api import Connection, Registry
from taxi_tornado.store import STAFF

ADMIN = "admin"
CONTROL = "admin:control"
CLOSE_USER = "admin.close_user"
# Close code for sockets closed by an operator: the client may reconnect at once.
CLOSED_BY_STAFF = 4000
V2 = 2


def setup(registry: Registry) -> None:
    registry.on_connect(join_admin)
    registry.on_trip_changed(tell_staff_of_trip)


async def join_admin(conn: Connection) -> None:
    """Staff speaking v2 hear the `admin` group; v1 clients could not read its events."""
    if conn.user.group == STAFF and conn.version >= V2 and conn.settings.admin.enabled:
        await conn.join(ADMIN)


async def tell_staff(hub: Hub, event_type: str, data: Any) -> None:
    """Send an `admin.*` event to every staff connection on every process."""
    await hub.send(ADMIN, {"type": event_type, "data": data}, min_version=V2)


async def tell_staff_of_trip(context: DispatchContext, trip: dict[str, Any]) -> None:
    """A change the server made to a trip by itself reaches the operators' page like
    every change a client's frame makes."""
    if context.settings.admin.enabled:
        await tell_staff(context.hub, "admin.trip", trip)


async def close_user_sockets(hub: Hub, user_id: str) -> None:
    """Ask every process to close the sockets of `user_id` (code CLOSED_BY_STAFF)."""
    await hub.send(CONTROL, {"type": CLOSE_USER, "data": {"user": user_id}})


async def listen_for_commands(hub: Hub) -> ControlListener:
    """Put this process's ControlListener in the `admin:control` group."""
    listener = ControlListener(hub)
    await hub.join_listener(listener, CONTROL)
    return listener


class ControlListener:
    """A hub member that acts on staff commands instead of writing them to a socket.

    The hub hands it the frame every member gets; it reads the message back out of it.
    A message it does not know is ignored: `/api/hub/publish/` may also post here.
    """

    id = "admin-control"
    version = 1  # the plain message, as sent, without anything later versions add

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        """Only v2 members get positions; this one speaks v1, but reads either."""
        self.deliver(frame)

    def deliver(self, frame: bytes) -> None:
        try:
            message = decode(frame_payload(frame))
        except DecodeError:
            return
        if not isinstance(message, dict) or message.get("type") != CLOSE_USER:
            return
        data = message.get("data")
        user_id = data.get("user") if isinstance(data, dict) else None
        if isinstance(user_id, str):
            self.close_user(user_id)

    def close_user(self, user_id: str) -> int:
        """Close this process's sockets of `user_id`; returns how many."""
        closed = 0
        for member in tuple(self.hub.groups.get(f"user:{user_id}", ())):
            if isinstance(member, Connection):
                member.close(CLOSED_BY_STAFF, "closed by an operator")
                closed += 1
        return closed
