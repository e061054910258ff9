"""Sessions that survive a phone, in one server process (PROTOCOL.md, v2): the bearer
subprotocol, positions, resume from the memory hub's and Redis's history, refresh and
expiry of a live socket. The same stories across two processes are in
test_sessions_cluster.py."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect
from websockets.exceptions import InvalidStatus

from taxi_tornado.auth import TokenAuthority
from taxi_tornado.client import TaxiClient
from taxi_tornado.hub import HistoryLimits, Hub, MemoryBroker, MemoryHistory, Position, Replay
from taxi_tornado.settings import Settings, SettingsError, load_settings
from tests.conftest import Client, RunningServer, make_settings
from tests.link_proxy import LinkProxy, until
from tests.redis_server import SHARED_REDIS

Start = Callable[[Settings], Awaitable[RunningServer]]


@pytest.fixture(params=["memory", "redis"])
def hub_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The server's settings with the memory hub, then with the Redis hub."""
    if request.param == "memory":
        return make_settings(tmp_path)
    return make_settings(tmp_path, hub={"url": SHARED_REDIS,
                                        "prefix": f"test-{uuid.uuid4().hex[:12]}"})


@pytest.fixture
async def any_hub(hub_settings: Settings, start: Start) -> RunningServer:
    return await start(hub_settings)


async def bearer_socket(server: RunningServer, token: str, *, offer_v2: bool = True,
                        query: str = "", headers: dict[str, str] | None = None) -> Any:
    protocols = ["taxi.v2", f"bearer.{token}"] if offer_v2 else [f"bearer.{token}"]
    return await websockets.connect(
        f"{server.ws_url}{query}", subprotocols=protocols,  # type: ignore[list-item]
        additional_headers=headers, proxy=None, ping_interval=None)


