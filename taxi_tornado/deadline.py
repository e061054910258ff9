"""Timeouts that hold in a frame's handler, which runs its first step inline.

`asyncio.timeout()` cancels the task that was current when it was entered. A frame's
handler runs its first step inline (handlers/inline.py), in the task that reads the
socket's frames, without a Task of its own: most frames never wait. A timeout entered in
that step, before the handler's first wait, would cancel the reading task when it fires,
and Tornado would drop the connection without a close frame (a resume whose history read
took more than PUBLISH_TIMEOUT lost its socket so). `deadline` first moves such a handler
into its own task (one loop turn: run_inline hands the rest to a Task), then times out
there. Every timeout on a path a handler can reach is a `deadline`, and the Redis
connection pool's wait for a free connection (hub/cluster_url.py) leaves the step too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

_inline_steps = 0  # above 0 while run_inline runs a handler's first step


@contextlib.contextmanager
def inline_step() -> Iterator[None]:
    """Mark the code run here as a handler's first step, outside a task of its own."""
    global _inline_steps
    _inline_steps += 1
    try:
        yield
    finally:
        _inline_steps -= 1


async def leave_inline_step() -> None:
    """In a handler's first step, go on in the handler's own task (one loop turn);
    elsewhere, nothing."""
    if _inline_steps:
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """`asyncio.timeout(seconds)` that cancels the code under it, wherever it runs."""
    await leave_inline_step()
    async with asyncio.timeout(seconds):
        yield
