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
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from taxi_tornado import metrics
from taxi_tornado.frames import encode, text_frame

log = logging.getLogger("taxi_tornado.hub")

# What a broker hands back to the hub: group, JSON payload, excluded member id, min version.
Receiver = Callable[[str, bytes, str | None, int], None]


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

    async def stop(self) -> None: ...

    async def subscribe(self, group: str) -> None: ...

    async def unsubscribe(self, group: str) -> None: ...

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

    async def start(self) -> None:
        await self.broker.start(self.deliver_local)

    async def stop(self) -> None:
        await self.broker.stop()

    async def join(self, member: Member, group: str) -> None:
        """Add `member`; the first local member subscribes this process to the group."""
        members = self.groups.get(group)
        if members is not None:
            members.add(member)
            return
        self.groups[group] = {member}
        await self.broker.subscribe(group)

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
        return delivered


def build_broker(url: str, prefix: str) -> Broker:
    """The broker named by hub.url."""
    if url.startswith("memory://"):
        return MemoryBroker()
    from taxi_tornado.redis_broker import RedisBroker  # type: ignore[import-not-found,unused-ignore]

    broker: Broker = RedisBroker(url, prefix)
    return broker


async def publish(url: str, group: str, message: Any, *, prefix: str = "taxi") -> None:
    """Send `message` to `group` from any Python process, like Channels' group_send.

    `url` is the deployment's hub.url (redis://…); every server process sharing that
    broker delivers the message verbatim to its members of `group`.
    """
    broker = build_broker(url, prefix)
    if isinstance(broker, MemoryBroker):
        raise ValueError("publish() needs a shared hub (redis://…); memory:// is one process")
    try:
        await broker.publish(group, encode(message), None, 1)
    finally:
        await broker.stop()


def publish_sync(url: str, group: str, message: Any, *, prefix: str = "taxi") -> None:
    """The blocking twin of publish(), for synchronous code such as a Django view."""
    asyncio.run(publish(url, group, message, prefix=prefix))
