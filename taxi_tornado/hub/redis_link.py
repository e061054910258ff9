"""The Redis broker's subscriber link: one connection subscribed to every group of ours
(in a Redis Cluster, one per shard, with sharded pub/sub: SSUBSCRIBE).

A process subscribes to a group's channel while it has a member in it. SUBSCRIBE and
UNSUBSCRIBE are written on the link in call order and each waits for its own
confirmation, so a leave and a join of one group that interleave leave Redis in the
state of the last call. One task reads the link and hands every message on. A lost link
is retried with capped exponential backoff and every current group is subscribed again;
meanwhile `up` is False.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from taxi_tornado.background import cancel_and_wait
from taxi_tornado.deadline import deadline

log = logging.getLogger("taxi_tornado.hub")

# Reconnect delays double from BACKOFF_MIN up to BACKOFF_MAX seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 1.0
CONFIRM_TIMEOUT = 2.0
# A command written on the link gives up after this long; the link is dropped.
WRITE_TIMEOUT = 5.0
# A link silent this long is PINGed; silent twice as long, it is dropped.
HEALTH_INTERVAL = 10.0
SUBSCRIBE_BATCH = 1000
LINK_ERRORS = (RedisError, OSError, TimeoutError)
CONFIRMATIONS = (b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe")


class SubscriberLink:
    """The subscriptions of one process and the connection that holds them.

    `new_connection` makes an unconnected connection; `channel(group)` names a group's
    channel; `on_message(channel, data)` takes every message; `on_connected` runs once
    the groups are subscribed again after a (re)connect, before the link counts as up.
    `url` is for logs, without its password.
    `sharded` subscribes with SSUBSCRIBE (Redis Cluster: the channels live on the shard
    that owns their slot), one channel per command as a command may not span slots.
    """

    def __init__(
        self,
        new_connection: Callable[[], AbstractConnection],
        channel: Callable[[str], str],
        on_message: Callable[[bytes, bytes], None],
        on_connected: Callable[[], Awaitable[None]],
        description: str,
        url: str,
        *,
        sharded: bool = False,
    ) -> None:
        self._new_connection = new_connection
        self.channel = channel
        self._subscribe, self._unsubscribe, self._message, self._batch = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", 1) if sharded else
            ("SUBSCRIBE", "UNSUBSCRIBE", b"message", SUBSCRIBE_BATCH))
        self._on_message = on_message
        self._on_connected = on_connected
        self._description = description
        self._url = url
        self.up = False
        self.settled = asyncio.Event()  # set after the first attempt, up or not
        self._groups: set[str] = set()
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        self._link: AbstractConnection | None = None
        self._write_lock = asyncio.Lock()
        self._came_up = False
        self._down_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0

    @property
    def groups(self) -> int:
        return len(self._groups)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def subscribe(self, group: str) -> None:
        """Returns once Redis confirmed; at once while the link is down (the reconnect
        subscribes every current group)."""
        self._groups.add(group)
        waiter = await self._command(self._subscribe, group)
        if waiter is None:
            return
        try:
            async with deadline(CONFIRM_TIMEOUT):
                await waiter
        except TimeoutError:
            log.warning("hub: Redis did not confirm %s %s within %ss", self._subscribe,
                        self.channel(group), CONFIRM_TIMEOUT)

    async def unsubscribe(self, group: str) -> None:
        """Sends UNSUBSCRIBE without waiting: a late message is dropped by the hub anyway."""
        self._groups.discard(group)
        await self._command(self._unsubscribe, group)

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            self._came_up = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._link_lost(error, self._came_up)
            if self._came_up:
                delay = BACKOFF_MIN
            self.settled.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        """Connect, subscribe every current group, then read until the link fails.

        Plain tasks and asyncio.wait rather than a TaskGroup: on Python 3.11 a TaskGroup
        whose child fails as the parent is cancelled can swallow the cancellation, and
        stop() would wait for ever.
        """
        conn = self._new_connection()
        tasks: list[asyncio.Task[None]] = []
        try:
            await connect(conn)
            self._last_read = time.monotonic()
            tasks = [asyncio.ensure_future(work) for work in (
                self._read(conn), self._watch(conn), self._resubscribe(conn))]
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=FIRST_COMPLETED)
                for task in done:
                    task.result()  # only _resubscribe ends without an error
        finally:
            for task in tasks:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: it is reported by _run, not by asyncio
            self._link = None
            self.up = False
            self._release_waiters()
            await conn.disconnect(nowait=True)

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        async with self._write_lock:
            self._link = conn
            channels = [self.channel(group) for group in sorted(self._groups)]
            waiters = [self._expect(channel) for channel in channels]
            for start in range(0, len(channels), self._batch):
                await write(conn, self._subscribe, *channels[start:start + self._batch])
        async with deadline(CONFIRM_TIMEOUT + len(channels) / 10_000):
            await asyncio.gather(*waiters)
        await self._on_connected()
        self._link_up(len(channels))

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            reply = await conn.read_response(timeout=math.inf)
            self._last_read = time.monotonic()
            self._dispatch(reply)

    async def _watch(self, conn: AbstractConnection) -> None:
        """PING an idle link; one that stays silent is declared lost."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL / 2)
            idle = time.monotonic() - self._last_read
            if idle >= 2 * HEALTH_INTERVAL:
                raise TimeoutError(f"no answer from Redis for {idle:.0f}s")
            if idle >= HEALTH_INTERVAL:
                async with self._write_lock:
                    await write(conn, "PING")

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == self._message:
            self._on_message(reply[1], reply[2])
        elif kind in CONFIRMATIONS:
            self._confirm(reply[1].decode())

    async def _command(self, verb: str, group: str) -> asyncio.Future[bool] | None:
        """Write SUBSCRIBE/UNSUBSCRIBE in call order; the future resolves on its reply."""
        conn = self._link
        if conn is None:
            return None
        async with self._write_lock:
            if self._link is not conn:
                return None
            channel = self.channel(group)
            waiter = self._expect(channel)
            try:
                await write(conn, verb, channel)
            except LINK_ERRORS:
                return None  # the reader sees the same failure and reconnects
        return waiter

    def _expect(self, channel: str) -> asyncio.Future[bool]:
        """Queue a waiter for the next (un)subscribe reply on `channel`: Redis answers
        each channel's commands in the order they were written."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, deque()).append(waiter)
        return waiter

    def _confirm(self, channel: str) -> None:
        waiters = self._waiters.get(channel)
        if not waiters:
            return
        waiter = waiters.popleft()
        if not waiters:
            del self._waiters[channel]
        if not waiter.done():
            waiter.set_result(True)

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for queue in waiters.values():
            for waiter in queue:
                if not waiter.done():
                    waiter.set_result(False)

    def _link_up(self, groups: int) -> None:
        self.up = True
        self._came_up = True
        self.settled.set()
        if self._down_since is None:
            log.info("hub: connected to %s", self._description)
            return
        log.warning("hub: Redis link to %s restored after %.1fs; re-subscribed %d groups",
                    self._url, time.monotonic() - self._down_since, groups)
        self._down_since = None

    def _link_lost(self, error: BaseException, was_up: bool) -> None:
        """Logged once per outage, not once per retry."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        verb = "lost" if was_up else "cannot reach"
        log.warning("hub: %s Redis at %s (%s); local delivery goes on, sends to other "
                    "processes are dropped, reconnecting with backoff up to %ss",
                    verb, self._url, describe_error(error), BACKOFF_MAX)


async def write(conn: AbstractConnection, *command: Any) -> None:
    """Write one command on the link, within WRITE_TIMEOUT; redis-py drops the
    connection when the write is cut short, and the reader then sees the link fail."""
    async with deadline(WRITE_TIMEOUT):
        await conn.send_command(*command)


async def connect(conn: AbstractConnection) -> None:
    """redis-py leaves connect() unannotated; this is the one place that says so."""
    await conn.connect()  # type: ignore[no-untyped-call]


def describe_error(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
