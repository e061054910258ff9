"""The dispatch strategy contract: who hears of a new trip.

A strategy is an object with a small interface, like a Django authentication backend:
the trips plugin calls it at the moments below and never knows which one runs. A plugin
registers a factory under a name (`registry.add_dispatch_strategy(name, factory)`) and
`dispatch.mode` picks one; the server builds it once, with a DispatchContext, at start.

Calls (each may come on any process; `conn` is the connection whose frame caused it):
- `dispatch(conn, trip)`: the rider's trip is stored REQUESTED and the rider has their
  reply; tell whoever should hear of it.
- `visible(driver_id, trips)`: of these trips, the ones this driver may see and claim
  (the trips plugin and the trips API ask it about REQUESTED trips nobody holds).
- `claimed(conn, trip)`: `conn`'s driver claimed the trip (the store's compare-and-set).
- `canceled(conn, trip)`: the rider canceled the trip while it was REQUESTED.
- `decline(conn, trip)`: the driver declines the trip; False when they held no offer.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from taxi_tornado.dispatch.locations import LocationIndex
from taxi_tornado.hub import Hub
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, Trip, User

if TYPE_CHECKING:
    from taxi_tornado.dispatch.offers import OfferBook

log = logging.getLogger("taxi_tornado.dispatch")


class Connection(Protocol):
    """The connection whose frame caused a call, as a strategy sees it (a plugin's
    Connection is one): dispatch sits below the plugins and names only what it uses."""

    @property
    def user(self) -> User: ...

    @property
    def base_url(self) -> str: ...

    @property
    def version(self) -> int: ...

    async def send_group(self, group: str, message: dict[str, Any], *,
                         exclude_self: bool = False, min_version: int = 1) -> int: ...


TripListener = Callable[["DispatchContext", dict[str, Any]], Awaitable[None]]
"""Hears of a change the server made to a trip by itself, outside any client's frame
(`nearest` canceling a trip nobody took by max_wait), with the Trip as JSON. Plugins
register one with `registry.on_trip_changed`; dispatch never knows who listens."""


@dataclass(frozen=True)
class DispatchContext:
    """What the server hands a strategy's factory.

    `offers` keeps offer state where every process reaches it (in process for the memory
    hub, in Redis for the Redis hub); `node` names this process.
    """

    settings: Settings
    hub: Hub
    store: Store
    locations: LocationIndex
    offers: OfferBook
    node: str
    trip_listeners: tuple[TripListener, ...] = ()

    async def announce(self, trip: dict[str, Any]) -> None:
        """Tell every TripListener of a change the server made; one that fails is logged
        and the others still hear of it."""
        for listener in self.trip_listeners:
            try:
                await listener(self, trip)
            except Exception:
                log.exception("a listener of trip changes failed for trip %s", trip.get("id"))


class DispatchStrategy(abc.ABC):
    """Decides who hears of a new trip. Only `dispatch` must be written; the rest have
    defaults that suit a strategy without offers."""

    def __init__(self, context: DispatchContext) -> None:
        self.context = context

    async def start(self) -> None:
        """Called once the server's hub and store are up."""
        return None

    async def stop(self) -> None:
        """Called at shutdown, before the hub and store close."""
        return None

    @abc.abstractmethod
    async def dispatch(self, conn: Connection, trip: Trip) -> None:
        """Tell the right drivers about a new REQUESTED trip."""

    async def visible(self, driver_id: str, trips: list[Trip]) -> list[Trip]:
        """The trips, of those given, that the driver may see and claim."""
        return trips

    async def claimed(self, conn: Connection, trip: Trip) -> None:
        return None

    async def canceled(self, conn: Connection, trip: Trip) -> None:
        return None

    async def decline(self, conn: Connection, trip: Trip) -> bool:
        return False


StrategyFactory = Callable[[DispatchContext], DispatchStrategy]
