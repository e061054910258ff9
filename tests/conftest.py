"""Fixtures that start real things: a server on a free port, temp data dirs, processes.

`server` runs a Server in the test's own event loop (real HTTP and WebSocket over
loopback); `spawn_server` runs `python -m taxi_tornado serve` as a subprocess for the
tests that need signals, several processes or a proxy in front.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect
from websockets.asyncio.client import ClientConnection

from taxi_tornado.app import Server
from taxi_tornado.auth import TokenAuthority, _hasher
from taxi_tornado.settings import Settings, replace
from taxi_tornado.store import TripStatus, User
from tests.redis_cluster import redis_cluster  # noqa: F401  the session's Redis Cluster
from tests.redis_server import RedisServer, free_port

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
PASSWORD = "pAssw0rd!"
# One argon2 hash for every fixture user: hashing is slow on purpose.
PASSWORD_HASH = _hasher.hash(PASSWORD)
ROOT = Path(__file__).resolve().parent.parent


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a test: its own data dir, a free port, a fixed secret."""
    settings = replace(
        Settings(),
        data_dir=tmp_path / "data",  # type: ignore[arg-type]
        server={"port": 0, "ping_interval": 0, "ping_timeout": 0},
        auth={"secret_key": SECRET},
    )
    return replace(settings, **sections) if sections else settings


@dataclass
class RunningServer:
    server: Server
    settings: Settings
    users: dict[str, User] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.settings.server.socket_path}"

    @property
    def store(self) -> Any:
        return self.server.services.store

    @property
    def hub(self) -> Any:
        return self.server.services.hub

    @property
    def tokens(self) -> TokenAuthority:
        return self.server.services.tokens

    async def user(self, username: str, group: str = "rider", **extra: str) -> tuple[User, str]:
        """A stored user and an access token for it."""
        user = await self.store.create_user(username=username, password_hash=PASSWORD_HASH,
                                            group=group, **extra)
        return user, self.tokens.issue_access(user, self.url)

    async def assign(self, trip_id: str, status: str, driver_id: str | None) -> None:
        """Move a REQUESTED trip straight to `status` (held by `driver_id`) in the store."""
        moved = await self.store.update_trip(
            trip_id, expected_status=TripStatus.REQUESTED, expected_driver_id=None,
            status=TripStatus(status), driver_id=driver_id)
        assert moved is not None

    async def connect(self, token: str, *, v2: bool = False,
                      headers: dict[str, str] | None = None) -> Client:
        request = HTTPRequest(
            f"{self.ws_url}?token={token}", headers=headers or {},
        )
        subprotocols = ["taxi.v2"] if v2 else None
        ws = await websocket_connect(request, subprotocols=subprotocols)
        client = Client(ws)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        """Close the test's clients, then stop the server. A Tornado client whose frames
        nobody read stops reading (its queue holds one frame), never answers the drain's
        close frame, and the server waited Tornado's 5 s close timeout for each test."""
        for client in self.clients:
            client.close()
        await self.server.stop()

    async def fetch(self, path: str, method: str = "GET", body: Any = None,
                    headers: dict[str, str] | None = None, token: str | None = None,
                    raw_body: bytes | None = None) -> tuple[int, Any, HTTPResponse]:
        """An HTTP request; returns status, parsed JSON (or None) and the response."""
        all_headers = dict(headers or {})
        payload = raw_body
        if body is not None:
            payload = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        request = HTTPRequest(self.url + path, method=method, headers=all_headers,
                              body=payload, allow_nonstandard_methods=True)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as error:
            assert error.response is not None
            response = error.response
        data = None
        if response.headers.get("Content-Type", "").startswith("application/json"):
            data = json.loads(response.body or b"null")
        return response.code, data, response


