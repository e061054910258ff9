"""The Redis hub inside one test process: two Hubs sharing a real Redis stand for two
server processes. Each test uses its own hub.prefix, so tests sharing 127.0.0.1:6379
(with each other and with other suites) never see each other's channels."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from taxi_tornado.hub import (
    HistoryLimits,
    Hub,
    Position,
    RedisBroker,
    build_broker,
    parse_wire_message,
    publish,
    publish_sync,
    redis_url_problem,
    wire_message,
)
from taxi_tornado.settings import SettingsError, load_settings
from tests.conftest import free_port
from tests.redis_server import SHARED_REDIS, RedisServer

Deadline = 10.0


class Inbox:
    """A hub member that keeps what it is handed (the hub's view of a connection)."""

    def __init__(self, version: int = 1) -> None:
        self.id = uuid.uuid4().hex
        self.version = version
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()

    def deliver(self, frame: bytes) -> None:
        self.frames.put_nowait(frame)

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        self.frames.put_nowait(frame)

    async def next(self, timeout: float = 5) -> Any:
        return orjson.loads(frame_payload(await asyncio.wait_for(self.frames.get(), timeout)))

    def pending(self) -> list[Any]:
        items = []
        while not self.frames.empty():
            items.append(orjson.loads(frame_payload(self.frames.get_nowait())))
        return items


def frame_payload(frame: bytes) -> bytes:
    """The payload of an unmasked server text frame."""
    assert frame[0] == 0x81
    size = frame[1] & 0x7F
    return frame[{126: 4, 127: 10}.get(size, 2):]


def message(n: Any) -> dict[str, Any]:
    return {"type": "test.message", "data": n}


HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def hubs(prefix: str) -> AsyncIterator[HubFactory]:
    """Start Hubs on a Redis broker (the shared Redis unless `url` is given)."""
    started: list[Hub] = []

    async def _hub(url: str = SHARED_REDIS) -> Hub:
        hub = Hub(RedisBroker(url, prefix))
        await hub.start()
        started.append(hub)
        return hub

    yield _hub
    for hub in started:
        await hub.stop()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(SHARED_REDIS)
    yield client
    await client.aclose()


async def numsub(client: aioredis.Redis, channel: str) -> int:
    counts = await client.pubsub_numsub(channel)
    return int(counts[0][1])


async def eventually(check: Callable[[], Any], what: str, timeout: float = Deadline) -> None:
    """Poll `check` (sync or async) until it is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


async def commands_during(redis_client: aioredis.Redis, prefix: str,
                          action: Callable[[], Awaitable[Any]]) -> tuple[list[str], Any]:
    """The commands naming `prefix` that Redis ran while `action` ran (MONITOR), each as
    `lua:VERB` when a script ran it and `VERB` when a client sent it; and what `action`
    returned."""
    marker = f"{prefix}-end"
    commands = []
    async with redis_client.monitor() as monitor:
        result = await action()
        await redis_client.echo(marker)
        while True:
            seen = await monitor.next_command()
            if marker in seen["command"]:
                return commands, result
            if prefix in seen["command"]:
                verb = seen["command"].split(" ")[0].upper()
                commands.append(f"lua:{verb}" if seen["client_type"] == "lua" else verb)


# --- delivery across processes ------------------------------------------------------------

async def test_group_send_reaches_a_member_on_the_other_process(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    member = Inbox()
    await b.join(member, "drivers")
    # No wait: join returned only after Redis confirmed the subscription.
    await a.send("drivers", message(1))
    assert await member.next() == message(1)


async def test_subscription_is_confirmed_before_join_returns(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    for n in range(20):
        member = Inbox()
        await b.join(member, f"trip-{n}")
        await a.send(f"trip-{n}", message(n))
        assert await member.next() == message(n)


async def test_members_joining_while_the_subscription_is_pending_wait_for_it(
    hubs: HubFactory,
) -> None:
    a, b = await hubs(), await hubs()
    first, second = Inbox(), Inbox()
    await asyncio.gather(b.join(first, "drivers"), b.join(second, "drivers"))
    await a.send("drivers", message("both"))
    assert await first.next() == message("both")
    assert await second.next() == message("both")


async def test_origin_process_delivers_once(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    local, remote = Inbox(), Inbox()
    await a.join(local, "drivers")
    await b.join(remote, "drivers")
    await a.send("drivers", message("from a"))
    assert await remote.next() == message("from a")
    # B's send travels through Redis after A's own message did: once A hands B's message
    # to `local`, an echo of A's message would already have arrived before it.
    await b.send("drivers", message("from b"))
    assert await remote.next() == message("from b")
    assert await local.next() == message("from a")
    assert await local.next() == message("from b")
    assert local.pending() == []


async def test_exclude_is_honoured_on_the_other_process(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    sender, other = Inbox(), Inbox()
    await b.join(sender, "trip")
    await b.join(other, "trip")
    await a.send("trip", message("not for sender"), exclude=sender.id)
    await a.send("trip", message("barrier"))
    assert await other.next() == message("not for sender")
    assert await other.next() == message("barrier")
    assert await sender.next() == message("barrier")
    assert sender.pending() == []


async def test_min_version_is_honoured_on_the_other_process(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    old, new = Inbox(version=1), Inbox(version=2)
    await b.join(old, "drivers")
    await b.join(new, "drivers")
    await a.send("drivers", message("v2 only"), min_version=2)
    await a.send("drivers", message("barrier"))
    first, second = await new.next(), await new.next()
    assert first.pop("pos")["offset"] + 1 == second.pop("pos")["offset"]  # v2: positions
    assert (first, second) == (message("v2 only"), message("barrier"))
    assert await old.next() == message("barrier")
    assert old.pending() == []


async def test_sends_arrive_in_order_per_sender_and_group(hubs: HubFactory) -> None:
    a, b = await hubs(), await hubs()
    member = Inbox()
    await b.join(member, "trip")
    await asyncio.gather(*(a.send("trip", message(n)) for n in range(200)))
    assert [await member.next() for _ in range(200)] == [message(n) for n in range(200)]


async def test_received_sends_are_counted(hubs: HubFactory) -> None:
    from taxi_tornado import metrics

    a, b = await hubs(), await hubs()
    member = Inbox()
    await b.join(member, "drivers")
    before = metrics.HUB_RECEIVED._value.get()
    await a.send("drivers", message(1))
    await member.next()
    assert metrics.HUB_RECEIVED._value.get() == before + 1


# --- subscriptions follow membership ----------------------------------------------------

async def test_subscribes_with_the_first_member_and_unsubscribes_after_the_last(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    channel = f"{prefix}:group:drivers"
    one, two, three = Inbox(), Inbox(), Inbox()
    assert await numsub(redis_client, channel) == 0
    await a.join(one, "drivers")
    assert await numsub(redis_client, channel) == 1
    await a.join(two, "drivers")
    assert await numsub(redis_client, channel) == 1
    await b.join(three, "drivers")
    assert await numsub(redis_client, channel) == 2
    await a.leave(one, "drivers")
    assert await numsub(redis_client, channel) == 2
    await a.leave(two, "drivers")
    await eventually(lambda: _numsub_is(redis_client, channel, 1), "A unsubscribed")
    await b.leave_all(three, ["drivers"])
    await eventually(lambda: _numsub_is(redis_client, channel, 0), "B unsubscribed")
    channels = await redis_client.pubsub_channels(f"{prefix}:*")
    assert channels == []


async def _numsub_is(client: aioredis.Redis, channel: str, expected: int) -> bool:
    return await numsub(client, channel) == expected


async def test_interleaved_joins_and_leaves_end_in_the_state_of_the_last(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    for round_ in range(10):
        group = f"race-{round_}"
        first, second = Inbox(), Inbox()
        # Started together: subscribe, unsubscribe, subscribe reach Redis in that order.
        await asyncio.gather(a.join(first, group), a.leave(first, group), a.join(second, group))
        assert a.members(group) == 1
        assert await numsub(redis_client, f"{prefix}:group:{group}") == 1
        await b.send(group, message(round_))
        assert await second.next() == message(round_)
        await asyncio.gather(a.leave(second, group), a.join(first, group), a.leave(first, group))
        assert a.members(group) == 0
        await eventually(lambda g=group: _numsub_is(redis_client, f"{prefix}:group:{g}", 0),
                         f"{group} unsubscribed")


# --- one PUBLISH per group send ----------------------------------------------------------

async def test_one_publish_per_group_send_whatever_the_member_count(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b, c = await hubs(), await hubs(), await hubs()
    members = [Inbox() for _ in range(60)]
    for n, member in enumerate(members):
        await (a, b, c)[n % 3].join(member, "drivers")
    marker = f"{prefix}-end"
    async with redis_client.monitor() as monitor:
        await a.send("drivers", message("fan-out"))
        await b.send("drivers", message("fan-out again"))
        await redis_client.echo(marker)
        publishes = []
        while True:
            command = (await monitor.next_command())["command"]
            if marker in command:
                break
            if command.upper().startswith("PUBLISH") and prefix in command:
                publishes.append(command)
    assert len(publishes) == 2, publishes
    for member in members:
        assert {(await member.next())["data"], (await member.next())["data"]} == {
            "fan-out", "fan-out again"}


async def test_a_group_send_with_history_is_one_round_trip_to_redis(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    members = [Inbox(version=2) for _ in range(10)]
    for n, member in enumerate(members):
        await (a, b)[n % 2].join(member, "drivers")
    async def send() -> None:
        for n in range(5):
            await (a, b)[n % 2].send("drivers", message(n))

    commands, _ = await commands_during(redis_client, prefix, send)
    sent_by_us = [verb for verb in commands if not verb.startswith("lua:")]
    assert sent_by_us == ["EVALSHA"] * 5, sent_by_us  # one command, one reply, per send
    assert commands.count("lua:PUBLISH") == 5 and commands.count("lua:XADD") == 5
    for member in members:
        received = [await member.next() for _ in range(5)]
        assert [event["data"] for event in received] == list(range(5))
        offsets = [event["pos"]["offset"] for event in received]
        assert offsets == [1, 2, 3, 4, 5]  # numbered in Redis: the same on both processes


async def test_a_live_only_group_is_one_publish_a_send_and_keeps_nothing(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    """Hub.live_only: carried to every process without a position; Redis keeps
    no stream, counter nor meta of it, and a resume naming it cannot recover."""
    a, b = await hubs(), await hubs()
    for hub in (a, b):
        hub.live_only("admin")
    on_a, on_b = Inbox(version=2), Inbox(version=2)
    await a.join(on_a, "admin")
    await b.join(on_b, "admin")
    async def send() -> None:
        for n in range(5):
            await (a, b)[n % 2].send("admin", message(n))

    sent, _ = await commands_during(redis_client, prefix, send)
    assert sent == ["PUBLISH"] * 5, sent  # not the history script
    for member in (on_a, on_b):
        received = [await member.next() for _ in range(5)]
        assert all("pos" not in event for event in received), received
        numbers = [event["data"] for event in received]
        # In order per sender; a process's own sends reach its members at once.
        assert [n for n in numbers if n % 2 == 0] == [0, 2, 4]
        assert [n for n in numbers if n % 2] == [1, 3]
    assert await redis_client.keys(f"{prefix}*") == []
    assert await b.replay({"admin": Position(1, "any")}) == {"admin": None}
    await a.send("drivers", message(9))  # other groups are numbered as before
    assert len(await redis_client.keys(f"{prefix}*")) > 0


async def test_resumes_asked_together_are_one_read_and_each_gets_its_own_answer(
    hubs: HubFactory, redis_client: aioredis.Redis, prefix: str
) -> None:
    """A reconnect storm's resumes: those asked in one loop turn are one READ call (one
    EVALSHA), the same group at different positions included."""
    a, b = await hubs(), await hubs()
    member = Inbox(version=2)
    await a.join(member, "drivers")
    for n in range(5):
        await a.send("drivers", message(n))
    user = Inbox(version=2)
    await b.join(user, "user:1")
    await b.send("user:1", message("mine"))
    epoch = (await member.next())["pos"]["epoch"]
    user_epoch = (await user.next())["pos"]["epoch"]
    commands, (first, second, third) = await commands_during(
        redis_client, prefix, lambda: asyncio.gather(
            b.replay({"drivers": Position(3, epoch)}),
            b.replay({"drivers": Position(1, epoch), "user:1": Position(0, user_epoch)}),
            b.replay({"drivers": Position(1, "an epoch long gone")})))
    sent_by_us = [verb for verb in commands if not verb.startswith("lua:")]
    assert sent_by_us == ["EVALSHA"], sent_by_us
    assert [at.offset for at, _ in first["drivers"].events] == [4, 5]
    assert [at.offset for at, _ in second["drivers"].events] == [2, 3, 4, 5]
    assert [orjson.loads(payload) for _, payload in second["user:1"].events] == [
        message("mine")]
    assert third == {"drivers": None}


async def test_the_sending_process_delivers_in_offset_order_with_another_sender(
    hubs: HubFactory,
) -> None:
    a, b = await hubs(), await hubs()
    on_a, on_b = Inbox(version=2), Inbox(version=2)
    await a.join(on_a, "trip")
    await b.join(on_b, "trip")
    await asyncio.gather(*(hub.send("trip", message(n)) for n in range(100)
                           for hub in (a, b)))
    for member in (on_a, on_b):
        offsets = [(await member.next())["pos"]["offset"] for _ in range(200)]
        assert offsets == list(range(1, 201))


async def test_a_redis_that_forgot_the_script_still_takes_the_send(
    hubs: HubFactory, private_redis: RedisServer
) -> None:
    a, b = await hubs(private_redis.url), await hubs(private_redis.url)
    member = Inbox(version=2)
    await b.join(member, "drivers")
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    await a.send("drivers", message("after SCRIPT FLUSH"))  # NOSCRIPT, then EVAL
    received = await member.next()
    assert received["data"] == "after SCRIPT FLUSH" and received["pos"]["offset"] == 1


async def cancelled_mid_send(hub: Hub, after: int) -> bool:
    """Cancel a task that keeps sending to a group once `after` sends are done; whether
    the task ended cancelled (a lost cancellation still ends it, once this returns)."""
    sends, running = 0, True

    async def keep_sending() -> None:
        nonlocal sends
        while running:
            await hub.send("fleet", message(sends))
            sends += 1

    task = asyncio.ensure_future(keep_sending())
    await eventually(lambda: sends > after, "sends are under way")
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    running = False
    if not done:
        await task
    return task.cancelled()


@pytest.mark.parametrize("history_size", [100, 0])
async def test_a_task_cancelled_while_it_sends_to_a_redis_hub_stops(
    prefix: str, history_size: int,
) -> None:
    """A handler task cancelled mid-send (its socket closed, the server stopping) must
    end: on Python 3.11 the cancellation used to be lost in redis-py's writes."""
    hub = Hub(RedisBroker(SHARED_REDIS, prefix, HistoryLimits(history_size, 300)))
    await hub.start()
    await hub.join(Inbox(), "fleet")
    try:
        for attempt in range(20):
            assert await cancelled_mid_send(hub, attempt % 5), \
                f"attempt {attempt}: the task went on after cancel()"
    finally:
        await hub.stop()


