"""The cluster hub: the Redis broker's contract over a Redis Cluster, with sharded pub/sub.

Every name of a group carries the group's hash tag (hub/keys.py), so its channel, meta
hash, stream and sizes list live on the one shard that owns the tag's slot. A group send
is one EVALSHA of the same history script as with one Redis, run on that shard, which
numbers, appends and SPUBLISHes it (one round trip); a process SSUBSCRIBEs to a group's
channel on that shard while it has a member in it.

Per master (a Shard): one subscriber link (SubscriberLink, sharded) and one publishing
connection (Publisher), so that the sends of this process to one shard leave in the
order they were made. Which master owns which slot is redis-py's answer: a cluster
client (ClusterURL.client) discovers the shards from the seeds. The map is asked again
every TOPOLOGY_INTERVAL, and every TOPOLOGY_RETRY while a shard's link is down or a send
met a MOVED: when a master dies and its replica takes over, the groups it held are
subscribed on the new master (each process re-subscribes its own), and the others never
notice. Meanwhile sends to those groups reach this process's members only, `ready` is
False and `problem()` names the shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.commands.core import AsyncScript
from redis.exceptions import MovedError, RedisClusterException

from taxi_tornado import metrics
from taxi_tornado.background import cancel_and_wait
from taxi_tornado.deadline import deadline
from taxi_tornado.hub.budget import SPEND, interval_ms, window_ms
from taxi_tornado.hub.cluster_url import ClusterURL, parse_cluster_url
from taxi_tornado.hub.history import HistoryLimits, Position, Replay
from taxi_tornado.hub.keys import HubKeys
from taxi_tornado.hub.redis_broker import (
    CONNECTION_OPTIONS,
    SendsThroughRedis,
    hand_over,
    without_password,
)
from taxi_tornado.hub.redis_history import APPEND, APPEND_SHA, END, END_SHA, RedisHistory
from taxi_tornado.hub.redis_link import (
    CONFIRM_TIMEOUT,
    CONNECT_TIMEOUT,
    LINK_ERRORS,
    SubscriberLink,
    describe_error,
)
from taxi_tornado.hub.redis_publisher import (
    PUBLISH_TIMEOUT,
    READ_TIMEOUT,
    Publisher,
    SendFailed,
)
from taxi_tornado.hub.wire import POSITIONED_TAG, wire_header, wire_message

log = logging.getLogger("taxi_tornado.hub")

# Seconds between two looks at the cluster's map while all is well, and while a shard
# is down (a replica is being promoted) or a send met a MOVED.
TOPOLOGY_INTERVAL = 10.0
TOPOLOGY_RETRY = 0.5
CLUSTER_ERRORS = (*LINK_ERRORS, RedisClusterException)
# The cluster client's own options: commands that fail are not retried by redis-py (a
# group send must not run twice); ours bound every call with a deadline (taxi_tornado/deadline.py).
CLIENT_OPTIONS: dict[str, Any] = {
    key: value for key, value in CONNECTION_OPTIONS.items() if key != "retry"}


class Shard:
    """One master: the link holding our subscriptions there, and the connection our
    sends to it go out on."""

    def __init__(self, broker: ClusterBroker, name: str, host: str, port: int) -> None:
        self.name = name
        self._broker = broker
        self._address = (host, port)
        self.publisher = Publisher(self.connection)
        self.link = SubscriberLink(
            self.connection, broker.keys.channel, broker.receive, self._connected,
            f"{broker.describe()}, shard {name}", f"{name} (shard of {broker.shown_url})",
            sharded=True)

    def connection(self) -> AbstractConnection:
        host, port = self._address
        options = {**CONNECTION_OPTIONS, **self._broker.cluster.options}
        kind = SSLConnection if options.pop("ssl", False) else Connection
        return kind(host=host, port=port, **options)

    async def _connected(self) -> None:
        await self.publisher.reset(APPEND if self._broker.history is not None else None)

    async def close(self) -> None:
        await self.link.stop()
        await self.publisher.close()


class ClusterBroker(SendsThroughRedis):
    """Redis Cluster: one channel per group on the shard owning its tag, one round trip
    per group send, one subscriber link and one publishing connection per master."""

    def __init__(self, url: str, prefix: str, limits: HistoryLimits | None = None) -> None:
        super().__init__()
        try:
            self.cluster: ClusterURL = parse_cluster_url(url)
        except ValueError as error:
            raise ValueError(f"hub.url: {error}, got {without_password(url)!r}") from None
        self.url = url
        self.shown_url = without_password(url)
        self.prefix = prefix
        self.limits = limits or HistoryLimits()
        self.keys = HubKeys(prefix, tagged=True)
        self.history = RedisHistory(self.keys, self.limits) if self.limits.enabled else None
        self._client = self.cluster.client(**CLIENT_OPTIONS)  # budgets, resume reads
        self._map: RedisCluster | None = None  # which master owns which slot
        self._shards: dict[str, Shard] = {}
        self._groups: set[str] = set()
        self._homes: dict[str, str] = {}  # group -> the shard it is subscribed on
        self._stale = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._spend: AsyncScript | None = None
        self._publish_failing = False
        self._node = b""

    @property
    def ready(self) -> bool:
        return bool(self._shards) and all(shard.link.up for shard in self._shards.values())

    def describe(self) -> str:
        return f"Redis Cluster hub {self.shown_url} (prefix {self.prefix!r})"

    def problem(self) -> str:
        down = sorted(name for name, shard in self._shards.items() if not shard.link.up)
        if self._map is None or not down:
            return f"{self.describe()} is not connected"
        return f"{self.describe()}: shard {', '.join(down)} is not connected"

    def channel(self, group: str) -> str:
        return self.keys.channel(group)

    async def start(self) -> None:
        """Find the shards in the background; wait for the first try only."""
        self._node = self.node_id.encode()
        self._watch = asyncio.ensure_future(self._keep_map())
        with contextlib.suppress(TimeoutError):
            async with deadline(CONNECT_TIMEOUT + CONFIRM_TIMEOUT):
                while not self.ready:
                    await asyncio.sleep(0.01)

    async def stop(self) -> None:
        task, self._watch = self._watch, None
        await cancel_and_wait(task)
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()
        if self._map is not None:
            await self._map.aclose()
            self._map = None
        await self._client.aclose()

    async def subscribe(self, group: str) -> None:
        self._groups.add(group)
        shard = self._shard_of(group)
        if shard is None:
            return  # placed when the map is known
        self._homes[group] = shard.name
        await shard.link.subscribe(group)

    async def unsubscribe(self, group: str) -> None:
        self._groups.discard(group)
        shard = self._shards.get(self._homes.pop(group, ""))
        if shard is not None:
            await shard.link.unsubscribe(group)

    def reaches(self, group: str) -> bool:
        shard = self._shard_of(group)
        return shard is not None and shard.link.up

    async def post(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """One SPUBLISH (a taxi1 message: no position); raises SendFailed."""
        message = wire_message(self._node, payload, exclude, min_version)
        return int(await self._run(group, "SPUBLISH", self.channel(group), message))

    async def append(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> tuple[Position, int]:
        """Number, store and SPUBLISH one send on the group's shard; raises SendFailed."""
        assert self.history is not None
        header = wire_header(POSITIONED_TAG, self._node, exclude, min_version)
        arguments = self.history.append_arguments(group, self.channel(group), header, payload)
        offset, epoch, receivers = await self._run(group, "EVALSHA", APPEND_SHA, *arguments,
                                                   script=APPEND)
        return Position(int(offset), epoch.decode()), int(receivers)

    async def end(self, group: str) -> None:
        """END on the group's shard, after its sends (same connection); never raises."""
        shard = self._shard_of(group)
        if self.history is None or shard is None or not shard.link.up:
            return
        try:
            await self._run(group, "EVALSHA", END_SHA, *self.history.end_arguments(group),
                            script=END)
        except SendFailed as failure:
            self._send_failed(failure.error)

    async def spend(self, key: str, per_minute: int) -> float:
        """SPEND on the shard of the budget's tag; in process while a shard is down."""
        if not self.ready:
            return self.budgets.spend(key, per_minute)
        if self._spend is None:
            self._spend = self._client.register_script(SPEND)
        try:
            async with deadline(PUBLISH_TIMEOUT):
                wait_ms = await self._spend(keys=[self.keys.budget(key)],
                                            args=[interval_ms(per_minute), window_ms()],
                                            client=self._client)
        except CLUSTER_ERRORS as error:
            log.warning("hub: spending from a budget in %s failed (%s); counting in this "
                        "process", self.shown_url, describe_error(error))
            return self.budgets.spend(key, per_minute)
        return int(wait_ms) / 1000

    async def since(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        """One READ per group, all at once, each on its group's shard; a group whose
        shard cannot answer in time is not recovered, the others are."""
        if self.history is None:
            return dict.fromkeys(positions)
        groups = list(positions)
        answers = await asyncio.gather(*(self._read(group, positions[group])
                                         for group in groups))
        return dict(zip(groups, answers, strict=True))

    async def _read(self, group: str, position: Position) -> Replay | None:
        assert self.history is not None
        shard = self._shard_of(group)
        if shard is None or not shard.link.up:
            return None
        try:
            async with deadline(READ_TIMEOUT):
                replays = await self.history.since(self._client, {group: position})
        except CLUSTER_ERRORS as error:
            log.warning("hub: reading the history of %s from %s failed (%s)", group,
                        shard.name, describe_error(error))
            return None
        return replays[group]

    def receive(self, channel: bytes, data: bytes) -> None:
        """A message from a shard's link, handed to the hub (as RedisBroker's)."""
        hand_over(channel, data, self._node, self.keys, self.receiver)

    # The map: which shard owns a group, and keeping that true

    def _shard_of(self, group: str) -> Shard | None:
        if self._map is None:
            return None
        try:
            node = self._map.get_node_from_key(self.keys.channel(group))
        except RedisClusterException:  # a slot no master serves now
            return None
        return None if node is None else self._shards.get(node.name)

    async def _run(self, group: str, *command: Any, script: str | None = None) -> Any:
        """One command on the publishing connection of the group's shard. A MOVED (the
        slot moved: resharding, failover) asks for a new map and is tried once more on
        the new owner: Redis did not run it."""
        for attempt in (1, 2):
            shard = await self._owner(group)
            try:
                return await shard.publisher.run(*command, script=script)
            except SendFailed as failure:
                if not isinstance(failure.error, MovedError):
                    self._stale.set()
                    raise
                if attempt == 2:
                    raise
                await self._refresh()
        raise AssertionError("unreachable")

    async def _owner(self, group: str) -> Shard:
        """The group's shard; the map is made first when there is none (publish())."""
        if self._map is None:
            await self._refresh()
        shard = self._shard_of(group)
        if shard is None:
            error = ConnectionError(f"no shard of {self.shown_url} serves group {group!r}")
            raise SendFailed(error, maybe_done=False)
        return shard

    async def _keep_map(self) -> None:
        while True:
            if self._map is None or self._stale.is_set() or not self.ready:
                self._stale.clear()
                await self._refresh()
            wait = TOPOLOGY_INTERVAL if self.ready else TOPOLOGY_RETRY
            with contextlib.suppress(TimeoutError):
                async with deadline(wait):
                    await self._stale.wait()

    async def _refresh(self) -> None:
        """Ask the cluster for its map; move each group whose slot changed master to the
        new master's link; start links to new masters, stop those to former ones."""
        found = await self._discover()
        if found is None:
            return
        if self._map is None:
            # The commands' client learns the map now rather than on its first command:
            # concurrent first reads would go to a wrong shard (MOVED) meanwhile.
            with contextlib.suppress(*CLUSTER_ERRORS):
                await self._client.initialize()
        old, self._map = self._map, found
        masters = {node.name: node for node in found.get_primaries()}
        for name, node in masters.items():
            if name not in self._shards:
                added = self._shards[name] = Shard(self, name, node.host, int(node.port))
                added.link.start()
        moves = [group for group in self._groups
                 if (owner := self._shard_of(group)) is not None
                 and self._homes.get(group) != owner.name]
        if moves:
            log.warning("hub: %d groups moved to another master of %s; subscribing them "
                        "there", len(moves), self.shown_url)
            await asyncio.gather(*(self._move(group) for group in moves))
        for name, shard in list(self._shards.items()):
            if name not in masters and shard.link.groups == 0:
                del self._shards[name]
                await shard.close()
        if old is not None:
            await old.aclose()

    async def _move(self, group: str) -> None:
        former = self._shards.get(self._homes.pop(group, ""))
        if former is not None:
            await former.link.unsubscribe(group)
        shard = self._shard_of(group)
        if shard is None or group not in self._groups:
            return
        self._homes[group] = shard.name
        await shard.link.subscribe(group)

    async def _discover(self) -> RedisCluster | None:
        """A cluster client that knows the map now, asked of the seeds and of the
        masters known so far; None when no node answered."""
        known = [address for name in self._shards if (address := _address(name))]
        client = self.cluster.client(extra_seeds=known, **CLIENT_OPTIONS)
        try:
            async with deadline(CONNECT_TIMEOUT * (len(known) + 2)):
                await client.initialize()
        except CLUSTER_ERRORS as error:
            if self._map is None:
                log.warning("hub: cannot reach %s (%s); local delivery goes on, sends to "
                            "other processes are dropped, retrying", self.shown_url,
                            describe_error(error))
            await client.aclose()
            return None
        return client

    def _send_failed(self, error: BaseException) -> None:
        metrics.HUB_PUBLISH_FAILED.inc()
        if not self._publish_failing:
            self._publish_failing = True
            log.warning("hub: sending to %s failed (%s); group sends on that shard reach "
                        "this process only until it answers again", self.shown_url,
                        describe_error(error))

    def _send_works(self) -> None:
        if self._publish_failing:
            self._publish_failing = False
            log.warning("hub: sending to the Redis Cluster works again")


def _address(name: str) -> tuple[str, int] | None:
    host, _, port = name.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None
