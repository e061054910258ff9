"""The Redis broker: group sends between processes over Redis pub/sub, with history.

One channel per group; a process subscribes to a group's channel while it has a member
in it. With history on (hub.history_size > 0) a group send is one EVALSHA of the history
script (hub/redis_history.py), which numbers the send, appends it to the group's stream
and publishes it: still one round trip to Redis. Every process, the sender's included,
then delivers it from its subscription, so members everywhere get a group's sends in the
order of their offsets. With history off a send is one PUBLISH, and the sending process
delivers to its own members at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from taxi_tornado import metrics
from taxi_tornado.background import cancel_and_wait
from taxi_tornado.hub.brokers import Broker
from taxi_tornado.hub.history import HistoryLimits, Position, Replay
from taxi_tornado.hub.redis_history import APPEND, APPEND_SHA, RedisHistory
from taxi_tornado.hub.wire import POSITIONED_TAG, read_wire, wire_header, wire_message

log = logging.getLogger("taxi_tornado.hub")

# Reconnect delays double from BACKOFF_MIN up to BACKOFF_MAX seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 1.0
# A PUBLISH or history append (including the wait for the publishing connection) gives
# up after this long, so that a handler sending to a group never hangs on Redis; so does
# the read of a resume.
PUBLISH_TIMEOUT = 1.0
CONFIRM_TIMEOUT = 2.0
# A command written on the subscriber link gives up after this long; the link is dropped.
WRITE_TIMEOUT = 5.0
# A subscriber link silent this long is PINGed; silent twice as long, it is dropped.
HEALTH_INTERVAL = 10.0
SUBSCRIBE_BATCH = 1000
LINK_ERRORS = (RedisError, OSError, TimeoutError)
PASSWORD_QUERY = re.compile(r"(password=)[^&]*")
# socket_timeout None (redis-py's default is 5 s): redis-py bounds writes with it through
# asyncio.wait_for, which on Python 3.11 returns normally when the task is cancelled as
# the write completes (CPython gh-86296), so a cancelled sender carried on. Every command
# is bounded by an asyncio.timeout of ours instead.
CONNECTION_OPTIONS: dict[str, Any] = {
    "protocol": 2,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": None,
    "retry": Retry(NoBackoff(), 0),
    "client_name": "taxi_tornado",
}


class SendFailed(Exception):
    """A command on the publishing connection failed; `maybe_done` when Redis may have
    run it all the same (it was written, and no error reply came back)."""

    def __init__(self, error: BaseException, maybe_done: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_done = maybe_done


class RedisBroker(Broker):
    """Redis pub/sub: one channel per group, one round trip per group send.

    Two connections per process, and a pool for resume reads. The subscriber is read by
    one task that hands every message to the hub; SUBSCRIBE and UNSUBSCRIBE are written
    on it in call order and each waits for its own confirmation, so a leave and a join
    of one group that interleave leave Redis in the state of the last call. The
    publisher is used under a lock, so the sends of this process leave in the order they
    were made. A lost subscriber link is retried with capped exponential backoff and
    every current group is subscribed again; meanwhile `ready` is False and group sends
    reach local members only, without a position (at most once: nothing is queued for
    later, and nothing is numbered).
    """

    def __init__(self, url: str, prefix: str, limits: HistoryLimits | None = None) -> None:
        super().__init__()
        problem = redis_url_problem(url)
        if problem:
            raise ValueError(f"hub.url: {problem}")
        self.url = url
        self.prefix = prefix
        self.limits = limits or HistoryLimits()
        self.history = RedisHistory(prefix, self.limits) if self.limits.enabled else None
        self._channel_prefix = f"{prefix}:group:"
        self._pool: ConnectionPool = ConnectionPool.from_url(url, **CONNECTION_OPTIONS)
        self._reader = Redis(connection_pool=self._pool)
        self._groups: set[str] = set()
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        self._link: AbstractConnection | None = None
        self._write_lock = asyncio.Lock()
        self._publisher: AbstractConnection | None = None
        self._publish_lock = asyncio.Lock()
        self._publish_failing = False
        self._node = b""
        self._up = False
        self._came_up = False
        self._down_since: float | None = None
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0

    @property
    def ready(self) -> bool:
        return self._up

    def describe(self) -> str:
        return f"Redis hub {_without_password(self.url)} (prefix {self.prefix!r})"

    def channel(self, group: str) -> str:
        return self._channel_prefix + group

    async def start(self) -> None:
        """Connect in the background; wait for the first attempt only, never for Redis."""
        self._node = self.node_id.encode()
        self._task = asyncio.ensure_future(self._run())
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: see CONNECTION_OPTIONS
            async with asyncio.timeout(CONNECT_TIMEOUT + CONFIRM_TIMEOUT):
                await self._settled.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        async with self._publish_lock:
            if self._publisher is not None:
                await self._publisher.disconnect(nowait=True)
                self._publisher = None
        await self._pool.disconnect()

    async def subscribe(self, group: str) -> None:
        """Returns once Redis confirmed; at once while the link is down (the reconnect
        subscribes every current group)."""
        self._groups.add(group)
        waiter = await self._command("SUBSCRIBE", group)
        if waiter is None:
            return
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                await waiter
        except TimeoutError:
            log.warning("hub: Redis did not confirm SUBSCRIBE %s within %ss",
                        self.channel(group), CONFIRM_TIMEOUT)

    async def unsubscribe(self, group: str) -> None:
        """Sends UNSUBSCRIBE without waiting: a late message is dropped by the hub anyway."""
        self._groups.discard(group)
        await self._command("UNSUBSCRIBE", group)

    async def send(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """Never raises and never waits long: a send Redis cannot take reaches this
        process's members only, without a position; the failure is counted, and logged
        once per streak. A send that Redis may have run (no reply in time) is not
        delivered here as well: at most once."""
        if self.history is None:
            delivered = self.receiver(group, payload, exclude, min_version, None)
            await self.publish(group, payload, exclude, min_version)
            return delivered
        if not self._up:
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

    async def publish(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> None:
        """PUBLISH without history; never raises (see send)."""
        if not self._up:
            metrics.HUB_PUBLISH_FAILED.inc()
            return
        try:
            await self.post(group, payload, exclude, min_version)
        except SendFailed as failure:
            self._send_failed(failure.error)
            return
        self._send_works()

    async def post(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """One PUBLISH (a taxi1 message: no position); raises SendFailed.

        Returns how many subscribed processes Redis handed the message to.
        """
        message = wire_message(self._node, payload, exclude, min_version)
        receivers = await self._run_command("PUBLISH", self.channel(group), message)
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
        offset, epoch, receivers = await self._run_command(
            "EVALSHA", APPEND_SHA, *arguments, script=APPEND)
        return Position(int(offset), epoch.decode()), int(receivers)

    async def since(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        """Read in one round trip; when Redis cannot answer in time, nothing is recovered."""
        if self.history is None or not self._up:
            return dict.fromkeys(positions)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                return await self.history.since(self._reader, positions)
        except LINK_ERRORS as error:
            log.warning("hub: reading history from %s failed (%s)",
                        _without_password(self.url), _reason(error))
            return dict.fromkeys(positions)

    async def _run_command(self, *command: Any, script: str | None = None) -> Any:
        """One command on the publishing connection, in call order; raises SendFailed.

        An EVALSHA that Redis answers with NOSCRIPT (it restarted, or flushed its
        scripts) is sent again as EVAL with `script`, under the same lock.
        """
        written = False
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT), self._publish_lock:
                conn = self._publisher
                if conn is None:
                    conn = self._publisher = self._connection()
                try:
                    if not conn.is_connected:
                        await _connect(conn)
                    await conn.send_command(*command)
                    written = True
                    try:
                        return await conn.read_response()
                    except NoScriptError:
                        if script is None:
                            raise
                        written = False
                        await conn.send_command("EVAL", script, *command[2:])
                        written = True
                        return await conn.read_response()
                except ResponseError:
                    written = False  # Redis refused it: the script publishes last
                    raise
                except BaseException:
                    await conn.disconnect(nowait=True)
                    raise
        except LINK_ERRORS as error:
            raise SendFailed(error, maybe_done=written) from error

    def _send_failed(self, error: BaseException) -> None:
        metrics.HUB_PUBLISH_FAILED.inc()
        if not self._publish_failing:
            self._publish_failing = True
            log.warning("hub: sending to %s failed (%s); group sends reach this process "
                        "only until Redis answers again", _without_password(self.url),
                        _reason(error))

    def _send_works(self) -> None:
        if self._publish_failing:
            self._publish_failing = False
            log.warning("hub: sending to Redis works again")

    def _connection(self) -> AbstractConnection:
        make = self._pool.make_connection
        connection: AbstractConnection = make()  # type: ignore[no-untyped-call]
        return connection

    # The subscriber link.

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
            self._settled.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        """Connect, subscribe every current group, then read until the link fails.

        Plain tasks and asyncio.wait rather than a TaskGroup: on Python 3.11 a TaskGroup
        whose child fails as the parent is cancelled can swallow the cancellation, and
        stop() would wait for ever.
        """
        conn = self._connection()
        tasks: list[asyncio.Task[None]] = []
        try:
            await _connect(conn)
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
            self._up = False
            self._release_waiters()
            await conn.disconnect(nowait=True)

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        async with self._write_lock:
            self._link = conn
            channels = [self.channel(group) for group in sorted(self._groups)]
            waiters = [self._expect(channel) for channel in channels]
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                await _write(conn, "SUBSCRIBE", *channels[start:start + SUBSCRIBE_BATCH])
        async with asyncio.timeout(CONFIRM_TIMEOUT + len(channels) / 10_000):
            await asyncio.gather(*waiters)
        await self._reset_publisher()
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
                    await _write(conn, "PING")

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message":
            self._receive(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            self._confirm(reply[1].decode())

    def _receive(self, channel: bytes, data: bytes) -> None:
        message = read_wire(data)
        if message is None:
            log.warning("hub: ignoring a message on %s that is not in the taxi1/taxi2 "
                        "format", channel.decode(errors="replace"))
            return
        if message.node == self._node:
            if message.position is None:
                return  # this process delivered it locally before publishing
        else:
            metrics.HUB_RECEIVED.inc()
        group = channel.decode()[len(self._channel_prefix):]
        try:
            self.receiver(group, message.payload, message.exclude, message.min_version,
                          message.position)
        except Exception:
            log.exception("hub: delivering a message for group %s failed", group)

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
                await _write(conn, verb, channel)
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

    async def _reset_publisher(self) -> None:
        """A new link means Redis may have restarted: never PUBLISH on a dead socket, and
        load the history script again, so that even the first send is one EVALSHA."""
        async with self._publish_lock:
            if self._publisher is not None:
                await self._publisher.disconnect(nowait=True)
            conn = self._publisher = self._connection()
            with contextlib.suppress(*LINK_ERRORS):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await _connect(conn)
                    if self.history is not None:
                        await conn.send_command("SCRIPT", "LOAD", APPEND)
                        await conn.read_response()

    def _link_up(self, groups: int) -> None:
        self._up = True
        self._came_up = True
        self._publish_failing = False
        self._settled.set()
        if self._down_since is None:
            log.info("hub: connected to %s", self.describe())
            return
        log.warning("hub: Redis link to %s restored after %.1fs; re-subscribed %d groups",
                    _without_password(self.url), time.monotonic() - self._down_since, groups)
        self._down_since = None

    def _link_lost(self, error: BaseException, was_up: bool) -> None:
        """Logged once per outage, not once per retry."""
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        verb = "lost" if was_up else "cannot reach"
        log.warning("hub: %s Redis at %s (%s); local delivery goes on, sends to other "
                    "processes are dropped, reconnecting with backoff up to %ss",
                    verb, _without_password(self.url), _reason(error), BACKOFF_MAX)


def redis_url_problem(url: str) -> str | None:
    """What is wrong with a redis://, rediss:// or unix:// hub URL, or None if nothing."""
    shown = _without_password(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"the port must be a number from 1 to 65535, got {shown!r}"
    if parts.scheme == "unix":
        return None if parts.path else f"unix:// needs a socket path, got {shown!r}"
    if parts.scheme not in ("redis", "rediss"):
        return f"must start with redis://, rediss:// or unix://, got {shown!r}"
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


def _without_password(url: str) -> str:
    """The URL for logs, errors and /readyz, its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"***@{host}"
    return scheme + sep + PASSWORD_QUERY.sub(r"\1***", rest)


async def _write(conn: AbstractConnection, *command: Any) -> None:
    """Write one command on the subscriber link, within WRITE_TIMEOUT; redis-py drops the
    connection when the write is cut short, and the reader then sees the link fail."""
    async with asyncio.timeout(WRITE_TIMEOUT):
        await conn.send_command(*command)


async def _connect(conn: AbstractConnection) -> None:
    """redis-py leaves connect() unannotated; this is the one place that says so."""
    await conn.connect()  # type: ignore[no-untyped-call]


def _reason(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
