"""The JSON Schemas (draft 2020-12) of the trips plugin's messages: what each frame's
`data` must be, and what its replies and events carry (PROTOCOL: Objects).

The server checks a frame's `data` against its schema before the handler runs
(taxi_tornado/schemas.py), so the handlers in trips.py only check what a schema cannot
say: that a `rider` or `driver` given is the sender's own id, that the trip exists.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.store import TripStatus

MAX_ADDRESS = 255

ADDRESS: dict[str, Any] = {
    "type": "string", "minLength": 1, "maxLength": MAX_ADDRESS, "pattern": "\\S",
    "description": "An address as the rider typed it: 1-255 characters, not only blanks.",
}
LAT = {"type": "number", "minimum": -90, "maximum": 90}
LNG = {"type": "number", "minimum": -180, "maximum": 180}
POSITION: dict[str, Any] = {
    "type": ["object", "null"], "required": ["lat", "lng"],
    "properties": {"lat": LAT, "lng": LNG},
    "description": "A point in degrees; null or absent when unknown.",
}
LAT_LNG: dict[str, Any] = {
    "title": "LatLng", "type": "object", "required": ["lat", "lng"],
    "properties": {"lat": LAT, "lng": LNG}, "description": "A point in degrees.",
}
OWN_ID: dict[str, Any] = {
    "type": ["string", "integer", "null"],
    "description": "Optional; when given, it must be the sender's own user id.",
}
TRIP_ID: dict[str, Any] = {"type": "string", "minLength": 1, "description": "A trip's id."}
TIME: dict[str, Any] = {"type": "string", "format": "date-time",
                        "description": "RFC 3339 in UTC with microseconds and Z."}
STATUS: dict[str, Any] = {"enum": [status.value for status in TripStatus]}

USER: dict[str, Any] = {
    "title": "User", "type": "object",
    "required": ["id", "username", "first_name", "last_name", "group", "photo"],
    "properties": {
        "id": {"type": "string"}, "username": {"type": "string"},
        "first_name": {"type": "string"}, "last_name": {"type": "string"},
        "group": {"enum": ["rider", "driver", "staff"]},
        "photo": {"type": ["string", "null"], "format": "uri"},
    },
}
TRIP: dict[str, Any] = {
    "title": "Trip", "type": "object",
    "required": ["id", "created", "updated", "pick_up_address", "drop_off_address",
                 "status", "rider", "driver", "pick_up", "drop_off"],
    "properties": {
        "id": {"type": "string"}, "created": TIME, "updated": TIME,
        "pick_up_address": {"type": "string"}, "drop_off_address": {"type": "string"},
        "status": STATUS,
        "rider": {"anyOf": [USER, {"type": "null"}]},
        "driver": {"anyOf": [USER, {"type": "null"}]},
        "pick_up": {"anyOf": [LAT_LNG, {"type": "null"}]},
        "drop_off": {"anyOf": [LAT_LNG, {"type": "null"}]},
    },
}

TRIP_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["pick_up_address", "drop_off_address"],
    "properties": {"pick_up_address": ADDRESS, "drop_off_address": ADDRESS,
                   "pick_up": POSITION, "drop_off": POSITION, "rider": OWN_ID},
}
TRIP_UPDATE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status"],
    "properties": {"id": TRIP_ID, "status": STATUS, "driver": OWN_ID},
    "description": "Other fields are ignored.",
}
TRIP_BY_ID: dict[str, Any] = {"type": "object", "required": ["id"],
                              "properties": {"id": TRIP_ID}}
DRIVER_LOCATION: dict[str, Any] = {
    "type": "object",
    "required": ["lat", "lng"],
    "properties": {
        "lat": LAT, "lng": LNG,
        "heading": {"type": ["number", "null"], "minimum": 0, "maximum": 360},
        "speed": {"type": ["number", "null"], "minimum": 0, "maximum": 1000},
    },
}
LOCATION_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["driver", "trip", "lat", "lng", "heading", "speed", "at"],
    "properties": {"driver": {"type": "string"}, "trip": {"type": "string"},
                   "lat": LAT, "lng": LNG, "heading": {"type": ["number", "null"]},
                   "speed": {"type": ["number", "null"]}, "at": TIME},
}
OFFER: dict[str, Any] = {
    "type": "object", "required": ["trip", "distance_m", "expires"],
    "properties": {"trip": TRIP, "distance_m": {"type": "number"}, "expires": TIME},
}
OFFER_REVOKED: dict[str, Any] = {
    "type": "object", "required": ["id", "reason"],
    "properties": {"id": TRIP_ID, "reason": {"enum": ["expired", "taken", "canceled"]}},
}
TRIP_DECLINED = TRIP_BY_ID
TRIP_UNMATCHED = TRIP_BY_ID

# What the trips plugin's types send back, and to others.
REPLY = {"trip.updated": TRIP}
REQUEST_EVENTS = {"trip.updated": TRIP, "trip.offer": OFFER, "trip.offer.revoked": OFFER_REVOKED,
                  "trip.unmatched": TRIP_UNMATCHED}
UPDATE_EVENTS = {"trip.updated": TRIP, "trip.offer.revoked": OFFER_REVOKED}
CANCEL_EVENTS = {"trip.updated": TRIP, "trip.offer.revoked": OFFER_REVOKED}
LOCATION_EVENTS = {"driver.location": LOCATION_EVENT}
