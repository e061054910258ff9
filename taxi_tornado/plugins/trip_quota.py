"""`limits.trips_per_rider`: how many unfinished trips one rider may hold.

Counting the rider's trips and storing a new one are two store calls, so two requests
from two sockets of one rider could both count below the limit. The quota runs each
rider's requests one at a time in this process: the count and the new trip happen
under the rider's own lock. (Each process serializes its own sockets: a rider connected
to several processes can pass the limit only by racing requests on them, by at most one
trip per extra process.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from taxi_tornado.plugins.api import Connection, MessageHandler, ProtocolError


class TripQuota:
    """Wraps the trip request handler; locks live only while a rider has a request on."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def guard(self, handler: MessageHandler) -> MessageHandler:
        @functools.wraps(handler)
        async def guarded(conn: Connection, data: Any) -> dict[str, Any] | None:
            limit = conn.settings.limits.trips_per_rider
            if not limit or conn.user.group != "rider":
                return await handler(conn, data)
            async with self._turn(conn.user.id):
                # A rider is never a trip's driver: their active trips are their own.
                if len(await conn.store.active_trip_ids(conn.user.id)) >= limit:
                    raise ProtocolError(
                        "forbidden",
                        f"You already have {limit} unfinished trips: cancel or finish one "
                        "before requesting another.",
                    )
                return await handler(conn, data)

        return guarded

    @asynccontextmanager
    async def _turn(self, rider_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(rider_id, (asyncio.Lock(), 0))
        self._locks[rider_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[rider_id]
            if users == 1:
                del self._locks[rider_id]
            else:
                self._locks[rider_id] = (lock, users - 1)
