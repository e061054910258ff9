"""A resume racing the live copies of the events it replays, staged every time.

The resume reads a group's history on the broker's pool connection while the live
copies of the same events come on the subscriber link, and nothing orders the two: an
event numbered just before the read is in the replay, and its live copy can reach the
server after the replay was written. A proxy in front of Redis holds back what Redis
sends on the subscriber link (the one connection that SUBSCRIBEs) for as long as a test
says, so the live copies come exactly when the test wants them (PROTOCOL.md, Resume:
none is sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.hub.redis_history import READ
from taxi_tornado.settings import Settings
from tests.conftest import Client, RunningServer, make_settings
from tests.test_sessions import claimed_trip

Start = Callable[[Settings], Awaitable[RunningServer]]
REDIS_PORT = 6379
# The resume's read of the history: EVALSHA of this script on a pool connection.
READ_SHA = hashlib.sha1(READ.encode()).hexdigest().encode()


class PausingProxy:
    """TCP in front of the test Redis; what Redis sends back can be held per kind of
    connection: `subscriber` (the link that SUBSCRIBEs) or `reader` (a connection that
    ran the resume's READ script)."""

    def __init__(self) -> None:
        self.flowing = {"subscriber": asyncio.Event(), "reader": asyncio.Event()}
        for event in self.flowing.values():
            event.set()
        self.reads = asyncio.Event()  # set when a READ goes to Redis
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self, kind: str) -> None:
        self.flowing[kind].clear()

    def resume(self, kind: str) -> None:
        self.flowing[kind].set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", REDIS_PORT)
        kinds: set[str] = set()
        for pump in (self._up(client_r, redis_w, kinds), self._down(redis_r, client_w, kinds)):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  kinds: set[str]) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if b"SUBSCRIBE" in data:
                    kinds.add("subscriber")
                if READ_SHA in data or b"XRANGE" in data:  # EVALSHA, or EVAL after NOSCRIPT
                    kinds.add("reader")
                    self.reads.set()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    kinds: set[str]) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                for kind in kinds:  # what came while paused waits here, in order
                    await self.flowing[kind].wait()
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[PausingProxy]:
    running = PausingProxy()
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def server(proxy: PausingProxy, tmp_path: Path, start: Start) -> RunningServer:
    return await start(make_settings(tmp_path, hub={
        "url": proxy.url, "prefix": f"race-{uuid.uuid4().hex[:12]}"}))


async def notice(server: RunningServer, n: int) -> None:
    await server.hub.send("drivers", {"type": "fleet.notice", "data": n})


async def until_offset(client: Client, offset: int) -> list[dict[str, Any]]:
    """Every frame up to and including the event at `offset` of `drivers`."""
    frames = []
    while True:
        frame = await client.receive(timeout=5)
        frames.append(frame)
        if frame.get("pos", {}).get("offset") == offset:
            return frames


async def test_live_copies_of_replayed_events_that_come_after_the_resume_are_dropped(
    server: RunningServer, proxy: PausingProxy,
) -> None:
    _, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    await notice(server, 1)
    pos = (await client.receive())["pos"]

    proxy.pause("subscriber")  # the link lags: 2 and 3 are numbered, not yet heard
    await notice(server, 2)
    await notice(server, 3)
    reply = await client.request({"type": "session.resume", "data": {"positions": {
        "drivers": {"offset": pos["offset"], "epoch": pos["epoch"]}}}})
    assert reply["data"] == {"groups": {"drivers": {"recovered": True, "missed": 2}}}
    replayed = [client.held.popleft() for _ in range(len(client.held))]
    assert [frame["pos"]["offset"] for frame in replayed] == [2, 3]

    proxy.resume("subscriber")  # the live copies of 2 and 3 come after the replay
    await notice(server, 4)
    later = await until_offset(client, 4)
    assert [frame["pos"]["offset"] for frame in later] == [4], later
    await client.nothing()


async def test_a_change_of_the_resuming_socket_heard_while_the_replay_is_read_is_not_replayed(
    server: RunningServer, proxy: PausingProxy,
) -> None:
    """The sender's being left out of its own change (it got the reply) comes on the
    subscriber link while the resume holds the group: the replay leaves the change out."""
    rider, driver, trip_id, pos, _ = await claimed_trip(server)
    proxy.pause("subscriber")
    reply = await driver.request({"type": "trip.update", "data": {
        "id": trip_id, "status": "IN_PROGRESS"}})
    assert reply["type"] == "trip.updated" and "pos" not in reply
    proxy.pause("reader")
    proxy.reads.clear()
    await driver.send({"type": "session.resume", "id": "r", "data": {"positions": {
        trip_id: {"offset": pos["offset"], "epoch": pos["epoch"]}}}})
    await proxy.reads.wait()  # the group is held, its history is being read
    proxy.resume("subscriber")
    live = await rider.receive()  # handed out with the driver's being left out
    assert live["pos"]["offset"] == pos["offset"] + 1
    proxy.resume("reader")
    assert await driver.receive() == {"type": "session.resumed", "id": "r", "data": {
        "groups": {trip_id: {"recovered": True, "missed": 0}}}}
    await driver.nothing()
