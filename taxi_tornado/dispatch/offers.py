"""The offer book: the state of every trip being dispatched by offers, where every
process reaches it (in process for the memory hub; dispatch/redis_offers.py for Redis).

Each change is one atomic step, so that the processes sharing a trip never disagree:
a round begins only if the trip is still on the round the caller read (so a trip is
never offered to two batches at once), a decline counts only for a live offer, and a
trip finishes once. A lease names the process that drives a trip's timers; one whose
lease lapsed (its process died) is taken over by another. Times are wall-clock seconds.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Dispatching:
    """One trip's dispatch: where, until when, and the offers of its current round."""

    trip_id: str
    rider_id: str
    lat: float
    lng: float
    base_url: str  # for the URLs inside the Trip objects of offers
    deadline: float  # the server cancels the trip then (dispatch.max_wait)
    round: int = 0  # rounds begun so far
    radius_m: float = 0.0  # the circle of the current round
    round_ends: float = 0.0  # when the current round's offers expire
    offers: Mapping[str, float] = field(default_factory=dict)  # driver id -> expiry
    excluded: frozenset[str] = frozenset()  # declined or expired: never offered again


class OfferBook(abc.ABC):
    @abc.abstractmethod
    async def open(self, dispatching: Dispatching, node: str, lease_s: float) -> None:
        """Record a new dispatch (round 0), leased to `node`."""

    @abc.abstractmethod
    async def get(self, trip_id: str) -> Dispatching | None:
        """The dispatch, or None once it finished (or never was)."""

    @abc.abstractmethod
    async def begin_round(self, trip_id: str, expected_round: int, radius_m: float,
                          offers: Mapping[str, float], round_ends: float) -> list[str] | None:
        """Replace the current round's offers with `offers`, if the trip is still open on
        `expected_round`. Returns the holders of the offers that ended with the old round
        (they expired; they join `excluded`), or None when the round moved on or the
        dispatch finished."""

    @abc.abstractmethod
    async def decline(self, trip_id: str, driver_id: str) -> int | None:
        """End the driver's live offer; returns the offers left in the round, or None
        when the driver held no live offer."""

    @abc.abstractmethod
    async def holds(self, trip_id: str, driver_id: str) -> bool:
        """Whether the driver holds a live offer for the trip."""

    @abc.abstractmethod
    async def held_by(self, driver_id: str) -> set[str]:
        """The trips for which the driver holds a live offer."""

    @abc.abstractmethod
    async def finish(self, trip_id: str) -> list[str] | None:
        """Close the dispatch; returns the holders of its current offers (to revoke), or
        None when it had finished already."""

    @abc.abstractmethod
    async def lease(self, trip_id: str, node: str, lease_s: float) -> bool:
        """Take or renew the lease of an open dispatch; False when another node holds it
        or the dispatch finished."""

    @abc.abstractmethod
    async def release(self, trip_id: str, node: str) -> None: ...

    @abc.abstractmethod
    async def unleased(self) -> list[str]:
        """Open dispatches whose lease lapsed."""


class MemoryOfferBook(OfferBook):
    """For the memory hub: one process, so plain dictionaries are atomic enough."""

    def __init__(self) -> None:
        self._open: dict[str, Dispatching] = {}
        self._held: dict[str, dict[str, float]] = {}  # driver -> trip -> expiry
        self._leases: dict[str, tuple[str, float]] = {}  # trip -> (node, until)

    async def open(self, dispatching: Dispatching, node: str, lease_s: float) -> None:
        self._open[dispatching.trip_id] = dispatching
        self._leases[dispatching.trip_id] = (node, time.time() + lease_s)

    async def get(self, trip_id: str) -> Dispatching | None:
        return self._open.get(trip_id)

    async def begin_round(self, trip_id: str, expected_round: int, radius_m: float,
                          offers: Mapping[str, float], round_ends: float) -> list[str] | None:
        current = self._open.get(trip_id)
        if current is None or current.round != expected_round:
            return None
        ended = list(current.offers)
        for driver_id in ended:
            self._unhold(driver_id, trip_id)
        for driver_id, expires in offers.items():
            self._held.setdefault(driver_id, {})[trip_id] = expires
        self._open[trip_id] = replace(
            current, round=expected_round + 1, radius_m=radius_m, round_ends=round_ends,
            offers=dict(offers), excluded=current.excluded | set(ended))
        return ended

    async def decline(self, trip_id: str, driver_id: str) -> int | None:
        current = self._open.get(trip_id)
        if current is None or current.offers.get(driver_id, 0) <= time.time():
            return None
        self._unhold(driver_id, trip_id)
        offers = {key: value for key, value in current.offers.items() if key != driver_id}
        self._open[trip_id] = replace(current, offers=offers,
                                      excluded=current.excluded | {driver_id})
        return len(offers)

    async def holds(self, trip_id: str, driver_id: str) -> bool:
        return self._held.get(driver_id, {}).get(trip_id, 0) > time.time()

    async def held_by(self, driver_id: str) -> set[str]:
        now = time.time()
        return {trip_id for trip_id, expires in self._held.get(driver_id, {}).items()
                if expires > now}

    async def finish(self, trip_id: str) -> list[str] | None:
        current = self._open.pop(trip_id, None)
        self._leases.pop(trip_id, None)
        if current is None:
            return None
        for driver_id in current.offers:
            self._unhold(driver_id, trip_id)
        return list(current.offers)

    async def lease(self, trip_id: str, node: str, lease_s: float) -> bool:
        if trip_id not in self._open:
            return False
        holder, until = self._leases.get(trip_id, (node, 0.0))
        now = time.time()
        if holder != node and until > now:
            return False
        self._leases[trip_id] = (node, now + lease_s)
        return True

    async def release(self, trip_id: str, node: str) -> None:
        if self._leases.get(trip_id, ("", 0.0))[0] == node:
            del self._leases[trip_id]

    async def unleased(self) -> list[str]:
        now = time.time()
        return [trip_id for trip_id in self._open
                if self._leases.get(trip_id, ("", 0.0))[1] <= now]

    def _unhold(self, driver_id: str, trip_id: str) -> None:
        held = self._held.get(driver_id)
        if held is not None:
            held.pop(trip_id, None)
            if not held:
                del self._held[driver_id]
