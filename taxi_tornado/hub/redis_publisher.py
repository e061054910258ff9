"""The connection a process sends on: one per Redis (one per shard in a cluster).

Commands run under a lock, so the sends of this process to one Redis leave in the order
they were made, and each gives up after PUBLISH_TIMEOUT: a handler sending to a group
never hangs on Redis. A failure says whether Redis may have run the command all the
same (it was written and no answer came), so that a send is delivered at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from taxi_tornado.deadline import deadline
from taxi_tornado.hub.redis_link import CONNECT_TIMEOUT, LINK_ERRORS, connect

# A PUBLISH or history append (including the wait for the publishing connection) gives
# up after this long.
PUBLISH_TIMEOUT = 1.0
# A resume's history read gives up after this long. Its client waits for the answer
# anyway, and a read given up answers `recovered: false`, after which the client reloads
# everything over HTTP: in a reconnect storm, reads that waited behind the process's
# handshakes past 1 s turned 8-28 resumes a run into such reloads (rolling restart bench).
READ_TIMEOUT = 5.0


class SendFailed(Exception):
    """A command on the publishing connection failed; `maybe_done` when Redis may have
    run it all the same (it was written, and no error reply came back)."""

    def __init__(self, error: BaseException, maybe_done: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.maybe_done = maybe_done


class Publisher:
    """One connection, used under a lock; made again after any failure."""

    def __init__(self, new_connection: Callable[[], AbstractConnection]) -> None:
        self._new_connection = new_connection
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def run(self, *command: Any, script: str | None = None) -> Any:
        """One command, in call order; raises SendFailed.

        An EVALSHA that Redis answers with NOSCRIPT (it restarted, failed over, or
        flushed its scripts) is sent again as EVAL with `script`, under the same lock.
        """
        written = False
        try:
            async with deadline(PUBLISH_TIMEOUT), self._lock:
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._new_connection()
                try:
                    if not conn.is_connected:
                        await connect(conn)
                    await conn.send_command(*command)
                    written = True
                    try:
                        return await conn.read_response()
                    except NoScriptError:
                        if script is None:
                            raise
                        written = False
                        await conn.send_command("EVAL", script, *command[2:])
                        written = True
                        return await conn.read_response()
                except ResponseError:
                    written = False  # Redis refused it: the script publishes last
                    raise
                except BaseException:
                    await conn.disconnect(nowait=True)
                    raise
        except LINK_ERRORS as error:
            raise SendFailed(error, maybe_done=written) from error

    async def reset(self, script: str | None) -> None:
        """A new link means Redis may have restarted: never send on a dead socket, and
        load `script` again, so that even the first send is one EVALSHA."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
            conn = self._conn = self._new_connection()
            with contextlib.suppress(*LINK_ERRORS):
                async with deadline(CONNECT_TIMEOUT):
                    await connect(conn)
                    if script is not None:
                        await conn.send_command("SCRIPT", "LOAD", script)
                        await conn.read_response()

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.disconnect(nowait=True)
                self._conn = None