# --- publishing from outside -------------------------------------------------------------

async def test_publish_from_another_process_reaches_every_hub(
    hubs: HubFactory, prefix: str
) -> None:
    a, b = await hubs(), await hubs()
    on_a, on_b = Inbox(), Inbox()
    await a.join(on_a, "user:42")
    await b.join(on_b, "user:42")
    receivers = await publish(SHARED_REDIS, "user:42", message("async"), prefix=prefix)
    assert receivers == 2
    assert await on_a.next() == message("async")
    assert await on_b.next() == message("async")
    await asyncio.to_thread(publish_sync, SHARED_REDIS, "user:42", message("sync"),
                            prefix=prefix)
    assert await on_a.next() == message("sync")
    assert await on_b.next() == message("sync")


async def test_publish_needs_a_shared_hub() -> None:
    with pytest.raises(ValueError, match="memory://"):
        await publish("memory://", "drivers", message(1))


async def test_publish_raises_when_redis_is_unreachable() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    with pytest.raises(RedisConnectionError):
        await publish(f"redis://127.0.0.1:{free_port()}/0", "drivers", message(1))


# --- the wire format and URLs ------------------------------------------------------------

def test_wire_message_round_trips() -> None:
    payload = orjson.dumps(message("line\nbreak ünïcode"))
    data = wire_message(b"node1", payload, "member7", 2)
    assert data.startswith(b"taxi1 node1 2 member7\n")
    assert parse_wire_message(data) == (b"node1", "member7", 2, payload)
    assert parse_wire_message(wire_message(b"", payload, None, 1)) == (b"-", None, 1, payload)
    assert parse_wire_message(payload) is None
    assert parse_wire_message(b"taxi1 a b c\n{}") is None


