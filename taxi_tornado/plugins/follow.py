"""A user's other sockets follow a trip at once, on every process; and every socket lets
a trip's group go once the trip has ended.

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
join are not replayed.

When a trip ends (completed, or canceled by anyone), a `trip.unfollow` to the same group
makes every process drop its sockets from the trip's group, once the store confirms the
trip has ended (so no message can empty the drivers' pool, say); it too is sent after
the trip's last event. Without it a driver's socket open all day would stay in the group
of every trip of that day, and with Redis its process subscribed to each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from taxi_tornado.dispatch.strategy import DispatchContext
from taxi_tornado.frames import DecodeError, decode, frame_payload
from taxi_tornado.hub import Hub, Position
from taxi_tornado.plugins.api import Connection, PluginContext
from taxi_tornado.store import ACTIVE_STATUSES, Store, Trip

FOLLOW = "trips:follow"
FOLLOW_TYPE = "trip.follow"
UNFOLLOW_TYPE = "trip.unfollow"

log = logging.getLogger("taxi_tornado.plugins.trips")


async def follow(hub: Hub, user_id: str, trip_id: str) -> None:
    """Ask every process to join the sockets of `user_id` to the trip's group."""
    await hub.send(FOLLOW, {"type": FOLLOW_TYPE, "data": {"user": user_id, "trip": trip_id}})


async def unfollow(hub: Hub, trip_id: str) -> None:
    """Ask every process to drop its sockets from the group of a trip that has ended, and
    let the group's history go with its events (hub.history_ttl), not a day later."""
    await hub.send(FOLLOW, {"type": UNFOLLOW_TYPE, "data": {"trip": trip_id}})
    await hub.end(trip_id)


async def let_ended_trip_go(context: DispatchContext, trip: dict[str, Any]) -> None:
    """A trip the server ended by itself (canceled at dispatch.max_wait) lets its group
    go too, after its last event, like one a client's frame ended."""
    if trip.get("status") not in ACTIVE_STATUSES:
        await unfollow(context.hub, trip["id"])


async def listen_for_follows(context: PluginContext) -> None:
    """Start-up: put this process's FollowListener in the `trips:follow` group."""
    await context.hub.join_listener(FollowListener(context.hub, context.store), FOLLOW)


class FollowListener:
    """A hub member that joins local sockets to trips, and takes them out of ended ones,
    instead of writing to a socket."""

    id = "trips-follow"
    version = 1  # the plain message, as sent

    def __init__(self, hub: Hub, store: Store) -> None:
        self.hub = hub
        self.store = store
        self.busy: set[asyncio.Task[None]] = set()

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        self.deliver(frame)

    def deliver(self, frame: bytes) -> None:
        """Most processes hold no socket concerned, and ask the store nothing."""
        message = _message(frame)
        if message is None:
            return
        kind, user_id, trip_id = message
        if kind == FOLLOW_TYPE and user_id is not None:
            followers = [member for member in self.hub.groups.get(f"user:{user_id}", ())
                         if isinstance(member, Connection) and trip_id not in member.groups]
            if followers:
                self._spawn(self.join(user_id, trip_id, followers))
            return
        if any(isinstance(member, Connection) for member in self.hub.groups.get(trip_id, ())):
            self._spawn(self.leave(trip_id))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.busy.add(task)
        task.add_done_callback(self.busy.discard)

    async def join(self, user_id: str, trip_id: str, members: list[Connection]) -> None:
        trip = await self._trip(trip_id)
        if (trip is None or trip.status not in ACTIVE_STATUSES
                or user_id not in (trip.rider_id, trip.driver_id)):
            return
        for member in members:
            await member.join(trip_id)  # a socket closed meanwhile joins nothing

    async def leave(self, trip_id: str) -> None:
        trip = await self._trip(trip_id)
        if trip is None or not trip.status.is_final:
            return
        # The members now, not when the unfollow came: one may have joined meanwhile.
        for member in list(self.hub.groups.get(trip_id, ())):
            if isinstance(member, Connection):
                await member.leave(trip_id)

    async def _trip(self, trip_id: str) -> Trip | None:
        try:
            return await self.store.get_trip(trip_id)
        except Exception as error:  # a store error, or the store closed in a shutdown
            log.warning("trips: could not read trip %s to follow it: %s", trip_id, error)
            return None


def _message(frame: bytes) -> tuple[str, str | None, str] | None:
    """(type, user id or None, trip id) of a follow or unfollow frame; None otherwise."""
    try:
        message: Any = decode(frame_payload(frame))
    except DecodeError:
        return None
    if not isinstance(message, dict) or message.get("type") not in (FOLLOW_TYPE,
                                                                     UNFOLLOW_TYPE):
        return None
    data = message.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("trip"), str):
        return None
    user_id = data.get("user")
    if message["type"] == FOLLOW_TYPE and not isinstance(user_id, str):
        return None
    return message["type"], user_id if isinstance(user_id, str) else None, data["trip"]
