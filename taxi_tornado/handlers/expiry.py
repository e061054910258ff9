"""One timer ends every v2 socket whose access token expired and was not refreshed.

At its token's `exp` a v2 socket gets `auth.expired`; `auth.refresh_grace` seconds later,
unless an `auth.refresh` moved its expiry meanwhile, it is closed with 4001 (PROTOCOL.md,
Token refresh on a live socket). A task or timer per socket would cost memory at every
idle connection (see handlers/keepalive.py); here one heap holds each socket's next
deadline, and one IOLoop timeout is armed for the earliest. A refresh only changes the
connection's `expires`: when the old deadline comes, the socket is put back at the new
one. The heap refers to sockets weakly, so a closed socket is not kept alive by it.
"""

from __future__ import annotations

import heapq
import itertools
import time
import weakref
from datetime import UTC, datetime
from typing import Any, Protocol

from tornado.ioloop import IOLoop

from taxi_tornado.plugins.api import Connection
from taxi_tornado.store import format_time

TOKEN_EXPIRED = 4001


class Expiring(Protocol):
    connection: Connection | None
    close_sent: int | None

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


# (deadline, tie-breaker, socket, the expiry it was armed for, whether the grace is over)
Entry = tuple[float, int, "weakref.ref[Any]", float, bool]


class TokenExpiry:
    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._order = itertools.count()
        self._timeout: object | None = None
        self._armed_for = float("inf")

    def watch(self, sock: Expiring) -> None:
        """Follow the expiry of `sock`'s connection (v2 connections have one)."""
        conn = sock.connection
        if conn is None or conn.expires is None:
            return
        self._push(conn.expires, sock, conn.expires, False)

    def stop(self) -> None:
        if self._timeout is not None:
            IOLoop.current().remove_timeout(self._timeout)
            self._timeout = None
        self._armed_for = float("inf")
        self._heap.clear()

    def _push(self, deadline: float, sock: Expiring, expires: float, closing: bool) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(sock), expires,
                                    closing))
        if deadline < self._armed_for:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        loop = IOLoop.current()
        if self._timeout is not None:
            loop.remove_timeout(self._timeout)
        self._armed_for = deadline
        self._timeout = loop.call_later(max(0.0, deadline - time.time()), self._fire)

    def _fire(self) -> None:
        self._timeout = None
        self._armed_for = float("inf")
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            _, _, ref, expires, closing = heapq.heappop(self._heap)
            sock = ref()
            if sock is not None:
                self._due(sock, expires, closing)
        if self._heap:
            self._arm(self._heap[0][0])

    def _due(self, sock: Expiring, expires: float, closing: bool) -> None:
        conn = sock.connection
        if conn is None or conn.expires is None or sock.close_sent is not None:
            return  # closed meanwhile
        if conn.expires > expires:  # refreshed: wait for the new expiry
            self._push(conn.expires, sock, conn.expires, False)
            return
        if closing:
            sock.close(TOKEN_EXPIRED, "access token expired")
            return
        exp = format_time(datetime.fromtimestamp(expires, UTC))
        conn.send({"type": "auth.expired", "data": {"exp": exp}})
        grace = conn.settings.auth.refresh_grace
        self._push(expires + grace, sock, expires, True)

