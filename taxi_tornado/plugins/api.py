"""The plugin surface: everything a plugin author touches is defined in this file.

A plugin is an object registered under the entry-point group `taxi_tornado.plugins`
with a `setup(registry)` function. In setup it reads its settings and registers message
types, connection hooks, HTTP routes and tasks:

    def setup(registry: Registry) -> None:
        registry.add_message_type("echo.message", echo)

    async def echo(conn: Connection, data: Any) -> dict[str, Any]:
        return {"type": "echo.message", "data": data}

A handler returns the reply for the sender (the server adds the frame's `id`), or None
for no reply; it raises ProtocolError to answer with an error frame. An HTTP route's
handler gets a Request and returns JSON, raising HttpError; tasks get a PluginContext.
docs/plugins.md is the reference, with an example of each.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from taxi_tornado.connection import Connection, Transport
from taxi_tornado.frames import DecodeError, decode
from taxi_tornado.hub import Hub
from taxi_tornado.plugins.config import build_spec
from taxi_tornado.plugins.errors import HttpError, PluginError, ProtocolError
from taxi_tornado.schemas import DataCheck, Schema, SchemaError, check_schema, compile_check
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, User

if TYPE_CHECKING:
    from taxi_tornado.dispatch.strategy import StrategyFactory, TripListener

# A plugin's handlers get a Connection; it is part of the plugin surface, defined beside
# the socket's delivery bookkeeping in taxi_tornado/connection.py.
__all__ = ["Connection", "HttpError", "PluginError", "ProtocolError", "Transport"]

ENTRY_POINT_GROUP = "taxi_tornado.plugins"
MAX_TYPE_LENGTH = 64
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
AUTH_MODES = ("required", "optional", "none")
# A path segment: plain URL characters, or a {name} parameter matching one segment.
_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\}")

Auth = Literal["required", "optional", "none"]
SpecT = TypeVar("SpecT")


class PluginContext:
    """The server's parts as one plugin sees them outside a connection.

    Start-up, shutdown and periodic tasks receive it, and a route finds it as
    `request.context`. `plugin` is the plugin's name, `config` its raw settings, `log` a
    logger named `taxi_tornado.plugins.<name>`; `hub`, `store` and `settings` are the
    server's, as on a Connection.
    """

    __slots__ = ("config", "hub", "log", "plugin", "settings", "store")

    def __init__(self, plugin: str, config: Mapping[str, Any], hub: Hub, store: Store,
                 settings: Settings) -> None:
        self.plugin = plugin
        self.config = config
        self.hub = hub
        self.store = store
        self.settings = settings
        self.log = logging.getLogger(f"taxi_tornado.plugins.{plugin}")

    async def publish(self, group: str, message: dict[str, Any], *, min_version: int = 1) -> int:
        """Send `message` to every connection in `group` on every process, like
        Connection.send_group; returns the deliveries made by this process."""
        return await self.hub.send(group, message, min_version=min_version)

    def __repr__(self) -> str:
        return f"<PluginContext {self.plugin}>"


class Request:
    """One HTTP request to a plugin's route, as its handler sees it.

    `user` is the token's User (None when the route's auth is "none", or "optional" and
    no token came); `path_params` holds the `{name}` parts of the path, `query` the
    query string (the last value of a repeated key), `headers` the request headers (any
    case); `body` the raw bytes, and `await request.json()` the parsed body.
    `base_url` is scheme://host as the client reached the server, for `user.to_json`.
    """

    __slots__ = ("base_url", "body", "context", "headers", "method", "path", "path_params",
                 "query", "user")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        path_params: Mapping[str, str],
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        user: User | None,
        context: PluginContext,
        base_url: str,
    ) -> None:
        self.method = method
        self.path = path
        self.path_params = path_params
        self.query = query
        self.headers = headers
        self.body = body
        self.user = user
        self.context = context
        self.base_url = base_url

    async def json(self) -> Any:
        """The body parsed as JSON (any JSON value); a 400 in the API's shape when it is
        empty or not JSON."""
        if not self.body:
            raise HttpError(400, "JSON parse error - the request body is empty.")
        try:
            return decode(self.body)
        except DecodeError as error:
            raise HttpError(400, f"JSON parse error - {error}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


@dataclass(frozen=True)
class Response:
    """What a route handler returns to choose the status or add headers; a handler that
    returns anything else answers 200 with that value as JSON. `body` None with status
    204 sends no body."""

    body: Any = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


MessageHandler = Callable[[Connection, Any], Awaitable[dict[str, Any] | None]]
ConnectionHook = Callable[[Connection], Awaitable[None]]
RouteHandler = Callable[[Request], Awaitable[Any]]
TaskFunction = Callable[[PluginContext], Awaitable[None]]


@dataclass(frozen=True)
class MessageType:
    """One registered type (or alias), as the socket reads it per frame.

    `check` is the compiled check of `data` (None when any data will do); `senders` the
    user groups that may send it (empty: anyone); `min_version` the protocol version a
    connection needs to send it; `keyed` whether a frame's `key` makes it idempotent.
    `schema`, `reply` and `events` are the declared schemas the AsyncAPI document shows.
    """

    name: str
    handler: MessageHandler
    plugin: str
    alias_of: str | None = None
    check: DataCheck | None = None
    senders: tuple[str, ...] = ()
    min_version: int = 1
    keyed: bool = False
    schema: Schema | None = None
    reply: Mapping[str, Schema] = field(default_factory=dict)
    events: Mapping[str, Schema] = field(default_factory=dict)

    @property
    def canonical(self) -> str:
        """The type this one stands for: its own name, or the name it is an alias of."""
        return self.alias_of or self.name


@dataclass(frozen=True)
class Route:
    path: str
    handler: RouteHandler
    methods: tuple[str, ...]
    auth: Auth
    plugin: str

    def describe(self) -> str:
        return f"{','.join(self.methods)} {self.path} (auth {self.auth})"


@dataclass(frozen=True)
class PeriodicTask:
    seconds: float
    function: TaskFunction
    plugin: str

    @property
    def name(self) -> str:
        return task_name(self.function)


def task_name(function: Callable[..., Any]) -> str:
    return str(getattr(function, "__qualname__", None) or function)


@dataclass(frozen=True)
class DispatchStrategyEntry:
    name: str
    factory: StrategyFactory
    plugin: str


@dataclass
class Registry:
    """What plugins register into; built once at start-up, read per frame.

    During a plugin's `setup(registry)` every registration is made in that plugin's
    name, and `config` and `settings()` are that plugin's.
    """

    types: dict[str, MessageType] = field(default_factory=dict)
    connect_hooks: list[tuple[str, ConnectionHook]] = field(default_factory=list)
    disconnect_hooks: list[tuple[str, ConnectionHook]] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    startup_hooks: list[tuple[str, TaskFunction]] = field(default_factory=list)
    shutdown_hooks: list[tuple[str, TaskFunction]] = field(default_factory=list)
    periodic_tasks: list[PeriodicTask] = field(default_factory=list)
    configs: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # set by the loader
    setting_specs: dict[str, type] = field(default_factory=dict)
    dispatch_strategies: dict[str, DispatchStrategyEntry] = field(default_factory=dict)
    trip_listeners: list[tuple[str, TripListener]] = field(default_factory=list)
    plugin: str = "<core>"  # the plugin whose setup() is running

    def add_message_type(
        self,
        name: str,
        handler: MessageHandler,
        *,
        schema: Schema | None = None,
        reply: Mapping[str, Schema] | None = None,
        events: Mapping[str, Schema] | None = None,
        senders: tuple[str, ...] = (),
        min_version: int = 1,
        keyed: bool = False,
        aliases: tuple[str, ...] = (),
        override: bool = False,
    ) -> None:
        """Route frames of type `name` (and of each alias) to `handler`.

        `schema` is the JSON Schema (draft 2020-12) of the frames' `data`: the server
        checks it before the handler runs and answers `invalid` with field errors (no
        schema: any data). `reply` and `events` map the types of the reply and of the
        events the handler sends to the schemas of their `data` (for GET
        /api/asyncapi.json). `senders` names the user groups that may send it (others
        get `forbidden` before the data is looked at); `min_version=2` keeps it from v1
        connections (`unknown_type`); `keyed=True` makes a frame carrying a `key`
        idempotent (PROTOCOL: Idempotent requests). A schema that is not valid JSON
        Schema, or registering a type another plugin owns (unless `override=True`),
        stops start-up naming the plugin.
        """
        where = f"plugin {self.plugin!r}: message type {name!r}"
        try:
            check = compile_check(schema)
            for declared in (*(reply or {}).values(), *(events or {}).values()):
                check_schema(declared)
        except SchemaError as error:
            raise PluginError(f"{where}: its schema is not valid JSON Schema: {error}") \
                from None
        if not all(isinstance(group, str) for group in senders) or isinstance(senders, str):
            raise PluginError(f"{where}: senders must be a tuple of user groups")
        for type_name in (name, *aliases):
            self._check_name(type_name, override)
            alias_of = name if type_name != name else None
            self.types[type_name] = MessageType(
                type_name, handler, self.plugin, alias_of, check, tuple(senders),
                min_version, keyed, schema, dict(reply or {}), dict(events or {}))

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

    def on_trip_changed(self, listener: TripListener) -> None:
        """Await `listener(context, trip)` when the server changes a trip by itself,
        outside any client's frame (the `nearest` strategy canceling a trip nobody took
        by dispatch.max_wait); `trip` is the Trip as JSON, `context` the DispatchContext
        (its hub, store and settings). A listener that raises is logged; the rest still
        run. Changes made by a client's frame are the handler's to announce."""
        self._check_task(listener, "on_trip_changed")
        self.trip_listeners.append((self.plugin, listener))

    @property
    def strategy_factories(self) -> dict[str, StrategyFactory]:
        """The registered dispatch strategies by name, for `dispatch.mode` to choose."""
        return {name: entry.factory for name, entry in self.dispatch_strategies.items()}

    @property
    def config(self) -> Mapping[str, Any]:
        """This plugin's raw settings: its `[plugins.<name>]` table, with every
        TAXI_PLUGINS_<NAME>_<KEY> variable over it (those values are strings)."""
        return MappingProxyType(dict(self.configs.get(self.plugin, {})))

    def settings(self, spec: type[SpecT]) -> SpecT:
        """This plugin's settings as an instance of the dataclass `spec`.

        A field without a default is required; values are converted to the field's type
        (str, int, float, bool or list[str]). An unknown key, a missing required one or a
        value that does not convert stops start-up with one line naming
        `plugins.<name>.<key>`.
        """
        instance = build_spec(self.plugin, spec, self.configs.get(self.plugin, {}))
        self.setting_specs[self.plugin] = spec
        return instance

    def add_route(
        self,
        path: str,
        handler: RouteHandler,
        *,
        methods: tuple[str, ...] = ("GET",),
        auth: Auth = "required",
    ) -> None:
        """Serve `methods` on `path` with `async def handler(request) -> JSON value`.

        `{name}` in the path matches one segment, found in `request.path_params`; a path
        ending in `/` also answers without it. `auth` "required" answers 401 without a
        valid access token; "optional" lets a request without a token through with
        `request.user` None (a bad token is still a 401); "none" never looks.
        """
        methods = tuple(method.upper() for method in methods)
        self._check_route(path, handler, methods, auth)
        self.routes.append(Route(path, handler, methods, auth, self.plugin))

    def _check_route(self, path: str, handler: RouteHandler, methods: tuple[str, ...],
                     auth: str) -> None:
        where = f"plugin {self.plugin!r}: route {path!r}"
        if not isinstance(path, str) or not _valid_path(path):
            raise PluginError(f"{where}: a path starts with / and holds segments of URL "
                              "characters or {name} parameters")
        if not callable(handler):
            raise PluginError(f"{where}: the handler is not callable")
        if not methods or any(method not in HTTP_METHODS for method in methods):
            raise PluginError(f"{where}: methods must be among {', '.join(HTTP_METHODS)}")
        if auth not in AUTH_MODES:
            raise PluginError(f"{where}: auth must be one of {', '.join(AUTH_MODES)}")
        shape = route_shape(path)
        for route in self.routes:
            if route_shape(route.path) != shape:
                continue
            if route.plugin != self.plugin:
                raise PluginError(f"plugins {route.plugin!r} and {self.plugin!r} both add "
                                  f"the route {path!r}; disable one with plugins.disabled")
            if set(route.methods) & set(methods):
                raise PluginError(f"{where}: added twice for {', '.join(methods)}")

    def on_startup(self, function: TaskFunction) -> None:
        """Await `function(context)` at start-up, before the server accepts anything; one
        that raises stops start-up. Plugins start in name order."""
        self._check_task(function, "on_startup")
        self.startup_hooks.append((self.plugin, function))

    def on_shutdown(self, function: TaskFunction) -> None:
        """Await `function(context)` in the drain, once every socket is closed and the
        periodic tasks have stopped, while the hub and store still work. Hooks run in the
        reverse order of registration; a failure is logged and the drain goes on."""
        self._check_task(function, "on_shutdown")
        self.shutdown_hooks.append((self.plugin, function))

    def every(self, seconds: float, function: TaskFunction) -> None:
        """Await `function(context)` every `seconds`, the first time `seconds` after
        start-up. A run never overlaps the previous one (a late run skips the ticks it
        missed); a run that raises is logged and counted in /metrics
        (taxi_plugin_task_failures) and the schedule goes on. Stopped in the drain."""
        self._check_task(function, "every")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise PluginError(f"plugin {self.plugin!r}: every() needs a positive number of "
                              f"seconds, got {seconds!r}")
        self.periodic_tasks.append(PeriodicTask(float(seconds), function, self.plugin))

    def _check_task(self, function: Callable[..., Any], method: str) -> None:
        if not callable(function):
            raise PluginError(f"plugin {self.plugin!r}: {method}() needs an async function, "
                              f"got {function!r}")

    def types_of(self, plugin: str) -> list[str]:
        return sorted(name for name, entry in self.types.items() if entry.plugin == plugin)

    def routes_of(self, plugin: str) -> list[str]:
        return [route.describe() for route in self.routes if route.plugin == plugin]

    def tasks_of(self, plugin: str) -> list[str]:
        tasks = [f"on_startup {task_name(fn)}" for name, fn in self.startup_hooks
                 if name == plugin]
        tasks += [f"every {task.seconds:g}s {task.name}" for task in self.periodic_tasks
                  if task.plugin == plugin]
        tasks += [f"on_shutdown {task_name(fn)}" for name, fn in self.shutdown_hooks
                  if name == plugin]
        return tasks


def route_shape(path: str) -> str:
    """The form two paths share when they match the same requests."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def _valid_path(path: str) -> bool:
    if not path.startswith("/"):
        return False
    segments = path[1:].split("/")
    if segments[-1] == "":
        segments.pop()  # a trailing slash
    names = [segment for segment in segments if segment.startswith("{")]
    return (all(_SEGMENT.fullmatch(segment) for segment in segments)
            and len(names) == len(set(names)))
