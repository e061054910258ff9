"""The test kit for plugin authors: a pytest plugin, loaded through the entry point
`pytest11` named `taxi_tornado` (`pip install 'taxi-tornado[testing]'`).

Fixtures (their names start with `taxi_`, so they never clash with a project's own):

- `taxi_server`: a real server in the test's event loop, on a free port, with a
  temporary data dir and every installed plugin loaded -> TaxiServer.
- `taxi_settings`: the settings the server starts with, shaped like settings.toml
  (`{"plugins": {"sos": {"alert_group": "desk"}}}`). Override the fixture, or mark a test
  `@pytest.mark.taxi_settings(plugins={"sos": {"alert_group": "desk"}})`; the marker wins.
  Markers of a test, its class and its module all apply, key by key: the nearest wins.
- `taxi_rider`, `taxi_driver`: a user with an access token on `taxi_server` -> TaxiUser.

A TaxiUser opens sockets (`await user.connect()`, protocol v2 unless `version=1`) and
makes HTTP requests with its token (`await user.http.get(path)`). Every wait has a
timeout and fails with an AssertionError saying what did arrive. The kit uses Tornado's
clients inside: tests never import Tornado. The environment's TAXI_* variables are not
read, so a test does not depend on the shell it runs in.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

from taxi_tornado.auth import hash_password
from taxi_tornado.settings import Settings, settings_from_mapping
from taxi_tornado.store import User

if TYPE_CHECKING:
    from taxi_tornado.app import Server
    from taxi_tornado.hub import Hub
    from taxi_tornado.store import Store

try:
    import pytest_asyncio
except ImportError:  # taxi-tornado installed without its `testing` extra
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = ["PASSWORD", "HttpClient", "HttpResponse", "SocketClient", "TaxiServer", "TaxiUser",
           "start_server"]

PASSWORD = "kit-password-1"  # every kit user's password, for tests that log in
SECRET_KEY = "taxi-tornado-testing-kit-secret-key-0123456789"
TIMEOUT = 5.0  # seconds any single wait lasts unless told otherwise
QUIET = 0.5  # seconds expect_nothing() listens by default
_password_hash: str | None = None


# --- the server ---------------------------------------------------------------------------

async def start_server(data_dir: Path, settings: Mapping[str, Any] | None = None) -> TaxiServer:
    """Start a server with its data in `data_dir` and `settings` (shaped like
    settings.toml) over the kit's defaults; stop it with `await server.stop()`.

    The `taxi_server` fixture does this for you; call it for a test that needs two
    servers, or to check that some settings stop start-up (the error is raised here).
    """
    from taxi_tornado.app import Server

    raw = _merge(_defaults(data_dir), settings or {})
    server = Server(settings_from_mapping(raw, environ={}, create_secret=False))
    await server.start()
    return TaxiServer(server)


class TaxiServer:
    """A running server: make users, clients, and read what a test needs."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._names = itertools.count(1)
        self._sockets: list[SocketClient] = []

    @property
    def settings(self) -> Settings:
        return self._server.settings

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, the base of every HTTP path."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.settings.server.socket_path}"

    @property
    def store(self) -> Store:
        """The server's store, for arranging what a test needs (users, trips)."""
        return self._server.services.store

    @property
    def hub(self) -> Hub:
        return self._server.services.hub

    async def publish(self, group: str, message: dict[str, Any]) -> int:
        """Send `message` to every connection in `group`, as the hub API would."""
        return await self.hub.send(group, message)

    async def user(self, group: str = "rider", *, username: str | None = None,
                   first_name: str = "", last_name: str = "") -> TaxiUser:
        """A new user of `group` ("rider", "driver" or "staff") with an access token; the
        username defaults to the group and a number. Its password is PASSWORD."""
        services = self._server.services
        user = await services.store.create_user(
            username=username or f"{group}{next(self._names)}",
            password_hash=await _hashed_password(), group=group,
            first_name=first_name, last_name=last_name)
        return TaxiUser(self, user, services.tokens.issue_access(user, self.url))

    async def rider(self, *, username: str | None = None) -> TaxiUser:
        return await self.user("rider", username=username)

    async def driver(self, *, username: str | None = None) -> TaxiUser:
        return await self.user("driver", username=username)

    async def staff(self, *, username: str | None = None) -> TaxiUser:
        """A user of the group "staff" (the operators)."""
        return await self.user("staff", username=username)

    def client(self, token: str | None = None) -> HttpClient:
        """An HTTP client sending `token` (or none) as `Authorization: Bearer`."""
        return HttpClient(self.url, token)

    async def connect(self, token: str, *, version: int = 2,
                      timeout: float = TIMEOUT) -> SocketClient:
        """A socket opened with `token`; see TaxiUser.connect."""
        headers = {"Authorization": f"Bearer {token}"}
        request = HTTPRequest(self.ws_url, headers=headers, connect_timeout=timeout,
                              request_timeout=timeout)
        subprotocols = ["taxi.v2"] if version == 2 else None
        try:
            ws = await websocket_connect(request, subprotocols=subprotocols)
        except HTTPClientError as error:
            body = error.response.body.decode(errors="replace") if error.response else ""
            raise AssertionError(f"the socket was refused: {error.code} {body}") from None
        client = SocketClient(ws, version)
        self._sockets.append(client)
        return client

    async def stop(self) -> None:
        """Drain and stop the server, as on SIGTERM: open sockets get close code 1001,
        plugins' shutdown hooks run. Stopping twice is harmless."""
        await self._server.stop()

    async def close(self) -> None:
        """Close every socket the kit opened, then stop the server (the fixture's end)."""
        for client in self._sockets:
            await client.close()
        await self.stop()


