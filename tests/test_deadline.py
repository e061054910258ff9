"""taxi_tornado/deadline.py: a timeout entered in a handler's inline first step cancels the
handler, never the task that runs it inline (the one reading the socket); and the Redis
pool's wait for a connection leaves that step first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import connection as redis_connection

from taxi_tornado.deadline import deadline
from taxi_tornado.handlers.inline import run_inline
from taxi_tornado.hub.cluster_url import redis_client, waiting_pool
from tests.redis_cluster import RedisCluster
from tests.redis_server import SHARED_REDIS


async def run_as_a_frame(handler: Callable[[], Awaitable[Any]]) -> tuple[bool, list[str]]:
    """Run `handler` as the socket runs a frame's handler: inline in the reading task,
    then to its end in a Task of its own. Returns whether the reading task was cancelled,
    and what the handler saw."""
    seen: list[str] = []

    async def frame() -> None:
        try:
            await handler()
            seen.append("done")
        except TimeoutError:
            seen.append("timeout")
        except Exception as error:
            seen.append(type(error).__name__)

    async def reading_task() -> None:
        rest = run_inline(frame())
        if rest is None:
            return
        # As Tornado's _run_callback: a Task for the rest, and a plain Future the reading
        # loop awaits, resolved when that Task is done.
        done = asyncio.get_running_loop().create_future()
        handling = asyncio.ensure_future(rest)
        handling.add_done_callback(lambda _: done.done() or done.set_result(None))
        await done

    reader = asyncio.ensure_future(reading_task())
    try:
        await reader
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
        return True, seen
    return False, seen


async def test_a_deadline_entered_inline_cancels_the_handler_not_the_reader() -> None:
    async def handler() -> None:
        async with deadline(0.05):
            await asyncio.Event().wait()

    assert await run_as_a_frame(handler) == (False, ["timeout"])


async def test_asyncio_timeout_entered_inline_would_cancel_the_reader() -> None:
    """The hazard the module exists for: this is what happened before."""
    async def handler() -> None:
        async with asyncio.timeout(0.05):
            await asyncio.Event().wait()

    cancelled, _ = await asyncio.wait_for(run_as_a_frame(handler), 1)
    assert cancelled


async def test_the_pools_wait_for_a_connection_leaves_the_inline_step() -> None:
    pool = waiting_pool(SHARED_REDIS)
    pool.max_connections, pool.timeout = 1, 0.05
    held = await pool.get_connection()
    try:
        async def handler() -> None:
            await pool.get_connection()

        assert await run_as_a_frame(handler) == (False, ["ConnectionError"])
    finally:
        await pool.release(held)
        await pool.disconnect()


@pytest.mark.parametrize("cluster", [False, True])
async def test_redis_py_times_nothing_on_the_reading_task(
        cluster: bool, redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py's timeouts (pool wait, connect, read) belong to the task current when
    entered: the first command of a fresh client, sent by a handler, enters none of
    them in the socket's reading task."""
    entered_in: list[asyncio.Task[Any] | None] = []
    timeout = redis_connection.async_timeout

    def recording_timeout(delay: float | None) -> Any:
        entered_in.append(asyncio.current_task())
        return timeout(delay)

    monkeypatch.setattr(redis_connection, "async_timeout", recording_timeout)
    client = redis_client(redis_cluster.url if cluster else SHARED_REDIS)
    readers: list[asyncio.Task[Any] | None] = []

    async def handler() -> None:
        readers.append(asyncio.current_task())  # the first step runs in the reader
        await client.set("deadline-test", "1", px=1000)

    try:
        assert await run_as_a_frame(handler) == (False, ["done"])
    finally:
        await client.aclose()
    assert entered_in and readers[0] not in entered_in


async def test_a_deadline_outside_a_handler_is_asyncio_timeout() -> None:
    with pytest.raises(TimeoutError):
        async with deadline(0.05):
            await asyncio.Event().wait()