@pytest.mark.parametrize("url", [
    "redis://host:notaport", "redis://host:99999/0", "redis://", "redis://h:6379/db",
    "unix://", "redis://h:6379/0?socket_timeout=soon",
    "redis+cluster://", "redis+cluster://h:7000,h:notaport", "redis+cluster://h:7000/1",
    "redis+cluster://h:7000,:7001", "redis+cluster://h:7000?x=1",
])
def test_malformed_hub_url_is_one_settings_line(url: str, tmp_path: Path) -> None:
    assert redis_url_problem(url)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"TAXI_HUB_URL": url, "TAXI_DATA_DIR": str(tmp_path)},
                      create_secret=False)
    text = str(caught.value)
    assert text.startswith("hub.url: ") and "\n" not in text
    with pytest.raises(ValueError, match=r"^hub\.url: "):
        build_broker(url, "taxi")  # RedisBroker, or ClusterBroker for redis+cluster://


def test_good_hub_urls_pass() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://:pw@redis.internal/3", "rediss://h:6380",
                "unix:///run/redis.sock?db=1", "redis+cluster://10.0.0.5:7000",
                "redis+cluster://h1:7000,h2:7001,h3", "rediss+cluster://user:pw@h:7000/0",
                "redis+cluster://[::1]:7000"):
        assert redis_url_problem(url) is None, url


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:s3cret@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
    ("redis+cluster://u:s3cret@h:7000", "redis+cluster://u:***@h:7000"),
])
def test_describe_names_the_url_without_the_password(url: str, shown: str) -> None:
    broker = build_broker(url, "taxi")
    assert "s3cret" not in broker.describe()
    assert shown in broker.describe()
    assert "s3cret" not in RedisBroker("unix:///r.sock?password=s3cret", "t").describe()
    assert "s3cret" not in str(redis_url_problem("redis://:s3cret@h:bad/0"))


