"""One timer pings every socket of the process and closes those that stopped answering.

Tornado's own keepalive (`websocket_ping_interval`) runs an asyncio task per socket, about
1.6 KiB of memory each; at tens of thousands of idle mobile connections that is the
largest thing we hold per socket after the socket itself. Here one PeriodicCallback
pings every socket once per `ping_interval`, and `ping_timeout` after its ping closes each
socket that has not answered, as Tornado would (close with "ping timed out", then drop the
link if the closing handshake does not come).

The pings of a round are spread over the interval, a slice per tick: pinging 5,000
sockets at once held the loop for tens of milliseconds, and every frame that arrived
meanwhile waited (the relay p99 of the location bench doubled on the tick).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Protocol

from tornado.ioloop import IOLoop, PeriodicCallback

SLICES = 25  # ticks per interval: the default 25 s interval pings a slice each second


class Pingable(Protocol):
    # When the unanswered ping was sent (IOLoop time), 0.0 when none is outstanding;
    # the socket resets it in on_pong.
    ping_sent_at: float

    def ping(self, data: bytes = b"") -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Keepalive:
    def __init__(self, sockets: Collection[Pingable], interval: float, timeout: float) -> None:
        self.sockets = sockets
        self.interval = interval
        self.timeout = timeout
        self._timer: PeriodicCallback | None = None
        self._round: list[Pingable] = []  # this round's sockets not pinged yet
        self._ticks_left = 0  # of this round

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._timer = PeriodicCallback(self.tick, self.interval / SLICES * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def tick(self) -> None:
        """Ping the next slice of this round; a round takes SLICES ticks (one interval),
        and the next one starts with the sockets open then."""
        if not self._ticks_left:
            self._round = list(self.sockets)
            self._round.reverse()  # popped from the end: the oldest sockets first
            self._ticks_left = SLICES
        count = math.ceil(len(self._round) / self._ticks_left)
        self._ticks_left -= 1
        self.ping([self._round.pop() for _ in range(count)])

    def ping(self, batch: list[Pingable]) -> None:
        loop = IOLoop.current()
        now = loop.time()
        pinged: list[Pingable] = []
        for sock in batch:
            if sock not in self.sockets:  # closed since the round began
                continue
            if not sock.ping_sent_at:  # an older unanswered ping keeps its time
                sock.ping_sent_at = now
            try:
                sock.ping()
            except Exception:  # closed meanwhile: its own close path cleans up
                continue
            pinged.append(sock)
        if self.timeout > 0 and pinged:
            loop.call_later(self.timeout, self.close_silent, pinged, now)

    def close_silent(self, pinged: list[Pingable], round_time: float) -> None:
        """Close each socket still owing the pong for a ping sent by `round_time`."""
        for sock in pinged:
            if 0 < sock.ping_sent_at <= round_time and sock in self.sockets:
                sock.close(reason="ping timed out")
