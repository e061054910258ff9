"""An SOS button: a rider or driver raises an alarm about a trip they are part of.

The alarm goes to the other people on the trip and to the alert group (the setting
`alert_group`, "sos" by default), which every staff connection joins; the operators see
the open alerts at GET /api/sos/alerts/, acknowledge one with `sos.ack`, and hear an
unanswered alert again every `realert_after` seconds. Events go to v2 clients only: the
course's v1 client would take any frame for a trip.

Everything an alert costs the operators is bounded: alerts are taken for live trips, or
trips that ended within `ended_grace` seconds (an alarm right after a ride is real; one
about last week's ride is not the SOS button's business); a trip has at most one open
alert (raising it again repeats nothing); a user holds at most `per_user` open alerts and
the desk at most `max_open`; and an alert whose trip ended longer ago than `ended_grace`
leaves the desk instead of being sent again.

Alerts live in the memory of the process that took them: with several server processes,
each re-alerts and lists its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from taxi_tornado.plugins import (
    Connection,
    HttpError,
    PluginContext,
    ProtocolError,
    Registry,
    Request,
)
from taxi_tornado.store import Trip

MAX_NOTE = 500
STAFF = "staff"
V2 = 2
# JSON Schemas (draft 2020-12) of each type's `data`, of its reply and of its events: the
# server checks a frame against its schema before the handler runs, and lists them all
# in GET /api/asyncapi.json.
TRIP = {"type": "string", "minLength": 1, "description": "the trip's id"}
ALERT = {"type": "object", "required": ["trip"],
         "properties": {"trip": TRIP, "note": {"type": "string", "maxLength": MAX_NOTE}}}
ACK = {"type": "object", "required": ["trip"], "properties": {"trip": TRIP}}
SENT = ACK
ALERTED = {"type": "object", "required": ["trip", "from", "note", "repeat"],
           "properties": {"trip": TRIP, "from": {"type": "string"}, "note": {"type": "string"},
                          "repeat": {"type": "integer", "minimum": 0}}}
ACKNOWLEDGED = {"type": "object", "required": ["trip", "by"],
                "properties": {"trip": TRIP, "by": {"type": "string"}}}


@dataclass(frozen=True)
class SosSettings:
    """[plugins.sos] in settings.toml, or TAXI_PLUGINS_SOS_<KEY>."""

    alert_group: str = "sos"  # the hub group that hears every alert; staff join it
    realert_after: float = 60.0  # seconds before an unanswered alert is sent again
    check_every: float = 5.0  # seconds between two looks for unanswered alerts
    ended_grace: float = 300.0  # seconds after a trip ended that alerts about it are taken
    per_user: int = 3  # open alerts one user may hold
    max_open: int = 200  # open alerts the desk holds


@dataclass
class Alert:
    trip: str
    sender: str
    note: str
    raised: datetime = field(default_factory=lambda: datetime.now(UTC))
    sent_at: float = field(default_factory=time.monotonic)
    repeat: int = 0

    def message(self) -> dict[str, Any]:
        return {"type": "sos.alert", "data": {"trip": self.trip, "from": self.sender,
                                              "note": self.note, "repeat": self.repeat}}

    def to_json(self) -> dict[str, Any]:
        return {"trip": self.trip, "from": self.sender, "note": self.note,
                "raised": self.raised.isoformat().replace("+00:00", "Z"),
                "repeat": self.repeat}


def setup(registry: Registry) -> None:
    desk = SosDesk(registry.settings(SosSettings))
    registry.add_message_type("sos.alert", desk.raise_alert, schema=ALERT,
                              reply={"sos.sent": SENT}, events={"sos.alert": ALERTED})
    registry.add_message_type("sos.ack", desk.acknowledge, schema=ACK, senders=(STAFF,),
                              reply={"sos.acknowledged": ACKNOWLEDGED},
                              events={"sos.acknowledged": ACKNOWLEDGED})
    registry.on_connect(desk.join_alert_group)
    registry.add_route("/api/sos/alerts/", desk.open_alerts)
    registry.every(desk.settings.check_every, desk.realert)
    registry.on_shutdown(desk.report_unanswered)


class SosDesk:
    """The open alerts of one server process, keyed by trip id."""

    def __init__(self, settings: SosSettings) -> None:
        self.settings = settings
        self.alerts: dict[str, Alert] = {}

    async def join_alert_group(self, conn: Connection) -> None:
        if conn.user.group == STAFF:
            await conn.join(self.settings.alert_group)

    async def raise_alert(self, conn: Connection, data: Any) -> dict[str, Any]:
        trip_id = _trip_id(data)
        note = data.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise ProtocolError("invalid", "The note is not valid.",
                                {"note": [f"At most {MAX_NOTE} characters of text."]})
        trip = await conn.store.get_trip(trip_id)
        if trip is None or conn.user.id not in (trip.rider_id, trip.driver_id):
            raise ProtocolError("not_found", "No such trip.")
        sent = {"type": "sos.sent", "data": {"trip": trip.id}}
        if trip.id in self.alerts:
            return sent  # open already: the staff hear it until one of them answers
        if self.ended_long_ago(trip):
            raise ProtocolError("forbidden", "This trip ended too long ago for an SOS "
                                "alert: call the operator.")
        self.make_room(conn.user.id)
        alert = Alert(trip.id, conn.user.id, note)
        self.alerts[trip.id] = alert
        await conn.send_group(trip.id, alert.message(), exclude_self=True, min_version=V2)
        await conn.send_group(self.settings.alert_group, alert.message(), exclude_self=True,
                              min_version=V2)
        return sent

    def ended_long_ago(self, trip: Trip) -> bool:
        """Whether the trip is over, and was so for longer than ended_grace."""
        grace = timedelta(seconds=self.settings.ended_grace)
        return trip.status.is_final and datetime.now(UTC) - trip.updated > grace

    def make_room(self, sender: str) -> None:
        """Refuse an alert past the sender's share or the desk's size (`rate_limited`)."""
        if len(self.alerts) >= self.settings.max_open:
            raise ProtocolError("rate_limited", "The SOS desk is full: call the operator.")
        held = sum(alert.sender == sender for alert in self.alerts.values())
        if held >= self.settings.per_user:
            raise ProtocolError("rate_limited", f"You have {held} open SOS alerts: the "
                                "staff are on them.")

    async def acknowledge(self, conn: Connection, data: Any) -> dict[str, Any]:
        """Staff answer an alert: the trip hears that help is on its way."""
        if conn.user.group != STAFF:
            raise ProtocolError("forbidden", "Only staff acknowledge SOS alerts.")
        trip_id = _trip_id(data)
        if self.alerts.pop(trip_id, None) is None:
            raise ProtocolError("not_found", "No open alert for this trip.")
        message = {"type": "sos.acknowledged", "data": {"trip": trip_id, "by": conn.user.id}}
        await conn.send_group(trip_id, message, min_version=V2)
        await conn.send_group(self.settings.alert_group, message, exclude_self=True,
                              min_version=V2)
        return message

    async def open_alerts(self, request: Request) -> list[dict[str, Any]]:
        """GET /api/sos/alerts/: the open alerts, oldest first, for staff only."""
        if request.user is None or request.user.group != STAFF:
            raise HttpError(403, "Only staff can see SOS alerts.")
        return [alert.to_json() for alert in self.alerts.values()]

    async def realert(self, context: PluginContext) -> None:
        """Send every alert nobody acknowledged within realert_after seconds again; one
        whose trip ended longer ago than ended_grace leaves the desk instead."""
        now = time.monotonic()
        for alert in list(self.alerts.values()):
            if now - alert.sent_at >= self.settings.realert_after:
                trip = await context.store.get_trip(alert.trip)
                if trip is None or self.ended_long_ago(trip):
                    self.alerts.pop(alert.trip, None)
                    context.log.info("SOS alert for trip %s closed: the trip ended",
                                     alert.trip)
                    continue
                alert.repeat += 1
                alert.sent_at = now
                await context.publish(self.settings.alert_group, alert.message(),
                                      min_version=V2)

    async def report_unanswered(self, context: PluginContext) -> None:
        if self.alerts:
            context.log.warning("shutting down with %d unanswered SOS alerts: trips %s",
                                len(self.alerts), ", ".join(self.alerts))


def _trip_id(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("trip"), str):
        raise ProtocolError("invalid", "Name the trip.", {"trip": ["This field is required."]})
    trip_id: str = data["trip"]
    return trip_id
