"""A rider's limits on trip requests: `limits.trip_requests` a minute, and
`limits.trips_per_rider` unfinished trips at once.

The budget (docs/protocol.md, Trip-request budget) is spent first, from the hub: with the
Redis hub one budget per rider across every process, one round trip. A request past it
is `rate_limited` with `retry_after`, and makes nothing. It bounds what request-and-
cancel in a loop costs the drivers, the store and the history, which the quota of
unfinished trips alone does not. A repeat answered from an idempotency key never gets
here, so it costs nothing.

Counting the rider's trips and storing a new one are two store calls, so two requests
from two sockets of one rider could both count below the limit. The quota runs each
rider's requests one at a time in this process: the count and the new trip happen
under the rider's own lock. (Each process serializes its own sockets: a rider connected
to several processes can pass the limit only by racing requests on them, by at most one
trip per extra process.)
"""

from __future__ import annotations

import math
from typing import Any

from taxi_tornado.keyed_locks import KeyedLocks
from taxi_tornado.plugins.api import Connection, MessageHandler, ProtocolError


class TripQuota:
    """Wraps the trip request handler; locks live only while a rider has a request on."""

    def __init__(self) -> None:
        self._turns = KeyedLocks()
        self._handler: MessageHandler | None = None

    def __len__(self) -> int:
        """How many riders have a request under way in this process (their locks)."""
        return len(self._turns)

    def guard(self, handler: MessageHandler) -> MessageHandler:
        """`handler` behind both limits; the quota is the returned method's __self__."""
        self._handler = handler
        return self.request

    async def request(self, conn: Connection, data: Any) -> dict[str, Any] | None:
        assert self._handler is not None
        if conn.user.group != "rider":
            return await self._handler(conn, data)
        await spend_a_request(conn)
        limit = conn.settings.limits.trips_per_rider
        if not limit:
            return await self._handler(conn, data)
        async with self._turns.hold(conn.user.id):
            # A rider is never a trip's driver: their active trips are their own.
            if len(await conn.store.active_trip_ids(conn.user.id)) >= limit:
                raise ProtocolError(
                    "forbidden",
                    f"You already have {limit} unfinished trips: cancel or finish one "
                    "before requesting another.",
                )
            return await self._handler(conn, data)


async def spend_a_request(conn: Connection) -> None:
    """Take one of the rider's trip requests of this minute, or refuse with when to try
    again (whole seconds, at least 1)."""
    per_minute = conn.settings.limits.trip_requests
    if not per_minute:
        return
    wait = await conn.hub.spend(f"trip_requests:{conn.user.id}", per_minute)
    if wait <= 0:
        return
    seconds = max(1, math.ceil(wait))
    raise ProtocolError(
        "rate_limited",
        f"You requested {per_minute} trips within a minute: try again in {seconds} s.",
        retry_after=seconds,
    )
