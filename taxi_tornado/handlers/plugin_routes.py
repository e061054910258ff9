"""The Tornado side of plugins' HTTP routes: plugins write `async def handler(request)`.

Each plugin path becomes one PluginRouteHandler, which answers in the API's shapes: 405
for a method the path does not serve, 401 with the contract's body for a missing or bad
token, the plugin's HttpError as JSON, and a 500 without details (logged with the
traceback) for anything else a handler raises.

Tornado percent-decodes path parameters, so `{name}` would receive `../../etc` from
`..%2F..%2Fetc`: a decoded parameter holding `/` or a control character is a 404, as if
the path did not match.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taxi_tornado import metrics
from taxi_tornado.frames import encode
from taxi_tornado.handlers.base import (
    NOT_FOUND,
    SERVER_ERROR,
    ApiError,
    ApiHandler,
    base_url,
    method_not_allowed,
)
from taxi_tornado.plugins.api import HttpError, PluginError, Request, Response, Route
from taxi_tornado.store import User

if TYPE_CHECKING:
    from taxi_tornado.services import Services

log = logging.getLogger("taxi_tornado.plugins")

SAMPLE_SEGMENT = "sample"
# What a decoded path parameter may not hold: a slash, C0 and C1 controls, DEL.
NOT_IN_A_SEGMENT = re.compile(r"[/\x00-\x1f\x7f-\x9f]")


def plugin_routes(services: Services, core_patterns: Sequence[str]) -> list[Any]:
    """Tornado rules for every plugin route, after checking that none claims a core path.

    `core_patterns` are the core's Tornado path patterns. Paths without parameters come
    first, so that `/things/new` is not taken by `/things/{id}`.
    """
    by_path: dict[str, list[Route]] = {}
    for route in services.registry.routes:
        _check_core_claim(route, core_patterns)
        by_path.setdefault(route.path.rstrip("/") or "/", []).append(route)
    paths = sorted(by_path, key=lambda path: "{" in path)
    return [(route_pattern(path), PluginRouteHandler,
             {"services": services,
              "routes": {method: route for route in by_path[path] for method in route.methods}})
            for path in paths]


def route_pattern(path: str) -> str:
    """The Tornado pattern of a plugin path: {name} is a named group of one segment, and
    the trailing slash is optional."""
    pattern = ""
    for part in re.split(r"(\{[^}]*\})", path.rstrip("/")):
        if part.startswith("{"):
            pattern += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            pattern += re.escape(part)
    return pattern + "/?"


def _check_core_claim(route: Route, core_patterns: Sequence[str]) -> None:
    """A plugin path that a core path would answer, or that would answer a core path."""
    mine = re.compile(route_pattern(route.path) + "$")
    sample = _sample_path(route.path)
    for pattern in core_patterns:
        core = re.compile(pattern + "$")
        if core.match(sample) or mine.match(_core_sample(pattern)):
            raise PluginError(f"plugin {route.plugin!r}: route {route.path!r} claims the "
                              "core path " + repr(_core_sample(pattern)))


def _sample_path(path: str) -> str:
    return re.sub(r"\{[^}]*\}", SAMPLE_SEGMENT, path)


def _core_sample(pattern: str) -> str:
    """A path the core pattern answers, e.g. /api/trip/sample/ for /api/trip/([^/]+)/?."""
    sample = re.sub(r"\([^)]*\)", SAMPLE_SEGMENT, pattern)
    return sample.replace("/?", "/").replace("\\", "")


class PluginRouteHandler(ApiHandler):
    """Every method of one plugin path; the plugin's Route per method."""

    routes: dict[str, Route]

    def initialize(self, services: Services,  # type: ignore[override]
                   routes: dict[str, Route]) -> None:
        super().initialize(services)
        self.routes = routes

    def prepare(self) -> None:
        if any(NOT_IN_A_SEGMENT.search(value) for value in self.path_kwargs.values()):
            raise ApiError(404, NOT_FOUND)

    async def get(self, **params: str) -> None:
        await self._serve(params)

    async def post(self, **params: str) -> None:
        await self._serve(params)

    async def put(self, **params: str) -> None:
        await self._serve(params)

    async def patch(self, **params: str) -> None:
        await self._serve(params)

    async def delete(self, **params: str) -> None:
        await self._serve(params)

    def options(self, *args: Any, **params: str) -> None:
        super().options()  # path parameters come as keyword arguments here

    def cors_methods(self) -> str:
        return ", ".join([*self.routes, "OPTIONS"])

    def allowed_methods(self) -> list[str]:
        return list(self.routes)

    async def _serve(self, params: dict[str, str]) -> None:
        method = self.request.method or "GET"
        route = self.routes.get(method)
        if route is None:
            raise ApiError(405, method_not_allowed(method),
                           {"Allow": ", ".join(self.allowed_methods())})
        request = Request(
            method=method,
            path=self.request.path,
            path_params=params,
            query={key: values[-1].decode("utf-8", "replace")
                   for key, values in self.request.query_arguments.items()},
            headers=self.request.headers,
            body=self.request.body,
            user=await self._user(route),
            context=self.services.plugin_tasks.context(route.plugin),
            base_url=base_url(self.request, self.services.settings.server),
        )
        try:
            result = route.handler(request)
            if inspect.isawaitable(result):
                result = await result
            self._answer(result)
        except HttpError as error:
            self._answer_error(route, error)
        except ApiError:
            raise
        except Exception:
            metrics.PLUGIN_ROUTE_ERRORS.labels(route.plugin).inc()
            log.exception("route %s %s of plugin %s failed", method, route.path, route.plugin)
            raise ApiError(500, SERVER_ERROR) from None

    async def _user(self, route: Route) -> User | None:
        if route.auth == "none":
            return None
        if route.auth == "optional" and "Authorization" not in self.request.headers:
            return None
        return await self.authenticate()

    def _answer(self, result: Any) -> None:
        response = result if isinstance(result, Response) else Response(result)
        for name, value in response.headers.items():
            self.set_header(name, value)
        self.set_status(response.status)
        if response.body is None and response.status == 204:
            self.finish()
            return
        self.finish(encode(response.body))

    def _answer_error(self, route: Route, error: HttpError) -> None:
        if not 400 <= error.status <= 599:
            log.error("route %s of plugin %s raised HttpError with status %s; answering 500",
                      route.path, route.plugin, error.status)
            raise ApiError(500, SERVER_ERROR)
        raise ApiError(error.status, error.body)
