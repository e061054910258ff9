"""A socket's life at its edges: upgrades cut by the client, the close frame, shutdown.

Every way out of a connection (a client gone during the upgrade, a close the server
sends, a close the client sends) must leave every group, keep no frames, and send
nothing after the close frame; SIGTERM must let in-flight HTTP requests finish.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import random
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taxi_tornado.app import Server
from taxi_tornado.handlers.socket import TaxiSocket
from taxi_tornado.handlers.stream_writer import queued_bytes, socket_stream
from taxi_tornado.plugins.api import Connection
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.services import build_services
from taxi_tornado.settings import Settings, replace
from taxi_tornado.store import open_store
from tests.conftest import PASSWORD, RunningServer, ServerProcess, make_settings
from tests.redis_server import SHARED_REDIS, RedisServer
from tests.test_http_api import PNG, multipart
from tests.test_operations import FrameParser, close_code, eventually

HUBS = ["memory", "redis"]


def hub_settings(tmp_path: Path, hub: str, url: str = SHARED_REDIS,
                 **sections: dict[str, Any]) -> Settings:
    settings = make_settings(tmp_path, **sections)
    if hub == "memory":
        return settings
    return replace(settings, hub={"url": url, "prefix": f"test-{uuid.uuid4().hex[:12]}"})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start a Server with custom settings and, optionally, extra plugin hooks."""
    started: list[Server] = []

    async def _serve(settings: Settings, plugin: Callable[[Any], None] | None = None
                     ) -> RunningServer:
        registry, plugins = load_plugins(settings.plugins.disabled)
        if plugin is not None:
            registry.plugin = "lifecycle-test"
            plugin(registry)
        server = Server(settings, build_services(settings, registry, plugins))
        await server.start()
        started.append(server)
        return RunningServer(server, settings)

    yield _serve
    for server in started:
        await server.stop()


async def numsub(running: RunningServer, group: str) -> int:
    """How many Redis subscribers the group's channel has (PUBSUB NUMSUB)."""
    client = aioredis.from_url(running.settings.hub.url)
    try:
        channel = f"{running.settings.hub.prefix}:group:{group}"
        counts = await client.pubsub_numsub(channel)
        return int(counts[0][1])
    finally:
        await client.aclose()


