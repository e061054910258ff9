"""One timer ends every v2 socket whose access token expired and was not refreshed.

At its token's `exp` (at once for a token past it, let in by auth.leeway) a v2 socket
gets `auth.expired`; `auth.refresh_grace` seconds after that frame, unless an
`auth.refresh` moved its expiry meanwhile, it is closed with 4001 (docs/protocol.md,
Token refresh on a live socket). A task or timer per socket would cost memory at every
idle connection (see handlers/keepalive.py); here one heap holds each socket's next
deadline, and one IOLoop timeout is armed for the earliest. A refresh only changes the
connection's `expires`: when the old deadline comes, the socket is put back at the new
one, so a socket has at most one entry.

A closed socket is forgotten at once: its entry turns stale (the heap refers to sockets
weakly, and an entry counts only while it is its socket's current one), and when stale
entries outnumber live ones the heap is rebuilt without them. Memory follows the open
sockets, however many came and went on tokens that are still valid.
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
        # Each watched socket's current entry, by its tie-breaker; any other is stale.
        self._current: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._order = itertools.count()
        self._timeout: object | None = None
        self._armed_for = float("inf")

    def watch(self, sock: Expiring) -> None:
        """Follow the expiry of `sock`'s connection (v2 connections have one)."""
        conn = sock.connection
        if conn is None or conn.expires is None:
            return
        self._push(conn.expires, sock, conn.expires, False)

    def forget(self, sock: Expiring) -> None:
        """Stop following `sock` (it closed); a no-op for a socket not followed."""
        if self._current.pop(sock, None) is None:
            return
        if len(self._heap) > 2 * len(self._current):  # stale entries outnumber live ones
            self._rebuild()

    def entries(self) -> int:
        """Heap entries held, stale ones included: at most about twice the sockets
        followed."""
        return len(self._heap)

    def stop(self) -> None:
        self._disarm()
        self._heap.clear()
        self._current.clear()

    def _push(self, deadline: float, sock: Expiring, expires: float, closing: bool) -> None:
        order = next(self._order)
        self._current[sock] = order
        heapq.heappush(self._heap, (deadline, order, weakref.ref(sock), expires, closing))
        if deadline < self._armed_for:
            self._arm(deadline)

    def _live(self, entry: Entry) -> Expiring | None:
        """The socket of `entry` when that entry is still its current one."""
        sock = entry[2]()
        if sock is None or self._current.get(sock) != entry[1]:
            return None
        return sock  # type: ignore[no-any-return]

    def _rebuild(self) -> None:
        self._heap = [entry for entry in self._heap if self._live(entry) is not None]
        heapq.heapify(self._heap)
        if not self._heap:
            self._disarm()

    def _arm(self, deadline: float) -> None:
        loop = IOLoop.current()
        if self._timeout is not None:
            loop.remove_timeout(self._timeout)
        self._armed_for = deadline
        self._timeout = loop.call_later(max(0.0, deadline - time.time()), self._fire)

    def _disarm(self) -> None:
        if self._timeout is not None:
            IOLoop.current().remove_timeout(self._timeout)
            self._timeout = None
        self._armed_for = float("inf")

    def _fire(self) -> None:
        self._timeout = None
        self._armed_for = float("inf")
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            sock = self._live(entry)
            if sock is not None:
                del self._current[sock]
                self._due(sock, entry[3], entry[4])
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
        # The grace counts from this frame, not from `exp`: a token let in by
        # auth.leeway expired before the socket opened, and gets the whole grace too.
        grace = conn.settings.auth.refresh_grace
        self._push(time.time() + grace, sock, expires, True)

