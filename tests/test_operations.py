"""Operations on real processes and sockets: drain, TLS, keepalive, limits, logs, metrics.

ARCHITECTURE.md, Operations. Subprocess tests seed their users straight into the
server's SQLite file before it starts and sign tokens with the shared test secret.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from taxi_tornado import metrics
from taxi_tornado.auth import TokenAuthority
from taxi_tornado.handlers.keepalive import MAX_SLOTS, Keepalive
from taxi_tornado.settings import AuthSettings, Settings, replace
from taxi_tornado.store import open_store
from tests.conftest import (
    PASSWORD_HASH,
    SECRET,
    Client,
    RunningServer,
    ServerProcess,
    make_settings,
)

GOING_AWAY = 1001
SHARED_REDIS = "redis://127.0.0.1:6379/0"
Starter = Callable[[Settings], Awaitable[RunningServer]]


# --- helpers shared with tests/test_nginx.py --------------------------------------------

@dataclass(frozen=True)
class Seeded:
    id: str
    token: str


async def seed_users(tmp_path: Path, *users: tuple[str, str]) -> dict[str, Seeded]:
    """Create (username, group) users in the data dir a spawned server will use.

    Returns each user's id and an access token signed with the test secret.
    """
    store = open_store(make_settings(tmp_path).store_url)
    await store.open()
    tokens = TokenAuthority(AuthSettings(secret_key=SECRET))
    issued: dict[str, Seeded] = {}
    try:
        for username, group in users:
            user = await store.create_user(username=username, password_hash=PASSWORD_HASH,
                                           group=group)
            issued[username] = Seeded(user.id, tokens.issue_access(user, "http://localhost"))
    finally:
        await store.close()
    return issued


async def ws_client(url: str, token: str, *, v2: bool = False,
                    ssl_context: ssl.SSLContext | None = None,
                    source_ip: str | None = None,
                    headers: dict[str, str] | None = None) -> Client:
    request = HTTPRequest(f"{url}?token={token}", headers=headers or {},
                          ssl_options=ssl_context, network_interface=source_ip)
    ws = await websocket_connect(request, subprotocols=["taxi.v2"] if v2 else None)
    return Client(ws)


class RawSocket:
    """A WebSocket opened by hand over plain TCP that then does nothing by itself.

    It never answers pings nor the closing handshake unless told to, and reads only when
    asked: what a phone that lost its radio, or a client that stopped reading, looks
    like from the server. Its calls block: use asyncio.to_thread with in-process servers.
    """

    def __init__(self, port: int, path: str, token: str, *, host: str = "127.0.0.1",
                 receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer:  # before connecting, so the advertised window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(5)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path}?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "the server closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame (clients must mask)."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            header = bytes((0x80 | opcode, 0x80 | size))
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        self.sock.sendall(header + mask + masked)

    def answer_close(self, code: int) -> None:
        self.send_frame(0x8, struct.pack("!H", code))

    def read_frames(self, timeout: float = 5) -> list[tuple[int, bytes]]:
        """Read until the server's close frame, EOF or `timeout`; (opcode, payload) pairs."""
        self.sock.settimeout(timeout)
        parser = FrameParser()
        try:
            while not parser.closed:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                parser.feed(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return parser.frames

    def close(self) -> None:
        self.sock.close()


class FrameParser:
    """Unmasked server frames, parsed as bytes arrive."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames: list[tuple[int, bytes]] = []
        self.closed = False

    def feed(self, data: bytes) -> None:
        self.buffer += data
        start = 0
        while True:
            frame = self._frame_at(start)
            if frame is None:
                break
            opcode, payload, start = frame
            self.frames.append((opcode, payload))
            self.closed = self.closed or opcode == 0x8
        del self.buffer[:start]

    def _frame_at(self, start: int) -> tuple[int, bytes, int] | None:
        data = self.buffer
        if len(data) < start + 2:
            return None
        opcode, size, offset = data[start] & 0x0F, data[start + 1] & 0x7F, start + 2
        if size == 126:
            if len(data) < start + 4:
                return None
            size, offset = struct.unpack_from("!H", data, start + 2)[0], start + 4
        elif size == 127:
            if len(data) < start + 10:
                return None
            size, offset = struct.unpack_from("!Q", data, start + 2)[0], start + 10
        if len(data) < offset + size:
            return None
        return opcode, bytes(data[offset:offset + size]), offset + size


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8 and len(payload) >= 2:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code
    return None


async def eventually(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 made with openssl; returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def client_tls(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the test's certificate."""
    return ssl.create_default_context(cafile=str(cert))


def log_lines(running: ServerProcess) -> list[str]:
    return running.log().splitlines()


# --- graceful shutdown ----------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_every_socket_with_1001_and_exits_0(
    tmp_path: Path, processes: Callable[..., ServerProcess], signum: int
) -> None:
    drain_timeout = 2.0
    tokens = await seed_users(tmp_path, ("rider", "rider"), ("driver", "driver"))
    running = processes(env={"TAXI_SERVER_DRAIN_TIMEOUT": str(drain_timeout)})
    clients = [await ws_client(running.ws_url, tokens["rider"].token),
               await ws_client(running.ws_url, tokens["driver"].token, v2=True)]
    stubborn = RawSocket(running.port, "/taxi/", tokens["rider"].token)  # never answers the close
    probe = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    probe.request("GET", "/readyz")
    assert probe.getresponse().read() and True

    started = time.monotonic()
    running.process.send_signal(signum)
    for client in clients:
        assert await client.closed() == GOING_AWAY
    assert close_code(stubborn.read_frames()) == GOING_AWAY
    # Still draining (the stubborn socket holds it open): a kept-alive connection sees 503.
    probe.request("GET", "/readyz")
    response = probe.getresponse()
    assert response.status == 503
    assert json.loads(response.read())["failures"]["server"] == "draining"
    # New connections are no longer accepted.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=1).close()

    assert running.process.wait(timeout=drain_timeout + 10) == 0
    assert time.monotonic() - started < drain_timeout + 3
    stubborn.close()
    log = running.log()
    assert "Traceback" not in log and "Task was destroyed" not in log, log
    assert "taxi_tornado stopped" in log


