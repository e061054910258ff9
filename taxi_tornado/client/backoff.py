"""How long to wait before dialling again: exponential backoff with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff(attempt: int, min_delay: float, max_delay: float,
            draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 for the first after an open
    socket): a uniform draw below a ceiling that doubles from `min_delay` up to
    `max_delay`. The jitter is full (from 0) so that the thousands of phones that leave
    one tunnel together, or that one restarted server dropped, do not dial together."""
    ceiling = min(max_delay, min_delay * 2.0 ** min(attempt, 30))
    return draw() * ceiling
