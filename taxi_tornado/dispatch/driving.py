"""Which trips each driver is driving (STARTED or IN_PROGRESS), kept between reports.

Every `driver.location` needs it (the relay goes to those trips' groups, and a driver on
a trip is not available), once a second per driver: asking the store each time cost more
than the rest of the frame. So the store is asked once per driver and the answer is kept
until a trip of theirs changes: the trips plugin says so on the process where it
happened, and with a Redis hub a notice on `<hub.prefix>:dispatch:driving` tells every
other process. After a lost Redis link every answer is dropped (notices may have been
missed meanwhile); what is left is a notice that could not be sent (the sender's Redis
link failing while the others' held), or a plugin writing trips to the store itself.
MAX_AGE_S bounds what that costs: a canceled trip's rider would keep hearing the
driver's position until then, so it stays short. Each answer's limit is drawn between
half of it and all of it, so that drivers who connected together do not all ask the
store again in the same second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from taxi_tornado.background import cancel_and_wait
from taxi_tornado.store import Store

log = logging.getLogger("taxi_tornado.dispatch")

MAX_AGE_S = 30.0
RECONNECT_S = 1.0


class DrivingTrips:
    def __init__(self, store: Store, redis: Redis | None = None, channel: str = "") -> None:
        self.store = store
        self.redis = redis
        self.channel = channel
        self._known: dict[str, tuple[list[str], float]] = {}  # driver -> (trips, good until)
        self._changes: dict[str, int] = {}  # driver -> changes seen (for asks in flight)
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.redis is not None:
            self._listener = asyncio.ensure_future(self._listen())

    async def stop(self) -> None:
        await cancel_and_wait(self._listener)

    async def of(self, driver_id: str) -> list[str]:
        """The ids of the trips the driver is driving now."""
        known = self._known.get(driver_id)
        now = time.monotonic()
        if known is not None and now < known[1]:
            return known[0]
        changes = self._changes.get(driver_id, 0)
        trips = await self.store.active_trip_ids(driver_id)
        if self._changes.get(driver_id, 0) == changes:  # no change while we asked
            self._known[driver_id] = (trips, now + MAX_AGE_S * random.uniform(0.5, 1.0))
        return trips

    async def changed(self, driver_id: str) -> None:
        """A trip of the driver changed here: forget, and tell the other processes."""
        self._forget(driver_id)
        if self.redis is None:
            return
        try:
            await self.redis.publish(self.channel, driver_id)
        except (RedisError, OSError) as error:
            log.warning("dispatch: could not tell other processes that driver %s's trips "
                        "changed (%s); they learn it within %.0fs", driver_id, error, MAX_AGE_S)

    def prune(self) -> None:
        """Drop answers past their age (periodic), so the map holds active drivers only."""
        now = time.monotonic()
        for driver_id in [key for key, (_, until) in self._known.items() if until <= now]:
            del self._known[driver_id]

    def _forget(self, driver_id: str) -> None:
        self._known.pop(driver_id, None)
        self._changes[driver_id] = self._changes.get(driver_id, 0) + 1

    async def _listen(self) -> None:
        """Forget what other processes say changed; after a lost link, forget everything
        (notices may have been missed meanwhile)."""
        assert self.redis is not None
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._known.clear()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self._forget(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError):
                await asyncio.sleep(RECONNECT_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
