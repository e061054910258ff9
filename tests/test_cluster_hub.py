"""The cluster hub on a real Redis Cluster (tests/redis_cluster.py: three masters, one
replica each): the Redis hub's contract, groups spread over every shard, no cross-slot
command anywhere, and a master killed mid-run.

The contract tests are the Redis hub's own (tests/test_redis_hub.py, tests/test_cluster.py),
collected here a second time with the `hubs` and `hub_env` fixtures pointing at the
cluster. The test that kills a master runs last and leaves the cluster whole again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from taxi_tornado.hub import ClusterBroker, Hub, HubKeys, Position, publish
from taxi_tornado.idempotency import RedisKeys
from tests.redis_cluster import RedisCluster

# The Redis hub's contract, run here against the cluster (see the module's docstring).
from tests.test_cluster import (  # noqa: F401
    API_KEY,
    test_trip_lifecycle_with_rider_and_drivers_on_different_processes,
)
from tests.test_redis_hub import (  # noqa: F401
    HubFactory,
    Inbox,
    eventually,
    message,
    test_exclude_is_honoured_on_the_other_process,
    test_members_joining_while_the_subscription_is_pending_wait_for_it,
    test_min_version_is_honoured_on_the_other_process,
    test_origin_process_delivers_once,
    test_received_sends_are_counted,
    test_sends_arrive_in_order_per_sender_and_group,
    test_subscription_is_confirmed_before_join_returns,
    test_the_sending_process_delivers_in_offset_order_with_another_sender,
)

GROUPS = [f"trip-{n}" for n in range(24)]


@pytest.fixture
def prefix() -> str:
    return f"cl-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def hubs(prefix: str, redis_cluster: RedisCluster) -> AsyncIterator[HubFactory]:
    """Start Hubs on the cluster broker (the Redis hub's fixture, on the cluster)."""
    started: list[Hub] = []

    async def _hub(url: str = redis_cluster.url) -> Hub:
        hub = Hub(ClusterBroker(url, prefix))
        await hub.start()
        assert hub.broker.ready
        started.append(hub)
        return hub

    yield _hub
    for hub in started:
        await hub.stop()


@pytest.fixture
def hub_env(prefix: str, redis_cluster: RedisCluster) -> dict[str, str]:
    return {"TAXI_HUB_URL": redis_cluster.url, "TAXI_HUB_PREFIX": prefix,
            "TAXI_HUB_API_KEY": API_KEY}


async def joined(hub: Hub, groups: list[str]) -> dict[str, Inbox]:
    members = {group: Inbox(version=2) for group in groups}
    for group, member in members.items():
        await hub.join(member, group)
    return members


def refused_commands(cluster: RedisCluster) -> dict[str, int]:
    """Per node, the commands Redis refused for their slots (CROSSSLOT, MOVED, ASK...:
    rejected calls) and the scripts that failed (one touching a key of another slot),
    short of NOSCRIPT (a script run for the first time on a node). CLIENT SETINFO is
    left out: Redis 7.0 does not know it, and redis-py tries it on every connection."""
    refused = {}
    for node in cluster.nodes:
        errors = node.info("INFO", "errorstats")
        count = -int(errors.get("errorstat_NOSCRIPT", "count=0").split("=")[1])
        for command, stats in node.info("INFO", "commandstats").items():
            fields = dict(field.split("=") for field in stats.split(","))
            if command != "cmdstat_client|setinfo":
                count += int(fields.get("rejected_calls", 0))
            if command in ("cmdstat_eval", "cmdstat_evalsha"):
                count += int(fields.get("failed_calls", 0))
        refused[node.address] = count
    return refused


# --- spread over the shards, one slot per command ---------------------------------------

async def test_groups_keys_and_subscriptions_land_on_every_master(
    hubs: HubFactory, redis_cluster: RedisCluster, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    members = await joined(b, GROUPS)
    for n, group in enumerate(GROUPS):
        await a.send(group, message(n))
    for n, group in enumerate(GROUPS):
        assert (await members[group].next())["data"] == n
    keys = HubKeys(prefix, tagged=True)
    for master in redis_cluster.masters():
        stored = master.cli("--scan", "--pattern", f"{prefix}:stream:*").split()
        channels = master.cli("PUBSUB", "SHARDCHANNELS", f"{prefix}:*").split()
        assert stored, f"no group's history on {master.address}"
        assert channels, f"no group's subscription on {master.address}"
        for channel in channels:  # each on the master that owns its slot
            assert redis_cluster.node_for(channel) is master
            assert keys.stream(keys.group_of(channel.encode())) in stored


async def test_no_command_is_refused_for_crossing_slots(
    hubs: HubFactory, redis_cluster: RedisCluster, prefix: str
) -> None:
    """Sends, ends, resumes over groups on several shards, budgets and request keys: no
    node answers a single error (CROSSSLOT, a script's non-local key, MOVED)."""
    before = refused_commands(redis_cluster)
    a, b = await hubs(), await hubs()
    members = await joined(b, GROUPS[:8])
    positions = {}
    for group in GROUPS[:8]:
        await a.send(group, message(group))
        positions[group] = Position(0, "")
    for group, member in members.items():
        received = await member.next()
        positions[group] = Position(received["pos"]["offset"] - 1, received["pos"]["epoch"])
    replays = await a.broker.since(positions)
    assert all(replay is not None and len(replay.events) == 1 for replay in replays.values())
    for group in GROUPS[:8]:
        await a.end(group)
    assert await a.spend(f"trip_requests:{uuid.uuid4().hex}", 10) == 0.0
    await publish(redis_cluster.url, GROUPS[0], message("outside"), prefix=prefix)
    assert (await members[GROUPS[0]].next())["data"] == "outside"
    assert refused_commands(redis_cluster) == before


async def test_a_budget_is_shared_by_every_process(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    key = f"trip_requests:{uuid.uuid4().hex}"
    assert [await hub.spend(key, 2) for hub in (a, b)] == [0.0, 0.0]
    assert await a.spend(key, 2) > 0  # the third of two per minute, on either process


async def test_request_keys_with_the_cluster_client(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    from taxi_tornado.hub import redis_client

    client = redis_client(redis_cluster.url)
    keys = RedisKeys(client, HubKeys(prefix, tagged=True))
    try:
        user = uuid.uuid4().hex
        assert await keys.claim_key(user, "k1", "f" * 64, 60) is None
        found = await keys.claim_key(user, "k1", "f" * 64, 60)
        assert found is not None and found.answer is None
        await keys.remember_key(user, "k1", "f" * 64, b'{"type":"ok"}', 60)
        found = await keys.claim_key(user, "k1", "f" * 64, 60)
        assert found is not None and found.answer == b'{"type":"ok"}'
        await keys.release_key(user, "k1")
        assert await keys.claim_key(user, "k1", "f" * 64, 60) is None
    finally:
        await client.aclose()


# --- a master dies (last: it changes the cluster, and restores it) ------------------------

async def test_a_killed_master_stops_only_its_groups_and_they_resume_on_the_replica(
    hubs: HubFactory, redis_cluster: RedisCluster, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    keys = HubKeys(prefix, tagged=True)
    members = await joined(b, GROUPS)
    for n, group in enumerate(GROUPS):
        await a.send(group, message(n))
    last = {}
    for group, member in members.items():
        pos = (await member.next())["pos"]
        last[group] = Position(pos["offset"], pos["epoch"])
    victim = redis_cluster.node_for(keys.channel(GROUPS[0]))
    doomed = [g for g in GROUPS if redis_cluster.node_for(keys.channel(g)) is victim]
    spared = [g for g in GROUPS if g not in doomed]
    assert doomed and spared

    victim.kill()
    try:
        await eventually(lambda: not a.broker.ready and not b.broker.ready,
                         "both processes see the shard down")
        assert victim.address in a.broker.problem()
        # The other shards go on, before and after the replica takes over.
        for group in spared:
            await a.send(group, message("meanwhile"))
            received = await members[group].next()
            assert received["data"] == "meanwhile"
            last[group] = Position(received["pos"]["offset"], received["pos"]["epoch"])
        # Sends to the dead shard's groups reach this process's members only.
        await a.send(doomed[0], message("lost"))

        await eventually(lambda: a.broker.ready and b.broker.ready,
                         "the replica took over and both processes re-subscribed",
                         timeout=20)
        for group in doomed:
            await a.send(group, message("after"))
        replays = await b.broker.since({group: last[group] for group in GROUPS})
        for group in doomed:
            received = await members[group].next()
            assert received["data"] == "after", group
            assert received["pos"]["epoch"] == last[group].epoch  # the replica kept it
            replay = replays[group]
            assert replay is not None and [p.offset for p, _ in replay.events] == [
                last[group].offset + 1], group
        for group in spared:
            assert replays[group] is not None and replays[group].events == []  # type: ignore[union-attr]
        for member in members.values():
            assert member.pending() == []
    finally:
        await asyncio.to_thread(redis_cluster.restore, victim)
