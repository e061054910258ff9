"""The workload's side of the Jepsen split: what every phone saw, written down as it
happened, judged by nothing. A `Phone` is one synthetic app: a `TaxiClient` over a real
socket, and the `PhoneLog` of everything it sent and heard. The checker reads the logs
after the run.

Times are wall seconds since the run started (the clock's `wall()`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from taxi_tornado.client import TaxiClient, TaxiError
from taxi_tornado.simulate.clock import Clock

#: The event types a rider's or a driver's socket is sent through a group.
GROUP_EVENTS = ("trip.updated", "driver.location", "trip.offer", "trip.offer.revoked",
                "trip.unmatched")
FINAL_STATUSES = frozenset({"COMPLETED", "CANCELED"})


class Event(NamedTuple):
    """One event the app was handed, in the order it was handed."""

    t: float
    type: str
    group: str | None  # from `pos`; None for an event without one
    epoch: str | None
    offset: int | None
    trip: str | None  # the trip it is about
    status: str | None  # trip.updated: the trip's status
    origin: str | None  # the user whose own action it reports (never sent to them)


class Request(NamedTuple):
    """One request and how it ended: "ok" or the error code."""

    t: float
    done: float
    type: str
    trip: str | None  # the trip it named, or (trip.request) the one the reply made
    status: str | None  # trip.update: the status asked for; else the reply's status
    outcome: str
    distance_m: float | None = None  # a claim: from the driver to the pick-up


class Send(NamedTuple):
    """A change this phone caused in `group`: the server leaves its sender out of the
    group's send, so the phone never hears that offset."""

    t: float
    group: str


@dataclass
class PhoneLog:
    """Everything one phone sent and heard; the checker's input."""

    user_id: str
    username: str
    role: str  # "rider" | "driver"
    events: list[Event] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    # (index into events, group): from that event on, `group` starts a new span: the
    # resume after the disconnect at that index could not recover it.
    breaks: list[tuple[int, str]] = field(default_factory=list)
    # What a reload over HTTP showed: (time, {trip id: status}).
    reloads: list[tuple[float, dict[str, str]]] = field(default_factory=list)
    # Trips the rider gave up waiting for (cancelled past its patience).
    gave_up: set[str] = field(default_factory=set)
    disconnects: int = 0
    resumes: int = 0
    groups_lost: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class Phone:
    """A synthetic app: its client, its log, and a request/send that log themselves."""

    __slots__ = ("_clock", "_disconnect_at", "client", "log")

    def __init__(self, client: TaxiClient, log: PhoneLog, clock: Clock) -> None:
        self.client = client
        self.log = log
        self._clock = clock
        self._disconnect_at = 0
        for type in GROUP_EVENTS:
            client.on(type, self._on_event)
        client.on("error", self._on_error)
        client.on("disconnect", self._on_disconnect)
        client.on("resumed", self._on_resumed)

    async def request(self, type: str, data: dict[str, Any], *,
                      groups: tuple[str, ...] = (),
                      distance_m: float | None = None) -> dict[str, Any] | TaxiError:
        """The reply's data, or the TaxiError it ended with (logged with its code).
        `groups` are the groups this change is sent to, leaving this phone out."""
        t = self._clock.wall()
        status = data.get("status") if type == "trip.update" else None
        trip = data.get("id")
        try:
            reply = await self.client.request(type, data)
        except TaxiError as error:
            self.log.errors[error.code] += 1
            self.log.requests.append(Request(t, self._clock.wall(), type, trip, status,
                                             error.code, distance_m))
            return error
        reply = reply if isinstance(reply, dict) else {}
        if type == "trip.request":
            trip = reply.get("id")
        if type != "trip.update":
            status = reply.get("status")
        done = self._clock.wall()
        self.log.requests.append(Request(t, done, type, trip, status, "ok", distance_m))
        self.log.sends.extend(Send(done, group) for group in groups)
        return reply

    async def send(self, type: str, data: dict[str, Any], *,
                   groups: tuple[str, ...] = ()) -> bool:
        went = await self.client.send(type, data)
        if went:
            now = self._clock.wall()
            self.log.sends.extend(Send(now, group) for group in groups)
        return went

    # --- what the client hands the app ----------------------------------------------

    def _on_event(self, data: Any, frame: dict[str, Any]) -> None:
        self.log.events.append(event_of(self._clock.wall(), frame))

    def _on_error(self, data: Any, frame: dict[str, Any]) -> None:
        code = data.get("code") if isinstance(data, dict) else None
        self.log.errors[str(code or "error")] += 1

    def _on_disconnect(self, data: dict[str, Any]) -> None:
        self.log.disconnects += 1
        self._disconnect_at = len(self.log.events)

    def _on_resumed(self, data: dict[str, Any]) -> None:
        """Groups the resume could not recover break their span where the link
        dropped: the events the client held back during the resume come after."""
        self.log.resumes += 1
        for group, result in (data.get("groups") or {}).items():
            if not (isinstance(result, dict) and result.get("recovered")):
                self.log.groups_lost += 1
                self.log.breaks.append((self._disconnect_at, group))


def event_of(t: float, frame: dict[str, Any]) -> Event:
    """The parts of a frame the checker needs."""
    type, data = frame.get("type", ""), frame.get("data")
    data = data if isinstance(data, dict) else {}
    pos = frame.get("pos")
    pos = pos if isinstance(pos, dict) else {}
    trip, status, origin = _about(type, data)
    return Event(t, type, pos.get("group"), pos.get("epoch"), pos.get("offset"),
                 trip, status, origin)


def _about(type: str, data: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(trip id, status, origin). A claim or progress is its driver's doing, a request
    its rider's; a cancel is the rider's or the server's, which the checker tells
    apart from the rider's own requests."""
    if type == "trip.updated":
        status = data.get("status")
        origin = None
        if status == "REQUESTED":
            origin = _user_id(data.get("rider"))
        elif status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
            origin = _user_id(data.get("driver"))
        return data.get("id"), status, origin
    if type == "driver.location":
        return data.get("trip"), None, data.get("driver")
    if type == "trip.offer":
        trip = data.get("trip")
        return (trip.get("id") if isinstance(trip, dict) else None), None, None
    return data.get("id"), None, None


def _user_id(user: Any) -> str | None:
    return user.get("id") if isinstance(user, dict) else None