async def refusal(server: RunningServer, token: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as caught:
        await bearer_socket(server, token, **kwargs)
    return caught.value.response.status_code


def without_pos(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    event = dict(event)
    return event, event.pop("pos")


async def drivers_event(server: RunningServer, n: int) -> None:
    await server.hub.send("drivers", {"type": "fleet.notice", "data": n})


# --- the token out of the URL -------------------------------------------------------------

async def test_bearer_subprotocol_opens_a_v2_socket_and_is_never_echoed(
    server: RunningServer,
) -> None:
    _, token = await server.user("driver", "driver")
    ws = await bearer_socket(server, token)
    assert ws.subprotocol == "taxi.v2"
    assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["taxi.v2"]
    assert token not in str(ws.response.headers)
    await drivers_event(server, 1)
    event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert event["pos"]["group"] == "drivers"  # a v2 connection
    await ws.close()


async def test_bearer_without_taxi_v2_is_a_400_that_does_not_echo_the_token(
    server: RunningServer,
) -> None:
    _, token = await server.user("rider")
    with pytest.raises(InvalidStatus) as caught:
        await bearer_socket(server, token, offer_v2=False)
    assert caught.value.response.status_code == 400
    assert token not in caught.value.response.body.decode()


async def test_header_wins_over_subprotocol_which_wins_over_query(
    server: RunningServer,
) -> None:
    _, good = await server.user("rider")
    bad = good[:-4] + "AAAA"
    header = {"Authorization": f"Bearer {good}"}
    ws = await bearer_socket(server, bad, headers=header)  # header good, subprotocol bad
    await ws.close()
    assert await refusal(server, good, headers={"Authorization": f"Bearer {bad}"}) == 401
    ws = await bearer_socket(server, good, query=f"?token={bad}")  # subprotocol wins
    await ws.close()
    assert await refusal(server, bad, query=f"?token={good}") == 401  # no fall-back
    assert await refusal(server, "") == 401  # an empty bearer. entry is a missing token


async def test_token_is_absent_from_every_log_line(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, token = await server.user("rider")
    ws = await bearer_socket(server, token)
    await ws.send(orjson.dumps({"type": "auth.refresh", "data": {"token": token}}).decode())
    assert orjson.loads(await ws.recv())["type"] == "auth.refreshed"
    await ws.close()
    bad = token[:-4] + "AAAA"
    assert await refusal(server, bad) == 401
    assert await refusal(server, token, offer_v2=False) == 400
    await asyncio.sleep(0.1)  # the close log line
    # Every line of the server's loggers (the test's websockets client logs its own
    # request headers at DEBUG: that is the client's log, not ours).
    lines = [f"{record.name} {record.getMessage()} {record.exc_text or ''}"
             for record in caplog.records if not record.name.startswith("websockets")]
    assert any("socket open" in line for line in lines), lines
    assert any("access 401 GET" in line for line in lines), lines
    for secret in (token, bad, token.split(".")[2]):
        assert not any(secret in line for line in lines)


# --- positions -------------------------------------------------------------------------

async def test_v2_events_carry_gapless_positions_v1_events_and_replies_none(
    any_hub: RunningServer,
) -> None:
    _, token = await any_hub.user("driver", "driver")
    v1, v2 = await any_hub.connect(token), await any_hub.connect(token, v2=True)
    for n in range(5):
        await drivers_event(any_hub, n)
    offsets = []
    for n in range(5):
        event, pos = without_pos(await v2.receive())
        assert event == {"type": "fleet.notice", "data": n}
        assert pos["group"] == "drivers" and pos["epoch"]
        offsets.append(pos["offset"])
        assert await v1.receive() == {"type": "fleet.notice", "data": n}
    assert offsets == list(range(offsets[0], offsets[0] + 5))
    reply = await v2.request({"type": "echo.message", "data": 1, "id": 9})
    assert reply == {"type": "echo.message", "data": 1, "id": 9}


async def test_hub_publish_api_gets_the_hubs_position_not_the_publishers(
    tmp_path: Path, start: Start
) -> None:
    server = await start(make_settings(tmp_path, hub={"api_key": "k"}))
    _, token = await server.user("driver", "driver")
    v1, v2 = await server.connect(token), await server.connect(token, v2=True)
    fake = {"group": "drivers", "offset": 999, "epoch": "mine"}
    status, _, _ = await server.fetch("/api/hub/publish/", "POST", {
        "group": "drivers", "message": {"type": "fleet.notice", "pos": fake}},
        headers={"Authorization": "Apikey k"})
    assert status == 202
    event, pos = without_pos(await v2.receive())
    assert event == {"type": "fleet.notice"} and pos["offset"] == 1 and pos["epoch"] != "mine"
    assert await v1.receive() == {"type": "fleet.notice"}  # v1 frames never carry pos


class Inbox:
    def __init__(self, version: int) -> None:
        self.id = uuid.uuid4().hex
        self.version = version
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)

    def deliver_event(self, frame: bytes, group: str, position: Position) -> None:
        self.frames.append(frame)


async def test_a_group_send_builds_one_frame_for_v2_members_and_one_for_v1() -> None:
    hub = Hub(MemoryBroker())
    members = [Inbox(2), Inbox(2), Inbox(1), Inbox(1)]
    for member in members:
        await hub.join(member, "drivers")
    await hub.send("drivers", {"type": "fleet.notice"})
    new_a, new_b, old_a, old_b = (member.frames[0] for member in members)
    assert new_a is new_b and old_a is old_b  # the same bytes object: encoded once
    assert b'"pos":{"group":"drivers","offset":1,' in new_a and b"pos" not in old_a


# --- resume ----------------------------------------------------------------------------

@pytest.fixture
async def link(any_hub: RunningServer) -> AsyncIterator[LinkProxy]:
    """The phone's link to the server: a TCP proxy the test cuts."""
    proxy = LinkProxy(any_hub.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_rider_cut_mid_trip_gets_the_missed_events_in_order_then_live_ones(
    any_hub: RunningServer, link: LinkProxy
) -> None:
    user, _ = await any_hub.user("rider")
    rider = TaxiClient(link.url, lambda: any_hub.tokens.issue_access(user, any_hub.url),
                       reconnect=(0.05, 0.2))
    events: list[dict[str, Any]] = []
    resumed: list[Any] = []
    rider.on("trip.updated", lambda _, frame: events.append(frame))
    rider.on("driver.location", lambda _, frame: events.append(frame))
    rider.on("resumed", resumed.append)
    await rider.connect()
    _, driver_token = await any_hub.user("driver", "driver")
    driver = await any_hub.connect(driver_token, v2=True)
    trip = await rider.request("trip.request", {"pick_up_address": "A",
                                                "drop_off_address": "B"})
    await driver.receive()
    await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                          "status": "STARTED"}})
    await until(lambda: events, "the STARTED event")
    assert events[0]["data"]["status"] == "STARTED" and events[0]["pos"]["offset"] == 1

    link.offline()  # a tunnel: no close frame
    await until(lambda: rider.state != "connected", "the client to notice the drop")
    await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                          "status": "IN_PROGRESS"}})
    await driver.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    await driver.request({"type": "echo.message"})  # the location went out before this
    link.online()

    await until(lambda: resumed, "session.resumed")
    assert resumed == [{"groups": {trip["id"]: {"recovered": True, "missed": 2}}}]
    await until(lambda: len(events) == 3, "the missed events")
    assert [event["pos"]["offset"] for event in events[1:]] == [2, 3]
    assert events[1]["data"]["status"] == "IN_PROGRESS"
    assert events[2]["type"] == "driver.location"
    await driver.request({"type": "trip.update", "data": {"id": trip["id"],
                                                          "status": "COMPLETED"}})
    await until(lambda: len(events) == 4, "the live COMPLETED")
    assert events[3]["data"]["status"] == "COMPLETED" and events[3]["pos"]["offset"] == 4
    await asyncio.sleep(0.2)
    assert len(events) == 4, "an event came twice"
    await rider.close()


