"""A synthetic rider: requests trips at a Poisson rate from somewhere in the city to
somewhere a few kilometres off, sometimes changes their mind while the trip is
REQUESTED, gives up on one nobody takes, and follows each trip to its end through the
events, reloading over HTTP when a resume says the replay could not recover a group
(as docs/clients.md tells an app to)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

from taxi_tornado.client import TaxiError
from taxi_tornado.simulate.api import ApiError
from taxi_tornado.simulate.city import City
from taxi_tornado.simulate.clock import Clock
from taxi_tornado.simulate.options import Behaviour
from taxi_tornado.simulate.recorder import FINAL_STATUSES, Phone

RANK = {"REQUESTED": 0, "STARTED": 1, "IN_PROGRESS": 2, "COMPLETED": 3, "CANCELED": 3}
Reload = Callable[[], Awaitable[list[dict[str, Any]]]]


class Rider:
    def __init__(self, phone: Phone, clock: Clock, city: City, rng: random.Random,
                 behaviour: Behaviour, reload: Reload) -> None:
        self.phone = phone
        self.statuses: dict[str, str] = {}  # trip id -> the latest status seen
        self._clock, self._city, self._rng = clock, city, rng
        self._behaviour = behaviour
        self._reload = reload
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        phone.client.on("trip.updated", self._on_trip)
        phone.client.on("resumed", self._on_resumed)

    async def run(self, winding_down: asyncio.Event, stop: asyncio.Event) -> None:
        """Request trips until `winding_down`; follow the last one until it ends or
        `stop` is set."""
        gap = self._rng.uniform(0, self._behaviour.request_every_s)
        while not winding_down.is_set() and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(winding_down.wait(), self._clock.to_wall(gap))
            gap = self._rng.expovariate(1 / self._behaviour.request_every_s)
            if winding_down.is_set():
                break
            trip_id = await self._request()
            if trip_id is not None:
                await self._follow(trip_id, stop)
        for task in list(self._tasks):
            task.cancel()

    async def _request(self) -> str | None:
        pick_up = self._city.random_point(self._rng, within=0.8)
        drop_off = self._city.point_near(self._rng, pick_up, *self._behaviour.trip_m)
        reply = await self.phone.request("trip.request", {
            "pick_up_address": f"{pick_up.lat:.5f},{pick_up.lng:.5f}",
            "drop_off_address": f"{drop_off.lat:.5f},{drop_off.lng:.5f}",
            "pick_up": pick_up.as_json(), "drop_off": drop_off.as_json()})
        if isinstance(reply, TaxiError):
            if reply.retry_after is not None:
                await asyncio.sleep(reply.retry_after)
            return None
        trip_id = str(reply["id"])
        self._see(trip_id, str(reply.get("status")))
        return trip_id

    async def _follow(self, trip_id: str, stop: asyncio.Event) -> None:
        """Wait for the end; cancel on a change of mind or past patience, both only
        while the trip is (as far as the rider knows) REQUESTED."""
        behaviour, start = self._behaviour, self._clock.sim()
        cancel_at = start + self._rng.uniform(*behaviour.cancel_after_s) \
            if self._rng.random() < behaviour.cancel else None
        give_up_at = start + behaviour.patience_s
        while self.statuses.get(trip_id) not in FINAL_STATUSES and not stop.is_set():
            now = self._clock.sim()
            if now >= start + behaviour.follow_limit_s:
                await self._reload_now()
                return
            requested = self.statuses.get(trip_id) == "REQUESTED"
            if requested and cancel_at is not None and now >= cancel_at:
                cancel_at = None
                await self._cancel(trip_id, gave_up=False)
                continue
            if requested and now >= give_up_at:
                give_up_at = float("inf")
                await self._cancel(trip_id, gave_up=True)
                continue
            self._changed.clear()
            limit = start + behaviour.follow_limit_s
            deadlines = [t for t in (cancel_at, give_up_at, limit) if t is not None and t > now]
            wait = min([self._clock.to_wall(t - now) for t in deadlines] + [1.0])
            waiter = asyncio.ensure_future(self._changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait((waiter, stopper), timeout=max(wait, 0.01),
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()

    async def _cancel(self, trip_id: str, *, gave_up: bool) -> None:
        reply = await self.phone.request("trip.cancel", {"id": trip_id}, groups=(trip_id,))
        if isinstance(reply, TaxiError):
            return
        if gave_up:
            self.phone.log.gave_up.add(trip_id)
        self._see(trip_id, str(reply.get("status")))

    def _see(self, trip_id: str, status: str) -> None:
        if RANK.get(status, -1) >= RANK.get(self.statuses.get(trip_id, ""), -1):
            self.statuses[trip_id] = status
            self._changed.set()

    def _on_trip(self, data: Any, frame: dict[str, Any]) -> None:
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            self._see(data["id"], str(data.get("status")))

    def _on_resumed(self, data: dict[str, Any]) -> None:
        groups = data.get("groups") or {}
        if any(not (isinstance(g, dict) and g.get("recovered")) for g in groups.values()):
            task = asyncio.ensure_future(self._reload_now())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reload_now(self) -> None:
        """GET /api/trip/, recorded as what the app showed."""
        try:
            trips = await self._reload()
        except (ApiError, OSError):  # the next resume, or the end of the run, reloads
            return
        seen = {str(trip["id"]): str(trip["status"]) for trip in trips}
        self.phone.log.reloads.append((self._clock.wall(), seen))
        for trip_id, status in seen.items():
            self._see(trip_id, status)