def upgrade_request(port: int, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /taxi/?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


class RawClient:
    """A WebSocket client on a bare socket in the test's own event loop. It reads only
    when asked and answers nothing by itself (no pong, no closing handshake): a phone in
    a tunnel, or a client that stopped reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser()

    @classmethod
    async def send_upgrade(cls, port: int, token: str, *, upto: int | None = None,
                           receive_buffer: int | None = None) -> RawClient:
        """Connect and send the request (only its first `upto` bytes when given)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        if receive_buffer:  # before connecting, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, upgrade_request(port, token)[:upto])
        return cls(sock)

    @classmethod
    async def open(cls, port: int, token: str, *, receive_buffer: int | None = None
                   ) -> RawClient:
        client = await cls.send_upgrade(port, token, receive_buffer=receive_buffer)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await client.read_some()
            assert chunk, "the server closed during the handshake"
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client.parser.feed(rest)
        return client

    async def read_some(self, timeout: float = 5) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), timeout)

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame (clients must mask)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def read_until_close(self, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not self.parser.closed:
                chunk = await self.read_some(timeout)
                assert chunk, "EOF before the close frame"
                self.parser.feed(chunk)

    async def read_for(self, seconds: float) -> None:
        """Read whatever arrives within `seconds` (until EOF)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                chunk = await self.read_some(left)
            except (TimeoutError, ConnectionResetError):
                return
            if not chunk:
                return
            self.parser.feed(chunk)

    def after_close(self) -> list[tuple[int, bytes]]:
        """The frames that came after the server's close frame."""
        frames = self.parser.frames
        opcodes = [opcode for opcode, _ in frames]
        return frames[opcodes.index(0x8) + 1:]

    def cut(self, rst: bool) -> None:
        """FIN (a plain close) or RST (SO_LINGER 0), as a phone losing its radio does."""
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def held_frames() -> int:
    """Bytes of frames held by every Connection alive in this process, socket or not.

    `type(obj)`, not isinstance(): the heap also holds weak proxies, and isinstance() on
    one whose object is gone raises ReferenceError.
    """
    return sum(
        sum(len(frame) for frame in obj._pending or ())
        for obj in gc.get_objects() if type(obj) is Connection
    )


def socket_of(running: RunningServer, user_id: str) -> TaxiSocket | None:
    for sock in running.server.services.sockets:
        if sock.connection is not None and sock.connection.user.id == user_id:
            return sock
    return None


# --- item 2: a handshake the client drops leaves nothing behind ---------------------------

@dataclass(frozen=True)
class Cut:
    """Where an upgrade is cut: after `delay` seconds (None: after the 101 is read), with
    only `upto` bytes of the request sent, by FIN or RST."""

    delay: float | None
    rst: bool
    upto: int | None = None

    async def run(self, port: int, token: str) -> None:
        client = await RawClient.send_upgrade(port, token, upto=self.upto)
        if self.delay is None:
            await client.read_some()
        elif self.delay:
            await asyncio.sleep(self.delay)
        client.cut(self.rst)


def random_cuts(rng: random.Random, count: int) -> list[Cut]:
    cuts = []
    for n in range(count):
        rst = n % 2 == 0
        kind = n % 6
        if kind == 0:
            cuts.append(Cut(0.0, rst))  # right after the headers
        elif kind == 1:
            cuts.append(Cut(0.0, rst, upto=rng.randrange(20, 120)))  # inside the headers
        elif kind == 2:
            cuts.append(Cut(None, rst))  # once the 101 arrived
        else:
            cuts.append(Cut(rng.uniform(0, 0.02), rst))
    return cuts


@pytest.mark.parametrize("hub", HUBS)
async def test_upgrades_cut_at_random_points_leave_no_member_and_hold_no_frames(
    tmp_path: Path, serve: Callable[..., Any], hub: str,
) -> None:
    running: RunningServer = await serve(hub_settings(tmp_path, hub))
    steady_user, steady_token = await running.user("steady", "driver")
    steady = await running.connect(steady_token)
    phone, phone_token = await running.user("phone", "driver")
    rider, _ = await running.user("rider")
    trip = await running.store.create_trip(rider.id, "A", "B")
    await running.assign(trip.id, "STARTED", phone.id)
    groups = {"drivers": 1, f"user:{phone.id}": 0, trip.id: 0}
    await eventually(lambda: socket_of(running, steady_user.id) is not None)
    assert {group: running.hub.members(group) for group in groups} == groups

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    cuts = random_cuts(rng, 60)
    for start in range(0, len(cuts), 12):  # a dozen at a time, racing each other
        await asyncio.gather(*(cut.run(running.port, phone_token)
                               for cut in cuts[start:start + 12]))

    def settled() -> bool:
        members = {group: running.hub.members(group) for group in groups}
        return members == groups and len(running.server.services.sockets) == 1

    await eventually(settled, timeout=15)
    assert running.server.services.keepalive.watched() == 1, f"seed {seed}"  # the steady one
    if hub == "redis":
        assert await numsub(running, f"user:{phone.id}") == 0, f"seed {seed}"
        assert await numsub(running, trip.id) == 0, f"seed {seed}"
        assert await numsub(running, "drivers") == 1, f"seed {seed}"

    # Publishing to those groups: the steady driver gets every message, nobody holds any.
    big = {"type": "test.big", "data": "x" * (256 * 1024)}
    for _ in range(8):
        for group in groups:
            await running.hub.send(group, big)
    for _ in range(8):
        assert await steady.receive() == big
    assert held_frames() == 0, f"seed {seed}"
    assert set(running.hub.groups) >= {"drivers"}
    assert not {f"user:{phone.id}", trip.id} & set(running.hub.groups), f"seed {seed}"
    steady.close()


@pytest.mark.parametrize("rst", [False, True], ids=["FIN", "RST"])
@pytest.mark.parametrize("hub", HUBS)
async def test_client_gone_during_an_on_connect_hook_leaves_every_group_at_once(
    tmp_path: Path, serve: Callable[..., Any], hub: str, rst: bool,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    events: list[str] = []

    async def slow_hook(conn: Connection) -> None:
        if conn.user.username != "phone":
            return
        await conn.join("gate.before")
        entered.set()
        await release.wait()
        await conn.join("gate.after")  # the client is gone by now
        events.append("connected")

    async def goodbye(conn: Connection) -> None:
        if conn.user.username == "phone":
            events.append("disconnected")

    def plugin(registry: Any) -> None:
        registry.on_connect(slow_hook)
        registry.on_disconnect(goodbye)

    running: RunningServer = await serve(hub_settings(tmp_path, hub), plugin)
    server_groups = set(running.hub.groups)  # the server's own members, e.g. admin:control
    phone, token = await running.user("phone", "driver")
    client = await RawClient.send_upgrade(running.port, token)
    await asyncio.wait_for(entered.wait(), 5)
    joined = ["gate.before", f"user:{phone.id}", "drivers"]
    assert [running.hub.members(group) for group in joined] == [1, 1, 1]
    client.cut(rst)

    # Out of every group while the hook still waits, before its handshake is over.
    await eventually(lambda: all(running.hub.members(group) == 0 for group in joined))
    assert events == []
    release.set()
    await eventually(lambda: events == ["connected", "disconnected"])
    assert running.hub.members("gate.after") == 0
    assert set(running.hub.groups) == server_groups
    assert not running.server.services.sockets
    if hub == "redis":
        for group in [*joined, "gate.after"]:
            assert await numsub(running, group) == 0, group
    await running.hub.send("gate.after", {"type": "test.lost", "data": "x" * 100_000})
    assert held_frames() == 0


async def test_client_gone_while_redis_confirms_the_subscription_leaves_no_subscription(
    tmp_path: Path, serve: Callable[..., Any], private_redis: RedisServer,
) -> None:
    running: RunningServer = await serve(hub_settings(tmp_path, "redis", private_redis.url))
    server_groups = set(running.hub.groups)  # the server's own members, e.g. admin:control
    phone, token = await running.user("phone", "driver")
    pauser = aioredis.from_url(private_redis.url)
    try:
        # Redis holds every command for a second: the SUBSCRIBE of user:<id> waits.
        await pauser.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        client = await RawClient.send_upgrade(running.port, token)
        await eventually(lambda: running.hub.members(f"user:{phone.id}") == 1)
        client.cut(rst=True)
        await eventually(lambda: set(running.hub.groups) == server_groups, timeout=10)
        assert await numsub(running, f"user:{phone.id}") == 0
        assert await numsub(running, "drivers") == 0
        assert not running.server.services.sockets
        await running.hub.send("drivers", {"type": "test.lost", "data": "x" * 100_000})
        assert held_frames() == 0
    finally:
        await pauser.aclose()


# --- item 6: nothing after the close frame; the queue bounded in bytes --------------------

class Publisher:
    """Sends to a group every few milliseconds until stopped, as a busy dispatch would."""

    def __init__(self, running: RunningServer, group: str, size: int = 100) -> None:
        self.running, self.group, self.pad = running, group, "x" * size
        self.sent = 0
        self.stopped = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self.stopped:
            await self.running.hub.send(self.group, {"type": "test.tick",
                                                     "data": {"n": self.sent, "pad": self.pad}})
            self.sent += 1
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        # A flag, not task.cancel(): a cancellation that lands inside the Redis broker's
        # PUBLISH can be lost (seen with Python 3.11.7 and redis-py 8.1).
        self.stopped = True
        await asyncio.wait_for(self.task, 10)


async def close_by_rate_limit(running: RunningServer, client: RawClient) -> None:
    for n in range(8):  # burst 2, rate 1: the third dropped frame in a row closes
        await client.send_frame(0x1, b'{"type": "echo.message", "data": %d}' % n)


async def close_by_overflow(running: RunningServer, client: RawClient) -> None:
    """The publishers' frames fill the queue of the client, which reads nothing yet."""
    await eventually(lambda: any(sock.close_sent for sock in running.server.services.sockets),
                     timeout=20)


async def close_by_shutdown(running: RunningServer, client: RawClient) -> None:
    running.server.services.spawn(running.server.stop())



CLOSES = {
    1008: (close_by_rate_limit, {"rate": 1, "burst": 2}, 100),
    1013: (close_by_overflow, {"outbound_queue": 4, "outbound_bytes": 64 * 1024}, 16_000),
    1001: (close_by_shutdown, {}, 100),
}


@pytest.mark.parametrize("code", list(CLOSES))
@pytest.mark.parametrize("hub", HUBS)
async def test_nothing_follows_the_close_frame_and_groups_are_left_before_the_reply(
    tmp_path: Path, serve: Callable[..., Any], hub: str, code: int,
) -> None:
    trigger, limits, size = CLOSES[code]
    running: RunningServer = await serve(hub_settings(tmp_path, hub, limits=limits))
    phone, token = await running.user("phone", "driver")
    client = await RawClient.open(running.port, token, receive_buffer=4096)
    await eventually(lambda: socket_of(running, phone.id) is not None)
    handler = socket_of(running, phone.id)
    groups = ["drivers", f"user:{phone.id}"]
    assert [running.hub.members(group) for group in groups] == [1, 1]
    publishers = [Publisher(running, group, size) for group in groups]
    try:
        await eventually(lambda: all(publisher.sent > 2 for publisher in publishers))
        await trigger(running, client)
        await client.read_until_close(timeout=20)
        assert close_code(client.parser.frames) == code
        sent = [publisher.sent for publisher in publishers]
        await client.read_for(0.3)
        assert [publisher.sent for publisher in publishers] > sent  # still publishing
        assert client.after_close() == []
        # The client has not answered the close (Tornado waits 5 s for it): the socket
        # is still there, its connection out of every group already.
        await eventually(lambda: all(running.hub.members(group) == 0 for group in groups),
                         timeout=3)
        assert handler in running.server.services.sockets
        if hub == "redis":
            assert [await numsub(running, group) for group in groups] == [0, 0]
    finally:
        for publisher in publishers:
            await publisher.stop()
    await client.send_frame(0x8, struct.pack("!H", code))
    await eventually(lambda: handler not in running.server.services.sockets)
    assert held_frames() == 0
    client.cut(rst=False)


async def test_reader_that_does_not_read_is_closed_1013_once_outbound_bytes_are_queued(
    tmp_path: Path, serve: Callable[..., Any],
) -> None:
    byte_limit = 200_000
    running: RunningServer = await serve(make_settings(
        tmp_path, limits={"outbound_queue": 100_000, "outbound_bytes": byte_limit}))
    slow_user, token = await running.user("slow", "driver")
    slow = await RawClient.open(running.port, token, receive_buffer=4096)
    await eventually(lambda: socket_of(running, slow_user.id) is not None)
    handler = socket_of(running, slow_user.id)
    assert handler is not None
    stream = socket_stream(handler)
    assert stream is not None
    message = {"type": "test.flood", "data": "x" * 10_000}
    most, queued_frames, sent = 0, 0, 0
    while handler.close_sent is None:
        await running.hub.send(f"user:{slow_user.id}", message)
        sent += 1
        assert sent < 5000, "50 MB went out without a 1013"
        if not stream.closed():
            most = max(most, queued_bytes(stream))
            queued_frames += stream.writing()
    assert handler.close_sent == 1013
    close_frame = 64  # the close frame that follows the queue
    assert 0 < most <= byte_limit + close_frame
    assert queued_frames < 100  # bytes closed it, far below the frame limit
    await slow.read_until_close()
    texts = [body for opcode, body in slow.parser.frames if opcode == 0x1]
    assert texts and all(len(body) == len(texts[0]) for body in texts)  # whole frames
    assert close_code(slow.parser.frames) == 1013
    assert slow.after_close() == []
    slow.cut(rst=False)


# --- item 6: SIGTERM lets the HTTP requests under way finish ------------------------------

def slow_upload(port: int, body: bytes, content_type: str) -> socket.socket:
    """Send a sign-up's headers and wait for the server's 100 Continue: from then on the
    server holds the request as under way."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST /api/sign_up/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 100"), "no 100 Continue"
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        if length and len(body) >= length[0]:
            break
    assert data, "the server closed without answering"
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


SIGN_UP = {"username": "late@example.com", "first_name": "Late", "last_name": "Comer",
           "password1": PASSWORD, "password2": PASSWORD, "group": "rider"}


def test_sigterm_lets_a_sign_up_under_way_finish_and_store_the_user(
    tmp_path: Path, processes: Callable[..., ServerProcess],
) -> None:
    running = processes(env={"TAXI_SERVER_DRAIN_TIMEOUT": "20"})
    photo = PNG + bytes(2 * 1024 * 1024)  # a 2 MB photo, sent slowly
    body, content_type = multipart(SIGN_UP, {"photo": ("photo.png", photo, "image/png")})
    upload = slow_upload(running.port, body, content_type)
    upload.sendall(body[:len(body) // 4])

    running.process.send_signal(signal.SIGTERM)
    wait_until(lambda: not listening(running.port))  # the drain has begun
    pieces = 8
    rest = body[len(body) // 4:]
    step = len(rest) // pieces + 1
    for start in range(0, len(rest), step):
        time.sleep(0.1)
        upload.sendall(rest[start:start + step])
    status, answer = read_response(upload)

    assert status == 201, answer
    assert running.process.wait(15) == 0
    user = asyncio.run(stored_user(tmp_path, SIGN_UP["username"]))
    assert user is not None and user.photo is not None
    assert (tmp_path / "data" / "photos" / user.photo).stat().st_size == len(photo)


async def stored_user(tmp_path: Path, username: str) -> Any:
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'taxi.db'}")
    await store.open()
    try:
        return await store.get_user_by_username(username)
    finally:
        await store.close()


def test_sigterm_stops_waiting_for_a_stalled_request_at_drain_timeout(
    tmp_path: Path, processes: Callable[..., ServerProcess],
) -> None:
    running = processes(env={"TAXI_SERVER_DRAIN_TIMEOUT": "1"})
    body, content_type = multipart(SIGN_UP, {})
    upload = slow_upload(running.port, body, content_type)
    upload.sendall(body[:10])  # and never the rest
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(15) == 0
    assert upload.recv(100) == b""
    assert "1 HTTP requests did not finish within drain_timeout" in running.log()
    assert asyncio.run(stored_user(tmp_path, SIGN_UP["username"])) is None


async def test_the_listening_socket_queues_a_reconnect_storm_not_128(
        server: RunningServer) -> None:
    """A drained process's sockets all dial the next one at once: the kernel must queue
    thousands of handshakes, not Tornado's default 128 (it dropped SYNs, 1-3 s each)."""
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], check=True,
                             capture_output=True, text=True).stdout
    backlogs = {int(line.split()[2]) for line in listing.splitlines() if line.strip()}
    with open("/proc/sys/net/core/somaxconn") as limit:
        expected = min(4096, int(limit.read()))
    assert backlogs == {expected}
