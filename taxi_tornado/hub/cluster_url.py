"""hub.url for a Redis Cluster, and the Redis client any part of the server builds from
hub.url (a plain client for one Redis, a cluster client for a cluster).

    redis+cluster://[user:password@]host:port[,host:port...]    (rediss+cluster:// for TLS)

The hosts are seeds: the client asks the first that answers for the cluster's shards and
discovers the rest, so listing two or three nodes is enough. A cluster has only database
0: a path other than `/` or `/0` is refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode

from taxi_tornado.deadline import leave_inline_step

# Connections one client keeps to one Redis, and how long a command waits for a free one.
POOL_SIZE = 64
POOL_WAIT = 10.0

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


@dataclass(frozen=True)
class ClusterURL:
    """A parsed cluster hub.url: the seed nodes and the options of every connection."""

    seeds: tuple[tuple[str, int], ...]
    options: dict[str, Any] = field(default_factory=dict)

    def client(self, **options: Any) -> RedisCluster:
        """A cluster client on the seeds (more seeds may be given in `extra_seeds`)."""
        extra: list[tuple[str, int]] = options.pop("extra_seeds", [])
        nodes = [ClusterNode(host, port) for host, port in (*self.seeds, *extra)]
        return LeavesInlineCluster(startup_nodes=nodes, **{**self.options, **options})


class LeavesInlineCluster(RedisCluster):
    """redis-py's cluster client times its connects and reads on the current task: a
    frame's handler still running inline moves into its own task first
    (taxi_tornado/deadline.py), as with WaitingPool. Scripts go through here too."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await leave_inline_step()
        return await super().execute_command(*args, **kwargs)


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def parse_cluster_url(url: str) -> ClusterURL:
    """The seeds and options of a cluster URL; ValueError saying what is wrong."""
    scheme, _, rest = url.partition("://")
    if "?" in rest or "#" in rest:
        raise ValueError("takes no query string (redis+cluster://host:port,host:port)")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0 (leave the path out)")
    userinfo, at, hosts = netloc.rpartition("@")
    options: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        options.update(username=user or None, password=password if colon else None)
    if scheme == "rediss+cluster":
        options["ssl"] = True
    seeds = tuple(_seed(part) for part in hosts.split(","))
    return ClusterURL(seeds, options)


def _seed(part: str) -> tuple[str, int]:
    host, colon, port = part.rpartition(":")
    if not colon:
        host, port = part, "6379"
    host = host.strip("[]")
    if not host:
        raise ValueError("needs host:port for every seed node, "
                         "e.g. redis+cluster://10.0.0.5:7000,10.0.0.6:7000")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"the port of each seed must be a number from 1 to 65535 "
                         f"({part!r})")
    return host, int(port)


def redis_client(url: str, **options: Any) -> Redis | RedisCluster:
    """A client for the hub's Redis, one server or a cluster, as hub.url says. In a
    cluster, commands whose keys share a hash tag (hub/keys.py) go to one shard."""
    if is_cluster_url(url):
        return parse_cluster_url(url).client(**options)
    return Redis(connection_pool=waiting_pool(url, **options))


def waiting_pool(url: str, **options: Any) -> BlockingConnectionPool:
    """A pool of at most POOL_SIZE connections to one Redis, where a command waits up to
    POOL_WAIT seconds for a free one. redis-py's default pool raises "Too many
    connections" at once past its limit: a storm of reconnecting drivers then failed
    their handshakes with a 500 instead of waiting a millisecond."""
    pool: BlockingConnectionPool = WaitingPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options)
    return pool


class WaitingPool(BlockingConnectionPool):
    """The wait for a connection is a timeout on the current task: a frame's handler
    still running inline moves into its own task first (taxi_tornado/deadline.py)."""

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        await leave_inline_step()
        get: Callable[..., Awaitable[Any]] = super().get_connection  # untyped in redis-py
        return await get(*args, **options)