async def test_events_received_live_before_the_resume_frame_are_not_sent_again(
    any_hub: RunningServer,
) -> None:
    _, token = await any_hub.user("driver", "driver")
    first = await any_hub.connect(token, v2=True)
    await drivers_event(any_hub, 1)
    pos = (await first.receive())["pos"]
    first.close()
    await drivers_event(any_hub, 2)
    await drivers_event(any_hub, 3)
    second = await any_hub.connect(token, v2=True)
    await drivers_event(any_hub, 4)
    assert (await second.receive())["data"] == 4  # live, before the resume
    await second.send({"type": "session.resume", "id": 1, "data": {"positions": {
        "drivers": {"offset": pos["offset"], "epoch": pos["epoch"]}}}})
    replayed = [await second.receive(), await second.receive()]
    assert [(e["data"], e["pos"]["offset"]) for e in replayed] == [(2, 2), (3, 3)]
    assert await second.receive() == {"type": "session.resumed", "id": 1, "data": {
        "groups": {"drivers": {"recovered": True, "missed": 2}}}}
    await drivers_event(any_hub, 5)
    assert (await second.receive())["pos"]["offset"] == 5
    await second.nothing()


async def resume(client: Client, positions: Any) -> Any:
    return await client.request({"type": "session.resume", "data": {"positions": positions}})


async def claimed_trip(server: RunningServer) -> tuple[Client, Client, str, Any, str]:
    """A v2 rider and driver, the driver's claim of the rider's trip, and a notice to the
    trip's group that both heard: (rider, driver, trip id, its position, driver token)."""
    _, rider_token = await server.user("rider")
    _, driver_token = await server.user("driver", "driver")
    rider = await server.connect(rider_token, v2=True)
    driver = await server.connect(driver_token, v2=True)
    trip_id = (await rider.request({"type": "trip.request", "data": {
        "pick_up_address": "A", "drop_off_address": "B"}}))["data"]["id"]
    await driver.receive()
    await driver.request({"type": "trip.update", "data": {"id": trip_id,
                                                          "status": "STARTED"}})
    assert (await rider.receive())["data"]["status"] == "STARTED"
    await server.hub.send(trip_id, {"type": "trip.fare_estimate", "data": 23.5})
    pos = (await driver.receive())["pos"]
    assert (await rider.receive())["pos"] == pos
    return rider, driver, trip_id, pos, driver_token