async def test_drain_ends_early_when_every_client_completes_the_close(
    tmp_path: Path, processes: Callable[..., ServerProcess]
) -> None:
    tokens = await seed_users(tmp_path, ("rider", "rider"))
    running = processes(env={"TAXI_SERVER_DRAIN_TIMEOUT": "30"})
    client = await ws_client(running.ws_url, tokens["rider"].token)
    started = time.monotonic()
    running.process.terminate()
    assert await client.closed() == GOING_AWAY
    assert running.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10  # far below the 30 s drain_timeout


# --- direct TLS -------------------------------------------------------------------------------

async def test_direct_tls_serves_https_and_wss(tmp_path: Path, start: Starter) -> None:
    cert, key = self_signed_cert(tmp_path)
    running = await start(make_settings(
        tmp_path, server={"port": 0, "tls_cert": str(cert), "tls_key": str(key)}))
    trusted = client_tls(cert)
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"https://localhost:{running.port}/healthz", ssl_options=trusted))
    assert json.loads(response.body) == {"status": "ok"}
    _, token = await running.user("rider@example.com")
    client = await ws_client(f"wss://localhost:{running.port}/taxi/", token,
                             ssl_context=trusted)
    message = {"type": "echo.message", "data": "over TLS", "id": 1}
    assert await client.request(message) == message
    # Nothing is served in clear text on a TLS port, and an untrusted certificate fails.
    with pytest.raises((OSError, HTTPClientError)):
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{running.port}/healthz",
                                      request_timeout=3)
    with pytest.raises(ssl.SSLError):
        await AsyncHTTPClient().fetch(f"https://localhost:{running.port}/healthz")
    client.ws.close(1000)


# --- keepalive --------------------------------------------------------------------------------

async def test_client_that_stops_answering_pings_is_closed_and_leaves_its_groups(
    tmp_path: Path, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "taxi_tornado")
    running = await start(make_settings(
        tmp_path, server={"port": 0, "ping_interval": 0.5, "ping_timeout": 0.5}))
    mute_user, mute_token = await running.user("mute", "driver")
    _, live_token = await running.user("live", "driver")
    mute = await asyncio.to_thread(RawSocket, running.port, "/taxi/", mute_token)
    live = await running.connect(live_token)  # Tornado's client answers pings
    assert running.hub.members("drivers") == 2

    # Tornado sends its close after ping_timeout: the socket leaves its groups with it,
    # then Tornado waits 5 s for the closing handshake before dropping the connection.
    await eventually(lambda: running.hub.members("drivers") == 1, timeout=15)
    assert running.hub.members(f"user:{mute_user.id}") == 0
    frames = await asyncio.to_thread(mute.read_frames, 2)
    opcodes = [opcode for opcode, _ in frames]
    assert 0x9 in opcodes and opcodes[-1] == 0x8  # pinged, then closed
    assert b"ping timed out" in frames[-1][1]
    closed = f"socket close user={mute_user.id} remote=127.0.0.1 code=- "
    await eventually(lambda: closed in caplog.text, timeout=15)
    # The client that answers pings lived through several intervals.
    assert (await live.request({"type": "echo.message", "data": "still here"}))["data"] \
        == "still here"
    mute.close()
    live.ws.close(1000)


