"""Every Redis key and channel name of a deployment, built in one place.

With one Redis (redis://) the names are those the hub always had (`taxi:meta:drivers`),
so upgrading a deployment keeps its history and every process of either version hears
the others. In a Redis Cluster (redis+cluster://) each name carries a hash tag, the part
in braces that alone chooses the slot: a group's channel, meta hash, stream and sizes
list all carry `{<group>}`, so the history script that numbers, appends and publishes
touches one slot on one shard, and groups spread over every shard. A user's request
keys and budget carry `{<user>}`-style tags of their own; the operators' samples share
one tag (they are read together). Dispatch's keys are tagged by what each change
touches: driver positions by region (a coarse H3 cell), a trip's dispatch by trip, a
driver's presence by driver; its few shared keys share one tag.

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

    # Dispatch (dispatch/redis_geo.py, cluster_geo.py, redis_offers.py, cluster_offers.py,
    # driving.py). With one Redis the names are those dispatch always had.

    def dispatch_shared(self, name: str) -> str:
        """A key every process reads whole (heartbeats, connected drivers, open dispatches,
        the regions in use, the driving notices' channel): in a cluster they share one
        tag, as they are small and touched a few times a second at most."""
        if self.tagged:
            return "{" + f"{self.prefix}:dispatch" + "}" + f":{name}"
        return f"{self.prefix}:dispatch:{name}"

    def dispatch_region(self, name: str, region: str) -> str:
        """A region's positions (`geo`, `seen`, `headings`): tagged by the region (an H3
        cell), so a report batch writes each region on its own shard and a search asks
        the few regions its circle covers."""
        return f"{self.prefix}:dispatch:{name}:{self._tag(region)}"

    def dispatch_driver(self, name: str, driver_id: str) -> str:
        """A driver's presence (`drv`) and offers held (`held`), tagged by the driver."""
        return f"{self.prefix}:dispatch:{name}:{self._tag(driver_id)}"

    def dispatch_trip(self, name: str, trip_id: str) -> str:
        """A trip's dispatch (`trip`, `offers`, `excluded`, `lease`), tagged by the trip:
        each change of it is one script on one shard (the shard of the trip's group)."""
        return f"{self.prefix}:dispatch:{name}:{self._tag(trip_id)}"

    def dispatch_node(self, node: str) -> str:
        """The drivers connected on one process, tagged by the process."""
        return f"{self.prefix}:dispatch:node:{self._tag(node)}"
