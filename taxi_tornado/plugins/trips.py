"""The `trips` plugin: request, claim, progress, cancel, decline, and live driver location.

Every change is stored before anybody hears of it; a claim is the store's compare-and-set,
so when drivers race exactly one wins. Who hears of a new trip, and which drivers may see
and claim it, is the dispatch strategy's business (`dispatch.mode`): this plugin calls it
and never knows which one runs. Notices that the course's React client would misread (a
trip taken, a location) go only to v2 connections.
"""

from __future__ import annotations

import time
from typing import Any

from taxi_tornado import metrics
from taxi_tornado.dispatch import broadcast
from taxi_tornado.dispatch.broadcast import DRIVERS, V2
from taxi_tornado.dispatch.service import dispatch_of
from taxi_tornado.plugins.admin import tell_staff
from taxi_tornado.plugins.api import Connection, ProtocolError, Registry
from taxi_tornado.plugins.follow import follow, listen_for_follows, unfollow
from taxi_tornado.plugins.trip_quota import TripQuota
from taxi_tornado.store import STAFF, LatLng, Trip, TripStatus, format_time, now

MAX_ADDRESS = 255
NUMBER = (int, float)


def setup(registry: Registry) -> None:
    registry.add_message_type("trip.request", TripQuota().guard(request_trip),
                              aliases=("create.trip",))
    registry.add_message_type("trip.update", update_trip, aliases=("update.trip",))
    registry.add_message_type("trip.cancel", cancel_trip)
    registry.add_message_type("trip.decline", decline_trip)
    registry.add_message_type("driver.location", driver_location)
    registry.on_connect(join_trip_groups)
    registry.on_startup(listen_for_follows)


async def join_trip_groups(conn: Connection) -> None:
    """Drivers join the pool; everyone joins the groups of their unfinished trips."""
    if conn.user.group == "driver":
        await conn.join(DRIVERS)
    for trip_id in await conn.store.active_trip_ids(conn.user.id):
        await conn.join(trip_id)


def trip_message(trip: Trip, conn: Connection) -> dict[str, Any]:
    return broadcast.trip_message(trip, conn.base_url)


