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
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from taxi_tornado.app import Server
from taxi_tornado.handlers.socket import TaxiSocket
from taxi_tornado.plugins.api import Connection
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.services import build_services
from taxi_tornado.settings import Settings, replace
from tests.conftest import (
    RunningServer,
    make_settings,
)
from tests.redis_server import SHARED_REDIS, RedisServer
from tests.test_operations import eventually

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


class CutClient:
    """A client that sends an upgrade request and then drops the TCP connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def send_upgrade(cls, port: int, token: str, *, upto: int | None = None
                           ) -> CutClient:
        """Connect and send the request (only its first `upto` bytes when given)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, upgrade_request(port, token)[:upto])
        return cls(sock)

    async def read_some(self, timeout: float = 5) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)

    def cut(self, rst: bool) -> None:
        """FIN (a plain close) or RST (SO_LINGER 0), as a phone losing its radio does."""
        if rst:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def held_frames() -> int:
    """Bytes of frames held by every Connection alive in this process, socket or not."""
    return sum(
        sum(len(frame) for frame in obj._pending or ())
        for obj in gc.get_objects() if isinstance(obj, Connection)
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
        client = await CutClient.send_upgrade(port, token, upto=self.upto)
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
    phone, token = await running.user("phone", "driver")
    client = await CutClient.send_upgrade(running.port, token)
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
    assert running.hub.groups == {}
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
    phone, token = await running.user("phone", "driver")
    pauser = aioredis.from_url(private_redis.url)
    try:
        # Redis holds every command for a second: the SUBSCRIBE of user:<id> waits.
        await pauser.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        client = await CutClient.send_upgrade(running.port, token)
        await eventually(lambda: running.hub.members(f"user:{phone.id}") == 1)
        client.cut(rst=True)
        await eventually(lambda: not running.hub.groups, timeout=10)
        assert await numsub(running, f"user:{phone.id}") == 0
        assert await numsub(running, "drivers") == 0
        assert not running.server.services.sockets
        await running.hub.send("drivers", {"type": "test.lost", "data": "x" * 100_000})
        assert held_frames() == 0
    finally:
        await pauser.aclose()
