"""Groups of connections, local delivery, and the brokers that relay between processes.

A group send encodes the message once, wraps it in one WebSocket frame, and hands those
same bytes to every local member; the broker then publishes the payload once so that
every other process does the same for its own members. Groups live in the process that
holds the connections; a process subscribes to a group's broker channel while it has a
member in it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from taxi_tornado import metrics
from taxi_tornado.frames import encode, text_frame

log = logging.getLogger("taxi_tornado.hub")

# The Redis broker. Reconnect delays double from BACKOFF_MIN up to BACKOFF_MAX seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 1.0
# A PUBLISH (including the wait for the publishing connection) gives up after this long,
# so that a handler sending to a group never hangs on Redis.
PUBLISH_TIMEOUT = 1.0
CONFIRM_TIMEOUT = 2.0
# A subscriber link silent this long is PINGed; silent twice as long, it is dropped.
HEALTH_INTERVAL = 10.0
SUBSCRIBE_BATCH = 1000
WIRE_TAG = b"taxi1"
LINK_ERRORS = (RedisError, OSError, TimeoutError)
PASSWORD_QUERY = re.compile(r"(password=)[^&]*")
CONNECTION_OPTIONS: dict[str, Any] = {
    "protocol": 2,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": 5.0,
    "retry": Retry(NoBackoff(), 0),
    "client_name": "taxi_tornado",
}

# What a broker hands back to the hub: group, JSON payload, excluded member id, min version.
Receiver = Callable[[str, bytes, str | None, int], object]


class Member(Protocol):
    """A connection as the hub sees it."""

    id: str
    version: int

    def deliver(self, frame: bytes) -> None:
        """Queue an already-built frame; never blocks, never raises for a dead socket."""


class Broker(abc.ABC):
    """Carries group sends between processes. The in-process broker carries nothing."""

    node_id: str = ""

    @property
    def ready(self) -> bool:
        """Whether the broker link is up now (for /readyz)."""
        return True

    def describe(self) -> str:
        return type(self).__name__

    async def start(self, receiver: Receiver) -> None:
        """Begin handing messages from other processes to `receiver`."""
        return None

    async def stop(self) -> None:
        return None

    async def subscribe(self, group: str) -> None:
        """Called for the first local member of `group`."""
        return None

    async def unsubscribe(self, group: str) -> None:
        """Called when the last local member of `group` left."""
        return None

    @abc.abstractmethod
    async def publish(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> None:
        """Send one group message to the other processes."""


class MemoryBroker(Broker):
    """The default: one process is the whole world, so there is nobody to tell."""

    async def publish(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> None:
        return None


class Hub:
    """The groups of this process and the broker that joins them to other processes."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self.broker.node_id = self.broker.node_id or uuid.uuid4().hex
        self.groups: dict[str, set[Member]] = {}
        self._subscribing: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        await self.broker.start(self.deliver_local)

    async def stop(self) -> None:
        await self.broker.stop()

    async def join(self, member: Member, group: str) -> None:
        """Add `member`; the first local member subscribes this process to the group.

        Returns once the broker confirmed the subscription, also for a member joining
        while the first member's subscription is still on its way: a message published
        after a client's connect returned must reach it.
        """
        members = self.groups.get(group)
        if members is not None:
            members.add(member)
            pending = self._subscribing.get(group)
            if pending is not None:
                await asyncio.shield(pending)
            return
        self.groups[group] = {member}
        pending = asyncio.get_running_loop().create_future()
        self._subscribing[group] = pending
        try:
            await self.broker.subscribe(group)
        finally:
            if self._subscribing.get(group) is pending:
                del self._subscribing[group]
            pending.set_result(None)

    async def leave(self, member: Member, group: str) -> None:
        members = self.groups.get(group)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del self.groups[group]
            await self.broker.unsubscribe(group)

    async def leave_all(self, member: Member, groups: Iterable[str]) -> None:
        for group in list(groups):
            await self.leave(member, group)

    def members(self, group: str) -> int:
        return len(self.groups.get(group, ()))

    async def send(
        self,
        group: str,
        message: Any,
        *,
        exclude: str | None = None,
        min_version: int = 1,
    ) -> int:
        """Send `message` to every member of `group` on every process.

        `exclude` is a member id not to send to (the sender); members speaking a protocol
        version below `min_version` are skipped. Returns the local deliveries.
        """
        payload = encode(message)
        delivered = self.deliver_local(group, payload, exclude, min_version)
        await self.broker.publish(group, payload, exclude, min_version)
        metrics.HUB_PUBLISHED.inc()
        return delivered

    def deliver_local(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        members = self.groups.get(group)
        if not members:
            return 0
        frame = text_frame(payload)
        delivered = 0
        for member in tuple(members):
            if member.version < min_version or member.id == exclude:
                continue
            member.deliver(frame)
            delivered += 1
        metrics.FANOUT_SIZE.observe(delivered)
        if delivered:
            metrics.group_frames_out(payload).inc(delivered)
        return delivered


class RedisBroker(Broker):
    """Redis pub/sub: one channel per group, one PUBLISH per group send.

    Two connections per process. The subscriber is read by one task that hands every
    message to the hub; SUBSCRIBE and UNSUBSCRIBE are written on it in call order and
    each waits for its own confirmation, so a leave and a join of one group that
    interleave leave Redis in the state of the last call. The publisher is used under a
    lock, so the sends of this process leave in the order they were made (Redis keeps
    that order per connection and channel). A lost subscriber link is retried with
    capped exponential backoff and every current group is subscribed again; meanwhile
    `ready` is False and group sends reach local members only (at most once: nothing
    is queued for later).
    """

    def __init__(self, url: str, prefix: str) -> None:
        problem = redis_url_problem(url)
        if problem:
            raise ValueError(f"hub.url: {problem}")
        self.url = url
        self.prefix = prefix
        self._channel_prefix = f"{prefix}:group:"
        self._pool: ConnectionPool = ConnectionPool.from_url(url, **CONNECTION_OPTIONS)
        self._groups: set[str] = set()
        self._waiters: dict[str, deque[asyncio.Future[bool]]] = {}
        self._link: AbstractConnection | None = None
        self._write_lock = asyncio.Lock()
        self._publisher: AbstractConnection | None = None
        self._publish_lock = asyncio.Lock()
        self._publish_failing = False
        self._receiver: Receiver | None = None
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

    async def start(self, receiver: Receiver) -> None:
        """Connect in the background; wait for the first attempt only, never for Redis."""
        self._receiver = receiver
        self._node = self.node_id.encode()
        self._task = asyncio.ensure_future(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), CONNECT_TIMEOUT + CONFIRM_TIMEOUT)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._publish_lock:
            if self._publisher is not None:
                await self._publisher.disconnect(nowait=True)
                self._publisher = None

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

    async def publish(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> None:
        """Never raises and never waits long: a send the broker cannot take is counted,
        logged once per streak of failures, and dropped (local members already have it)."""
        if not self._up:
            metrics.HUB_PUBLISH_FAILED.inc()
            return
        try:
            await self.post(group, payload, exclude, min_version)
        except LINK_ERRORS as error:
            metrics.HUB_PUBLISH_FAILED.inc()
            if not self._publish_failing:
                self._publish_failing = True
                log.warning("hub: PUBLISH to %s failed (%s); group sends reach this "
                            "process only until Redis answers again",
                            _without_password(self.url), _reason(error))
            return
        if self._publish_failing:
            self._publish_failing = False
            log.warning("hub: PUBLISH works again")

    async def post(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """One PUBLISH on this process's publishing connection; raises on failure.

        Returns how many subscribed processes Redis handed the message to.
        """
        message = wire_message(self._node, payload, exclude, min_version)
        async with asyncio.timeout(PUBLISH_TIMEOUT), self._publish_lock:
            conn = self._publisher
            if conn is None:
                conn = self._publisher = self._connection()
            try:
                if not conn.is_connected:
                    await _connect(conn)
                await conn.send_command("PUBLISH", self.channel(group), message)
                receivers = await conn.read_response()
            except BaseException:
                await conn.disconnect(nowait=True)
                raise
        return int(receivers)

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
                await conn.send_command("SUBSCRIBE", *channels[start:start + SUBSCRIBE_BATCH])
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
                    await conn.send_command("PING")

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            return
        kind = reply[0]
        if kind == b"message":
            self._receive(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            self._confirm(reply[1].decode())

    def _receive(self, channel: bytes, data: bytes) -> None:
        message = parse_wire_message(data)
        if message is None:
            log.warning("hub: ignoring a message on %s that is not in the taxi1 format",
                        channel.decode(errors="replace"))
            return
        node, exclude, min_version, payload = message
        if node == self._node:
            return  # this process delivered it locally before publishing
        metrics.HUB_RECEIVED.inc()
        group = channel.decode()[len(self._channel_prefix):]
        assert self._receiver is not None
        try:
            self._receiver(group, payload, exclude, min_version)
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
                await conn.send_command(verb, channel)
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
        """A new link means Redis may have restarted: never PUBLISH on a dead socket."""
        async with self._publish_lock:
            if self._publisher is not None:
                await self._publisher.disconnect(nowait=True)
            self._publisher = self._connection()
            with contextlib.suppress(*LINK_ERRORS):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await _connect(self._publisher)

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


def wire_message(node: bytes, payload: bytes, exclude: str | None, min_version: int) -> bytes:
    """`taxi1 <node> <min_version> <exclude>\\n<JSON payload>`; `-` stands for none.

    The header lets a receiving process skip its own messages (it delivered them
    locally already) and apply `exclude` and `min_version`; the payload stays the JSON
    the sender encoded, so the receiver frames it without decoding.
    """
    return b"%s %s %d %s\n%s" % (
        WIRE_TAG, node or b"-", min_version, exclude.encode() if exclude else b"-", payload
    )


def parse_wire_message(data: bytes) -> tuple[bytes, str | None, int, bytes] | None:
    """(node, exclude, min_version, payload), or None for a message in another format."""
    header, newline, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or len(fields) != 4 or fields[0] != WIRE_TAG:
        return None
    _, node, version, exclude = fields
    if not version.isdigit():
        return None
    return node, None if exclude == b"-" else exclude.decode(), int(version), payload


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


def build_broker(url: str, prefix: str) -> Broker:
    """The broker named by hub.url."""
    if url.startswith("memory://"):
        return MemoryBroker()
    return RedisBroker(url, prefix)


async def publish(url: str, group: str, message: Any, *, prefix: str = "taxi") -> int:
    """Send `message` to `group` from any Python process, like Channels' group_send.

    `url` and `prefix` are the deployment's hub.url (redis://…) and hub.prefix; every
    server process with members in `group` delivers `message` to them verbatim. One
    PUBLISH on a connection of its own, closed before returning; raises redis'
    ConnectionError or TimeoutError when Redis cannot take it. Returns how many server
    processes had members in the group.
    """
    if url.startswith("memory://"):
        raise ValueError("publish() needs a shared hub (redis://…); memory:// is one process")
    broker = RedisBroker(url, prefix)
    try:
        return await broker.post(group, encode(message), None, 1)
    finally:
        await broker.stop()


def publish_sync(url: str, group: str, message: Any, *, prefix: str = "taxi") -> int:
    """The blocking twin of publish(), for synchronous code such as a Django view.

    Runs its own event loop, so call it from a thread without a running loop.
    """
    return asyncio.run(publish(url, group, message, prefix=prefix))


def _without_password(url: str) -> str:
    """The URL for logs, errors and /readyz, its password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"***@{host}"
    return scheme + sep + PASSWORD_QUERY.sub(r"\1***", rest)


async def _connect(conn: AbstractConnection) -> None:
    """redis-py leaves connect() unannotated; this is the one place that says so."""
    await conn.connect()  # type: ignore[no-untyped-call]


def _reason(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