async def request_trip(conn: Connection, data: Any) -> dict[str, Any]:
    _require_group(conn, "rider", "Only riders can request trips.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    pick_up = _address(fields, "pick_up_address", errors)
    drop_off = _address(fields, "drop_off_address", errors)
    pick_up_at = _position(fields, "pick_up", errors)
    drop_off_at = _position(fields, "drop_off", errors)
    _own_id(conn, fields, "rider", errors)
    if errors:
        raise ProtocolError("invalid", "The trip request is not valid.", errors)
    trip = await conn.store.create_trip(conn.user.id, pick_up, drop_off, pick_up_at,
                                        drop_off_at)
    message = trip_message(trip, conn)
    await conn.join(trip.id)
    await dispatch_of(conn).strategy.dispatch(conn, trip)
    await _tell_staff(conn, message)
    await follow(conn.hub, conn.user.id, trip.id)  # last: see plugins/follow.py
    return message


async def update_trip(conn: Connection, data: Any) -> dict[str, Any]:
    _require_group(conn, "driver", "Only drivers can update trips.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    trip_id = _trip_id(fields, errors)
    status = _status(fields, errors)
    _own_id(conn, fields, "driver", errors)
    if errors:
        raise ProtocolError("invalid", "The trip update is not valid.", errors)
    assert status is not None
    if status is TripStatus.CANCELED:
        raise ProtocolError("forbidden", "Only the trip's rider can cancel it (trip.cancel).")
    trip = await _get_trip(conn, trip_id)
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
    await conn.send_group(trip.id, message, exclude_self=True)
    if updated.status.is_final:
        await dispatch_of(conn).trip_changed(conn.user.id)
    await _tell_staff(conn, message)
    if updated.status.is_final:
        await unfollow(conn.hub, trip.id)  # last: see plugins/follow.py
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
    await dispatch.trip_changed(conn.user.id)
    message = trip_message(claimed, conn)
    await conn.join(trip.id)
    await conn.send_group(trip.id, message, exclude_self=True)
    await dispatch.strategy.claimed(conn, claimed)
    await _tell_staff(conn, message)
    if claimed.status.is_final:  # claimed straight to COMPLETED: nothing to follow
        await unfollow(conn.hub, trip.id)
    else:
        await follow(conn.hub, conn.user.id, trip.id)  # last: see plugins/follow.py
    return message


async def cancel_trip(conn: Connection, data: Any) -> dict[str, Any]:
    _require_group(conn, "rider", "Only the trip's rider can cancel it.")
    trip_id = _only_trip_id(data, "The cancel request is not valid.")
    return await _cancel(conn, await _get_trip(conn, trip_id))


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
    await conn.send_group(trip.id, message, exclude_self=True)
    if trip.status is TripStatus.REQUESTED:
        await dispatch_of(conn).strategy.canceled(conn, canceled)
    if trip.driver_id is not None:
        await dispatch_of(conn).trip_changed(trip.driver_id)
    await _tell_staff(conn, message)
    await unfollow(conn.hub, trip.id)  # last: see plugins/follow.py
    return message


async def _tell_staff(conn: Connection, message: dict[str, Any]) -> None:
    """Every stored change of a trip also reaches the operators' page (`admin.trip`)."""
    if conn.settings.admin.enabled:
        await tell_staff(conn.hub, "admin.trip", message["data"])


async def decline_trip(conn: Connection, data: Any) -> dict[str, Any]:
    """A driver turns down the trip they were offered (`nearest` dispatch)."""
    _require_group(conn, "driver", "Only drivers decline trips.")
    trip_id = _only_trip_id(data, "The decline is not valid.")
    trip = await conn.store.get_trip(trip_id)
    if trip is None or not await dispatch_of(conn).strategy.decline(conn, trip):
        raise ProtocolError("not_found", "You hold no offer for this trip.")
    return {"type": "trip.declined", "data": {"id": trip.id}}



async def driver_location(conn: Connection, data: Any) -> None:
    """Record the position in the location index (for dispatch and the nearby API) and
    relay it to each trip the driver is driving; nothing goes to the store."""
    _require_group(conn, "driver", "Only drivers send their location.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    lat = _number(fields, "lat", -90, 90, errors, required=True)
    lng = _number(fields, "lng", -180, 180, errors, required=True)
    heading = _number(fields, "heading", 0, 360, errors)
    speed = _number(fields, "speed", 0, 1000, errors)
    if errors:
        raise ProtocolError("invalid", "The location is not valid.", errors)
    assert lat is not None and lng is not None
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


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError("invalid", "`data` must be an object.",
                            {"data": ["Expected an object."]})
    return data


def _address(fields: dict[str, Any], name: str, errors: dict[str, list[str]]) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        errors[name] = ["This field is required."]
        return ""
    if len(value) > MAX_ADDRESS:
        errors[name] = [f"Ensure this field has no more than {MAX_ADDRESS} characters."]
    return value


def _position(fields: dict[str, Any], name: str,
              errors: dict[str, list[str]]) -> LatLng | None:
    """An optional {"lat", "lng"} object; its errors are listed under `name`."""
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        errors[name] = ['Expected an object with "lat" and "lng".']
        return None
    problems: dict[str, list[str]] = {}
    lat = _number(value, "lat", -90, 90, problems, required=True)
    lng = _number(value, "lng", -180, 180, problems, required=True)
    if problems:
        errors[name] = [f"{key}: {message}" for key, messages in problems.items()
                        for message in messages]
        return None
    assert lat is not None and lng is not None
    return LatLng(lat, lng)


def _own_id(
    conn: Connection, fields: dict[str, Any], name: str, errors: dict[str, list[str]]
) -> None:
    value = fields.get(name)
    if value is not None and str(value) != conn.user.id:
        errors[name] = ["Must be your own user id."]


def _only_trip_id(data: Any, invalid: str) -> str:
    """The trip id of a message whose data is just `{"id": ...}`; `invalid` says which
    request was not valid."""
    errors: dict[str, list[str]] = {}
    trip_id = _trip_id(_object(data), errors)
    if errors:
        raise ProtocolError("invalid", invalid, errors)
    return trip_id


def _trip_id(fields: dict[str, Any], errors: dict[str, list[str]]) -> str:
    value = fields.get("id")
    if not isinstance(value, str) or not value:
        errors["id"] = ["This field is required."]
        return ""
    return value


def _status(fields: dict[str, Any], errors: dict[str, list[str]]) -> TripStatus | None:
    value = fields.get("status")
    if value is None:
        errors["status"] = ["This field is required."]
        return None
    try:
        return TripStatus(value)
    except ValueError:
        errors["status"] = [f'"{value}" is not a valid choice.']
        return None


def _number(
    fields: dict[str, Any],
    name: str,
    low: float,
    high: float,
    errors: dict[str, list[str]],
    *,
    required: bool = False,
) -> float | None:
    value = fields.get(name)
    if value is None:
        if required:
            errors[name] = ["This field is required."]
        return None
    if isinstance(value, bool) or not isinstance(value, NUMBER) or not low <= value <= high:
        errors[name] = [f"Must be a number from {low} to {high}."]
        return None
    return float(value)


def _transition(current: TripStatus, wanted: TripStatus) -> ProtocolError:
    return ProtocolError(
        "invalid_transition", f"A {current.value} trip cannot become {wanted.value}."
    )
