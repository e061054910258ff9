"""Budgets of actions per minute, shared by every process of a deployment (a rider's trip
requests: limits.trip_requests).

A budget of `per_minute` allows a burst of as many and refills evenly. It is kept as
the time its spending catches up with (GCRA: one number per key, no timer): each action
moves that time on by a minute / `per_minute`, and is refused while it would lie more
than a minute ahead. The in-process broker keeps the numbers here; the Redis broker keeps
them in Redis (SPEND, one script call), so that a user's sockets on several processes
spend from one budget.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW = 60.0  # seconds: a budget is so much per minute, with a burst of as many

# KEYS: the budget. ARGV: the interval between two actions in ms, the window in ms.
# Returns 0 when the action was spent, else the ms until it could be (under 1 ms counts as
# nothing: the interval is rounded to microseconds). Times are written
# with %.3f: a Lua number turned to a string past 14 digits would read `1.7e+12`.
SPEND = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
local due = tonumber(redis.call('GET', KEYS[1]) or '0')
if due < ms then due = ms end
local next_due = due + tonumber(ARGV[1])
local wait = next_due - ms - tonumber(ARGV[2])
if wait >= 1 then return math.ceil(wait) end
redis.call('SET', KEYS[1], string.format('%.3f', next_due), 'PX', math.ceil(next_due - ms))
return 0
"""


class MemoryBudgets:
    """Every budget of this process, in bounded memory without a timer.

    A key last used a window ago is caught up (as good as never used), so each spend
    first forgets those, from the old end of a dict in order of last use. `clock`
    (seconds, monotonic) is there for tests that let a minute pass at once.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key -> (the time its spending catches up with, its last use), oldest use first.
        self._due: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._due)

    def spend(self, key: str, per_minute: int) -> float:
        """Spend one action of `key`: 0.0 when allowed, else the seconds to wait."""
        now = self._clock()
        self._forget(now)
        due, _ = self._due.pop(key, (now, now))
        due = max(due, now)
        next_due = due + WINDOW / per_minute
        wait = next_due - now - WINDOW
        if wait > 1e-6:  # a burst of exactly per_minute, whatever the float rounding
            self._due[key] = (due, now)
            return wait
        self._due[key] = (next_due, now)
        return 0.0

    def _forget(self, now: float) -> None:
        while self._due:
            key, (_, used) = next(iter(self._due.items()))
            if used > now - WINDOW:
                return
            del self._due[key]


def interval_ms(per_minute: int) -> str:
    """SPEND's first argument."""
    return f"{WINDOW * 1000 / per_minute:.3f}"


def window_ms() -> str:
    return str(math.ceil(WINDOW * 1000))
