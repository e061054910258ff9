"""Every Redis key and channel name of a deployment, built in one place.

With one Redis (redis://) the names are those the hub always had (`taxi:meta:drivers`),
so upgrading a deployment keeps its history and every process of either version hears
the others. In a Redis Cluster (redis+cluster://) each name carries a hash tag, the part
in braces that alone chooses the slot: a group's channel, meta hash, stream and sizes
list all carry `{<group>}`, so the history script that numbers, appends and publishes
touches one slot on one shard, and groups spread over every shard. A user's request
keys and budget carry `{<user>}`-style tags of their own; the operators' samples share
one tag (they are read together); dispatch's keys share one tag too, until dispatch is
sharded by region.

Whatever a tag holds, every name of one group begins alike up to its closing brace, so
they share a slot even when the group's name holds braces itself.
"""

from __future__ import annotations


class HubKeys:
    """The names under one hub.prefix; `tagged` in a Redis Cluster."""

    def __init__(self, prefix: str, tagged: bool = False) -> None:
        self.prefix = prefix
        self.tagged = tagged
        self._channel_head = f"{prefix}:group:" + ("{" if tagged else "")
        self._channel_tail = 1 if tagged else 0

    def _tag(self, name: str) -> str:
        return "{" + name + "}" if self.tagged else name

    # A group: its channel and its history (hub/redis_history.py)

    def channel(self, group: str) -> str:
        return self._channel_head + group + ("}" if self.tagged else "")

    def group_of(self, channel: bytes) -> str:
        """The group whose channel this is (the inverse of channel())."""
        name = channel.decode()
        return name[len(self._channel_head):len(name) - self._channel_tail]

    def meta(self, group: str) -> str:
        return f"{self.prefix}:meta:{self._tag(group)}"

    def stream(self, group: str) -> str:
        return f"{self.prefix}:stream:{self._tag(group)}"

    def sizes(self, group: str) -> str:
        return f"{self.prefix}:sizes:{self._tag(group)}"

    # Per user: budgets (hub/budget.py) and idempotency keys (idempotency.py)

    def budget(self, key: str) -> str:
        """A budget's key; `key` names the action and the user (trip_requests:<id>)."""
        return f"{self.prefix}:budget:{self._tag(key)}"

    def request_key(self, user_id: str, key: str) -> str:
        return f"{self.prefix}:keys:{self._tag(user_id)}:{key}"

    # The operators' samples (monitor.py): read together, so on one slot

    def admin_nodes(self) -> str:
        return f"{self._admin()}:nodes"

    def admin_node(self, node_id: str) -> str:
        return f"{self._admin()}:node:{node_id}"

    def _admin(self) -> str:
        return "{" + f"{self.prefix}:admin" + "}" if self.tagged else f"{self.prefix}:admin"

    # Dispatch (dispatch/redis_geo.py, redis_offers.py, driving.py)

    def dispatch_prefix(self) -> str:
        """The prefix dispatch builds its keys under (`<it>:dispatch:geo`...): in a cluster
        one tag for all of them, since its scripts read several drivers' and trips' keys
        together."""
        return self._tag(self.prefix)
