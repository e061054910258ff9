"""The `trips` plugin: request, claim, progress, cancel, decline, and live driver location.

Every change is stored before anybody hears of it; a claim is the store's compare-and-set,
so when drivers race exactly one wins. Who hears of a new trip, and which drivers may see
and claim it, is the dispatch strategy's business (`dispatch.mode`): this plugin calls it
and never knows which one runs. Notices that the course's React client would misread (a
trip taken, a location) go only to v2 connections.

Once a change is stored it has happened: what follows (joining the group, dispatch,
events, the operators' page, follows) runs step by step through `_aftermath`, where a
failing step (a Redis that went away) is logged with the trip's id and the next runs all
the same. The sender gets the stored trip, never `internal`: an `internal` would free
the request's idempotency key, and the phone's retry would make a second trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from taxi_tornado import metrics
from taxi_tornado.dispatch import broadcast
from taxi_tornado.dispatch.broadcast import DRIVERS, V2
from taxi_tornado.dispatch.service import dispatch_of
from taxi_tornado.plugins import trip_schemas as schemas
from taxi_tornado.plugins.admin import tell_staff
from taxi_tornado.plugins.api import Connection, ProtocolError, Registry
from taxi_tornado.plugins.follow import follow, let_ended_trip_go, listen_for_follows, unfollow
from taxi_tornado.plugins.trip_quota import TripQuota
from taxi_tornado.store import STAFF, LatLng, Trip, TripStatus, format_time, now

RIDERS, DRIVERS_ONLY = ("rider",), ("driver",)
Step = Callable[[], Awaitable[object]]

log = logging.getLogger("taxi_tornado.plugins.trips")


def setup(registry: Registry) -> None:
    registry.add_message_type("trip.request", TripQuota().guard(request_trip),
                              aliases=("create.trip",), senders=RIDERS, keyed=True,
                              schema=schemas.TRIP_REQUEST, reply=schemas.REPLY,
                              events=schemas.REQUEST_EVENTS)
    registry.add_message_type("trip.update", update_trip, aliases=("update.trip",),
                              senders=DRIVERS_ONLY, keyed=True, schema=schemas.TRIP_UPDATE,
                              reply=schemas.REPLY, events=schemas.UPDATE_EVENTS)
    registry.add_message_type("trip.cancel", cancel_trip, senders=RIDERS, keyed=True,
                              schema=schemas.TRIP_BY_ID, reply=schemas.REPLY,
                              events=schemas.CANCEL_EVENTS)
    registry.add_message_type("trip.decline", decline_trip, senders=DRIVERS_ONLY, keyed=True,
                              schema=schemas.TRIP_BY_ID,
                              reply={"trip.declined": schemas.TRIP_DECLINED})
    registry.add_message_type("driver.location", driver_location, senders=DRIVERS_ONLY,
                              schema=schemas.DRIVER_LOCATION, events=schemas.LOCATION_EVENTS)
    registry.on_connect(join_trip_groups)
    registry.on_startup(listen_for_follows)
    registry.on_trip_changed(let_ended_trip_go)


async def join_trip_groups(conn: Connection) -> None:
    """Drivers join the pool; everyone joins the groups of their unfinished trips."""
    if conn.user.group == "driver":
        await conn.join(DRIVERS)
    for trip_id in await conn.store.active_trip_ids(conn.user.id):
        await conn.join(trip_id)


def trip_message(trip: Trip, conn: Connection) -> dict[str, Any]:
    return broadcast.trip_message(trip, conn.base_url)


async def request_trip(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    """`data` passed schemas.TRIP_REQUEST, and the sender is a rider."""
    _own_id(conn, data, "rider", "The trip request is not valid.")
    trip = await conn.store.create_trip(conn.user.id, data["pick_up_address"],
                                        data["drop_off_address"], _position(data, "pick_up"),
                                        _position(data, "drop_off"))
    message = trip_message(trip, conn)
    await _aftermath(trip.id, "request", partial(conn.join, trip.id),
                     partial(dispatch_of(conn).strategy.dispatch, conn, trip),
                     partial(_tell_staff, conn, message),
                     partial(follow, conn.hub, conn.user.id, trip.id))  # last: follow.py
    return message


async def update_trip(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    """`data` passed schemas.TRIP_UPDATE, and the sender is a driver."""
    _own_id(conn, data, "driver", "The trip update is not valid.")
    status = TripStatus(data["status"])
    if status is TripStatus.CANCELED:
        raise ProtocolError("forbidden", "Only the trip's rider can cancel it (trip.cancel).")
    trip = await _get_trip(conn, data["id"])
    if trip.driver_id is None:
        return await _claim(conn, trip, status)
    if trip.driver_id != conn.user.id:
        raise ProtocolError("conflict", "Another driver has taken this trip.")
    if trip.status.is_final or status.rank <= trip.status.rank:
        raise _transition(trip.status, status)
    updated = await conn.store.update_trip(
        trip.id, expected_status=trip.status, expected_driver_id=conn.user.id,
        status=status, driver_id=conn.user.id,
    )
    if updated is None:
        raise ProtocolError("conflict", "The trip changed while you were updating it.")
    message = trip_message(updated, conn)
    steps: list[Step] = [partial(conn.send_group, trip.id, message, exclude_self=True)]
    if updated.status.is_final:
        steps.append(partial(dispatch_of(conn).trip_changed, conn.user.id))
    steps.append(partial(_tell_staff, conn, message))
    if updated.status.is_final:
        steps.append(partial(unfollow, conn.hub, trip.id))  # last: see plugins/follow.py
    await _aftermath(trip.id, "update", *steps)
    return message


async def _claim(conn: Connection, trip: Trip, status: TripStatus) -> dict[str, Any]:
    if trip.status is not TripStatus.REQUESTED or status is TripStatus.REQUESTED:
        raise _transition(trip.status, status)
    claimed = await conn.store.update_trip(
        trip.id, expected_status=TripStatus.REQUESTED, expected_driver_id=None,
        status=status, driver_id=conn.user.id,
    )
    if claimed is None:
        raise ProtocolError("conflict", "Another driver has taken this trip.")
    metrics.CLAIM_SECONDS.observe(max(0.0, time.time() - trip.created.timestamp()))
    dispatch = dispatch_of(conn)
    message = trip_message(claimed, conn)
    await _aftermath(
        trip.id, "claim", partial(dispatch.trip_changed, conn.user.id),
        partial(conn.join, trip.id),
        partial(conn.send_group, trip.id, message, exclude_self=True),
        partial(dispatch.strategy.claimed, conn, claimed), partial(_tell_staff, conn, message),
        # Last (plugins/follow.py); claimed straight to COMPLETED: nothing to follow.
        partial(unfollow, conn.hub, trip.id) if claimed.status.is_final
        else partial(follow, conn.hub, conn.user.id, trip.id))
    return message


async def cancel_trip(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    """`data` passed schemas.TRIP_BY_ID, and the sender is a rider (the trip's, or it
    is not found)."""
    return await _cancel(conn, await _get_trip(conn, data["id"]))


async def cancel_for_staff(conn: Connection, trip_id: str) -> dict[str, Any]:
    """An operator cancels a trip (the admin API, through a socketless Connection of the
    staff user): riders, drivers and the dispatch strategy hear it exactly as when the
    rider cancels. Returns the `trip.updated` message."""
    _require_group(conn, STAFF, "Only staff cancel other people's trips.")
    trip = await conn.store.get_trip(trip_id)
    if trip is None:
        raise ProtocolError("not_found", "No such trip.")
    return await _cancel(conn, trip)


async def _cancel(conn: Connection, trip: Trip) -> dict[str, Any]:
    if trip.status not in (TripStatus.REQUESTED, TripStatus.STARTED):
        raise _transition(trip.status, TripStatus.CANCELED)
    canceled = await conn.store.update_trip(
        trip.id, expected_status=trip.status, expected_driver_id=trip.driver_id,
        status=TripStatus.CANCELED, driver_id=trip.driver_id,
    )
    if canceled is None:
        raise ProtocolError("conflict", "The trip changed while you were canceling it.")
    message = trip_message(canceled, conn)
    dispatch = dispatch_of(conn)
    steps: list[Step] = [partial(conn.send_group, trip.id, message, exclude_self=True)]
    if trip.status is TripStatus.REQUESTED:
        steps.append(partial(dispatch.strategy.canceled, conn, canceled))
    if trip.driver_id is not None:
        steps.append(partial(dispatch.trip_changed, trip.driver_id))
    steps.append(partial(_tell_staff, conn, message))
    steps.append(partial(unfollow, conn.hub, trip.id))  # last: see plugins/follow.py
    await _aftermath(trip.id, "cancel", *steps)
    return message


async def _aftermath(trip_id: str, change: str, *steps: Step) -> None:
    """Run what follows a stored change, each step even when one before it failed; a
    failure is logged, never raised: the change has happened, and its sender must get
    it (see the module's docstring)."""
    for step in steps:
        try:
            await step()
        except Exception:
            name = getattr(getattr(step, "func", step), "__qualname__", repr(step))
            log.exception("trip %s: the %s is stored, but %s after it failed", trip_id,
                          change, name)


async def _tell_staff(conn: Connection, message: dict[str, Any]) -> None:
    """Every stored change of a trip also reaches the operators' page (`admin.trip`)."""
    if conn.settings.admin.enabled:
        await tell_staff(conn.hub, "admin.trip", message["data"])


async def decline_trip(conn: Connection, data: dict[str, Any]) -> dict[str, Any]:
    """A driver turns down the trip they were offered (`nearest` dispatch)."""
    trip = await conn.store.get_trip(data["id"])
    if trip is None or not await dispatch_of(conn).strategy.decline(conn, trip):
        raise ProtocolError("not_found", "You hold no offer for this trip.")
    return {"type": "trip.declined", "data": {"id": trip.id}}



async def driver_location(conn: Connection, data: dict[str, Any]) -> None:
    """Record the position in the location index (for dispatch and the nearby API) and
    relay it to each trip the driver is driving; nothing goes to the store. `data`
    passed schemas.DRIVER_LOCATION, and the sender is a driver."""
    lat, lng = float(data["lat"]), float(data["lng"])
    heading, speed = _optional_float(data, "heading"), _optional_float(data, "speed")
    received = now()
    dispatch = dispatch_of(conn)
    await dispatch.locations.put(conn.user.id, lat, lng, heading)
    trip_ids = await dispatch.trips.of(conn.user.id)
    if not trip_ids:  # most drivers, most of the time: nothing to relay, nothing to format
        return None
    at = format_time(received)
    for trip_id in trip_ids:
        message = {"type": "driver.location", "data": {
            "driver": conn.user.id, "trip": trip_id, "lat": lat, "lng": lng,
            "heading": heading, "speed": speed, "at": at,
        }}
        await conn.send_group(trip_id, message, exclude_self=True, min_version=V2)
    return None


async def _get_trip(conn: Connection, trip_id: str) -> Trip:
    """The trip if the user may act on it: a rider their own; a driver their own, and the
    REQUESTED trips the dispatch strategy shows them (in `nearest`, those they were
    offered: this check is part of every claim)."""
    trip = await conn.store.get_trip(trip_id)
    if trip is None:
        raise ProtocolError("not_found", "No such trip.")
    user = conn.user
    if user.group == "rider" and trip.rider_id != user.id:
        raise ProtocolError("not_found", "No such trip.")
    if (user.group == "driver" and trip.driver_id is None
            and trip.status is TripStatus.REQUESTED
            and not await dispatch_of(conn).strategy.visible(user.id, [trip])):
        raise ProtocolError("not_found", "No such trip.")
    return trip


def _require_group(conn: Connection, group: str, detail: str) -> None:
    if conn.user.group != group:
        raise ProtocolError("forbidden", detail)


def _position(data: dict[str, Any], name: str) -> LatLng | None:
    value = data.get(name)
    return LatLng(float(value["lat"]), float(value["lng"])) if value is not None else None


def _optional_float(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    return float(value) if value is not None else None


def _own_id(conn: Connection, data: dict[str, Any], name: str, invalid: str) -> None:
    """What the schema cannot say: a `rider` or `driver` given must be the sender."""
    value = data.get(name)
    if value is not None and str(value) != conn.user.id:
        raise ProtocolError("invalid", invalid, {name: ["Must be your own user id."]})


def _transition(current: TripStatus, wanted: TripStatus) -> ProtocolError:
    return ProtocolError(
        "invalid_transition", f"A {current.value} trip cannot become {wanted.value}."
    )
