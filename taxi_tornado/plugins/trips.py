"""The `trips` plugin: request, claim, progress, cancel, and live driver location.

Every change is stored before anybody hears of it; a claim is the store's compare-and-set,
so when drivers race exactly one wins. Notices that the course's React client would
misread (a trip taken, a location) go only to v2 connections.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.hub import Hub
from taxi_tornado.plugins.admin import tell_staff
from taxi_tornado.plugins.api import Connection, ProtocolError, Registry
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, Trip, TripStatus, format_time, now

DRIVERS = "drivers"
V2 = 2
MAX_ADDRESS = 255


def setup(registry: Registry) -> None:
    registry.add_message_type("trip.request", request_trip, aliases=("create.trip",))
    registry.add_message_type("trip.update", update_trip, aliases=("update.trip",))
    registry.add_message_type("trip.cancel", cancel_trip)
    registry.add_message_type("driver.location", driver_location)
    registry.on_connect(join_trip_groups)


async def join_trip_groups(conn: Connection) -> None:
    """Drivers join the pool; everyone joins the groups of their unfinished trips."""
    if conn.user.group == "driver":
        await conn.join(DRIVERS)
    for trip_id in await conn.store.active_trip_ids(conn.user.id):
        await conn.join(trip_id)


def trip_message(trip: Trip, conn: Connection) -> dict[str, Any]:
    return {"type": "trip.updated", "data": trip.to_json(conn.base_url)}


async def request_trip(conn: Connection, data: Any) -> dict[str, Any]:
    _require_group(conn, "rider", "Only riders can request trips.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    pick_up = _address(fields, "pick_up_address", errors)
    drop_off = _address(fields, "drop_off_address", errors)
    _own_id(conn, fields, "rider", errors)
    if errors:
        raise ProtocolError("invalid", "The trip request is not valid.", errors)
    trip = await conn.store.create_trip(conn.user.id, pick_up, drop_off)
    message = trip_message(trip, conn)
    await conn.join(trip.id)
    await conn.send_group(DRIVERS, message)
    await _tell_staff(conn.hub, conn.settings, message)
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
    await _tell_staff(conn.hub, conn.settings, message)
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
    message = trip_message(claimed, conn)
    await conn.join(trip.id)
    await conn.send_group(trip.id, message, exclude_self=True)
    await conn.send_group(DRIVERS, message, exclude_self=True, min_version=V2)
    await _tell_staff(conn.hub, conn.settings, message)
    return message


async def cancel_trip(conn: Connection, data: Any) -> dict[str, Any]:
    _require_group(conn, "rider", "Only the trip's rider can cancel it.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    trip_id = _trip_id(fields, errors)
    if errors:
        raise ProtocolError("invalid", "The cancel request is not valid.", errors)
    trip = await _get_trip(conn, trip_id)
    canceled = await _cancel(conn.store, trip)
    message = trip_message(canceled, conn)
    await _announce_cancel(conn.hub, conn.settings, trip.status, message, exclude=conn.id)
    return message


async def cancel_for_staff(
    hub: Hub, store: Store, settings: Settings, trip_id: str, base_url: str
) -> dict[str, Any]:
    """An operator cancels a trip (the admin API): riders and drivers are told exactly as
    when the rider cancels, and nobody is excluded. Returns the `trip.updated` message."""
    trip = await store.get_trip(trip_id)
    if trip is None:
        raise ProtocolError("not_found", "No such trip.")
    canceled = await _cancel(store, trip)
    message = {"type": "trip.updated", "data": canceled.to_json(base_url)}
    await _announce_cancel(hub, settings, trip.status, message, exclude=None)
    return message


async def _cancel(store: Store, trip: Trip) -> Trip:
    if trip.status not in (TripStatus.REQUESTED, TripStatus.STARTED):
        raise _transition(trip.status, TripStatus.CANCELED)
    canceled = await store.update_trip(
        trip.id, expected_status=trip.status, expected_driver_id=trip.driver_id,
        status=TripStatus.CANCELED, driver_id=trip.driver_id,
    )
    if canceled is None:
        raise ProtocolError("conflict", "The trip changed while you were canceling it.")
    return canceled


async def _announce_cancel(hub: Hub, settings: Settings, was: TripStatus,
                           message: dict[str, Any], exclude: str | None) -> None:
    """The trip's group hears it; so does the drivers' pool (v2) when nobody held it."""
    await hub.send(message["data"]["id"], message, exclude=exclude)
    if was is TripStatus.REQUESTED:
        await hub.send(DRIVERS, message, min_version=V2)
    await _tell_staff(hub, settings, message)


async def _tell_staff(hub: Hub, settings: Settings, message: dict[str, Any]) -> None:
    """Every stored change of a trip also reaches the operators' page (`admin.trip`)."""
    if settings.admin.enabled:
        await tell_staff(hub, "admin.trip", message["data"])


async def driver_location(conn: Connection, data: Any) -> None:
    """Relay a position to each trip the driver is driving; nothing is stored."""
    _require_group(conn, "driver", "Only drivers send their location.")
    fields = _object(data)
    errors: dict[str, list[str]] = {}
    lat = _number(fields, "lat", -90, 90, errors, required=True)
    lng = _number(fields, "lng", -180, 180, errors, required=True)
    heading = _number(fields, "heading", 0, 360, errors)
    speed = _number(fields, "speed", 0, 1000, errors)
    if errors:
        raise ProtocolError("invalid", "The location is not valid.", errors)
    at = format_time(now())
    for trip_id in await conn.store.active_trip_ids(conn.user.id):
        message = {"type": "driver.location", "data": {
            "driver": conn.user.id, "trip": trip_id, "lat": lat, "lng": lng,
            "heading": heading, "speed": speed, "at": at,
        }}
        await conn.send_group(trip_id, message, exclude_self=True, min_version=V2)
    return None


async def _get_trip(conn: Connection, trip_id: str) -> Trip:
    """The trip if the user may act on it; a driver may see REQUESTED trips and their own."""
    trip = await conn.store.get_trip(trip_id)
    if trip is None:
        raise ProtocolError("not_found", "No such trip.")
    user = conn.user
    if user.group == "rider" and trip.rider_id != user.id:
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


def _own_id(
    conn: Connection, fields: dict[str, Any], name: str, errors: dict[str, list[str]]
) -> None:
    value = fields.get(name)
    if value is not None and str(value) != conn.user.id:
        errors[name] = ["Must be your own user id."]


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
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        errors[name] = [f"Must be a number from {low} to {high}."]
        return None
    return float(value)


def _transition(current: TripStatus, wanted: TripStatus) -> ProtocolError:
    return ProtocolError(
        "invalid_transition", f"A {current.value} trip cannot become {wanted.value}."
    )
