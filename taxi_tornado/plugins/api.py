"""The plugin surface: everything a plugin author touches is defined in this file.

A plugin is an object registered under the entry-point group `taxi_tornado.plugins`
with a `setup(registry)` function. In setup it registers message types and hooks:

    def setup(registry: Registry) -> None:
        registry.add_message_type("echo.message", echo)

    async def echo(conn: Connection, data: Any) -> dict[str, Any]:
        return {"type": "echo.message", "data": data}

A handler returns the reply for the sender (the server adds the frame's `id`), or None
for no reply; it raises ProtocolError to answer with an error frame.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from taxi_tornado.frames import message_frame
from taxi_tornado.hub import Hub
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, User

if TYPE_CHECKING:
    from taxi_tornado.dispatch.service import Dispatch
    from taxi_tornado.dispatch.strategy import StrategyFactory

ENTRY_POINT_GROUP = "taxi_tornado.plugins"
MAX_TYPE_LENGTH = 64


class ProtocolError(Exception):
    """Raised by a handler to answer the sender with an error frame (PROTOCOL.md, Errors)."""

    def __init__(
        self, code: str, detail: str, errors: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = errors or {}


class PluginError(Exception):
    """A plugin cannot be loaded or conflicts with another; start-up stops on it."""


class Transport(Protocol):
    """The socket under a Connection; implemented by the WebSocket handler."""

    def write_frame(self, frame: bytes) -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Connection:
    """One authenticated client socket, as plugins see it.

    `user` is who opened it; `version` the protocol version it speaks (1 or 2); `hub`,
    `store`, `settings` and `dispatch` are the server's. Frames sent before the socket is open are
    held and written when it opens.
    """

    # Thousands of these live at once: slots keep each about half a kilobyte smaller.
    __slots__ = ("_pending", "_transport", "base_url", "dispatch", "groups", "hub", "id",
                 "settings", "state", "store", "user", "version")

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
        self._transport: Transport | None = None
        self._pending: list[bytes] | None = None  # made by the first early frame

    def attach(self, transport: Transport) -> None:
        """Bind the open socket and flush what was sent before it opened."""
        self._transport = transport
        pending, self._pending = self._pending, None
        for frame in pending or ():
            transport.write_frame(frame)

    def deliver(self, frame: bytes) -> None:
        transport = self._transport
        if transport is None:
            if self._pending is None:
                self._pending = []
            self._pending.append(frame)
            return
        transport.write_frame(frame)

    def send(self, message: dict[str, Any]) -> None:
        """Send one message to this connection only."""
        self.deliver(message_frame(message))

    async def join(self, group: str) -> None:
        self.groups.add(group)
        await self.hub.join(self, group)

    async def leave(self, group: str) -> None:
        self.groups.discard(group)
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


MessageHandler = Callable[[Connection, Any], Awaitable[dict[str, Any] | None]]
ConnectionHook = Callable[[Connection], Awaitable[None]]


@dataclass(frozen=True)
class MessageType:
    name: str
    handler: MessageHandler
    plugin: str
    alias_of: str | None = None


@dataclass(frozen=True)
class DispatchStrategyEntry:
    name: str
    factory: StrategyFactory
    plugin: str


@dataclass
class Registry:
    """What plugins register into; built once at start-up, read per frame."""

    types: dict[str, MessageType] = field(default_factory=dict)
    connect_hooks: list[tuple[str, ConnectionHook]] = field(default_factory=list)
    disconnect_hooks: list[tuple[str, ConnectionHook]] = field(default_factory=list)
    dispatch_strategies: dict[str, DispatchStrategyEntry] = field(default_factory=dict)
    plugin: str = "<core>"  # the plugin whose setup() is running

    def add_message_type(
        self,
        name: str,
        handler: MessageHandler,
        *,
        aliases: tuple[str, ...] = (),
        override: bool = False,
    ) -> None:
        """Route frames of type `name` (and of each alias) to `handler`.

        Registering a type another plugin owns fails, naming both plugins, unless
        `override=True`.
        """
        for type_name in (name, *aliases):
            self._check_name(type_name, override)
            alias_of = name if type_name != name else None
            self.types[type_name] = MessageType(type_name, handler, self.plugin, alias_of)

    def _check_name(self, name: str, override: bool) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_TYPE_LENGTH:
            raise PluginError(
                f"plugin {self.plugin!r}: message type {name!r} must be a string of "
                f"1 to {MAX_TYPE_LENGTH} characters"
            )
        owner = self.types.get(name)
        if owner is not None and not override:
            raise PluginError(
                f"plugins {owner.plugin!r} and {self.plugin!r} both register message "
                f"type {name!r}; disable one with plugins.disabled"
            )

    def add_dispatch_strategy(
        self, name: str, factory: StrategyFactory, *, override: bool = False
    ) -> None:
        """Offer a dispatch strategy under `name`, for `dispatch.mode` to choose.

        `factory(context)` builds it once at start-up (docs/dispatch.md). Registering a
        name another plugin owns fails, naming both plugins, unless `override=True`.
        """
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.plugin!r}: a dispatch strategy needs a name")
        owner = self.dispatch_strategies.get(name)
        if owner is not None and not override:
            raise PluginError(
                f"plugins {owner.plugin!r} and {self.plugin!r} both register dispatch "
                f"strategy {name!r}; disable one with plugins.disabled"
            )
        self.dispatch_strategies[name] = DispatchStrategyEntry(name, factory, self.plugin)

    def on_connect(self, hook: ConnectionHook) -> None:
        """Run `hook(conn)` for every new connection before its handshake completes."""
        self.connect_hooks.append((self.plugin, hook))

    def on_disconnect(self, hook: ConnectionHook) -> None:
        """Run `hook(conn)` when a connection closes."""
        self.disconnect_hooks.append((self.plugin, hook))

    def types_of(self, plugin: str) -> list[str]:
        return sorted(name for name, entry in self.types.items() if entry.plugin == plugin)