async def test_the_sender_of_a_change_gets_one_frame_for_it_on_its_socket_resume_included(
    any_hub: RunningServer,
) -> None:
    rider, driver, trip_id, pos, token = await claimed_trip(any_hub)
    reply = await driver.request({"type": "trip.update", "data": {
        "id": trip_id, "status": "IN_PROGRESS"}})
    assert reply["type"] == "trip.updated" and "pos" not in reply  # its one frame
    await driver.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    # The rider's frames come in the same hand-out as the driver's being left out.
    assert [(await rider.receive())["pos"]["offset"] for _ in range(2)] == [
        pos["offset"] + 1, pos["offset"] + 2]

    reply = await resume(driver, {trip_id: {"offset": pos["offset"], "epoch": pos["epoch"]}})
    assert reply["data"]["groups"][trip_id] == {"recovered": True, "missed": 0}
    await driver.nothing()

    # A new socket is not the sender: the replay brings every event after the position
    # (the old socket's reply carried none, and may have been lost with the link).
    second = await any_hub.connect(token, v2=True)
    reply = await resume(second, {trip_id: {"offset": pos["offset"], "epoch": pos["epoch"]}})
    assert reply["data"]["groups"][trip_id] == {"recovered": True, "missed": 2}
    replayed = [second.held.popleft() for _ in range(2)]
    assert [(event["type"], event["pos"]["offset"]) for event in replayed] == [
        ("trip.updated", pos["offset"] + 1), ("driver.location", pos["offset"] + 2)]
    await second.nothing()


async def test_a_send_for_later_protocol_versions_is_not_replayed_to_a_v2_socket(
    server: RunningServer,
) -> None:
    _, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    await drivers_event(server, 1)
    pos = (await client.receive())["pos"]
    await server.hub.send("drivers", {"type": "fleet.v3_notice"}, min_version=3)
    reply = await resume(client, {"drivers": pos})
    assert reply["data"]["groups"]["drivers"] == {"recovered": True, "missed": 0}
    await client.nothing()


async def test_resume_is_not_recovered_for_unknown_epochs_future_offsets_and_other_groups(
    any_hub: RunningServer,
) -> None:
    _, token = await any_hub.user("driver", "driver")
    client = await any_hub.connect(token, v2=True)
    await drivers_event(any_hub, 1)
    epoch = (await client.receive())["pos"]["epoch"]
    await any_hub.hub.send("trip-of-someone-else", {"type": "x"})
    reply = await resume(client, {
        "drivers": {"offset": 0, "epoch": "another-epoch"},
        "trip-of-someone-else": {"offset": 0, "epoch": epoch},
        f"user:{uuid.uuid4()}": {"offset": 0, "epoch": epoch},
    })
    assert all(result == {"recovered": False, "missed": 0}
               for result in reply["data"]["groups"].values()), reply
    assert len(reply["data"]["groups"]) == 3
    reply = await resume(client, {"drivers": {"offset": 7, "epoch": epoch}})
    assert reply["data"]["groups"]["drivers"]["recovered"] is False
    reply = await resume(client, {"drivers": {"offset": 1, "epoch": epoch}})
    assert reply["data"]["groups"]["drivers"] == {"recovered": True, "missed": 0}
    await client.nothing()  # listing a group never joins it: nothing of the others


@pytest.mark.parametrize("data", [
    None, [], {"positions": []}, {"positions": {"drivers": 3}},
    {"positions": {"drivers": {"offset": -1, "epoch": "e"}}},
    {"positions": {"drivers": {"offset": True, "epoch": "e"}}},
    {"positions": {"drivers": {"offset": 1.5, "epoch": "e"}}},
    {"positions": {"drivers": {"offset": 1, "epoch": 7}}},
    {"positions": {"drivers": {"offset": 1}}},
])
async def test_malformed_resume_is_invalid(server: RunningServer, data: Any) -> None:
    _, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    reply = await client.request({"type": "session.resume", "data": data, "id": "r"})
    assert reply["type"] == "error" and reply["id"] == "r"
    assert reply["data"]["code"] == "invalid" and reply["data"]["errors"], reply


