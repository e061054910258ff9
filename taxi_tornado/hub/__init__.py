"""The hub: groups and local delivery, the brokers that relay between processes (in
process, Redis), and the history every group send is numbered in.

    groups.py         Hub and Member: groups of this process, frames built once per send
    brokers.py        what a broker is; the in-process broker
    redis_broker.py   the Redis broker (pub/sub, one round trip per send)
    redis_link.py     its subscriber link: the subscriptions, reconnects with backoff
    redis_publisher.py  its publishing connection: sends in order, bounded, at most once
    cluster_broker.py the cluster broker (Redis Cluster, sharded pub/sub, a link per shard)
    cluster_url.py    redis+cluster:// URLs, and the Redis client built from hub.url
    keys.py           every Redis key and channel name, with hash tags in a cluster
    history.py        positions, the rule of a replay, the in-process ring buffers
    redis_history.py  the history in Redis: capped streams and the append script
    wire.py           the format of a send on a Redis channel
    publish.py        publish() for other Python processes
"""

from __future__ import annotations

from taxi_tornado.hub.brokers import Broker, MemoryBroker, Receiver
from taxi_tornado.hub.cluster_broker import ClusterBroker
from taxi_tornado.hub.cluster_url import is_cluster_url, redis_client
from taxi_tornado.hub.groups import Hub, Member
from taxi_tornado.hub.history import (
    META_TTL,
    HistoryLimits,
    MemoryHistory,
    Position,
    Replay,
    with_position,
)
from taxi_tornado.hub.keys import HubKeys
from taxi_tornado.hub.publish import publish, publish_sync
from taxi_tornado.hub.redis_broker import RedisBroker, SendFailed, redis_url_problem
from taxi_tornado.hub.wire import WireMessage, parse_wire_message, read_wire, wire_message

__all__ = [
    "META_TTL",
    "Broker",
    "ClusterBroker",
    "HistoryLimits",
    "Hub",
    "HubKeys",
    "Member",
    "MemoryBroker",
    "MemoryHistory",
    "Position",
    "Receiver",
    "RedisBroker",
    "Replay",
    "SendFailed",
    "WireMessage",
    "build_broker",
    "hub_keys",
    "is_cluster_url",
    "parse_wire_message",
    "publish",
    "publish_sync",
    "read_wire",
    "redis_client",
    "redis_url_problem",
    "wire_message",
    "with_position",
]


def build_broker(url: str, prefix: str, limits: HistoryLimits | None = None) -> Broker:
    """The broker named by hub.url, keeping `limits` of history per group."""
    if url.startswith("memory://"):
        return MemoryBroker(limits)
    if is_cluster_url(url):
        return ClusterBroker(url, prefix, limits)
    return RedisBroker(url, prefix, limits)


def hub_keys(url: str, prefix: str) -> HubKeys:
    """The key names of the hub at `url`: hash-tagged in a Redis Cluster."""
    return HubKeys(prefix, tagged=is_cluster_url(url))
