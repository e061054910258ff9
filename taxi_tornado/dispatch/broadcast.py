"""`broadcast`: the original app's dispatch. Every connected driver hears of every
request, and any driver may claim it; v2 drivers also hear when a trip is taken or
canceled (the course's v1 client would misread those notices)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taxi_tornado.dispatch.strategy import DispatchStrategy
from taxi_tornado.store import Trip

if TYPE_CHECKING:
    from taxi_tornado.dispatch.strategy import Connection

DRIVERS = "drivers"
V2 = 2


class BroadcastStrategy(DispatchStrategy):
    async def dispatch(self, conn: Connection, trip: Trip) -> None:
        await conn.send_group(DRIVERS, trip_message(trip, conn.base_url))

    async def claimed(self, conn: Connection, trip: Trip) -> None:
        await conn.send_group(DRIVERS, trip_message(trip, conn.base_url), exclude_self=True,
                              min_version=V2)

    async def canceled(self, conn: Connection, trip: Trip) -> None:
        await conn.send_group(DRIVERS, trip_message(trip, conn.base_url), min_version=V2)


def trip_message(trip: Trip, base_url: str) -> dict[str, Any]:
    return {"type": "trip.updated", "data": trip.to_json(base_url)}