async def test_v1_connections_know_no_session_types(server: RunningServer) -> None:
    _, token = await server.user("driver", "driver")
    client = await server.connect(token)
    for kind in ("session.resume", "auth.refresh"):
        reply = await client.request({"type": kind, "data": {"positions": {}}})
        assert reply["data"]["code"] == "unknown_type", reply


@pytest.fixture(params=["memory", "redis"])
async def small_history(request: pytest.FixtureRequest, tmp_path: Path,
                        start: Start) -> RunningServer:
    hub: dict[str, Any] = {"history_size": 3, "history_ttl": 1.0}
    if request.param == "redis":
        hub.update(url=SHARED_REDIS, prefix=f"test-{uuid.uuid4().hex[:12]}")
    return await start(make_settings(tmp_path, hub=hub))


async def test_history_exceeded_or_expired_is_not_recovered(
    small_history: RunningServer,
) -> None:
    server = small_history
    _, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    await drivers_event(server, 0)
    pos = (await client.receive())["pos"]
    client.close()
    for n in range(3):  # exactly history_size missed: still there
        await drivers_event(server, n)
    client = await server.connect(token, v2=True)
    await client.send({"type": "session.resume", "data": {"positions": {"drivers": pos}}})
    assert [(await client.receive())["pos"]["offset"] for _ in range(3)] == [2, 3, 4]
    assert (await client.receive())["data"]["groups"]["drivers"] == {
        "recovered": True, "missed": 3}
    await drivers_event(server, 4)  # one more than history_size after `pos`
    assert (await client.receive())["pos"]["offset"] == 5
    reply = await resume(client, {"drivers": pos})
    assert reply["data"]["groups"]["drivers"] == {"recovered": False, "missed": 0}
    recent = {"offset": 4, "epoch": pos["epoch"]}
    reply = await resume(client, {"drivers": recent})  # 5 came live: nothing to send
    assert reply["data"]["groups"]["drivers"] == {"recovered": True, "missed": 0}
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the events outlive history_ttl = 1 s
        await asyncio.sleep(0.1)
    reply = await resume(client, {"drivers": recent})
    assert reply["data"]["groups"]["drivers"] == {"recovered": False, "missed": 0}
    await drivers_event(server, 5)  # the group keeps counting after its events expired
    assert (await client.receive())["pos"] == {"group": "drivers", "offset": 6,
                                               "epoch": pos["epoch"]}


def test_memory_history_remembers_at_most_max_groups_the_longest_silent_going_first() -> None:
    history = MemoryHistory(HistoryLimits(size=2, ttl=60), max_groups=3)
    first = {group: history.append(group, b'{"n":1}') for group in ("a", "b", "c")}
    history.append("a", b'{"n":2}')  # a sent last: b is now the longest silent
    history.append("d", b'{"n":1}')
    assert (history.groups(), history.groups_with_events()) == (3, 3)
    assert history.since("b", first["b"]) is None  # forgotten: the client reloads
    assert history.since("c", first["c"]) == Replay([])
    replay = history.since("a", first["a"])
    assert replay is not None and replay.events == [
        (Position(2, first["a"].epoch), b'{"n":2}')]
    again = history.append("b", b'{"n":2}')  # a new history for b, pushing c out
    assert again.offset == 1 and again.epoch != first["b"].epoch
    assert history.since("c", first["c"]) is None and history.groups() == 3


def test_memory_history_drops_expired_events_but_keeps_counting() -> None:
    history = MemoryHistory(HistoryLimits(size=2, ttl=0.2))
    positions = [history.append("a", b'{"n":%d}' % n) for n in range(3)]
    assert history.since("a", positions[0]) is not None  # two missed, two kept
    before = Position(0, positions[0].epoch)
    assert history.since("a", before) is None  # three missed, two kept
    time.sleep(0.3)  # past the ttl
    history.append("b", b"{}")  # an append sweeps what expired
    assert (history.groups(), history.groups_with_events()) == (2, 1)
    assert history.since("a", positions[1]) is None  # its events are gone
    assert history.since("a", positions[2]) == Replay([])  # nothing missed: recovered
    assert history.append("a", b"{}") == Position(4, positions[0].epoch)


