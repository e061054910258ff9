"""A synthetic driver: cruises the city along its streets, reports its position every
few (simulated) seconds, goes unavailable now and then, takes or declines offers
(`nearest`) or the requests the pool hears of (`broadcast`), and drives each trip it
wins to the pick-up and the drop-off: STARTED -> IN_PROGRESS -> COMPLETED.

It decides, acts and records; it never checks the server (the checker does, after).
"""

from __future__ import annotations

import asyncio
import enum
import random
from typing import Any

from taxi_tornado.client import TaxiError
from taxi_tornado.simulate.city import City, Point, Route, distance_m
from taxi_tornado.simulate.clock import Clock
from taxi_tornado.simulate.options import Behaviour
from taxi_tornado.simulate.recorder import Phone

DRIVERS = "drivers"


class Duty(enum.Enum):
    IDLE = "idle"  # available, cruising
    OFF = "off"  # unavailable for a while
    TO_PICK_UP = "to_pick_up"  # STARTED
    RIDING = "riding"  # IN_PROGRESS


class Candidate:
    """A trip the driver is looking at: from an offer or from the pool."""

    __slots__ = ("offered", "trip")

    def __init__(self, trip: dict[str, Any], offered: bool) -> None:
        self.trip = trip
        self.offered = offered


class Driver:
    def __init__(self, phone: Phone, clock: Clock, city: City, rng: random.Random,
                 behaviour: Behaviour, position_every_wall: float) -> None:
        self.phone = phone
        self.duty = Duty.IDLE
        self.position = city.random_point(rng)
        self.trip: dict[str, Any] | None = None
        self.candidate: Candidate | None = None
        self._clock, self._city, self._rng = clock, city, rng
        self._behaviour = behaviour
        self._every = position_every_wall
        self._speed = rng.uniform(*behaviour.drive_speed_mps)
        self._route = Route()
        self._heading: float | None = None
        self._off_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        phone.client.on("trip.offer", self._on_offer)
        phone.client.on("trip.offer.revoked", self._on_revoked)
        phone.client.on("trip.updated", self._on_trip)

    async def run(self, stop: asyncio.Event, winding_down: asyncio.Event) -> None:
        """Move, report, and step through the duty until `stop`; during the wind-down
        it no longer goes off duty."""
        last = self._clock.sim()
        while not stop.is_set():
            await asyncio.sleep(self._every * self._rng.uniform(0.8, 1.2))
            now = self._clock.sim()
            self.position, heading = self._route.advance(self.position,
                                                         self._speed * (now - last))
            self._heading = heading if heading is not None else self._heading
            last = now
            await self._report()
            await self._step(now, winding_down.is_set())
        for task in list(self._tasks):
            task.cancel()

    async def _report(self) -> None:
        data: dict[str, Any] = self.position.as_json()
        if self._heading is not None:
            data["heading"] = round(self._heading, 1)
            data["speed"] = round(self._speed, 1) if not self._route.done else 0.0
        groups = (self.trip["id"],) if self.trip is not None else ()
        await self.phone.send("driver.location", data, groups=groups)

    async def _step(self, now: float, winding_down: bool) -> None:
        if self.duty is Duty.OFF:
            if now >= self._off_until or winding_down:
                await self._set_status("available")
                self.duty = Duty.IDLE
            return
        if self.duty is Duty.IDLE:
            if self.candidate is None and not winding_down and self._goes_off(now):
                return
            if self._route.done:
                self._route = Route.along_streets(
                    self.position, self._city.point_near(self._rng, self.position, 300, 2500),
                    self._rng)
            return
        if not self._route.done or self.trip is None:
            return
        if self.duty is Duty.TO_PICK_UP:
            await self._progress("IN_PROGRESS", Duty.RIDING)
        elif self.duty is Duty.RIDING:
            await self._progress("COMPLETED", Duty.IDLE)

    def _goes_off(self, now: float) -> bool:
        elapsed = self._every * self._clock.speed
        if self._rng.random() >= elapsed / self._behaviour.off_every_s:
            return False
        self.duty = Duty.OFF
        self._off_until = now + self._rng.expovariate(1 / self._behaviour.off_for_s)
        self._spawn(self._set_status("unavailable"))
        return True

    async def _set_status(self, status: str) -> None:
        await self.phone.request("driver.status", {"status": status})

    async def _progress(self, status: str, then: Duty) -> None:
        assert self.trip is not None
        trip = self.trip
        reply = await self.phone.request("trip.update", {"id": trip["id"], "status": status},
                                         groups=(trip["id"],))
        if isinstance(reply, TaxiError) and reply.code not in ("timeout",):
            self._drop_trip()
            return
        if isinstance(reply, TaxiError):
            return  # timed out: tried again next step
        if then is Duty.RIDING:
            self.duty = Duty.RIDING
            drop_off = _point(trip.get("drop_off")) or self._city.random_point(self._rng)
            self._route = Route.along_streets(self.position, drop_off, self._rng)
        else:
            self._drop_trip()

    def _drop_trip(self) -> None:
        self.trip = None
        self.duty = Duty.IDLE
        self._route = Route()

    # --- what the driver hears -------------------------------------------------------

    def _on_offer(self, data: Any, frame: dict[str, Any]) -> None:
        trip = data.get("trip") if isinstance(data, dict) else None
        if not isinstance(trip, dict):
            return
        if self._free() and self._rng.random() < self._behaviour.accept:
            self._consider(Candidate(trip, offered=True))
            return
        self._spawn(self._decline(trip["id"]))

    def _on_revoked(self, data: Any, frame: dict[str, Any]) -> None:
        if self.candidate is not None and isinstance(data, dict) \
                and self.candidate.trip["id"] == data.get("id"):
            self.candidate = None

    def _on_trip(self, data: Any, frame: dict[str, Any]) -> None:
        if not isinstance(data, dict):
            return
        trip_id, status = data.get("id"), data.get("status")
        if self.candidate is not None and self.candidate.trip["id"] == trip_id \
                and status != "REQUESTED":
            self.candidate = None
        if self.trip is not None and self.trip["id"] == trip_id and status == "CANCELED":
            self._drop_trip()
            return
        pos = frame.get("pos") if isinstance(frame, dict) else None
        from_pool = isinstance(pos, dict) and pos.get("group") == DRIVERS
        if status == "REQUESTED" and from_pool and self._free() and self._near(data) \
                and self._rng.random() < self._behaviour.accept:
            self._consider(Candidate(data, offered=False))

    def _free(self) -> bool:
        return self.duty is Duty.IDLE and self.candidate is None and self.trip is None

    def _near(self, trip: dict[str, Any]) -> bool:
        pick_up = _point(trip.get("pick_up"))
        return pick_up is not None and \
            distance_m(self.position, pick_up) <= self._behaviour.reach_m

    def _consider(self, candidate: Candidate) -> None:
        self.candidate = candidate
        self._spawn(self._decide(candidate))

    async def _decide(self, candidate: Candidate) -> None:
        """Look at the screen a few seconds, then claim, unless the trip went away."""
        await self._clock.sleep(self._rng.uniform(*self._behaviour.decide_s))
        if self.candidate is not candidate or self.duty is not Duty.IDLE:
            return
        trip = candidate.trip
        pick_up = _point(trip.get("pick_up"))
        distance = distance_m(self.position, pick_up) if pick_up is not None else None
        groups = (trip["id"],) if candidate.offered else (trip["id"], DRIVERS)
        reply = await self.phone.request("trip.update", {"id": trip["id"], "status": "STARTED"},
                                         groups=groups, distance_m=distance)
        if self.candidate is candidate:
            self.candidate = None
        if isinstance(reply, TaxiError):
            return
        self.trip = trip
        self.duty = Duty.TO_PICK_UP
        self._route = Route.along_streets(self.position, pick_up or self.position, self._rng)

    async def _decline(self, trip_id: str) -> None:
        await self.phone.request("trip.decline", {"id": trip_id})

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _point(value: Any) -> Point | None:
    if isinstance(value, dict) and isinstance(value.get("lat"), int | float) \
            and isinstance(value.get("lng"), int | float):
        return Point(float(value["lat"]), float(value["lng"]))
    return None