class PingRecorder:
    """A Pingable that notes each ping and close (the schedule under test is pure logic;
    the test above runs the same Keepalive against real sockets)."""

    def __init__(self) -> None:
        self.ping_sent_at = 0.0
        self.pings = 0
        self.closed_because: str | None = None

    def ping(self, data: bytes = b"") -> None:
        self.pings += 1

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self.closed_because = reason


async def test_keepalive_pings_each_socket_once_an_interval_spread_over_it() -> None:
    keepalive = Keepalive(interval=2.5, timeout=0)
    slices = keepalive.slices
    assert slices == 125  # a tick every fiftieth of a second
    sockets = [PingRecorder() for _ in range(503)]
    for sock in sockets:
        keepalive.watch(sock)
    per_tick = []
    last_ping: dict[PingRecorder, int] = {}  # the tick of each one's latest ping
    for tick in range(slices):
        keepalive.tick()
        pinged = [sock for sock in sockets if sock.pings and sock not in last_ping]
        last_ping.update(dict.fromkeys(pinged, tick))
        per_tick.append(len(pinged))
    assert max(per_tick) == 5 and min(per_tick) == 4  # 503 over 125 ticks
    assert all(sock.pings == 1 for sock in sockets)
    # Sockets come and go between and during rounds: each open one is pinged exactly once
    # per interval (slices ticks), a new one within an interval, a closed one never again.
    watched_at: dict[PingRecorder, int] = {}
    gone: list[PingRecorder] = []
    for tick in range(slices, 11 * slices):
        if tick % 3 == 0:
            closed = sockets.pop(tick % len(sockets))
            keepalive.forget(closed)
            gone.append(closed)
        if tick % 4 == 0:
            fresh = PingRecorder()
            sockets.append(fresh)
            keepalive.watch(fresh)
            watched_at[fresh] = tick
        counts = {sock: sock.pings for sock in [*sockets, *gone]}
        keepalive.tick()
        assert all(sock.pings == counts[sock] for sock in gone)
        for sock in sockets:
            if sock.pings == counts[sock]:
                since = last_ping.get(sock, watched_at.get(sock))
                assert since is not None and tick - since < slices
                continue
            if sock in last_ping:
                assert tick - last_ping[sock] == slices
            else:
                assert tick - watched_at[sock] < slices
            last_ping[sock] = tick
    assert keepalive.watched() == len(sockets)


def test_keepalive_slots_are_capped_for_long_intervals() -> None:
    """An hour's interval would be 180,000 slots a tick apart; it gets MAX_SLOTS, each
    tick then covering a longer slice of the interval."""
    keepalive = Keepalive(interval=3600, timeout=0)
    assert keepalive.slices == MAX_SLOTS
    sockets = [PingRecorder() for _ in range(2 * MAX_SLOTS)]
    for sock in sockets:
        keepalive.watch(sock)
    for _ in range(MAX_SLOTS):
        keepalive.tick()
    assert all(sock.pings == 1 for sock in sockets)


async def test_keepalive_closes_only_the_sockets_that_owe_a_pong() -> None:
    silent, answering, gone = PingRecorder(), PingRecorder(), PingRecorder()
    keepalive = Keepalive(interval=25, timeout=20)
    for sock in (silent, answering, gone):
        keepalive.watch(sock)
    keepalive.ping([silent, answering, gone])
    answering.ping_sent_at = 0.0  # what on_pong does
    keepalive.forget(gone)  # closed meanwhile
    keepalive.close_silent([silent, answering, gone], silent.ping_sent_at)
    assert silent.closed_because == "ping timed out"
    assert answering.closed_because is None and gone.closed_because is None


# --- limits -----------------------------------------------------------------------------------

