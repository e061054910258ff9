"""The Redis broker: group sends between processes over Redis pub/sub, with history.

One channel per group; a process subscribes to a group's channel while it has a member
in it (hub/redis_link.py holds the subscriptions). With history on (hub.history_size >
0) a group send is one EVALSHA of the history script (hub/redis_history.py), which
numbers the send, appends it to the group's stream and publishes it: still one round
trip to Redis. Every process, the sender's included, then delivers it from its
subscription, so members everywhere get a group's sends in the order of their offsets.
With history off a send is one PUBLISH, and the sending process delivers to its own
members at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from taxi_tornado import metrics
from taxi_tornado.coalescer import Coalescer
from taxi_tornado.deadline import deadline
from taxi_tornado.hub.brokers import Broker, Receiver
from taxi_tornado.hub.budget import SPEND, interval_ms, window_ms
from taxi_tornado.hub.cluster_url import is_cluster_url, parse_cluster_url, waiting_pool
from taxi_tornado.hub.history import HistoryLimits, Position, Replay
from taxi_tornado.hub.keys import HubKeys
from taxi_tornado.hub.redis_history import (
    APPEND,
    APPEND_SHA,
    END,
    END_SHA,
    MAX_READ_TOGETHER,
    RedisHistory,
)
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
from taxi_tornado.hub.wire import POSITIONED_TAG, read_wire, wire_header, wire_message

log = logging.getLogger("taxi_tornado.hub")

__all__ = ["PUBLISH_TIMEOUT", "RedisBroker", "SendFailed", "redis_url_problem",
           "without_password"]

PASSWORD_QUERY = re.compile(r"(password=)[^&]*")
# socket_timeout None (redis-py's default is 5 s): redis-py bounds writes with it through
# asyncio.wait_for, which on Python 3.11 returns normally when the task is cancelled as
# the write completes (CPython gh-86296), so a cancelled sender carried on. Every command
# is bounded by a deadline of ours instead (taxi_tornado/deadline.py).
CONNECTION_OPTIONS: dict[str, Any] = {
    "protocol": 2,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": None,
    "retry": Retry(NoBackoff(), 0),
    "client_name": "taxi_tornado",
}


class SendsThroughRedis(Broker):
    """What both Redis brokers (one server, a cluster) do with a group send; each says
    whether Redis is reachable for a group, and how to append and publish."""

    history: RedisHistory | None

    def reaches(self, group: str) -> bool:
        """Whether the link that carries `group` is up now."""
        raise NotImplementedError

    async def append(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> tuple[Position, int]:
        raise NotImplementedError

    async def post(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        raise NotImplementedError

    async def publish(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> None:
        """Publish without history; never raises (see send)."""
        if not self.reaches(group):
            metrics.HUB_PUBLISH_FAILED.inc()
            return
        try:
            await self.post(group, payload, exclude, min_version)
        except SendFailed as failure:
            self._send_failed(failure.error)
            return
        self._send_works()

    def _send_failed(self, error: BaseException) -> None:
        raise NotImplementedError

    def _send_works(self) -> None:
        raise NotImplementedError

    async def send(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """Never raises and never waits long: a send Redis cannot take reaches this
        process's members only, without a position; the failure is counted, and logged
        once per streak. A send that Redis may have run (no reply in time) is not
        delivered here as well: at most once."""
        if self.history is None or group in self.live_only:
            delivered = self.receiver(group, payload, exclude, min_version, None)
            await self.publish(group, payload, exclude, min_version)
            return delivered
        if not self.reaches(group):
            metrics.HUB_PUBLISH_FAILED.inc()
            return self.receiver(group, payload, exclude, min_version, None)
        try:
            await self.append(group, payload, exclude, min_version)
        except SendFailed as failure:
            self._send_failed(failure.error)
            if failure.maybe_done:
                return 0
            return self.receiver(group, payload, exclude, min_version, None)
        self._send_works()
        return 0


class RedisBroker(SendsThroughRedis):
    """Redis pub/sub: one channel per group, one round trip per group send.

    Two connections per process, and a pool for resume reads. The subscriber link
    (SubscriberLink) hands every message to the hub. The publisher (Publisher) is used
    under a lock, so the sends of this process leave in the order they were made. While the link is
    down `ready` is False and group sends reach local members only, without a position
    (at most once: nothing is queued for later, and nothing is numbered).
    """

    def __init__(self, url: str, prefix: str, limits: HistoryLimits | None = None) -> None:
        super().__init__()
        problem = redis_url_problem(url)
        if problem:
            raise ValueError(f"hub.url: {problem}")
        self.url = url
        self.prefix = prefix
        self.limits = limits or HistoryLimits()
        self.keys = HubKeys(prefix)
        self.history = RedisHistory(self.keys, self.limits) if self.limits.enabled else None
        self._pool: ConnectionPool = waiting_pool(url, **CONNECTION_OPTIONS)
        self._reader = Redis(connection_pool=self._pool)
        # A reconnect storm's resumes: those of one loop turn are one READ call, a group
        # read from one position once (one script call each cost more in redis-py than
        # the read costs Redis).
        self._resumes: Coalescer[tuple[str, Position], Replay | None] = Coalescer(
            self._read_history, MAX_READ_TOGETHER)
        self._publisher = Publisher(self._connection)
        self._publish_failing = False
        self._spend: AsyncScript | None = None
        self._node = b""
        self._link = SubscriberLink(self._connection, self.keys.channel, self._receive,
                                    self._reset_publisher, self.describe(),
                                    without_password(url))

    @property
    def ready(self) -> bool:
        return self._link.up

    def describe(self) -> str:
        return f"Redis hub {without_password(self.url)} (prefix {self.prefix!r})"

    def channel(self, group: str) -> str:
        return self.keys.channel(group)

    async def start(self) -> None:
        """Connect in the background; wait for the first attempt only, never for Redis."""
        self._node = self.node_id.encode()
        self._link.start()
        with contextlib.suppress(TimeoutError):  # deadline: see CONNECTION_OPTIONS
            async with deadline(CONNECT_TIMEOUT + CONFIRM_TIMEOUT):
                await self._link.settled.wait()

    async def stop(self) -> None:
        self._resumes.close()
        await self._link.stop()
        await self._publisher.close()
        await self._pool.disconnect()

    async def subscribe(self, group: str) -> None:
        await self._link.subscribe(group)

    async def unsubscribe(self, group: str) -> None:
        await self._link.unsubscribe(group)

    def reaches(self, group: str) -> bool:
        return self._link.up

    async def post(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """One PUBLISH (a taxi1 message: no position); raises SendFailed.

        Returns how many subscribed processes Redis handed the message to.
        """
        message = wire_message(self._node, payload, exclude, min_version)
        receivers = await self._publisher.run("PUBLISH", self.channel(group), message)
        return int(receivers)

    async def append(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> tuple[Position, int]:
        """Number, store and publish one send with the history script; raises SendFailed.

        Returns the send's position and how many subscribed processes got it.
        """
        assert self.history is not None
        header = wire_header(POSITIONED_TAG, self._node, exclude, min_version)
        arguments = self.history.append_arguments(group, self.channel(group), header, payload)
        offset, epoch, receivers = await self._publisher.run(
            "EVALSHA", APPEND_SHA, *arguments, script=APPEND)
        return Position(int(offset), epoch.decode()), int(receivers)

    async def end(self, group: str) -> None:
        """One END script after the group's last send (on the same connection, so in
        order); never raises: when Redis cannot take it, the meta hash lives its day."""
        if self.history is None or not self._link.up:
            return
        try:
            await self._publisher.run("EVALSHA", END_SHA, *self.history.end_arguments(group),
                                      script=END)
        except SendFailed as failure:
            self._send_failed(failure.error)

    async def spend(self, key: str, per_minute: int) -> float:
        """One SPEND script call on the pool (one round trip): every process spends from
        the same budget. While Redis cannot answer, each process counts on its own."""
        if not self._link.up:
            return self.budgets.spend(key, per_minute)
        if self._spend is None:
            self._spend = self._reader.register_script(SPEND)  # EVALSHA; EVAL on NOSCRIPT
        try:
            async with deadline(PUBLISH_TIMEOUT):
                wait_ms = await self._spend(keys=[self.keys.budget(key)],
                                            args=[interval_ms(per_minute), window_ms()],
                                            client=self._reader)
        except LINK_ERRORS as error:
            log.warning("hub: spending from a budget in %s failed (%s); counting in this "
                        "process", without_password(self.url), describe_error(error))
            return self.budgets.spend(key, per_minute)
        return int(wait_ms) / 1000

    async def since(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        """Read with the other resumes of this loop turn; when Redis cannot answer in
        time, nothing is recovered."""
        if self.history is None or not self._link.up:
            return dict.fromkeys(positions)
        try:
            async with deadline(READ_TIMEOUT):
                replays = await asyncio.gather(*(self._resumes.get(wanted)
                                                 for wanted in positions.items()))
            return dict(zip(positions, replays, strict=True))
        except LINK_ERRORS as error:
            log.warning("hub: reading history from %s failed (%s)",
                        without_password(self.url), describe_error(error))
            return dict.fromkeys(positions)

    async def _read_history(self, wanted: list[tuple[str, Position]]
                            ) -> dict[tuple[str, Position], Replay | None]:
        """A batch's read, bounded on its own: its callers' deadlines end their waits,
        not the read, which would keep a pooled connection."""
        assert self.history is not None
        async with deadline(READ_TIMEOUT):
            replays = await self.history.read(self._reader, wanted)
        return dict(zip(wanted, replays, strict=True))

    def _send_failed(self, error: BaseException) -> None:
        metrics.HUB_PUBLISH_FAILED.inc()
        if not self._publish_failing:
            self._publish_failing = True
            log.warning("hub: sending to %s failed (%s); group sends reach this process "
                        "only until Redis answers again", without_password(self.url),
                        describe_error(error))

    def _send_works(self) -> None:
        if self._publish_failing:
            self._publish_failing = False
            log.warning("hub: sending to Redis works again")

    def _connection(self) -> AbstractConnection:
        make = self._pool.make_connection
        connection: AbstractConnection = make()  # type: ignore[no-untyped-call]
        return connection

    def _receive(self, channel: bytes, data: bytes) -> None:
        hand_over(channel, data, self._node, self.keys, self.receiver)

    async def _reset_publisher(self) -> None:
        """Runs as the link comes up: sends are tried again from then on."""
        await self._publisher.reset(APPEND if self.history is not None else None)
        self._publish_failing = False


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a redis://, rediss://, unix:// or redis+cluster:// hub URL, or
    None if nothing."""
    shown = without_password(url)
    if is_cluster_url(url):
        try:
            parse_cluster_url(url)
        except ValueError as error:
            return f"{error}, got {shown!r}"
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"the port must be a number from 1 to 65535, got {shown!r}"
    if parts.scheme == "unix":
        return None if parts.path else f"unix:// needs a socket path, got {shown!r}"
    if parts.scheme not in ("redis", "rediss"):
        return f"must start with redis://, rediss://, unix:// or redis+cluster://, got {shown!r}"
    if not parts.hostname:
        return f"needs a host, e.g. redis://127.0.0.1:6379/0, got {shown!r}"
    if port == 0:
        return f"the port must be a number from 1 to 65535, got {shown!r}"
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return f"the database must be a number, e.g. redis://host:6379/0, got {shown!r}"
    try:
        ConnectionPool.from_url(url)
    except (ValueError, TypeError) as error:
        return f"{error} ({shown!r})"
    return None


def without_password(url: str) -> str:
    """The URL for logs, errors and /readyz, its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"***@{host}"
    return scheme + sep + PASSWORD_QUERY.sub(r"\1***", rest)


def hand_over(channel: bytes, data: bytes, node: bytes, keys: HubKeys,
              receiver: Receiver) -> None:
    """A message from a subscriber link (one Redis or a cluster's shard), handed to the
    hub's receiver; one this process published and already delivered is dropped."""
    message = read_wire(data)
    if message is None:
        log.warning("hub: ignoring a message on %s that is not in the taxi1/taxi2 format",
                    channel.decode(errors="replace"))
        return
    if message.node == node:
        if message.position is None:
            return  # this process delivered it locally before publishing
    else:
        metrics.HUB_RECEIVED.inc()
    group = keys.group_of(channel)
    try:
        receiver(group, message.payload, message.exclude, message.min_version,
                 message.position)
    except Exception:
        log.exception("hub: delivering a message for group %s failed", group)
