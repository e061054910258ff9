"""Operations on real processes and sockets: drain, TLS, keepalive, limits, logs, metrics.

ARCHITECTURE.md, Operations. Subprocess tests seed their users straight into the
server's SQLite file before it starts and sign tokens with the shared test secret.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from taxi_tornado.auth import TokenAuthority
from taxi_tornado.settings import AuthSettings
from taxi_tornado.store import open_store
from tests.conftest import (
    PASSWORD_HASH,
    SECRET,
    Client,
    ServerProcess,
    make_settings,
)

GOING_AWAY = 1001


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

    It never answers pings nor the closing handshake unless told to: what a phone that
    lost its radio, or a client that stopped reading, looks like from the server.
    """

    def __init__(self, port: int, path: str, token: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
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

    def shrink_receive_buffer(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def send_text(self, text: str) -> None:
        """One masked text frame (clients must mask)."""
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            header = bytes((0x81, 0x80 | size))
        else:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        self.sock.sendall(header + mask + masked)

    def read_frames(self, timeout: float = 5) -> list[tuple[int, bytes]]:
        """Read until the server's close frame or EOF; return (opcode, payload) pairs."""
        self.sock.settimeout(timeout)
        data = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                frames = parse_frames(data)
                if frames and frames[-1][0] == 0x8:
                    return frames
        except (TimeoutError, ConnectionResetError):
            pass
        return parse_frames(data)

    def close(self) -> None:
        self.sock.close()


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Complete unmasked server frames at the start of `data`."""
    frames: list[tuple[int, bytes]] = []
    while len(data) >= 2:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if size == 126:
            if len(data) < 4:
                break
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            if len(data) < 10:
                break
            size, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + size:
            break
        frames.append((opcode, data[offset:offset + size]))
        data = data[offset + size:]
    return frames


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
    drain_timeout = 3.0
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