def test_history_settings_are_checked(tmp_path: Path) -> None:
    base = {"TAXI_DATA_DIR": str(tmp_path)}
    for key, value in (("TAXI_HUB_HISTORY_SIZE", "-1"), ("TAXI_HUB_HISTORY_TTL", "0"),
                       ("TAXI_AUTH_REFRESH_GRACE", "-5")):
        with pytest.raises(SettingsError) as caught:
            load_settings(environ={**base, key: value}, create_secret=False)
        name = key.removeprefix("TAXI_").lower().replace("_", ".", 1)
        assert str(caught.value).startswith(f"{name}: "), caught.value
    settings = load_settings(environ=base, create_secret=False)
    assert (settings.hub.history_size, settings.hub.history_ttl,
            settings.auth.refresh_grace) == (100, 300.0, 30.0)


# --- refresh and expiry --------------------------------------------------------------

@pytest.fixture
async def short_tokens(tmp_path: Path, start: Start) -> AsyncIterator[RunningServer]:
    """Access tokens live 2 s; a socket waits 1 s for a refresh after that."""
    yield await start(make_settings(tmp_path, auth={
        "secret_key": "test-secret-key-that-is-long-enough-for-hs256", "access_ttl": 2,
        "refresh_grace": 1.0}))


def long_token(server: RunningServer, user: Any) -> str:
    authority = TokenAuthority(dataclasses.replace(server.settings.auth, access_ttl=600))
    return authority.issue_access(user, server.url)


async def test_refresh_keeps_a_socket_past_its_first_tokens_expiry(
    short_tokens: RunningServer,
) -> None:
    server = short_tokens
    user, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    first_exp = TokenAuthority(server.settings.auth).verify(token)["exp"]
    reply = await client.request({"type": "auth.refresh", "data": {
        "token": long_token(server, user)}, "id": 3})
    assert reply["type"] == "auth.refreshed" and reply["id"] == 3
    assert reply["data"]["exp"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first_exp))
    while time.time() < first_exp + 1.0 + 0.5:  # past the first exp and the grace
        await asyncio.sleep(0.1)
    await client.nothing()
    assert (await client.request({"type": "echo.message", "data": 1}))["data"] == 1


