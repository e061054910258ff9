"""Answering what many callers ask for during one loop turn with one call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Coalescer(Generic[K, T]):
    """Answers the keys asked for during one loop turn with one call of `fetch`.

    `fetch(keys)` returns an answer for every key. The first `get` of a turn schedules
    the batch with `call_soon`, so every `get` made before the loop's next turn joins it;
    a key asked twice is fetched once, and each caller awaits a future of its own (one
    caller cancelled cancels nobody else). A failing fetch fails every caller of the
    batch with its error. With `max_keys`, a batch that holds that many is sent at once
    and the next `get` begins a new one.
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, T]]],
                 max_keys: int | None = None) -> None:
        self._fetch = fetch
        self._max_keys = max_keys
        self._pending: dict[K, list[asyncio.Future[T]]] = {}
        self._running: set[asyncio.Task[None]] = set()

    def get(self, key: K) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.setdefault(key, []).append(future)
        if self._max_keys is not None and len(self._pending) >= self._max_keys:
            self._flush()
        return future

    async def drain(self) -> None:
        """Send what is pending and wait for every batch in flight (before a close)."""
        self._flush()
        await asyncio.gather(*self._running)

    def close(self) -> None:
        """Stop the batches in flight; their callers get CancelledError."""
        for task in self._running:
            task.cancel()

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:  # sent already
            return
        task = asyncio.ensure_future(self._answer(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, batch: dict[K, list[asyncio.Future[T]]]) -> None:
        try:
            answers = await self._fetch(list(batch))
        except BaseException as error:  # handed to every caller, a cancellation too
            for futures in batch.values():
                for future in futures:
                    if not future.done():  # a cancelled caller is not told
                        future.set_exception(error)
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        for key, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(answers[key])
