"""A user's other sockets follow a trip at once, on every process.

A socket joins the groups of its user's unfinished trips when it connects, and the
socket that requests a trip (a rider) or claims one (a driver) joins it right away. The
user's other sockets, a tablet beside the phone, on this process or another, would hear
of that trip only after reconnecting. So the trips plugin sends a `trip.follow` message
to the `trips:follow` group, in which each process keeps one FollowListener (not a
connection, as the admin plugin's ControlListener): whichever process holds sockets of
that user checks in the store that the trip is the user's and unfinished, then joins
them to it. The check matters: `/api/hub/publish/` may post to this group too, and it
must not put anybody in a group that is not their trip's (`admin`, say).

The follow is sent after the trip's own events: those reach the other sockets' process
first, while they are not in the group yet, so that a driver's tablet does not hear a
claim twice (from the trip's group and from the drivers' pool). Events sent before the
join are not replayed; like the sockets that requested or claimed, followers stay in the
trip's group until they close.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from taxi_tornado.frames import DecodeError, decode, frame_payload
from taxi_tornado.hub import Hub, Position
from taxi_tornado.plugins.api import Connection, PluginContext
from taxi_tornado.store import ACTIVE_STATUSES, Store

FOLLOW = "trips:follow"
FOLLOW_TYPE = "trip.follow"

log = logging.getLogger("taxi_tornado.plugins.trips")


async def follow(hub: Hub, user_id: str, trip_id: str) -> None:
    """Ask every process to join the sockets of `user_id` to the trip's group."""
    await hub.send(FOLLOW, {"type": FOLLOW_TYPE, "data": {"user": user_id, "trip": trip_id}})


async def listen_for_follows(context: PluginContext) -> None:
    """Start-up: put this process's FollowListener in the `trips:follow` group."""
    await context.hub.join(FollowListener(context.hub, context.store), FOLLOW)


class FollowListener:
    """A hub member that joins local sockets to trips instead of writing to a socket."""

    id = "trips-follow"
    version = 1  # the plain message, as sent

    def __init__(self, hub: Hub, store: Store) -> None:
        self.hub = hub
        self.store = store
        self.joining: set[asyncio.Task[None]] = set()

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        self.deliver(frame)

    def deliver(self, frame: bytes) -> None:
        request = _follow_request(frame)
        if request is None:
            return
        user_id, trip_id = request
        members = [member for member in self.hub.groups.get(f"user:{user_id}", ())
                   if isinstance(member, Connection) and trip_id not in member.groups]
        if not members:  # most processes: none of this user's sockets, no store query
            return
        task = asyncio.ensure_future(self.join(user_id, trip_id, members))
        self.joining.add(task)
        task.add_done_callback(self.joining.discard)

    async def join(self, user_id: str, trip_id: str, members: list[Connection]) -> None:
        try:
            trip = await self.store.get_trip(trip_id)
        except Exception as error:  # a store error, or the store closed in a shutdown
            log.warning("could not follow trip %s for user %s: %s", trip_id, user_id, error)
            return
        if (trip is None or trip.status not in ACTIVE_STATUSES
                or user_id not in (trip.rider_id, trip.driver_id)):
            return
        for member in members:
            await member.join(trip_id)  # a socket closed meanwhile joins nothing


def _follow_request(frame: bytes) -> tuple[str, str] | None:
    """(user id, trip id) from a `trip.follow` frame, or None for anything else."""
    try:
        message: Any = decode(frame_payload(frame))
    except DecodeError:
        return None
    if not isinstance(message, dict) or message.get("type") != FOLLOW_TYPE:
        return None
    data = message.get("data")
    if not isinstance(data, dict):
        return None
    user_id, trip_id = data.get("user"), data.get("trip")
    if not isinstance(user_id, str) or not isinstance(trip_id, str):
        return None
    return user_id, trip_id
