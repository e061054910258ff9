"""Groups of connections and their local delivery.

A group send encodes the message once; local delivery wraps it in at most two WebSocket
frames, one for v1 members and one, carrying the send's position, for v2 members, and
hands those same bytes to every member. The broker numbers the send and carries it to
the other processes. Groups live in the process that holds the connections; a process
subscribes to a group's broker channel while it has a member in it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from taxi_tornado import metrics
from taxi_tornado.frames import encode, text_frame
from taxi_tornado.hub.brokers import Broker, MemoryBroker
from taxi_tornado.hub.history import Position, Replay, with_position, without_position

POSITIONED_VERSION = 2  # members speaking this protocol version or later get `pos`


class Member(Protocol):
    """A connection as the hub sees it."""

    id: str
    version: int

    def deliver(self, frame: bytes) -> None:
        """Queue an already-built frame; never blocks, never raises for a dead socket."""

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        """Queue the frame of a group send that carries `position` (v2 members).

        An empty `frame` is a send that left this member out (its sender, answered with
        a reply instead): nothing to write, but its place is taken, so that a resume of
        this member does not replay it.
        """


class Hub:
    """The groups of this process and the broker that joins them to other processes."""

    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker or MemoryBroker()
        self.broker.node_id = self.broker.node_id or uuid.uuid4().hex
        self.broker.receiver = self.deliver_local
        self.groups: dict[str, set[Member]] = {}
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        # Groups of the server's own listeners (plugins' command channels), not clients:
        # what is sent there is no frame out, and no fan-out.
        self.internal: set[str] = set()

    async def start(self) -> None:
        await self.broker.start()

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

    async def join_listener(self, member: Member, group: str) -> None:
        """`join` for a member that is no client: the group's sends are not counted in
        taxi_frames_out_total nor taxi_fanout_size, which tell of frames to clients, and
        are not kept (a listener never resumes)."""
        self.internal.add(group)
        self.live_only(group)
        await self.join(member, group)

    def live_only(self, group: str) -> None:
        """Carry the sends to `group` as they happen and keep none of them: no position,
        nothing to resume (a resume naming the group is answered `recovered: false`).

        For groups whose members never resume, or read a snapshot when they come back:
        with Redis such a send is one PUBLISH instead of the history script (about ten
        commands), and holds no memory. Every process must say it of the same groups
        (plugins do at start-up); a send from one that did not is numbered, and
        delivered all the same.
        """
        self.broker.live_only.add(group)

    async def leave(self, member: Member, group: str) -> None:
        members = self.groups.get(group)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del self.groups[group]
            await self.broker.unsubscribe(group)

    async def leave_all(self, member: Member, groups: Iterable[str]) -> None:
        """Leave every group at once, not one broker round trip after another."""
        await asyncio.gather(*(self.leave(member, group) for group in list(groups)))

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
        version below `min_version` are skipped. A `pos` key of the message is dropped:
        the hub gives the position. Returns the local deliveries made during the call
        (with the Redis broker and history on, local members get the send back through
        Redis, in offset order, so this is 0).
        """
        message = without_position(message)
        payload = encode(message)
        delivered = await self.broker.send(group, payload, exclude, min_version)
        metrics.HUB_PUBLISHED.inc()
        return delivered

    async def spend(self, key: str, per_minute: int) -> float:
        """Spend one action of the per-minute budget `key` (a burst of as many, refilling
        evenly), shared by every process of the deployment: 0.0 when allowed, else the
        seconds until it would be. Nothing is spent when refused."""
        return await self.broker.spend(key, per_minute)

    async def end(self, group: str) -> None:
        """`group` will hear no more (a trip that ended): its history, counter included,
        lives only hub.history_ttl after its last send, not a day, on every process.

        A send after this is numbered as before (the counter goes on while it lives).
        """
        await self.broker.end(group)

    async def replay(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        """For each group, the events after its position, or None when the history no
        longer holds all of them (unknown epoch, too many, too old)."""
        live_only = self.broker.live_only
        kept = {group: position for group, position in positions.items()
                if group not in live_only}
        replays: dict[str, Replay | None] = dict.fromkeys(positions)
        if kept:
            replays.update(await self.broker.since(kept))
        return replays

    def deliver_local(
        self,
        group: str,
        payload: bytes,
        exclude: str | None,
        min_version: int,
        position: Position | None = None,
    ) -> int:
        """Hand one group send to the members of this process; each frame is built once."""
        members = self.groups.get(group)
        if not members:
            return 0
        plain: bytes | None = None
        positioned = b""
        if position is not None:
            spliced = with_position(payload, group, position)
            if spliced is not None:
                positioned = text_frame(spliced)
        at = position if positioned else None
        delivered = 0
        for member in tuple(members):
            if member.version < min_version or member.id == exclude:
                if at is not None and member.version >= POSITIONED_VERSION:
                    member.deliver_event(b"", group, at)  # left out: see Member
                continue
            if at is not None and member.version >= POSITIONED_VERSION:
                member.deliver_event(positioned, group, at)
            else:
                if plain is None:
                    plain = text_frame(payload)
                member.deliver(plain)
            delivered += 1
        if group in self.internal:
            return delivered
        metrics.FANOUT_SIZE.observe(delivered)
        if delivered:
            metrics.group_frames_out(payload).inc(delivered)
        return delivered
