"""Services: the long-lived parts every handler and plugin reaches.

Handlers hold a Services; nothing here knows Tornado's application, so any module may
import this one without a circle (only the CLI imports app.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from taxi_tornado.asyncapi import build_document
from taxi_tornado.auth import TokenAuthority
from taxi_tornado.dispatch.service import Dispatch
from taxi_tornado.frames import encode
from taxi_tornado.handlers.expiry import TokenExpiry
from taxi_tornado.handlers.keepalive import Keepalive
from taxi_tornado.hub import HistoryLimits, Hub, build_broker, hub_keys
from taxi_tornado.idempotency import Idempotency, RedisKeys, RequestKeys
from taxi_tornado.monitor import Monitor, SocketCensus
from taxi_tornado.plugins.admin import ADMIN
from taxi_tornado.plugins.api import Registry
from taxi_tornado.plugins.loader import PluginInfo, load_plugins
from taxi_tornado.plugins.tasks import PluginTasks
from taxi_tornado.rate_limit import AddressRateLimit
from taxi_tornado.settings import Settings
from taxi_tornado.store import Store, open_store

log = logging.getLogger("taxi_tornado.services")


class OpenSocket(Protocol):
    """An open client socket as the drain sees it (the socket handler is one; it imports
    this module, so this one names what it needs instead of importing it back)."""

    def shut_down(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(eq=False)
class Services:
    """The shared parts every handler reaches through `self.services`."""

    settings: Settings
    store: Store
    hub: Hub
    registry: Registry
    tokens: TokenAuthority
    plugin_tasks: PluginTasks
    dispatch: Dispatch
    idempotency: Idempotency  # keyed frames: answered once per (user, key)
    asyncapi: bytes  # GET /api/asyncapi.json, built from the registry at start-up
    plugins: list[PluginInfo] = field(default_factory=list)
    sockets: set[OpenSocket] = field(default_factory=set)
    census: SocketCensus = field(default_factory=SocketCensus)  # kept beside `sockets`
    draining: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    expiry: TokenExpiry = field(default_factory=TokenExpiry)
    keepalive: Keepalive = field(init=False)  # pings the open sockets
    auth_rate: AddressRateLimit = field(init=False)  # log-in, sign-up and refresh
    monitor: Monitor = field(init=False)  # the operators' view (admin.enabled)

    def __post_init__(self) -> None:
        self.auth_rate = AddressRateLimit(self.settings.limits.auth_rate)
        self.keepalive = Keepalive(self.settings.server.ping_interval,
                                   self.settings.server.ping_timeout)
        self.monitor = Monitor(self, staff_group=ADMIN)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())


def build_services(settings: Settings, registry: Registry | None = None,
                   plugins: list[PluginInfo] | None = None) -> Services:
    """Everything but the network; plugins load here so that a conflict stops start-up."""
    if registry is None:
        registry, plugins = load_plugins(settings=settings.plugins)
    store = open_store(settings.store_url)
    hub = Hub(build_broker(settings.hub.url, settings.hub.prefix,
                           HistoryLimits(settings.hub.history_size, settings.hub.history_ttl,
                                         settings.hub.history_bytes)))
    dispatch = Dispatch(settings, hub, store, registry.strategy_factories,
                        [listener for _, listener in registry.trip_listeners])
    # Keys live where every process sharing the hub sees them: in Redis with a Redis hub
    # (through the dispatch's client, which it closes), else in the store.
    keys: RequestKeys = store if dispatch.redis is None else RedisKeys(
        dispatch.redis, hub_keys(settings.hub.url, settings.hub.prefix))
    return Services(
        settings=settings,
        store=store,
        hub=hub,
        registry=registry,
        tokens=TokenAuthority(settings.auth),
        plugin_tasks=PluginTasks(registry, hub, store, settings),
        dispatch=dispatch,
        idempotency=Idempotency(keys, settings.limits.idempotency_ttl),
        asyncapi=encode(build_document(registry, settings)),
        plugins=plugins or [],
    )
