"""Prometheus series exported on /metrics (docs/architecture.md, Operations).

Labelled children are looked up once per label value and cached. The series counted on
every frame (frames in and out, handler time, fan-out size) are HotCounter and
HotHistogram: plain numbers on the counting side, turned into Prometheus families only
when /metrics is read. A prometheus_client child takes a lock per count, and those
locks were a tenth of the CPU of a `driver.location` frame.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class HotCount:
    """One label value's count (a HotCounter's child)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HotCounter(Collector):
    """A counter with one label for the per-frame path; read like a Counter by
    prometheus_client (the `_total` series, without `_created`)."""

    def __init__(self, name: str, documentation: str, label: str, *,
                 register: bool = True) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self._children: dict[str, HotCount] = {}
        if register:
            REGISTRY.register(self)

    def labels(self, value: str) -> HotCount:
        child = self._children.get(value)
        return child if child is not None else _new_child(self._children, str(value), HotCount)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, child in list(self._children.items()):
            family.add_metric([value], child.value)
        yield family


class HotSpread:
    """One label value's observations (a HotHistogram's child)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class HotHistogram(Collector):
    """A histogram with at most one label for the per-frame path; read like a Histogram
    by prometheus_client (buckets, `_count`, `_sum`)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float], *, register: bool = True) -> None:
        self.name, self.documentation = name, documentation
        self.label_names = list(labels)
        self.bounds = tuple(float(bound) for bound in buckets)
        self._children: dict[tuple[str, ...], HotSpread] = {}
        # Exported from the start, at zero, as prometheus_client does.
        self._unlabelled = None if self.label_names else self.labels()
        if register:
            REGISTRY.register(self)

    def labels(self, *values: str) -> HotSpread:
        child = self._children.get(values)
        if child is not None:
            return child
        return _new_child(self._children, tuple(map(str, values)),
                          lambda: HotSpread(self.bounds))

    def observe(self, amount: float) -> None:
        """For a histogram without labels."""
        assert self._unlabelled is not None, "a labelled histogram observes through labels()"
        self._unlabelled.observe(amount)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=self.label_names)
        names = [*map(floatToGoString, self.bounds), "+Inf"]
        for values, child in list(self._children.items()):
            cumulative, total = [], 0
            for name, count in zip(names, child.counts, strict=True):
                total += count
                cumulative.append((name, total))
            family.add_metric(list(values), cumulative, child.sum)
        yield family


Child = TypeVar("Child")


def _new_child(children: dict[Any, Child], key: Any, make: Callable[[], Child]) -> Child:
    """The child under `key` (label values as text: a plugin's reply may carry a type that
    is no string), made on first use."""
    child = children.get(key)
    if child is None:
        child = children[key] = make()
    return child


CONNECTIONS = Gauge("taxi_connections", "Open WebSocket connections.")
CONNECTIONS_OPENED = Counter("taxi_connections_opened", "WebSocket connections accepted.")
HANDSHAKES_REFUSED = Counter(
    "taxi_handshakes_refused", "WebSocket upgrades refused.", ["reason"]
)
FRAMES_IN = HotCounter("taxi_frames_in", "Frames received, by message type.", "type")
FRAMES_OUT = HotCounter("taxi_frames_out", "Frames sent to clients, by message type.", "type")
ERRORS = Counter("taxi_errors", "Error frames sent, by code.", ["code"])
HANDLER_SECONDS = HotHistogram(
    "taxi_handler_seconds",
    "Time spent in a message handler.",
    ["type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
FANOUT_SIZE = HotHistogram(
    "taxi_fanout_size",
    "Local connections reached by one group send.",
    labels=(),
    buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000),
)
HUB_PUBLISHED = Counter("taxi_hub_published", "Group sends made by this process.")
HUB_RECEIVED = Counter("taxi_hub_received", "Group sends received from the broker.")
HUB_PUBLISH_FAILED = Counter(
    "taxi_hub_publish_failed", "Group sends the broker could not take (delivered locally only)."
)
SLOW_CLIENT_CLOSES = Counter(
    "taxi_slow_client_closes", "Connections closed (1013) because they read too slowly."
)
RATE_LIMITED = Counter("taxi_rate_limited", "Frames dropped by the per-connection rate limit.")


@lru_cache(maxsize=1024)
def frames_in(message_type: str) -> HotCount:
    return FRAMES_IN.labels(message_type)


@lru_cache(maxsize=1024)
def frames_out(message_type: str) -> HotCount:
    return FRAMES_OUT.labels(message_type)


@lru_cache(maxsize=64)
def errors(code: str) -> Counter:
    return ERRORS.labels(code)


@lru_cache(maxsize=1024)
def handler_seconds(message_type: str) -> HotSpread:
    return HANDLER_SECONDS.labels(message_type)


FRAMES_OUT_ERROR = frames_out("error")
TYPE_PREFIX = b'{"type":"'


def group_frames_out(payload: bytes) -> HotCount:
    """The frames_out child for a group message, by its type, without decoding it.

    Messages built by the server put `type` first (orjson keeps key order), so the type
    is read from the payload's start; anything else (a hub API message with `type`
    further on, or an escaped type) is counted under "other".
    """
    if payload.startswith(TYPE_PREFIX):
        end = payload.find(b'"', len(TYPE_PREFIX))
        name = payload[len(TYPE_PREFIX):end]
        if end > 0 and b"\\" not in name:
            return frames_out(name.decode(errors="replace"))
    return frames_out("other")


PLUGIN_TASK_RUNS = Counter(
    "taxi_plugin_task_runs", "Runs of plugins' periodic tasks.", ["plugin", "task"]
)
PLUGIN_TASK_FAILURES = Counter(
    "taxi_plugin_task_failures", "Runs of plugins' periodic tasks that raised.",
    ["plugin", "task"],
)
PLUGIN_ROUTE_ERRORS = Counter(
    "taxi_plugin_route_errors", "Requests to plugins' routes whose handler raised (500).",
    ["plugin"],
)

# Dispatch (docs/dispatch.md). The driver gauges count every driver the location index
# knows: with the Redis hub each process reports the whole cluster (aggregate with max).
DRIVERS_CONNECTED = Gauge("taxi_dispatch_drivers_connected", "Drivers with an open socket.")
DRIVERS_AVAILABLE = Gauge("taxi_dispatch_drivers_available",
                          "Drivers connected, available, located and not on a trip.")
DRIVERS_LOCATED = Gauge("taxi_dispatch_drivers_located",
                        "Drivers whose position is fresh (dispatch.location_ttl).")
OFFERS_MADE = Counter("taxi_dispatch_offers_made", "Trip offers sent to drivers.")
OFFERS_TAKEN = Counter("taxi_dispatch_offers_taken", "Offered trips claimed by a holder.")
OFFERS_DECLINED = Counter("taxi_dispatch_offers_declined", "Offers declined by their holder.")
OFFERS_EXPIRED = Counter("taxi_dispatch_offers_expired", "Offers that ended unanswered.")
TRIPS_UNMATCHED = Counter("taxi_dispatch_trips_unmatched",
                          "Trips the server canceled after dispatch.max_wait.")
DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120)
FIRST_OFFER_SECONDS = Histogram("taxi_dispatch_first_offer_seconds",
                                "Time from a trip's request to its first offer.",
                                buckets=DISPATCH_BUCKETS)
CLAIM_SECONDS = Histogram("taxi_dispatch_claim_seconds",
                          "Time from a trip's request to its claim.", buckets=DISPATCH_BUCKETS)