async def test_reader_too_slow_is_closed_1013_while_the_group_gets_everything(
    tmp_path: Path, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "taxi_tornado")
    running = await start(replace(make_settings(tmp_path), limits={"outbound_queue": 16}))
    slow_user, slow_token = await running.user("slow", "driver")
    _, good_token = await running.user("good", "driver")
    slow = await asyncio.to_thread(  # never reads
        lambda: RawSocket(running.port, "/taxi/", slow_token, receive_buffer=4096))
    good = await running.connect(good_token)
    closes_before = metric_value(metrics.SLOW_CLIENT_CLOSES)
    # 8 MB to the group: more than the kernel buffers between the server and one socket.
    count, padding = 2000, "x" * 4000
    received: list[int] = []

    async def read_everything() -> None:
        for _ in range(count):
            received.append((await good.receive(timeout=20))["data"]["n"])

    reader = asyncio.ensure_future(read_everything())
    for n in range(count):
        # The good client reads in this same event loop: keep at most a few messages ahead
        # of it, as a client that keeps up would be, so only the slow one falls behind.
        while n - len(received) > 4:
            await asyncio.sleep(0)
        await running.hub.send("drivers", {"type": "flood", "data": {"n": n, "pad": padding}})
    await reader
    assert received == list(range(count))  # every message, in order, to the good reader

    frames = await asyncio.to_thread(slow.read_frames, 10)
    assert close_code(frames) == 1013
    assert len(frames) < count  # it was cut off, not sent everything
    assert running.hub.members("drivers") == 1  # it left with the close frame
    slow.answer_close(1013)
    assert metric_value(metrics.SLOW_CLIENT_CLOSES) - closes_before == 1
    closed = f"socket close user={slow_user.id} remote=127.0.0.1 code=1013 "
    await eventually(lambda: closed in caplog.text)
    assert (await good.request({"type": "echo.message", "data": 1}))["data"] == 1
    slow.close()


