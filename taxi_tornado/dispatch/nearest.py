"""`nearest`: a trip with a pick-up position is offered to the nearest available drivers,
a batch at a time, in widening circles, until one takes it (docs/protocol.md, Dispatch).

A round offers the trip to the `dispatch.batch` nearest available v2 drivers not asked
before, within a circle that doubles each round up to `dispatch.max_radius_m` (a circle
with nobody new in it doubles at once). A round ends when its offers expire
(`dispatch.offer_timeout`) or are all declined; past `dispatch.max_wait` the server
cancels the trip. A trip without a position is broadcast.

The state lives in the offer book, shared by every process; whichever process hears a
decline may begin the next round (the book's compare-and-set on the round number keeps
it to one), and the process holding the trip's lease runs its timers. Every process
scans for lapsed leases and takes over the trips of a process that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from taxi_tornado import metrics
from taxi_tornado.dispatch.broadcast import V2, BroadcastStrategy, trip_message
from taxi_tornado.dispatch.locations import NearbyDriver
from taxi_tornado.dispatch.offers import Dispatching
from taxi_tornado.dispatch.strategy import DispatchContext
from taxi_tornado.store import Trip, TripStatus, format_time

if TYPE_CHECKING:
    from taxi_tornado.dispatch.strategy import Connection

log = logging.getLogger("taxi_tornado.dispatch")


class NearestStrategy(BroadcastStrategy):
    def __init__(self, context: DispatchContext) -> None:
        super().__init__(context)
        self.config = context.settings.dispatch
        self.offers = context.offers
        # A lease outlives two missed renewals; with the scan period, a dead process's
        # trips are taken over within 3/4 of an offer's life.
        self.lease_s = self.config.offer_timeout / 2
        self.scan_s = self.config.offer_timeout / 4
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._scanner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._scanner = asyncio.ensure_future(self._take_over_forever())

    async def stop(self) -> None:
        """Stop driving and hand the leases back, so another process carries on at once."""
        driven = list(self._driving)
        tasks = [task for task in (self._scanner, *self._driving.values()) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for trip_id in driven:
            with contextlib.suppress(Exception):
                await self.offers.release(trip_id, self.context.node)

    # The strategy contract

    async def dispatch(self, conn: Connection, trip: Trip) -> None:
        if trip.pick_up is None or trip.rider_id is None:
            await super().dispatch(conn, trip)
            return
        dispatching = Dispatching(
            trip_id=trip.id, rider_id=trip.rider_id, lat=trip.pick_up.lat,
            lng=trip.pick_up.lng, base_url=conn.base_url,
            deadline=trip.created.timestamp() + self.config.max_wait)
        # Recording the dispatch and finding the first batch are independent: with Redis
        # they overlap, so the first offer waits for two round trips, not three.
        opening = asyncio.ensure_future(
            self.offers.open(dispatching, self.context.node, self.lease_s))
        try:
            batch: tuple[list[NearbyDriver], float] | None = await self._next_batch(dispatching)
        except Exception:
            batch = None  # found again below, by the round itself
        try:
            await opening
        except Exception as error:  # Redis away: the trip must not stay without a dispatcher
            log.warning("dispatch: cannot open the dispatch of trip %s (%s); retrying",
                        trip.id, error)
            self._retry_open(dispatching, trip)
            return
        try:
            await self._next_round(dispatching, trip, batch)
        except Exception as error:  # the trip's timer (this process's) tries again
            log.warning("dispatch: the first round of trip %s failed: %s", trip.id, error)
        self._drive(trip.id)

    async def visible(self, driver_id: str, trips: list[Trip]) -> list[Trip]:
        offered = [trip for trip in trips if _by_offer(trip)]
        if not offered:
            return trips
        if len(offered) == 1:
            held = {offered[0].id} if await self.offers.holds(offered[0].id, driver_id) else set()
        else:
            held = await self.offers.held_by(driver_id)
        return [trip for trip in trips if not _by_offer(trip) or trip.id in held]

    async def claimed(self, conn: Connection, trip: Trip) -> None:
        if trip.pick_up is None:
            await super().claimed(conn, trip)
            return
        holders = await self.offers.finish(trip.id)
        if holders is None:
            return
        metrics.OFFERS_TAKEN.inc()
        await self._revoke([d for d in holders if d != conn.user.id], trip.id, "taken")

    async def canceled(self, conn: Connection, trip: Trip) -> None:
        if trip.pick_up is None:
            await super().canceled(conn, trip)
            return
        holders = await self.offers.finish(trip.id)
        await self._revoke(holders or [], trip.id, "canceled")

    async def decline(self, conn: Connection, trip: Trip) -> bool:
        left = await self.offers.decline(trip.id, conn.user.id)
        if left is None:
            return False
        metrics.OFFERS_DECLINED.inc()
        if left == 0:  # the whole batch said no: the next one at once
            dispatching = await self.offers.get(trip.id)
            if dispatching is not None:
                await self._next_round(dispatching)
        return True

    # Rounds

    async def _next_round(self, dispatching: Dispatching, trip: Trip | None = None,
                          batch: tuple[list[NearbyDriver], float] | None = None) -> None:
        """Offer the trip to the next batch (`batch` when already found), if nobody began
        that round meanwhile."""
        now = time.time()
        if now >= dispatching.deadline:
            return  # the lease holder cancels it
        if trip is None:
            trip = await self.context.store.get_trip(dispatching.trip_id)
            if trip is None or trip.status is not TripStatus.REQUESTED or trip.driver_id:
                await self._settle(dispatching.trip_id, trip)
                return
        found, radius = batch or await self._next_batch(dispatching)
        ends = min(now + self.config.offer_timeout, dispatching.deadline)
        first = not dispatching.offers and not dispatching.excluded
        ended = await self.offers.begin_round(
            dispatching.trip_id, dispatching.round, radius,
            {driver.driver_id: ends for driver in found}, ends)
        if ended is None:
            return  # another process began this round, or the trip finished
        if ended:
            metrics.OFFERS_EXPIRED.inc(len(ended))
            await self._revoke(ended, trip.id, "expired")
        if found:
            if first:
                metrics.FIRST_OFFER_SECONDS.observe(time.time() - trip.created.timestamp())
            await self._offer(trip, dispatching.base_url, found, ends)

    async def _next_batch(self, dispatching: Dispatching) -> tuple[list[NearbyDriver], float]:
        """The nearest drivers not asked yet, widening at once past empty circles."""
        config = self.config
        if dispatching.round == 0:
            radius = config.radius_m
        else:
            radius = min(dispatching.radius_m * 2, config.max_radius_m)
        asked = dispatching.excluded | dispatching.offers.keys()
        while True:
            found = await self.context.locations.nearest(
                dispatching.lat, dispatching.lng, radius, config.batch, exclude=asked,
                v2_only=True)
            if found or radius >= config.max_radius_m:
                return found, radius
            radius = min(radius * 2, config.max_radius_m)

    async def _offer(self, trip: Trip, base_url: str, drivers: list[NearbyDriver],
                     ends: float) -> None:
        data = trip.to_json(base_url)
        expires = format_time(_moment(ends))
        for driver in drivers:
            await self.context.hub.send(f"user:{driver.driver_id}", {
                "type": "trip.offer",
                "data": {"trip": data, "distance_m": round(driver.distance_m),
                         "expires": expires},
            }, min_version=V2)
        metrics.OFFERS_MADE.inc(len(drivers))

    async def _revoke(self, drivers: list[str], trip_id: str, reason: str) -> None:
        message = {"type": "trip.offer.revoked", "data": {"id": trip_id, "reason": reason}}
        for driver_id in drivers:
            await self.context.hub.send(f"user:{driver_id}", message, min_version=V2)

    async def _settle(self, trip_id: str, trip: Trip | None) -> None:
        """Close a dispatch whose trip was taken or canceled without us hearing of it
        (the process that did it died before it could)."""
        holders = await self.offers.finish(trip_id)
        if not holders:
            return
        driver_id = trip.driver_id if trip else None
        reason = "taken" if driver_id else "canceled"
        await self._revoke([d for d in holders if d != driver_id], trip_id, reason)

    async def _give_up(self, dispatching: Dispatching) -> None:
        """max_wait passed: cancel the trip, unless it was claimed or canceled meanwhile."""
        store = self.context.store
        canceled = await store.update_trip(
            dispatching.trip_id, expected_status=TripStatus.REQUESTED,
            expected_driver_id=None, status=TripStatus.CANCELED, driver_id=None)
        if canceled is None:
            await self._settle(dispatching.trip_id, await store.get_trip(dispatching.trip_id))
            return
        holders = await self.offers.finish(dispatching.trip_id)
        await self._revoke(holders or [], dispatching.trip_id, "canceled")
        metrics.TRIPS_UNMATCHED.inc()
        hub = self.context.hub
        updated = trip_message(canceled, dispatching.base_url)
        await hub.send(dispatching.trip_id, updated)
        await hub.send(f"user:{dispatching.rider_id}",
                       {"type": "trip.unmatched", "data": {"id": dispatching.trip_id}},
                       min_version=V2)
        await self.context.announce(updated["data"])  # staff hear, the group is let go

    def _retry_open(self, dispatching: Dispatching, trip: Trip) -> None:
        self._driving[trip.id] = asyncio.ensure_future(self._open_later(dispatching, trip))

    async def _open_later(self, dispatching: Dispatching, trip: Trip) -> None:
        """Open the dispatch once the offer book answers again (until max_wait)."""
        delay = 0.1
        try:
            while time.time() < dispatching.deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.scan_s)
                try:
                    await self.offers.open(dispatching, self.context.node, self.lease_s)
                except Exception:
                    continue
                break
            else:
                return
        finally:
            self._driving.pop(trip.id, None)
        self._drive(trip.id)

    # Timers and leases

    def _drive(self, trip_id: str) -> None:
        if trip_id not in self._driving:
            self._driving[trip_id] = asyncio.ensure_future(self._run(trip_id))

    async def _run(self, trip_id: str) -> None:
        """Advance the trip's rounds on time while this process holds its lease."""
        node = self.context.node
        try:
            while True:
                dispatching = await self.offers.get(trip_id)
                if dispatching is None:
                    return
                now = time.time()
                if now >= dispatching.deadline:
                    await self._give_up(dispatching)
                    return
                if now >= dispatching.round_ends:
                    await self._next_round(dispatching)
                    continue
                wake = min(dispatching.round_ends, dispatching.deadline, now + self.lease_s / 2)
                await asyncio.sleep(wake - now)
                if not await self.offers.lease(trip_id, node, self.lease_s):
                    return  # finished, or another process holds it now
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dispatch of trip %s failed here; another turn of the lease scan "
                          "retries it", trip_id)
        finally:
            self._driving.pop(trip_id, None)

    async def _take_over_forever(self) -> None:
        while True:
            await asyncio.sleep(self.scan_s)
            try:
                await self._take_over()
            except Exception as error:
                log.warning("dispatch: the scan for lapsed leases failed: %s", error)

    async def _take_over(self) -> None:
        for trip_id in await self.offers.unleased():
            if trip_id in self._driving:
                continue
            if await self.offers.lease(trip_id, self.context.node, self.lease_s):
                log.info("dispatch: taking over trip %s (its lease lapsed)", trip_id)
                self._drive(trip_id)


def _by_offer(trip: Trip) -> bool:
    """Whether the trip is one that only its offer holders may see."""
    return (trip.pick_up is not None and trip.status is TripStatus.REQUESTED
            and trip.driver_id is None)


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
