"""Which trips each driver is driving (STARTED or IN_PROGRESS), kept between reports.

Every `driver.location` needs it (the relay goes to those trips' groups, and a driver on
a trip is not available), once a second per driver: asking the store each time cost more
than the rest of the frame. So the store is asked once per driver and the answer is kept
until a trip of theirs changes: the trips plugin says so on the process where it
happened, and with a Redis hub a notice on `<hub.prefix>:dispatch:driving` tells every
other process (in a Redis Cluster a shard channel, SPUBLISHed to the one master that
owns it and heard there through the hub's subscriber link, found again after a
failover). After a lost Redis link every answer is dropped (notices may have been
missed meanwhile).

What is left is a change nobody announced (the sender's Redis link failing while the
others' held, or a plugin writing trips to the store itself), and a canceled trip's rider
would hear the driver's position until it is noticed. So every answer is also asked
again about every MAX_AGE_S, by a task that every REFRESH_S re-asks the oldest answers in
one batch (the SQLite store answers a batch with one query). Asked one by one from the
frames that found their answer too old, 4,000 drivers' asks took a tenth of the
server's CPU. Answers younger than half that age wait (drivers who connected together
spread over the round), answers as old as it go at once. An answer nobody read since it
was asked belongs to a driver who stopped reporting, and is dropped instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from functools import partial

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from taxi_tornado.background import cancel_and_wait
from taxi_tornado.hub.redis_broker import CONNECTION_OPTIONS
from taxi_tornado.hub.redis_link import LINK_ERRORS, SubscriberLink
from taxi_tornado.store import Store

log = logging.getLogger("taxi_tornado.dispatch")

MAX_AGE_S = 30.0
REFRESH_S = 0.25  # a batch of a 120th of the answers (a 30th, each second, stalled the loop)
RECONNECT_S = 1.0


class DrivingTrips:
    def __init__(self, store: Store, redis: Redis | RedisCluster | None = None,
                 channel: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self.redis = redis
        self.channel = channel
        # driver -> (trips, asked at), the oldest answer first
        self._known: dict[str, tuple[list[str], float]] = {}
        self._read: set[str] = set()  # drivers whose answer was read since it was asked
        # Each driver's latest ask in flight: an answer is kept only if its ask is still
        # the latest and no change of that driver came meanwhile.
        self._asking: dict[str, object] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._keep_fresh()))
        if isinstance(self.redis, RedisCluster):
            self._tasks.append(asyncio.ensure_future(self._listen_sharded(self.redis)))
        elif self.redis is not None:
            self._tasks.append(asyncio.ensure_future(self._listen()))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel_and_wait(task)

    async def of(self, driver_id: str) -> list[str]:
        """The ids of the trips the driver is driving now."""
        known = self._known.get(driver_id)
        if known is None:
            return await self._ask(driver_id)
        self._read.add(driver_id)
        return known[0]

    async def changed(self, driver_id: str) -> None:
        """A trip of the driver changed here: forget, and tell the other processes."""
        self._forget(driver_id)
        if self.redis is None:
            return
        try:
            if isinstance(self.redis, RedisCluster):
                await self.redis.spublish(self.channel, driver_id)
            else:
                await self.redis.publish(self.channel, driver_id)
        except (RedisError, OSError) as error:
            log.warning("dispatch: could not tell other processes that driver %s's trips "
                        "changed (%s); they learn it within %.0fs", driver_id, error, MAX_AGE_S)

    def answers(self) -> int:
        """Answers held (about the drivers reporting to this process)."""
        return len(self._known)

    async def refresh(self) -> None:
        """Ask again for the oldest answers, a round of all of them about every MAX_AGE_S
        (and any older than that, however many); drop those nobody read since they were
        asked."""
        count = math.ceil(len(self._known) * REFRESH_S / MAX_AGE_S)
        now = self._clock()
        young, overdue = now - MAX_AGE_S / 2, now - (MAX_AGE_S - REFRESH_S)
        oldest = []
        for index, (driver_id, (_, asked)) in enumerate(self._known.items()):
            if asked > young or (index >= count and asked > overdue):
                break
            oldest.append(driver_id)
        due = []
        for driver_id in oldest:
            if driver_id in self._read:
                self._read.discard(driver_id)
                due.append(driver_id)
            else:
                del self._known[driver_id]
        results = await asyncio.gather(*map(self._ask, due), return_exceptions=True)
        failed = next((result for result in results if isinstance(result, Exception)), None)
        if failed is not None:
            raise failed

    async def _ask(self, driver_id: str) -> list[str]:
        token = self._asking[driver_id] = object()
        asked = self._clock()
        try:
            trips = await self.store.active_trip_ids(driver_id)
        finally:
            latest = self._asking.get(driver_id) is token
            if latest:
                del self._asking[driver_id]
        if latest:
            self._known.pop(driver_id, None)
            self._known[driver_id] = (trips, asked)  # to the end: the newest answer
        return trips

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except Exception as error:  # the store away: the answers stay, and age
                log.warning("dispatch: could not ask the store which trips drivers drive "
                            "(%s: %s)", type(error).__name__, error)

    def _forget(self, driver_id: str) -> None:
        self._known.pop(driver_id, None)
        self._read.discard(driver_id)
        self._asking.pop(driver_id, None)

    def _forget_all(self) -> None:
        self._known.clear()
        self._read.clear()
        self._asking.clear()

    async def _listen(self) -> None:
        """Forget what other processes say changed; after a lost link, forget everything
        (notices may have been missed meanwhile)."""
        assert self.redis is not None
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._forget_all()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self._forget(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError):
                await asyncio.sleep(RECONNECT_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _listen_sharded(self, cluster: RedisCluster) -> None:
        """In a cluster: SSUBSCRIBE on the master that owns the channel, through the
        hub's subscriber link (which reconnects, and forgets everything each time it
        comes up); while that link is down, the cluster's map is asked again, and a new
        owner (a replica that took over) gets a link of its own."""
        while True:
            node = await self._owner(cluster, refresh=False)
            if node is None:
                await asyncio.sleep(RECONNECT_S)
                continue
            link = SubscriberLink(
                partial(_link_connection, node), lambda _: self.channel, self._notice,
                self._relinked, f"the trips notices at {node.name}", node.name, sharded=True)
            link.start()
            try:
                await link.subscribe("driving")
                while True:
                    await asyncio.sleep(RECONNECT_S)
                    if link.up:
                        continue
                    owner = await self._owner(cluster, refresh=True)
                    if owner is not None and owner.name != node.name:
                        break
            finally:
                await link.stop()

    async def _owner(self, cluster: RedisCluster, refresh: bool) -> ClusterNode | None:
        try:
            if refresh:
                await cluster.nodes_manager.initialize()
            else:
                await cluster.initialize()
            return cluster.get_node_from_key(self.channel)
        except LINK_ERRORS:
            return None
        except Exception as error:  # a slot nobody serves now, among others
            log.warning("dispatch: no master of the cluster serves the trips notices "
                        "(%s: %s)", type(error).__name__, error)
            return None

    def _notice(self, channel: bytes, data: bytes) -> None:
        self._forget(data.decode())

    async def _relinked(self) -> None:
        self._forget_all()


def _link_connection(node: ClusterNode) -> AbstractConnection:
    """A connection to `node` as the hub's links make them (RESP2, no timeout on reads),
    with the cluster client's credentials and TLS, without its maintenance push
    notifications (RESP3 only)."""
    options = {key: value for key, value in node.connection_kwargs.items()
               if "maint_notifications" not in key}
    connection: AbstractConnection = node.connection_class(**{**options, **CONNECTION_OPTIONS})
    return connection