class TaxiUser:
    """A stored user with an access token, as a client app would hold them."""

    def __init__(self, server: TaxiServer, user: User, token: str) -> None:
        self.server = server
        self.user = user
        self.token = token

    @property
    def id(self) -> str:
        return self.user.id

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def group(self) -> str:
        return self.user.group

    @property
    def http(self) -> HttpClient:
        """An HTTP client that sends this user's token."""
        return self.server.client(self.token)

    async def connect(self, *, version: int = 2, timeout: float = TIMEOUT) -> SocketClient:
        """Open a socket as this user: protocol v2 (subprotocol taxi.v2), or `version=1`
        for the course's client. It is closed at the end of the test."""
        return await self.server.connect(self.token, version=version, timeout=timeout)

    def __repr__(self) -> str:
        return f"<TaxiUser {self.username} ({self.group})>"


# --- the clients --------------------------------------------------------------------------

class SocketClient:
    """One socket: send frames, wait for replies and events, each wait with a timeout.

    Frames that arrive while the client waits for another one are kept, in order, for
    the next `receive()`; `expect_nothing()` fails if any is left unread.

    Group events reach v2 sockets with their place in the group's history (`pos`). The
    client takes it off, so an event compares equal to the message a plugin sent, and
    keeps the last one per group in `positions`: what a phone would send in
    `session.resume` after a reconnect.
    """

    def __init__(self, ws: WebSocketClientConnection, version: int) -> None:
        self.version = version
        self._ws = ws
        self._unread: list[dict[str, Any]] = []
        self.positions: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def send(self, type: str, data: Any = None, *, id: str | int | None = None) -> None:
        """Send `{"type": type, "data": data}` (with `id` when given)."""
        frame: dict[str, Any] = {"type": type, "data": data}
        if id is not None:
            frame["id"] = id
        await self.send_raw(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        """Send a text frame as it is, e.g. one that is not valid JSON."""
        await self._ws.write_message(text)

    async def request(self, type: str, data: Any = None, *,
                      timeout: float = TIMEOUT) -> dict[str, Any]:
        """Send a frame with a new `id` and return the frame answering it: the reply, or
        an error frame (`{"type": "error", ...}`)."""
        frame_id = f"kit-{next(self._ids)}"
        await self.send(type, data, id=frame_id)
        return await self._wait(lambda frame: frame.get("id") == frame_id,
                                f"the answer to {type!r} (id {frame_id!r})", timeout)

    async def receive(self, type: str | None = None, *,
                      timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame (of `type`, when given: frames of other types stay unread)."""
        wanted = "a frame" if type is None else f"a frame of type {type!r}"
        return await self._wait(lambda frame: type is None or frame.get("type") == type,
                                wanted, timeout)

    async def expect_nothing(self, timeout: float = QUIET) -> None:
        """Fail if a frame is unread, or arrives within `timeout` seconds, or the socket
        closes meanwhile."""
        if self._unread:
            raise AssertionError(f"expected no frame; unread: {self._unread}")
        try:
            frame = await self._read(timeout)
        except TimeoutError:
            return
        if frame is None:
            raise AssertionError(f"expected no frame within {timeout}s; the socket closed "
                                 f"({self._closed_by()})")
        raise AssertionError(f"expected no frame within {timeout}s; received {frame}")

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait until the server closes the socket; the close code. Frames that arrive
        meanwhile stay unread."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            try:
                frame = await self._read(deadline - time.monotonic())
            except TimeoutError:
                raise AssertionError(f"the socket was not closed within {timeout}s; "
                                     f"received {self._unread}") from None
            if frame is not None:
                self._unread.append(frame)
        return self.close_code

    async def close(self, code: int = 1000) -> None:
        """Close from the client's side; harmless when already closed."""
        if not self._closed:
            self._closed = True
            self._ws.close(code)

    async def _wait(self, match: Callable[[dict[str, Any]], bool], wanted: str,
                    timeout: float) -> dict[str, Any]:
        for index, unread in enumerate(self._unread):
            if match(unread):
                return self._unread.pop(index)
        deadline = time.monotonic() + timeout
        seen = len(self._unread)
        while True:
            try:
                frame = await self._read(deadline - time.monotonic())
            except TimeoutError:
                raise AssertionError(f"expected {wanted} within {timeout}s; received "
                                     f"{self._unread[seen:] or 'nothing'}") from None
            if frame is None:
                raise AssertionError(f"expected {wanted}; the socket closed "
                                     f"({self._closed_by()}); received "
                                     f"{self._unread[seen:] or 'nothing'}")
            if match(frame):
                return frame
            self._unread.append(frame)

    async def _read(self, timeout: float) -> dict[str, Any] | None:
        """One frame, parsed, or None once the socket is closed; TimeoutError."""
        if self._closed:
            return None
        if timeout <= 0:
            raise TimeoutError
        text = await asyncio.wait_for(self._ws.read_message(), timeout)
        if text is None:
            self._closed = True
            return None
        frame: dict[str, Any] = orjson.loads(text)
        pos = frame.pop("pos", None) if isinstance(frame, dict) else None
        if isinstance(pos, dict) and isinstance(pos.get("group"), str):
            self.positions[pos["group"]] = {"offset": pos.get("offset"),
                                            "epoch": pos.get("epoch")}
        return frame

    def _closed_by(self) -> str:
        return f"code {self._ws.close_code} {self._ws.close_reason or ''}".strip()


class HttpResponse:
    """`status`, `headers`, raw `body`, and `json` (None unless the body is JSON)."""

    def __init__(self, response: HTTPResponse) -> None:
        self.status = response.code
        self.headers: Mapping[str, str] = response.headers
        self.body = response.body or b""
        content_type = self.headers.get("Content-Type", "")
        self.json: Any = orjson.loads(self.body) if (
            self.body and content_type.startswith("application/json")) else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.text[:200]}>"


class HttpClient:
    """HTTP requests to the server; every status comes back as an HttpResponse."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token

    async def request(self, method: str, path: str, *, json: Any = None,
                      body: bytes | None = None, headers: Mapping[str, str] | None = None,
                      timeout: float = TIMEOUT) -> HttpResponse:
        """`path` may carry a query string; `json` is encoded as the body."""
        all_headers = dict(headers or {})
        if json is not None:
            body = orjson.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        if self.token is not None:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        request = HTTPRequest(self.base_url + path, method=method, headers=all_headers,
                              body=body, allow_nonstandard_methods=True,
                              connect_timeout=timeout, request_timeout=timeout)
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599:
            raise AssertionError(f"{method} {path}: no answer within {timeout}s: "
                                 f"{response.error}")
        return HttpResponse(response)

    async def get(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> HttpResponse:
        return await self.request("DELETE", path, **kwargs)


# --- the pytest plugin --------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "taxi_settings(**sections): settings of the test's taxi_server, shaped "
        "like settings.toml, e.g. plugins={'sos': {'alert_group': 'desk'}}")


def _async_fixture(function: Callable[..., Any]) -> Any:
    """pytest-asyncio's fixture, so the kit works whatever the project's asyncio_mode."""
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(function)

    def missing() -> None:
        pytest.fail("the taxi_tornado fixtures need pytest-asyncio: "
                    "pip install 'taxi-tornado[testing]'", pytrace=False)

    missing.__name__ = function.__name__
    missing.__doc__ = function.__doc__
    return pytest.fixture(name=function.__name__)(missing)


@pytest.fixture
def taxi_settings() -> dict[str, Any]:
    """Settings for `taxi_server`, shaped like settings.toml; override this fixture."""
    return {}


@_async_fixture
async def taxi_server(request: pytest.FixtureRequest, tmp_path: Path,
                      taxi_settings: dict[str, Any]) -> AsyncIterator[TaxiServer]:
    """A real server on a free port, with its data in the test's tmp_path."""
    settings = dict(taxi_settings)
    for marker in reversed(list(request.node.iter_markers("taxi_settings"))):
        settings = _merge(settings, marker.kwargs)
    server = await start_server(tmp_path / "taxi-data", settings)
    yield server
    await server.close()


@_async_fixture
async def taxi_rider(taxi_server: TaxiServer) -> TaxiUser:
    """A rider with an access token."""
    return await taxi_server.rider()


@_async_fixture
async def taxi_driver(taxi_server: TaxiServer) -> TaxiUser:
    """A driver with an access token."""
    return await taxi_server.driver()


# --- helpers ------------------------------------------------------------------------------

def _defaults(data_dir: Path) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "server": {"port": 0, "ping_interval": 0, "ping_timeout": 0, "drain_timeout": 2},
        "auth": {"secret_key": SECRET_KEY},
        "hub": {"prefix": f"taxi-test-{uuid.uuid4().hex[:12]}"},
    }


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` over it, tables merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


async def _hashed_password() -> str:
    """PASSWORD hashed once per process: argon2 is slow on purpose."""
    global _password_hash
    if _password_hash is None:
        _password_hash = await hash_password(PASSWORD)
    return _password_hash
