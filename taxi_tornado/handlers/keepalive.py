"""One timer pings every socket of the process and closes those that stopped answering.

Tornado's own keepalive (`websocket_ping_interval`) runs an asyncio task per socket, about
1.6 KiB of memory each; at tens of thousands of idle mobile connections that is the
largest thing we hold per socket after the socket itself. Here one PeriodicCallback
pings them all every `ping_interval`, and one timer `ping_timeout` later closes each
socket that has not answered, as Tornado would (close with "ping timed out", then drop the
link if the closing handshake does not come).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from tornado.ioloop import IOLoop, PeriodicCallback


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

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._timer = PeriodicCallback(self.ping_all, self.interval * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def ping_all(self) -> None:
        loop = IOLoop.current()
        now = loop.time()
        pinged = list(self.sockets)
        for sock in pinged:
            if not sock.ping_sent_at:  # an older unanswered ping keeps its time
                sock.ping_sent_at = now
            try:
                sock.ping()
            except Exception:  # closed meanwhile: its own close path cleans up
                continue
        if self.timeout > 0 and pinged:
            loop.call_later(self.timeout, self.close_silent, pinged, now)

    def close_silent(self, pinged: list[Pingable], round_time: float) -> None:
        """Close each socket still owing the pong for a ping sent by `round_time`."""
        for sock in pinged:
            if 0 < sock.ping_sent_at <= round_time and sock in self.sockets:
                sock.close(reason="ping timed out")
