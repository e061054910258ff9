"""Prometheus series exported on /metrics (ARCHITECTURE.md, Operations).

Labelled children are looked up once per label value and cached, so that counting on the
per-frame path is one dictionary lookup and one increment.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("taxi_connections", "Open WebSocket connections.")
CONNECTIONS_OPENED = Counter("taxi_connections_opened", "WebSocket connections accepted.")
HANDSHAKES_REFUSED = Counter(
    "taxi_handshakes_refused", "WebSocket upgrades refused.", ["reason"]
)
FRAMES_IN = Counter("taxi_frames_in", "Frames received, by message type.", ["type"])
FRAMES_OUT = Counter("taxi_frames_out", "Frames sent, by message type.", ["type"])
ERRORS = Counter("taxi_errors", "Error frames sent, by code.", ["code"])
HANDLER_SECONDS = Histogram(
    "taxi_handler_seconds",
    "Time spent in a message handler.",
    ["type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
FANOUT_SIZE = Histogram(
    "taxi_fanout_size",
    "Local connections reached by one group send.",
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
def frames_in(message_type: str) -> Counter:
    return FRAMES_IN.labels(message_type)


@lru_cache(maxsize=1024)
def frames_out(message_type: str) -> Counter:
    return FRAMES_OUT.labels(message_type)


@lru_cache(maxsize=64)
def errors(code: str) -> Counter:
    return ERRORS.labels(code)


@lru_cache(maxsize=1024)
def handler_seconds(message_type: str) -> Histogram:
    return HANDLER_SECONDS.labels(message_type)


FRAMES_OUT_ERROR = frames_out("error")
TYPE_PREFIX = b'{"type":"'


def group_frames_out(payload: bytes) -> Counter:
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
