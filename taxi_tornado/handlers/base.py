"""What every HTTP handler shares: JSON errors (never HTML), CORS, body parsing, auth."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher

from taxi_tornado.auth import InvalidToken, token_from_request
from taxi_tornado.frames import encode
from taxi_tornado.hosts import host_name
from taxi_tornado.store import User

if TYPE_CHECKING:
    from taxi_tornado.services import Services
    from taxi_tornado.settings import ServerSettings

log = logging.getLogger("taxi_tornado.http")

TOKEN_INVALID = {"detail": "Token is invalid or expired", "code": "token_not_valid"}
NOT_FOUND = {"detail": "Not found."}
SERVER_ERROR = {"detail": "A server error occurred."}
INVALID_HOST = {"detail": "Invalid Host header."}
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class ApiError(tornado.web.HTTPError):
    """An HTTP error whose JSON body is given: {"detail": …} or field errors; `headers`
    go with it (an error response starts from cleared headers)."""

    def __init__(self, status: int, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.body = body
        self.headers = headers or {}


def method_not_allowed(method: str) -> dict[str, str]:
    """The 405 body, for core and plugin paths alike."""
    return {"detail": f'Method "{method}" not allowed.'}


def field_errors(errors: dict[str, list[str]]) -> ApiError:
    return ApiError(400, errors)


def base_url(request: HTTPServerRequest, server: ServerSettings) -> str:
    """Where the URLs the server writes start: server.public_url when set, else
    scheme://host of the request as the client reached us (xheaders honoured), a Host
    that HostRefused let through."""
    return server.public_url.rstrip("/") or f"{request.protocol}://{request.host}"


class HostRefused(Matcher):
    """Routes every request whose Host is not in server.allowed_hosts, or is malformed, to
    InvalidHostHandler: one rule ahead of every route it guards, so no handler can miss
    the check (the probes are routed before it). `allowed` None: any well-formed host."""

    def __init__(self, allowed: frozenset[str] | None) -> None:
        self.allowed = allowed

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        name = host_name(request.host)
        if name is not None and (self.allowed is None or name in self.allowed):
            return None
        return {}


def origin_allowed(origin: str, allowed: tuple[str, ...], host: str) -> bool:
    """Browsers may call from the listed origins, or from the server's own host."""
    if "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == host.lower()


class ApiHandler(tornado.web.RequestHandler):
    """Base for the JSON API: errors are JSON, CORS follows server.allowed_origins."""

    services: Services

    def initialize(self, services: Services) -> None:
        self.services = services
        self._set_cors_headers()

    def set_default_headers(self) -> None:
        """Also re-run after an error clears the headers; CORS needs `services`."""
        self.set_header("Content-Type", "application/json")
        self.set_header("X-Content-Type-Options", "nosniff")
        if hasattr(self, "services"):
            self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self._cors_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")

    def _cors_allowed(self, origin: str) -> bool:
        allowed = self.services.settings.server.allowed_origins
        return "*" in allowed or origin in allowed

    def options(self, *args: Any) -> None:
        """CORS preflight."""
        origin = self.request.headers.get("Origin")
        if not origin or not self._cors_allowed(origin):
            raise ApiError(403, {"detail": "Origin not allowed."})
        self.set_header("Access-Control-Allow-Methods", self.cors_methods())
        requested = self.request.headers.get("Access-Control-Request-Headers")
        self.set_header("Access-Control-Allow-Headers", requested or "authorization, content-type")
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.finish()

    def cors_methods(self) -> str:
        """The methods a preflight allows on this path."""
        return "GET, POST, OPTIONS"

    def allowed_methods(self) -> list[str]:
        """The methods this path serves, for the Allow header of a 405: those the handler
        implements (OPTIONS, the CORS preflight every path answers, aside)."""
        base = tornado.web.RequestHandler
        return [method for method in self.SUPPORTED_METHODS if method != "OPTIONS"
                and getattr(type(self), method.lower()) is not getattr(base, method.lower())]

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(encode(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            body = error.body
            for name, value in error.headers.items():
                self.set_header(name, value)
        elif status_code >= 500:
            body = SERVER_ERROR
        elif status_code == 404:
            body = NOT_FOUND
        elif status_code == 405:  # Tornado's, for a method the handler does not implement
            body = method_not_allowed(self.request.method or "")
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        else:
            body = {"detail": self._reason}
        self.set_header("Content-Type", "application/json")
        self.finish(encode(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError):
            return
        super().log_exception(typ, value, tb)

    async def authenticate(self) -> User:
        """The user of the request's Bearer access token, or a 401."""
        user, _claims = await self.authenticate_with_claims()
        return user

    async def authenticate_with_claims(self) -> tuple[User, dict[str, Any]]:
        """`authenticate`, with the token's claims for handlers that check more of them."""
        services = self.services
        token = token_from_request(self.request.headers.get("Authorization"), None)
        try:
            claims = services.tokens.verify(token)
        except InvalidToken:
            raise ApiError(401, TOKEN_INVALID) from None
        user = await services.store.get_user(services.tokens.user_id(claims))
        if user is None:
            raise ApiError(401, TOKEN_INVALID)
        return user, claims

    def body_fields(self, *, allow_multipart: bool = True) -> dict[str, Any]:
        """The request body as a dict: JSON, urlencoded, or (if allowed) multipart."""
        content_type = self.request.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type in JSON_TYPES:
            return self._json_body()
        if media_type == "multipart/form-data" and not allow_multipart:
            raise self._unsupported(media_type)
        if media_type in FORM_TYPES:
            return {
                key: values[-1].decode("utf-8", "replace")
                for key, values in self.request.body_arguments.items()
            }
        if not media_type and not self.request.body:
            return {}
        raise self._unsupported(media_type)

    def _json_body(self) -> dict[str, Any]:
        try:
            body = orjson.loads(self.request.body or b"{}")
        except orjson.JSONDecodeError as error:
            raise ApiError(400, {"detail": f"JSON parse error - {error}"}) from None
        if not isinstance(body, dict):
            raise ApiError(400, {"non_field_errors": ["Expected a JSON object."]})
        return body

    @staticmethod
    def _unsupported(media_type: str) -> ApiError:
        return ApiError(415, {"detail": f'Unsupported media type "{media_type}" in request.'})


class NotFoundHandler(ApiHandler):
    """Every unknown path: a JSON 404, whatever the method."""

    def prepare(self) -> None:
        raise ApiError(404, NOT_FOUND)


class InvalidHostHandler(ApiHandler):
    """Every request HostRefused routes here, the socket's upgrade included: a JSON 400."""

    def prepare(self) -> None:
        raise ApiError(400, INVALID_HOST)
