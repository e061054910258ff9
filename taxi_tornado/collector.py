"""The garbage collector's settings for a long-lived server with thousands of sockets.

CPython's collector runs a young collection every 700 net allocations of container
objects, and every collection scans every young object still alive. Tornado keeps a
handful of such objects per socket for each read it waits on (two coroutines, a Future,
the loop's handle), made anew for every frame and alive until the next one, a second
later for a driver reporting its position. With 6,000 drivers that is some 60,000 objects
scanned 2-3 times a second (15-30 ms each time) and promoted to the old generation, which
then grows by a quarter every few seconds and triggers a full collection: every object
of every socket, 500 ms at 6,600 sockets (bench/README.md, location ingest). So:

- young collections wait for YOUNG_THRESHOLD net allocations: a few a minute under that
  load instead of a few a second, and the old generation is rarely topped up;
- what exists once the server has started (modules, classes, settings, plugins: never
  garbage) is frozen, so that no full collection scans it again.

This rests on frames and sockets leaving no cycles: what a frame allocates, and a
socket once it has ended, is freed by reference counting at once (tests/test_collector.py
checks both), not by a collection that now comes late. Other cycles are still collected,
young ones within YOUNG_THRESHOLD allocations, old ones at the next full collection. A
start-up object that dies in a cycle later (a first Redis connection replaced after a
reconnect, say) is never collected: a bounded cost, paid once.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Collect young objects less often; the older generations keep CPython's ratios."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def freeze_startup() -> int:
    """Collect what start-up left behind, then exempt the rest from every collection;
    returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
