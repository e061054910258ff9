"""Sending to a group from any other Python process, like Channels' group_send."""

from __future__ import annotations

import asyncio
from typing import Any

from taxi_tornado.frames import encode
from taxi_tornado.hub.cluster_broker import ClusterBroker
from taxi_tornado.hub.cluster_url import is_cluster_url
from taxi_tornado.hub.history import HistoryLimits, without_position
from taxi_tornado.hub.redis_broker import RedisBroker, SendFailed

DEFAULT_LIMITS = HistoryLimits()


async def publish(
    url: str,
    group: str,
    message: Any,
    *,
    prefix: str = "taxi",
    history_size: int = DEFAULT_LIMITS.size,
    history_ttl: float = DEFAULT_LIMITS.ttl,
    history_bytes: int = DEFAULT_LIMITS.bytes,
) -> int:
    """Send `message` to `group` from any Python process, like Channels' group_send.

    `url`, `prefix` and `history_*` are the deployment's hub.url (redis://… or
    redis+cluster://…), hub.prefix
    and hub.history_size, hub.history_ttl and hub.history_bytes; every server process
    with members in `group` delivers `message` to them, and v2 members get it with its
    position in the group's history like any group send (a `pos` key of the message is
    replaced). One round trip on a connection of its own, closed before returning;
    raises redis' ConnectionError or TimeoutError when Redis cannot take it. Returns how
    many server processes had members in the group.
    """
    if url.startswith("memory://"):
        raise ValueError("publish() needs a shared hub (redis://…); memory:// is one process")
    message = without_position(message)
    limits = HistoryLimits(history_size, history_ttl, history_bytes)
    broker = (ClusterBroker if is_cluster_url(url) else RedisBroker)(url, prefix, limits)
    try:
        if limits.enabled:
            _, receivers = await broker.append(group, encode(message), None, 1)
            return receivers
        return await broker.post(group, encode(message), None, 1)
    except SendFailed as failure:
        raise failure.error from None
    finally:
        await broker.stop()


def publish_sync(url: str, group: str, message: Any, *, prefix: str = "taxi",
                 history_size: int = DEFAULT_LIMITS.size,
                 history_ttl: float = DEFAULT_LIMITS.ttl,
                 history_bytes: int = DEFAULT_LIMITS.bytes) -> int:
    """The blocking twin of publish(), for synchronous code such as a Django view.

    Runs its own event loop, so call it from a thread without a running loop.
    """
    return asyncio.run(publish(url, group, message, prefix=prefix,
                               history_size=history_size, history_ttl=history_ttl,
                               history_bytes=history_bytes))
