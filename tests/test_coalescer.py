"""taxi_tornado/coalescer.py: a loop turn's keys are one fetch (the store's user and
trip lookups during a connect storm, the hub's resume reads), a key asked twice is
fetched once, batches stay within `max_keys`, and a failure reaches every caller."""

from __future__ import annotations

import asyncio

import pytest

from taxi_tornado.coalescer import Coalescer

calls: list[list[str]] = []


async def upper(keys: list[str]) -> dict[str, str]:
    calls.append(keys)
    return {key: key.upper() for key in keys}


@pytest.fixture(autouse=True)
def no_calls() -> None:
    calls.clear()


async def test_one_turns_keys_are_one_fetch_and_a_key_asked_twice_is_fetched_once() -> None:
    coalescer = Coalescer(upper)
    answers = await asyncio.gather(*(coalescer.get(key) for key in ("a", "b", "a")))
    assert answers == ["A", "B", "A"]
    assert calls == [["a", "b"]]
    assert await coalescer.get("c") == "C"  # the next turn: a fetch of its own
    assert calls == [["a", "b"], ["c"]]


async def test_a_batch_holds_at_most_max_keys() -> None:
    coalescer = Coalescer(upper, max_keys=3)
    answers = await asyncio.gather(*(coalescer.get(str(n)) for n in range(7)))
    assert answers == [str(n) for n in range(7)]
    assert [len(keys) for keys in calls] == [3, 3, 1]


async def test_a_failing_fetch_fails_every_caller_and_a_cancelled_caller_is_not_told(
) -> None:
    async def failing(keys: list[str]) -> dict[str, str]:
        calls.append(keys)
        raise ConnectionError("Redis went away")

    coalescer: Coalescer[str, str] = Coalescer(failing)
    gone = coalescer.get("a")
    gone.cancel()
    results = await asyncio.gather(coalescer.get("a"), coalescer.get("b"),
                                   return_exceptions=True)
    assert calls == [["a", "b"]]
    assert all(isinstance(result, ConnectionError) for result in results), results


async def test_close_stops_the_fetch_under_way_and_its_callers_hear_of_it() -> None:
    started = asyncio.Event()

    async def stuck(keys: list[str]) -> dict[str, str]:
        started.set()
        await asyncio.Event().wait()
        return {}

    coalescer: Coalescer[str, str] = Coalescer(stuck)
    waiting = coalescer.get("a")
    await started.wait()
    coalescer.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
