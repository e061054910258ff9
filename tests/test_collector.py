"""collector.py: the server's garbage-collector policy still collects cycles, only what
it froze at start-up is exempt, and frames and ended sockets leave no cycles to wait for
a collection that now comes late."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from taxi_tornado import collector
from taxi_tornado.handlers.socket import TaxiSocket
from taxi_tornado.settings import Settings
from tests.conftest import Client, RunningServer, make_settings
from tests.test_operations import RawSocket, eventually
from tests.test_trips import error_code, heard, request, rider_and_driver

Starter = Callable[[Settings], Awaitable[RunningServer]]


class Node:
    """A container object that can be part of a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def tuned() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    collector.tune()
    try:
        yield before
    finally:
        gc.set_threshold(*before)


def cycle() -> weakref.ref[Node]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_tune_raises_only_the_young_threshold(tuned: tuple[int, int, int]) -> None:
    young, middle, old = gc.get_threshold()
    assert young == collector.YOUNG_THRESHOLD
    assert (middle, old) == tuned[1:]


def test_a_cycle_is_collected_once_enough_is_allocated(tuned: tuple[int, int, int]) -> None:
    """Like a closed socket's objects: no explicit collect, only more allocations."""
    gc.collect()
    dead = cycle()
    assert dead() is not None  # a cycle: reference counting alone does not free it
    kept = [Node() for _ in range(collector.YOUNG_THRESHOLD + 1_000)]
    assert dead() is None
    assert len(kept) > collector.YOUNG_THRESHOLD


def test_freeze_exempts_what_exists_and_not_what_comes_after(tuned: tuple[int, int, int]) -> None:
    """Garbage left at start-up is collected first; live objects frozen then stay out of
    every collection, even once they are garbage; later ones do not."""
    start_up_garbage = cycle()
    live = Node()
    live.other = live
    frozen_cycle = weakref.ref(live)
    try:
        assert collector.freeze_startup() >= 1
        assert start_up_garbage() is None
        del live
        later_cycle = cycle()
        gc.collect()
        assert later_cycle() is None
        assert frozen_cycle() is not None
    finally:
        gc.unfreeze()
        gc.collect()
    assert frozen_cycle() is None


async def frames_round(driver_ws: Client, rider_ws: Client, rounds: int) -> None:
    """`rounds` times: a relayed position, a malformed frame, an unknown type, a refused
    location, and a frame that waits for the store (declining no trip)."""
    for number in range(rounds):
        await driver_ws.send({"type": "driver.location",
                              "data": {"lat": 52.5, "lng": 13.4 + number / 1e5}})
        await driver_ws.send("{not json")
        await driver_ws.send({"type": "no.such.type"})
        await driver_ws.send({"type": "driver.location", "data": {"lat": 91, "lng": 0}})
        await driver_ws.send({"type": "trip.decline",
                              "data": {"id": "00000000-0000-0000-0000-000000000000"}})
    for _ in range(rounds):
        assert (await rider_ws.receive())["type"] == "driver.location"
        for code in ("invalid_json", "unknown_type", "invalid", "not_found"):
            assert error_code(await driver_ws.receive()) == code


async def test_frames_leave_no_cycles_behind(tmp_path: Path, start: Starter) -> None:
    """The collector policy rests on this: what a frame allocates is freed by reference
    counting, errors included, so a young collection rarely has work to do. Cyclic
    garbage found after 200 rounds is no more than after 20 (the rest is the test's)."""
    server = await start(make_settings(tmp_path, limits={"rate": 100_000, "burst": 100_000}))
    _, rider_ws, _, driver_ws = await rider_and_driver(server, v2=True)
    trip = await request(rider_ws)
    await heard(driver_ws, trip, "REQUESTED")
    await driver_ws.request({"type": "trip.update", "data": {"id": trip["id"],
                                                             "status": "STARTED"}})
    await heard(rider_ws, trip, "STARTED")
    await frames_round(driver_ws, rider_ws, 5)  # warm: caches, first-use objects
    found = []
    for rounds in (20, 200):
        gc.collect()
        gc.disable()
        try:
            await frames_round(driver_ws, rider_ws, rounds)
            found.append(gc.collect())
        finally:
            gc.enable()
    assert found[1] - found[0] < 50, found




def upgrade_then_leave(port: int, token: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET /taxi/?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())


def live_sockets() -> int:
    """Handlers still tracked by the collector: with collection off, that is every one
    not freed by reference counting."""
    return sum(1 for item in gc.get_objects() if isinstance(item, TaxiSocket))


async def test_every_way_a_socket_ends_frees_it_without_a_collection(
        server: RunningServer) -> None:
    """A driver's socket lives long enough to grow old, and old garbage waits for a full
    collection, which the policy makes rare: so a socket that ended (its handler, stream
    and buffers) must be freed by reference counting alone, however it ended."""
    _, rider_token = await server.user("rider")
    _, driver_token = await server.user("driver", "driver")
    sockets = server.server.services.sockets
    gc.collect()
    gc.disable()
    try:
        for v2 in (False, True):  # closed by the client, after a frame each way
            rider_ws = await server.connect(rider_token, v2=v2)
            driver_ws = await server.connect(driver_token, v2=v2)
            await rider_ws.request({"type": "no.such.type"})
            rider_ws.close()
            driver_ws.close()
        with pytest.raises(HTTPClientError):  # refused: a bad token
            await server.connect("not-a-token")
        abusive = await server.connect(driver_token)  # closed by the server: 1008
        for _ in range(200):
            await abusive.send({"type": "no.such.type"})
        assert await abusive.closed() == 1008
        raw = await asyncio.to_thread(RawSocket, server.port, "/taxi/", rider_token)
        await asyncio.to_thread(raw.sock.sendall, bytes((0x81, 0xFF)) + (60_000).to_bytes(8)
                                + bytes(4) + b"x" * 30_000)  # half a frame, then gone
        raw.sock.close()
        for _ in range(5):  # gone during the upgrade, before or after its answer
            await asyncio.to_thread(upgrade_then_leave, server.port, rider_token)
        await eventually(lambda: not sockets and live_sockets() == 0)
    finally:
        gc.enable()
