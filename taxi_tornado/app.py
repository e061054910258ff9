"""Builds the application from Settings; starts it, and stops it gracefully.

`Server` owns the long-lived parts (store, hub, plugins, listening sockets). `stop()` is
the drain of docs/architecture.md, Operations: stop accepting, /readyz 503, close every socket
with 1001, wait at most drain_timeout for the sockets' closing handshakes and the HTTP
requests under way, close broker and store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.netutil import bind_sockets
from tornado.routing import Rule

from taxi_tornado.drain import DrainingHTTPServer
from taxi_tornado.handlers import admin, api, auth, drivers, socket
from taxi_tornado.handlers.base import HostRefused, InvalidHostHandler, NotFoundHandler
from taxi_tornado.handlers.body_limit import MIB, UNLIMITED, BodyLimit
from taxi_tornado.handlers.plugin_routes import plugin_routes
from taxi_tornado.hosts import allowed_hosts
from taxi_tornado.logs import log_request
from taxi_tornado.plugins.admin import ADMIN, listen_for_commands
from taxi_tornado.services import Services, build_services
from taxi_tornado.settings import Settings, SettingsError

if TYPE_CHECKING:
    import socket as pysocket

log = logging.getLogger("taxi_tornado.app")

SIGN_UP_PATH = r"/api/sign_up/?"


def build_application(services: Services) -> tornado.web.Application:
    server = services.settings.server
    path = server.socket_path.rstrip("/")
    kwargs = {"services": services}
    routes: list[Any] = [
        # Load balancers probe by address: the probes answer whatever the Host.
        (r"/healthz/?", api.HealthHandler, kwargs),
        (r"/readyz/?", api.ReadyHandler, kwargs),
        (r"/metrics/?", api.MetricsHandler, kwargs),
        Rule(HostRefused(allowed_hosts(server)), InvalidHostHandler, kwargs),
        (rf"{path}/?", socket.TaxiSocket, kwargs),
        (SIGN_UP_PATH, auth.SignUpHandler, kwargs),
        (r"/api/log_in/?", auth.LogInHandler, kwargs),
        (r"/api/token/refresh/?", auth.RefreshHandler, kwargs),
        (r"/api/trip/?", api.TripListHandler, kwargs),
        (r"/api/trip/([^/]+)/?", api.TripDetailHandler, kwargs),
        (r"/api/hub/publish/?", api.HubPublishHandler, kwargs),
        (r"/api/asyncapi\.json", api.AsyncApiHandler, kwargs),
        (r"/api/drivers/nearby/?", drivers.NearbyDriversHandler, kwargs),
        (r"/media/photos/([^/]+)", auth.PhotoHandler, kwargs),
    ]
    if services.settings.admin.enabled:
        routes += admin.routes(services)
    routes += plugin_routes(services, [rule[0] for rule in routes if isinstance(rule, tuple)])
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=kwargs,
        websocket_max_message_size=server.max_message_size,
        websocket_ping_interval=None,  # one Keepalive per process pings every socket
        log_function=log_request,
        xheaders=server.xheaders,
    )


def with_body_limits(app: tornado.web.Application, settings: Settings) -> BodyLimit:
    """docs/protocol.md: a sign-up takes a photo plus a MiB of form; every other request a MiB."""
    return BodyLimit(app, [(SIGN_UP_PATH, settings.media.max_photo_bytes + MIB)], MIB,
                     settings.server.allowed_origins)


class Server:
    """One serving process: start() to listen, stop() to drain and close."""

    def __init__(self, settings: Settings, services: Services | None = None) -> None:
        self.settings = settings
        self.services = services or build_services(settings)
        self.http: DrainingHTTPServer | None = None
        self.port = settings.server.port
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind the port (a busy one stops us before anything opens), open the store and
        the hub, then accept connections."""
        sockets = listen_sockets(self.settings)
        services = self.services
        try:
            app = build_application(services)  # a plugin claiming a core path stops here
            await services.store.open()
            await services.hub.start()
            await services.dispatch.start()
            if self.settings.admin.enabled:
                await services.monitor.start(sockets)
                await listen_for_commands(services.hub)
                services.hub.live_only(ADMIN)  # the page reads admin.stats, never resumes
            await services.plugin_tasks.start()
        except BaseException:
            for sock in sockets:
                sock.close()
            # The first error is the one to report; each part is released whatever the other did.
            with contextlib.suppress(Exception):
                await services.monitor.stop()
            with contextlib.suppress(Exception):
                await services.dispatch.stop()
            with contextlib.suppress(Exception):
                await services.hub.stop()
            with contextlib.suppress(Exception):
                await services.store.close()
            raise
        server = self.settings.server
        self.http = DrainingHTTPServer(
            with_body_limits(app, self.settings),
            xheaders=server.xheaders,
            ssl_options=self._ssl_context(),
            max_body_size=UNLIMITED,  # BodyLimit answers 413 first; Tornado's is a bare 400
            idle_connection_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
        )
        self.http.add_sockets(sockets)
        self.services.keepalive.start()
        self.port = sockets[0].getsockname()[1]
        # One line says what this process runs: what serves, where data goes, and which
        # plugins and dispatch mode decide what clients hear (`taxi-tornado check` agrees).
        log.info("taxi_tornado listening on %s://%s:%s (store %s, hub %s, event loop %s); "
                 "dispatch mode %s; plugins %s",
                 "https" if server.tls_cert else "http", server.host, self.port,
                 _safe_url(self.settings.store_url), _safe_url(self.settings.hub.url),
                 type(asyncio.get_running_loop()).__module__.split(".")[0],
                 self.settings.dispatch.mode,
                 ", ".join(plugin.name for plugin in services.plugins) or "none")

    def _ssl_context(self) -> ssl.SSLContext | None:
        server = self.settings.server
        if not server.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.tls_cert, server.tls_key)
        return context

    async def stop(self) -> None:
        """Drain: refuse new work, close sockets with 1001, let the HTTP requests under
        way finish, then release everything."""
        services = self.services
        if services.draining:
            await self._stopped.wait()
            return
        services.draining = True
        services.plugin_tasks.stop_periodic()
        http = self.http
        if http is not None:
            http.stop()
        for sock in list(services.sockets):
            sock.shut_down()
        deadline = time.monotonic() + self.settings.server.drain_timeout
        while (services.sockets or (http and http.busy)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self._abort_sockets()
        if http is not None:
            if http.busy:
                log.warning("%d HTTP requests did not finish within drain_timeout: "
                            "closing them", len(http.busy))
            try:
                await asyncio.wait_for(http.close_all_connections(), timeout=1)
            except TimeoutError:
                log.warning("some HTTP connections were still open at shutdown")
        for task in list(services.tasks):
            await asyncio.wait([task], timeout=1)
        await services.plugin_tasks.shut_down()
        self.services.keepalive.stop()
        services.expiry.stop()
        await services.monitor.stop()
        await services.dispatch.stop()
        await services.hub.stop()
        await services.store.close()
        self._stopped.set()
        log.info("taxi_tornado stopped")

    async def _abort_sockets(self) -> None:
        """Drop the sockets whose clients never finished the close, while the hub still runs.

        Their on_close (log line, leaving groups) must happen before the broker and the
        store close, not at interpreter exit.
        """
        sockets = self.services.sockets
        if not sockets:
            return
        log.warning("%d sockets did not finish closing within drain_timeout: dropping them",
                    len(sockets))
        for sock in list(sockets):
            sock.abort()
        for _ in range(100):
            if not sockets:
                return
            await asyncio.sleep(0.01)


# Connections the kernel queues before the server accepts them (capped by the kernel's
# net.core.somaxconn). Tornado's default of 128 overflowed when a drained process's
# 2,500 sockets reconnected here at once: 3,448 dropped SYNs, each client then waiting 1 s
# or 3 s for its retry.
LISTEN_BACKLOG = 4096


def listen_sockets(settings: Settings) -> list[pysocket.socket]:
    """The listening sockets for server.host and server.port; SO_REUSEPORT when several
    worker processes each bind the port. A port that cannot be had is a SettingsError."""
    server = settings.server
    try:
        return bind_sockets(server.port, server.host, reuse_port=server.processes > 1,
                            backlog=LISTEN_BACKLOG)
    except OSError as error:
        raise SettingsError(
            f"server.port: cannot listen on {server.host}:{server.port}: {error.strerror}"
        ) from None


def _safe_url(url: str) -> str:
    """The URL without credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