def nested(depth: int) -> Any:
    """`depth` levels of arrays around a 0."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_json_nesting_is_capped_at_32_levels(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    deepest = {"type": "echo.message", "data": nested(31), "id": 1}  # 32 with the envelope
    assert await client.request(deepest) == deepest
    error = await client.request({"type": "echo.message", "data": nested(32), "id": 2})
    assert error["type"] == "error" and error["id"] == 2
    assert error["data"]["code"] == "invalid_message"
    assert "32 levels" in error["data"]["detail"]
    # Deeper than orjson's own 1024 levels is not JSON we can parse.
    await client.send("[" * 5000 + "]" * 5000)
    error = await client.receive()
    assert error["data"]["code"] == "invalid_json"
    # Many brackets without depth (and brackets inside strings) are fine.
    wide = {"type": "echo.message", "data": [[1]] * 200 + ["[[[[" * 50], "id": 3}
    assert await client.request(wide) == wide


async def test_rate_limited_client_that_slows_down_keeps_its_socket(
    tmp_path: Path, start: Starter
) -> None:
    running = await start(replace(make_settings(tmp_path), limits={"rate": 10, "burst": 3}))
    _, token = await running.user("rider@example.com")
    client = await running.connect(token)
    for n in range(6):
        await client.send({"type": "echo.message", "data": n})
    assert [(await client.receive())["data"] for _ in range(3)] == [0, 1, 2]
    error = await client.receive()
    assert error["data"]["code"] == "rate_limited"  # one error frame for the whole streak
    await asyncio.sleep(0.4)  # 4 tokens come back at 10 a second
    assert (await client.request({"type": "echo.message", "data": "later", "id": 9})) == {
        "type": "echo.message", "data": "later", "id": 9}


async def test_abusive_socket_is_closed_1008_and_others_of_the_user_are_not(
    tmp_path: Path, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "taxi_tornado")
    running = await start(replace(make_settings(tmp_path), limits={"rate": 1, "burst": 3}))
    user, token = await running.user("rider@example.com")
    abuser, calm = await running.connect(token), await running.connect(token)
    for _ in range(20):
        await abuser.send({"type": "echo.message"})
    assert await abuser.closed() == 1008
    assert f"closing an abusive client: user={user.id}" in caplog.text
    assert (await calm.request({"type": "echo.message", "data": 1}))["data"] == 1


# --- logs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_logs_redact_tokens_and_record_each_socket(
    tmp_path: Path, processes: Callable[..., ServerProcess], log_format: str
) -> None:
    users = await seed_users(tmp_path, ("rider", "rider"))
    user_id, token = users["rider"].id, users["rider"].token
    running = processes(env={"TAXI_LOG_FORMAT": log_format})
    client = await ws_client(running.ws_url, token)
    await client.request({"type": "echo.message"})
    client.ws.close(1000)
    bogus = "NOT-A-JWT-" + "s3cr3t" * 4
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    for path, headers in ((f"/taxi/?token={bogus}", upgrade), (f"/healthz?token={token}", {}),
                          (f"/api/trip/?x=1&token={token}&refresh={token}", {})):
        await AsyncHTTPClient().fetch(HTTPRequest(running.url + path, headers=headers),
                                      raise_error=False)
    assert running.stop() == 0
    log = running.log()
    assert token not in log and bogus not in log and "s3cr3t" not in log

    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines()]  # every line is JSON
        assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
        messages = [entry["message"] for entry in entries]
    else:
        messages = log.splitlines()
    text = "\n".join(messages)
    assert re.search(rf"socket open user={user_id} remote=127\.0\.0\.1 version=1$", text,
                     re.MULTILINE)
    assert re.search(
        rf"socket close user={user_id} remote=127\.0\.0\.1 code=1000 duration=\d+\.\d{{3}}s$",
        text, re.MULTILINE)
    assert "GET /taxi/?token=[redacted]" in text
    assert "GET /healthz?token=[redacted]" in text
    assert "GET /api/trip/?x=1&token=[redacted]&refresh=[redacted]" in text


# --- metrics ----------------------------------------------------------------------------------

def metric_value(counter: Any) -> float:
    """The current value of a prometheus-client metric child (in-process servers)."""
    return float(counter._value.get())


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await AsyncHTTPClient().fetch(f"{url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def moved(before: dict[Any, float], after: dict[Any, float], name: str,
          **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_move_with_traffic(server: RunningServer) -> None:
    before = await scrape(server.url)
    _, rider_token = await server.user("rider@example.com")
    _, driver_token = await server.user("driver@example.com", "driver")
    rider, driver = await server.connect(rider_token), await server.connect(driver_token)
    await rider.request({"type": "echo.message", "id": 1})
    await rider.request({"type": "no.such.type"})
    await rider.request({"type": "trip.request",
                         "data": {"pick_up_address": "A", "drop_off_address": "B"}})
    await driver.receive()  # the new trip, sent to the drivers group
    status = (await server.fetch("/taxi/?token=bad", headers={
        "Connection": "Upgrade", "Upgrade": "websocket"}))[0]
    assert status == 401
    after = await scrape(server.url)

    assert moved(before, after, "taxi_connections") == 2
    assert moved(before, after, "taxi_connections_opened_total") == 2
    assert moved(before, after, "taxi_handshakes_refused_total", reason="token") == 1
    assert moved(before, after, "taxi_frames_in_total", type="echo.message") == 1
    assert moved(before, after, "taxi_frames_in_total", type="trip.request") == 1
    assert moved(before, after, "taxi_frames_out_total", type="echo.message") == 1
    assert moved(before, after, "taxi_frames_out_total", type="error") == 1
    # The reply to the rider and the group send to the one driver.
    assert moved(before, after, "taxi_frames_out_total", type="trip.updated") == 2
    assert moved(before, after, "taxi_errors_total", code="unknown_type") == 1
    assert moved(before, after, "taxi_handler_seconds_count", type="trip.request") == 1
    assert moved(before, after, "taxi_fanout_size_count") >= 1
    assert moved(before, after, "taxi_fanout_size_sum") >= 1
    assert moved(before, after, "taxi_hub_published_total") >= 1
    for name in ("taxi_slow_client_closes_total", "taxi_rate_limited_total",
                 "taxi_hub_received_total"):
        assert (name, ()) in after  # exported even while zero


async def test_hub_receive_counts_messages_from_other_processes(
    tmp_path: Path, start: Starter
) -> None:
    hub = {"url": SHARED_REDIS, "prefix": f"test-ops-{uuid.uuid4().hex[:12]}"}
    first = await start(replace(make_settings(tmp_path / "a"), hub=hub))
    second = await start(replace(make_settings(tmp_path / "b"), hub=hub))
    _, token = await second.user("driver@example.com", "driver")
    driver = await second.connect(token)
    received_before = metric_value(metrics.HUB_RECEIVED)
    await first.hub.send("drivers", {"type": "echo.message", "data": "across"})
    assert (await driver.receive())["data"] == "across"
    assert metric_value(metrics.HUB_RECEIVED) - received_before == 1