# --- faults ------------------------------------------------------------------------------

async def test_unreachable_redis_at_start_does_not_stop_the_hub(
    hubs: HubFactory, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path)
    a, b = await hubs(redis_server.url), await hubs(redis_server.url)
    assert not a.broker.ready
    local, remote = Inbox(), Inbox()
    await asyncio.wait_for(a.join(local, "drivers"), 3)
    await asyncio.wait_for(b.join(remote, "drivers"), 3)
    assert await asyncio.wait_for(a.send("drivers", message("local only")), 3) == 1
    assert await local.next() == message("local only")
    redis_server.start()
    try:
        await eventually(lambda: a.broker.ready and b.broker.ready, "both hubs connect")
        await a.send("drivers", message("across"))
        assert await remote.next() == message("across")
    finally:
        redis_server.kill()


async def test_lost_redis_is_logged_once_and_delivery_resumes_after_restart(
    hubs: HubFactory, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taxi_tornado.hub")
    a, b = await hubs(private_redis.url), await hubs(private_redis.url)
    local, remote = Inbox(), Inbox()
    await a.join(local, "drivers")
    await b.join(remote, "drivers")
    await a.send("drivers", message("before"))
    assert await remote.next() == message("before")
    assert await local.next() == message("before")

    private_redis.kill()
    await eventually(lambda: not a.broker.ready and not b.broker.ready, "both see the loss")
    assert await asyncio.wait_for(a.send("drivers", message("during")), 3) == 1
    assert await local.next() == message("during")

    private_redis.start()
    await eventually(lambda: a.broker.ready and b.broker.ready, "both reconnect")
    await a.send("drivers", message("after"))
    assert await remote.next() == message("after")
    assert await local.next() == message("after")
    assert remote.pending() == []  # "during" was dropped, not replayed: at most once
    lost = [r for r in caplog.records if "lost Redis" in r.getMessage()]
    restored = [r for r in caplog.records if "restored" in r.getMessage()]
    assert len(lost) == 2 and len(restored) == 2, [r.getMessage() for r in caplog.records]