class Client:
    """A WebSocket client with JSON helpers and a timeout on every read.

    `request` waits for the frame that answers its own (the one carrying its `id`), not
    for the next frame: an event already queued for the client (a new trip, a group
    message) is kept, in order, for the next `receive`.
    """

    def __init__(self, ws: WebSocketClientConnection) -> None:
        self.ws = ws
        self.held: deque[Any] = deque()
        self.request_ids = itertools.count(1)

    async def send(self, message: Any) -> None:
        await self.ws.write_message(message if isinstance(message, str) else json.dumps(message))

    async def receive(self, timeout: float = 5) -> Any:
        """The next frame: one held back by `request` first, else the next to arrive."""
        if self.held:
            return self.held.popleft()
        return await self._read(timeout)

    async def request(self, message: dict[str, Any], timeout: float = 5) -> Any:
        """Send `message` and return the frame carrying its `id`.

        A message without an `id` is sent with one of the helper's own, which is taken
        off the reply again (so a reply compares equal to what an id-less frame gets).
        """
        own_id = "id" not in message
        frame_id = f"request-{next(self.request_ids)}" if own_id else message["id"]
        await self.send({**message, "id": frame_id})
        deadline = time.monotonic() + timeout
        others: list[Any] = []
        try:
            while True:
                frame = await self._read(deadline - time.monotonic())
                if isinstance(frame, dict) and frame.get("id") == frame_id:
                    if own_id:
                        del frame["id"]
                    return frame
                others.append(frame)
        except AssertionError as error:
            raise AssertionError(f"no reply to {message} (id {frame_id!r}): {error}; "
                                 f"frames that did arrive: {others}") from None
        finally:
            self.held.extend(others)

    async def _read(self, timeout: float) -> Any:
        try:
            text = await asyncio.wait_for(self.ws.read_message(), max(timeout, 0))
        except TimeoutError:
            raise AssertionError(f"nothing came within {timeout:.1f} s") from None
        assert text is not None, f"socket closed: {self.ws.close_code} {self.ws.close_reason}"
        return json.loads(text)

    async def nothing(self, wait: float = 0.3) -> None:
        """Assert that no frame arrives within `wait` seconds (nor is held unread)."""
        assert not self.held, f"unexpected frames: {list(self.held)}"
        try:
            text = await asyncio.wait_for(self.ws.read_message(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {text!r}")

    async def closed(self, timeout: float = 5) -> int | None:
        """Wait for the server to close; return the close code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(self.ws.read_message(),
                                                 deadline - time.monotonic())
            except TimeoutError:
                break
            if message is None:
                return self.ws.close_code
        raise AssertionError(f"the socket was not closed within {timeout} s")

    def close(self) -> None:
        self.ws.close()


async def next_frame(ws: ClientConnection, timeout: float = 5) -> str | bytes:
    """The next frame on a `websockets` connection, whose recv() has no timeout of its own."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f"waited {timeout} s for a frame: nothing came") from None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings)
    yield running
    await running.stop()


async def start_server(settings: Settings) -> RunningServer:
    server = Server(settings)
    await server.start()
    return RunningServer(server, settings)


@pytest.fixture
async def start() -> AsyncIterator[Callable[[Settings], Awaitable[RunningServer]]]:
    """Start servers with custom settings inside a test; all are stopped at the end."""
    started: list[RunningServer] = []

    async def _start(settings: Settings) -> RunningServer:
        running = await start_server(settings)
        started.append(running)
        return running

    yield _start
    for running in started:
        await running.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port, for tests that stop Redis."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/taxi/"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)


def spawn_server(tmp_path: Path, env: dict[str, str] | None = None, name: str = "server",
                 wait: bool = True, port: int | None = None) -> ServerProcess:
    """`python -m taxi_tornado serve` in a subprocess, configured by TAXI_* variables.

    A free port can be taken by another process between free_port() and the server's
    bind: when the port was ours to choose, a server that stops on a busy port is
    started again on another one.
    """
    for _ in range(2):
        if port is not None or not wait:
            break
        running = _start_server(tmp_path, env, name, free_port())
        try:
            wait_healthy(running)
        except AssertionError:
            if "Address already in use" not in running.log():
                raise
            continue
        return running
    running = _start_server(tmp_path, env, name, port or free_port())
    if wait:
        wait_healthy(running)
    return running


def _start_server(tmp_path: Path, env: dict[str, str] | None, name: str,
                  port: int) -> ServerProcess:
    log_path = tmp_path / f"{name}.log"
    full_env = {
        **os.environ,
        "TAXI_DATA_DIR": str(tmp_path / "data"),
        "TAXI_SERVER_PORT": str(port),
        "TAXI_AUTH_SECRET_KEY": SECRET,
        **(env or {}),
    }
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "taxi_tornado", "serve"], env=full_env, cwd=tmp_path,
        stdout=handle, stderr=subprocess.STDOUT,
    )
    return ServerProcess(process, port, log_path)


def wait_healthy(running: ServerProcess, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise AssertionError(f"server exited {running.process.returncode}:\n{running.log()}")
        try:
            with urlopen(f"{running.url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not become healthy:\n{running.log()}")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Spawn server subprocesses; every one still running is stopped after the test."""
    spawned: list[ServerProcess] = []

    def _spawn(**kwargs: Any) -> ServerProcess:
        running = spawn_server(tmp_path, **kwargs)
        spawned.append(running)
        return running

    yield _spawn
    for running in spawned:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()


class FakeDistributions:
    """Installs tiny distributions (a module plus dist-info with entry points) in a dir
    on sys.path, so importlib.metadata finds them exactly as it finds pip-installed ones."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, name: str, module_source: str, entry_point: str | None = None) -> None:
        module = f"fake_{name}"
        (self.root / f"{module}.py").write_text(textwrap.dedent(module_source))
        info = self.root / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[taxi_tornado.plugins]\n{name} = {entry_point or module}\n")


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield FakeDistributions(root)
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[name]
