"""The operators' page (`/admin/`, static files) and its JSON API (`/api/admin/…`).

The page loads for anyone: it holds no data, only the code that asks staff to log in
and then reads the API and the socket. Every API call checks for a staff access token:
401 without a valid one, 403 when it is not a staff token. docs/operations.md documents
the API; it is meant to be scripted as well as read by the page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tornado.web

from taxi_tornado.frames import encode
from taxi_tornado.handlers.base import NOT_FOUND, ApiError, ApiHandler, base_url
from taxi_tornado.plugins import admin, trips
from taxi_tornado.plugins.api import Connection, ProtocolError
from taxi_tornado.store import STAFF, User

if TYPE_CHECKING:
    from taxi_tornado.services import Services

log = logging.getLogger("taxi_tornado.admin")

PAGE_DIR = Path(__file__).resolve().parent.parent / "admin"
STAFF_ONLY = {"detail": "Only staff can use the admin API."}
# How a refused staff action maps to HTTP.
ACTION_STATUS = {"not_found": 404, "conflict": 409, "invalid_transition": 409}
USER_MATCHES = 20  # users a name search answers with, at most
MAX_USERNAME = 150


def routes(services: Services) -> list[Any]:
    kwargs = {"services": services}
    return [
        (r"/admin", tornado.web.RedirectHandler, {"url": "/admin/", "permanent": False}),
        (r"/admin/(.*)", AdminPageHandler, {
            "path": str(PAGE_DIR), "default_filename": "index.html",
            "policy": content_security_policy(services.settings.admin.tile_url)}),
        (r"/api/admin/?", OverviewHandler, kwargs),
        (r"/api/admin/users/?", UserSearchHandler, kwargs),
        (r"/api/admin/trip/([^/]+)/cancel/?", TripCancelHandler, kwargs),
        (r"/api/admin/user/([^/]+)/disconnect/?", UserDisconnectHandler, kwargs),
    ]


class AdminPageHandler(tornado.web.StaticFileHandler):
    """The page's files, with a Content Security Policy: only our own scripts and styles
    run, the page talks only to this server (and fetches map tiles from admin.tile_url's
    host when one is set), and no other site can frame it."""

    def initialize(self, path: str, default_filename: str | None = None,
                   allowed_symlink_directory: str | list[str] | None = None,
                   policy: str = "") -> None:
        super().initialize(path, default_filename, allowed_symlink_directory)
        self.policy = policy

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", self.policy)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        body = NOT_FOUND if status_code == 404 else {"detail": self._reason}
        self.finish(encode(body))


def content_security_policy(tile_url: str) -> str:
    images = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url)
        images += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class AdminApiHandler(ApiHandler):
    async def staff(self) -> User:
        """The staff user of the request's Bearer token; 401 or 403 otherwise.

        Both the token's `staff` claim and the stored group must say staff: a user moved
        out of staff keeps a token that says so until it expires, and a user moved in
        needs a new token (a new log-in), so that either change holds at once.
        """
        user, claims = await self.authenticate_with_claims()
        if claims.get("staff") is not True or user.group != STAFF:
            raise ApiError(403, STAFF_ONLY)
        return user


class OverviewHandler(AdminApiHandler):
    async def get(self) -> None:
        await self.staff()
        self.write_json(await self.services.monitor.overview())


class UserSearchHandler(AdminApiHandler):
    """Users whose name starts with `q` (ignoring case), by name, at most USER_MATCHES:
    operators know a user by name, and the actions take the id this gives."""

    async def get(self) -> None:
        await self.staff()
        prefix = self.get_query_argument("q", "").strip()
        if not prefix:
            raise ApiError(400, {"q": ["This field is required."]})
        if len(prefix) > MAX_USERNAME:
            raise ApiError(400, {"q": [f"Ensure this field has no more than {MAX_USERNAME} "
                                       "characters."]})
        found = await self.services.store.find_users(prefix, USER_MATCHES + 1)
        url = base_url(self.request, self.services.settings.server)
        self.write_json({"users": [user.to_json(url) for user in found[:USER_MATCHES]],
                         "more": len(found) > USER_MATCHES})


class TripCancelHandler(AdminApiHandler):
    """Cancel a REQUESTED or STARTED trip; its rider and driver hear it as from the rider."""

    async def post(self, trip_id: str) -> None:
        user = await self.staff()
        services = self.services
        # The staff user acts through the trips plugin like any client, without a socket.
        conn = Connection(user, 2, services.hub, services.store, services.settings,
                          base_url(self.request, services.settings.server), services.dispatch)
        try:
            message = await trips.cancel_for_staff(conn, trip_id)
        except ProtocolError as error:
            status = ACTION_STATUS.get(error.code, 400)
            raise ApiError(status, {"detail": error.detail, "code": error.code}) from None
        log.info("staff %s (%s) canceled trip %s", user.username, user.id, trip_id)
        self.write_json(message["data"])


class UserDisconnectHandler(AdminApiHandler):
    """Close every socket of a user, on every process (close code 4000: reconnect)."""

    async def post(self, user_id: str) -> None:
        staff = await self.staff()
        target = await self.services.store.get_user(user_id)
        if target is None:
            raise ApiError(404, NOT_FOUND)
        await admin.close_user_sockets(self.services.hub, target.id)
        log.info("staff %s (%s) closed the sockets of user %s (%s)", staff.username,
                 staff.id, target.username, target.id)
        self.write_json({"user": target.id, "close_code": admin.CLOSED_BY_STAFF}, 202)
