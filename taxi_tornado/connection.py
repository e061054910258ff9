"""One authenticated client socket as plugins and the hub see it: what it is (user,
version, groups) and the delivery bookkeeping a resume relies on (which positions of
each group it was sent, which groups a resume is holding back).

Plugins reach it as `taxi_tornado.plugins.api.Connection`; it lives apart from the
plugin surface because the socket handler, the hub and the monitor use it too.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Protocol

from taxi_tornado.frames import message_frame
from taxi_tornado.hub import Hub, Position
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, User

if TYPE_CHECKING:
    from taxi_tornado.dispatch.service import Dispatch


# Close code for a socket whose events pile up (docs/protocol.md, Close codes).
TRY_AGAIN_LATER = 1013


class Transport(Protocol):
    """The socket under a Connection; implemented by the WebSocket handler."""

    def write_frame(self, frame: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Connection:
    """One authenticated client socket, as plugins see it.

    `user` is who opened it; `version` the protocol version it speaks (1 or 2); `hub`,
    `store`, `settings` and `dispatch` are the server's; `expires` when its access token
    expires (Unix time; None for v1, which stays authenticated until it closes). Frames
    sent before the socket is open are held and written when it opens. Once `closed` (the
    socket is closing or gone, or its upgrade failed) it holds nothing, sends nothing,
    and joins no group.
    """

    # Thousands of these live at once: slots keep each about half a kilobyte smaller.
    __slots__ = ("_held", "_pending", "_received", "_transport", "base_url", "closed",
                 "dispatch", "expires", "groups", "hub", "id", "settings", "state", "store",
                 "user", "version")

    def __init__(
        self,
        user: User,
        version: int,
        hub: Hub,
        store: Store,
        settings: Settings,
        base_url: str,
        dispatch: Dispatch | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.user = user
        self.version = version
        self.hub = hub
        self.store = store
        self.settings = settings
        self.base_url = base_url
        self.dispatch = dispatch  # the server's Dispatch: location index and strategy
        self.groups: set[str] = set()
        self.state: dict[str, Any] = {}  # free for plugins, keyed by plugin name
        self.expires: float | None = None
        self.closed = False
        self._transport: Transport | None = None
        self._pending: list[bytes] | None = None  # made by the first early frame
        # Per group, the first and last position received live (v2), made by the first
        # event; and the events held back while a resume replays the group.
        self._received: dict[str, list[Position]] | None = None
        self._held: dict[str, list[tuple[Position, bytes]]] | None = None

    def attach(self, transport: Transport) -> None:
        """Bind the open socket and flush what was sent before it opened."""
        if self.closed:
            return
        self._transport = transport
        pending, self._pending = self._pending, None
        for frame in pending or ():
            transport.write_frame(frame)

    def detach(self) -> None:
        """The socket is closing or gone: drop what is held and take nothing more.

        The server calls this first on every way out of a socket, so a connection the
        hub still lists for a moment keeps no frames and no reference to its socket.
        """
        self.closed = True
        self._transport = None
        self._pending = None
        self._held = None
        self._received = None

    def deliver(self, frame: bytes) -> None:
        transport = self._transport
        if transport is not None:
            transport.write_frame(frame)
            return
        if self.closed:
            return
        if self._pending is None:
            self._pending = []
        self._pending.append(frame)

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        """A group send carrying `position`: written, or held while a resume replays
        `group`; either way remembered, so that a resume does not send it twice. An
        empty `frame` is a send this connection was left out of (it sent the change and
        got a reply instead): only remembered, so that a resume does not send it either.

        The live sends of a group come in offset order (one step numbers and publishes
        each), so one at or below the last this connection was sent, in the same epoch,
        was sent already: a resume replayed it before its live copy came (the history
        is read on another connection than the one live sends come on). It is dropped.
        """
        held = self._held
        if held is not None:
            waiting = held.get(group)
            if waiting is not None:
                self._hold_back(waiting, position, frame)
                return
        # Per group member and send: the bookkeeping and deliver(), inlined.
        received = self._received
        if received is None:
            received = self._received = {}
        span = received.get(group)
        if span is None or span[1].epoch != position.epoch:
            received[group] = [position, position]
        elif position.offset > span[1].offset:
            span[1] = position
        else:
            return  # replayed already
        if not frame:
            return
        transport = self._transport
        if transport is None:
            self.deliver(frame)
        else:
            transport.write_frame(frame)

    def _hold_back(self, waiting: list[tuple[Position, bytes]], position: Position,
                   frame: bytes) -> None:
        """Keep a live event while its group's replay is read; a group that sends more
        than the outbound queue holds meanwhile closes the socket as a slow reader would
        be (1013: the client resumes again), rather than keep an unbounded list."""
        if len(waiting) < self.settings.limits.outbound_queue:
            waiting.append((position, frame))
            return
        transport = self._transport
        if transport is None:
            self.detach()
            return
        transport.close(TRY_AGAIN_LATER, "too many events while resuming")  # detaches us

    def received(self, group: str) -> tuple[Position, Position] | None:
        """The first and last position of `group` that this connection received, in the
        latest epoch it saw; None before the first."""
        span = self._received.get(group) if self._received else None
        return (span[0], span[1]) if span else None

    def unsent(self, group: str, events: list[tuple[Position, bytes]]
               ) -> list[tuple[Position, bytes]]:
        """Those of `events` (a replay of `group`, while it is held) that this
        connection has neither been sent since its handshake nor been left out of as
        their sender, in order."""
        span = self.received(group)
        held = self._held.get(group) if self._held else None
        answered = {position for position, frame in held or () if not frame}
        return [(position, payload) for position, payload in events
                if position not in answered and not (
                    span and span[0].epoch == position.epoch
                    and span[0].offset <= position.offset <= span[1].offset)]

    def hold(self, group: str) -> None:
        """Keep `group`'s events back (a resume is reading its history) until release()."""
        if self._held is None:
            self._held = {}
        self._held.setdefault(group, [])

    def release(self, group: str, through: Position | None) -> None:
        """Stop holding `group` and write the held events, in order, but those up to
        `through`: the last position the client holds now that a resume replayed the
        group (None when it was not recovered)."""
        waiting = self._held.pop(group, []) if self._held else []
        if not self._held:
            self._held = None
        if through is not None:
            self.deliver_event(b"", group, through)  # the client holds all up to it
        for position, frame in waiting:
            self.deliver_event(frame, group, position)  # drops those the resume sent
        if group not in self.groups and self._received:  # left while the resume read
            self._received.pop(group, None)

    def send(self, message: dict[str, Any]) -> None:
        """Send one message to this connection only."""
        self.deliver(message_frame(message))

    async def join(self, group: str) -> None:
        """Join `group`; a no-op once closed, and undone if the socket closes meanwhile."""
        if self.closed:
            return
        self.groups.add(group)
        await self.hub.join(self, group)
        if self.closed:  # the server let this connection go while the broker confirmed
            await self.leave(group)

    async def leave(self, group: str) -> None:
        self.groups.discard(group)
        if self._received:
            self._received.pop(group, None)
        await self.hub.leave(self, group)

    async def send_group(
        self,
        group: str,
        message: dict[str, Any],
        *,
        exclude_self: bool = False,
        min_version: int = 1,
    ) -> int:
        """Send to every connection in `group` on every process.

        `min_version=2` keeps the message from v1 connections (the seed app's client).
        """
        exclude = self.id if exclude_self else None
        return await self.hub.send(group, message, exclude=exclude, min_version=min_version)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self._transport is not None:
            self._transport.close(code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user.id} v{self.version}>"
