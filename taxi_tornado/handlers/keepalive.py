"""One timer pings every socket of the process and closes those that stopped answering.

Tornado's own keepalive (`websocket_ping_interval`) runs an asyncio task per socket, about
1.6 KiB of memory each; at tens of thousands of idle mobile connections that is the
largest thing we hold per socket after the socket itself. Here one PeriodicCallback
pings every socket once per `ping_interval`, and `ping_timeout` after its ping closes each
socket that has not answered, as Tornado would (close with "ping timed out", then drop the
link if the closing handshake does not come).

The pings are spread over the interval: each socket gets one of the interval's slots
when it opens (in turn, so the slots stay even), and a tick every TICK_S pings one slot.
A socket is so pinged exactly once per interval, its first ping within one. Pinging
5,000 sockets at once held the loop for tens of milliseconds, and every frame that
arrived meanwhile waited (the relay p99 of the location bench doubled on that tick);
at one slot a second, 176 pings still held it 8-40 ms. At a tick every 0.1 s, 19,000
sockets still gave 76 pings a tick and as many pongs back: a trip request landing behind
them waited for its first offer 6 ms at p99 instead of 2.3 (bench/README.md, offer
latency); a tick every 0.02 s pings 15. Long intervals keep at most MAX_SLOTS slots.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

from tornado.ioloop import IOLoop, PeriodicCallback

TICK_S = 0.02  # the default 25 s interval: 1,250 slots, a 1,250th of the sockets a tick
MAX_SLOTS = 5000  # an empty slot is a small set; ticks grow past TICK_S beyond this


class Pingable(Protocol):
    # When the unanswered ping was sent (IOLoop time), 0.0 when none is outstanding;
    # the socket resets it in on_pong.
    ping_sent_at: float

    def ping(self, data: bytes = b"") -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


class Keepalive:
    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self._timer: PeriodicCallback | None = None
        # ticks (and slots) an interval
        self.slices = max(1, min(MAX_SLOTS, math.ceil(interval / TICK_S)))
        self._slots: list[set[Pingable]] = [set() for _ in range(self.slices)]
        self._slot_of: dict[Pingable, int] = {}
        self._next_slot = itertools.cycle(range(self.slices))
        self._ticks = itertools.cycle(range(self.slices))

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._timer = PeriodicCallback(self.tick, self.interval / self.slices * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def watch(self, sock: Pingable) -> None:
        """Ping `sock` from now on (an open socket)."""
        if sock in self._slot_of:
            return
        slot = next(self._next_slot)
        self._slot_of[sock] = slot
        self._slots[slot].add(sock)

    def forget(self, sock: Pingable) -> None:
        """Stop pinging `sock` (it closed); a no-op for a socket not watched."""
        slot = self._slot_of.pop(sock, None)
        if slot is not None:
            self._slots[slot].discard(sock)

    def watched(self) -> int:
        return len(self._slot_of)

    def tick(self) -> None:
        self.ping(list(self._slots[next(self._ticks)]))

    def ping(self, batch: list[Pingable]) -> None:
        loop = IOLoop.current()
        now = loop.time()
        for sock in batch:
            if not sock.ping_sent_at:  # an older unanswered ping keeps its time
                sock.ping_sent_at = now
            try:
                sock.ping()
            except Exception:  # closed meanwhile: its own close path cleans up
                continue
        if self.timeout > 0 and batch:
            loop.call_later(self.timeout, self.close_silent, batch, now)

    def close_silent(self, pinged: list[Pingable], round_time: float) -> None:
        """Close each socket still owing the pong for a ping sent by `round_time`."""
        for sock in pinged:
            if 0 < sock.ping_sent_at <= round_time and sock in self._slot_of:
                sock.close(reason="ping timed out")
