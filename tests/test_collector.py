"""collector.py: the server's garbage-collector policy still collects cycles, and only
what it froze at start-up is exempt."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from taxi_tornado import collector


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
