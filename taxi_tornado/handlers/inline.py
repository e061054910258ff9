"""Running a frame's handler inline: most frames never wait, and then cost no Task."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from taxi_tornado.deadline import inline_step


def run_inline(coroutine: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Run `coroutine` here up to its first real wait, or to its end.

    Most frames (an echo, every error and validation failure) never wait, and then this
    is a plain call: no Task, no Future, no extra turn of the loop, which profiles of the
    echo scenario showed to be a tenth of a frame's cost. A coroutine that does wait (for
    the store, say) comes back as an awaitable that carries on from where it stopped.
    Until then it runs in the task that reads the socket: a timeout it enters must be
    taxi_tornado.deadline's, which leaves that task alone.
    """
    try:
        with inline_step():  # no task of its own yet: see deadline.py
            pending = coroutine.send(None)
    except StopIteration:
        return None
    return _Resumed(coroutine, pending)


class _Resumed:
    """The rest of a coroutine whose first step already ran, for a Task to drive.

    Passes through what the coroutine waits on (the Task sees the same future a direct
    `await` would give it) and hands back results and thrown exceptions, as `yield from`
    does.
    """

    __slots__ = ("coroutine", "pending")

    def __init__(self, coroutine: Coroutine[Any, Any, None], pending: Any) -> None:
        self.coroutine = coroutine
        self.pending = pending

    def __await__(self) -> Generator[Any, None, None]:
        coroutine, pending = self.coroutine, self.pending
        while True:
            try:
                yield pending
            except BaseException as error:  # thrown in by the task, e.g. cancellation
                try:
                    pending = coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    pending = coroutine.send(None)
                except StopIteration:
                    return