async def test_expired_socket_gets_auth_expired_then_4001_after_the_grace_v1_untouched(
    short_tokens: RunningServer,
) -> None:
    server = short_tokens
    user, token = await server.user("driver", "driver")
    exp = TokenAuthority(server.settings.auth).verify(token)["exp"]
    v1, v2 = await server.connect(token), await server.connect(token, v2=True)
    _, stranger = await server.user("stranger", "driver")
    refusals = [
        ({"token": stranger}, "forbidden"),
        ({"token": token[:-4] + "AAAA"}, "token_not_valid"),
        ({"token": server.tokens.issue_refresh(user.id)}, "token_not_valid"),
        ({}, "invalid"),
    ]
    for data, code in refusals:  # none of these moves the expiry
        reply = await v2.request({"type": "auth.refresh", "data": data})
        assert reply["data"]["code"] == code, reply
    expired = await v2.receive(timeout=5)
    expired_at = time.monotonic()
    assert expired == {"type": "auth.expired", "data": {
        "exp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(exp))}}
    assert await v2.closed(timeout=5) == 4001
    assert time.monotonic() - expired_at >= 1.0 - 0.2  # the grace
    await v1.nothing(0.5)
    assert (await v1.request({"type": "echo.message", "data": "v1"}))["data"] == "v1"


async def test_a_refresh_during_the_grace_keeps_the_socket(
    short_tokens: RunningServer,
) -> None:
    server = short_tokens
    user, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    assert (await client.receive(timeout=5))["type"] == "auth.expired"
    reply = await client.request({"type": "auth.refresh", "data": {
        "token": long_token(server, user)}})
    assert reply["type"] == "auth.refreshed"
    await client.nothing(1.5)  # the grace passes without a close
    assert (await client.request({"type": "echo.message", "data": 2}))["data"] == 2


async def test_a_token_let_in_by_the_leeway_gets_the_whole_grace_from_auth_expired(
    tmp_path: Path, start: Start,
) -> None:
    server = await start(make_settings(tmp_path, auth={
        "secret_key": "test-secret-key-that-is-long-enough-for-hs256", "leeway": 30,
        "refresh_grace": 1.5}))
    user, _ = await server.user("driver", "driver")
    late = TokenAuthority(dataclasses.replace(server.settings.auth, access_ttl=-25))
    token = late.issue_access(user, server.url)  # 25 s past exp, within the leeway
    refreshing = await server.connect(token, v2=True)
    idle = await server.connect(token, v2=True)
    assert (await refreshing.receive())["type"] == "auth.expired"
    assert (await idle.receive())["type"] == "auth.expired"
    expired_at = time.monotonic()
    reply = await refreshing.request({"type": "auth.refresh", "data": {
        "token": long_token(server, user)}})
    assert reply["type"] == "auth.refreshed"
    assert await idle.closed(timeout=5) == 4001
    assert time.monotonic() - expired_at >= 1.5 - 0.2  # the grace, from auth.expired
    await refreshing.nothing(0.5)
    assert (await refreshing.request({"type": "echo.message", "data": 3}))["data"] == 3


async def test_a_refresh_with_a_token_that_expires_sooner_keeps_the_later_expiry(
    short_tokens: RunningServer,
) -> None:
    server = short_tokens
    user, _ = await server.user("driver", "driver")
    token = long_token(server, user)
    client = await server.connect(token, v2=True)
    exp = TokenAuthority(server.settings.auth).verify(token)["exp"]
    sooner = server.tokens.issue_access(user, server.url)  # valid, 2 s left
    reply = await client.request({"type": "auth.refresh", "data": {"token": sooner}})
    assert reply == {"type": "auth.refreshed", "data": {
        "exp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(exp))}}
    sooner_exp = TokenAuthority(server.settings.auth).verify(sooner)["exp"]
    while time.time() < sooner_exp + 1.0 + 0.5:  # past the sooner exp and the grace
        await asyncio.sleep(0.1)
    await client.nothing()  # neither auth.expired nor a close
    assert (await client.request({"type": "echo.message", "data": 4}))["data"] == 4


async def test_a_user_deleted_meanwhile_cannot_refresh(server: RunningServer) -> None:
    user, token = await server.user("driver", "driver")
    client = await server.connect(token, v2=True)
    fresh = long_token(server, user)
    with sqlite3.connect(server.settings.data_dir / "taxi.db") as db:
        db.execute("DELETE FROM users WHERE id = ?", (user.id,))
    reply = await client.request({"type": "auth.refresh", "data": {"token": fresh}})
    assert reply["data"]["code"] == "token_not_valid", reply


async def test_the_python_client_refreshes_before_expiry(
    short_tokens: RunningServer,
) -> None:
    server = short_tokens
    user, _ = await server.user("driver", "driver")
    client = TaxiClient(server.ws_url, lambda: server.tokens.issue_access(user, server.url))
    closes: list[Any] = []
    client.on("disconnect", closes.append)
    await client.connect()
    deadline = time.time() + 4.5  # two token lifetimes and the grace
    while time.time() < deadline:
        await asyncio.sleep(0.1)
    assert closes == [] and client.state == "connected"  # never closed with 4001
    assert await client.request("echo.message", "still here") == "still here"
    await client.close()


async def test_connect_reads_the_socket_through_tornado_too(server: RunningServer) -> None:
    """Tornado's client offers the subprotocols as one header, as browsers do."""
    _, token = await server.user("rider")
    ws = await websocket_connect(HTTPRequest(server.ws_url),
                                 subprotocols=["taxi.v2", f"bearer.{token}"])
    assert ws.selected_subprotocol == "taxi.v2"
    ws.close()
