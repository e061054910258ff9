"""collector.py: the server's garbage-collector policy still collects cycles, and only
what it froze at start-up is exempt."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from taxi_tornado import collector
from taxi_tornado.settings import Settings
from tests.conftest import Client, RunningServer, make_settings
from tests.test_trips import error_code, heard, request, rider_and_driver

Starter = Callable[[Settings], Awaitable[RunningServer]]


class Node:
    """A container object that can be part of a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    collector.tune()
    try:
        yield
    finally:
        gc.set_threshold(*before)


def cycle() -> weakref.ref[Node]:
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_tune_raises_only_the_young_threshold(tuned: None) -> None:
    young, middle, old = gc.get_threshold()
    assert young == collector.YOUNG_THRESHOLD
    assert (middle, old) == (10, 10)


def test_a_cycle_is_collected_once_enough_is_allocated(tuned: None) -> None:
    """Like a closed socket's objects: no explicit collect, only more allocations."""
    gc.collect()
    dead = cycle()
    assert dead() is not None  # a cycle: reference counting alone does not free it
    kept = [Node() for _ in range(collector.YOUNG_THRESHOLD + 1_000)]
    assert dead() is None
    assert len(kept) > collector.YOUNG_THRESHOLD


def test_freeze_exempts_what_exists_and_not_what_comes_after(tuned: None) -> None:
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
