"""The Python client (taxi_tornado.client) against a real server, through a TCP proxy
that stands for the phone's link: it drops links without a close frame, refuses new
ones while offline, and swallows one direction's bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.client import TaxiClient, TaxiError, backoff, token_expiry
from taxi_tornado.client.client import KEYED_TYPES
from taxi_tornado.client.redact import redact
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.settings import PluginsSettings, Settings
from taxi_tornado.store import User
from tests.conftest import ROOT, SECRET, Client, RunningServer, make_settings
from tests.link_proxy import LinkProxy, until

Start = Callable[[Settings], Awaitable[RunningServer]]
TRIP = {"pick_up_address": "Station", "drop_off_address": "Airport"}
FAST = (0.05, 0.2)  # reconnect backoff: tests wait on events, never on luck


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[LinkProxy]:
    running = LinkProxy(server.port)
    await running.start()
    yield running
    await running.stop()


class Recorder:
    """Everything a client told its listeners, in order."""

    def __init__(self, client: TaxiClient, *types: str) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []  # frames of the server's event types
        self.states: list[str] = []
        self.disconnects: list[int] = []
        self.resumed: list[dict[str, Any]] = []
        client.on("state", self.states.append)
        client.on("disconnect", lambda data: self.disconnects.append(data["code"]))
        client.on("resumed", self.resumed.append)
        for kind in types:
            client.on(kind, lambda _data, frame: self.events.append(frame))

    def offsets(self, group: str) -> list[int]:
        return [e["pos"]["offset"] for e in self.events if e.get("pos", {}).get("group") == group]


def token_source(server: RunningServer, user: User) -> Callable[[], str]:
    return lambda: server.tokens.issue_access(user, server.url)


async def rider_client(server: RunningServer, proxy: LinkProxy, name: str = "rider",
                       **options: Any) -> tuple[TaxiClient, User]:
    user, _ = await server.user(name)
    options.setdefault("reconnect", FAST)
    client = TaxiClient(proxy.url, token_source(server, user), **options)
    return client, user


async def claimed(server: RunningServer, rider: TaxiClient) -> tuple[str, Client]:
    """The rider's trip, claimed (STARTED) by a v2 driver on a direct socket."""
    _, driver_token = await server.user("driver", "driver")
    driver = await server.connect(driver_token, v2=True)
    trip = await rider.request("trip.request", TRIP)
    await driver.receive()
    await move(driver, trip["id"], "STARTED")
    return trip["id"], driver


async def move(driver: Client, trip_id: str, status: str) -> None:
    reply = await driver.request({"type": "trip.update", "data": {"id": trip_id,
                                                                  "status": status}})
    assert reply["data"]["status"] == status, reply


async def test_the_socket_offers_v2_and_the_token_as_subprotocols_never_in_the_url(
    server: RunningServer, proxy: LinkProxy
) -> None:
    client, _ = await rider_client(server, proxy)
    await client.connect()
    handshake = bytes(proxy.last.up).split(b"\r\n\r\n")[0].decode()
    request_line, *headers = handshake.split("\r\n")
    assert request_line == "GET /taxi/ HTTP/1.1"
    offered = next(h for h in headers if h.lower().startswith("sec-websocket-protocol:"))
    assert "taxi.v2" in offered and "bearer.ey" in offered
    assert client.state == "connected"
    assert await client.request("echo.message", {"n": 1}) == {"n": 1}
    await client.close()


async def test_a_rider_cut_mid_trip_hears_every_missed_event_once_in_order_then_live_ones(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy)
    seen = Recorder(rider, "trip.updated", "driver.location", "trip.fare_estimate")
    await rider.connect()
    trip_id, driver = await claimed(server, rider)
    await until(lambda: seen.offsets(trip_id) == [1], "the STARTED event")

    proxy.offline()  # a tunnel: no close frame, and no network until it ends
    await until(lambda: seen.disconnects, "the client to notice the drop")
    await move(driver, trip_id, "IN_PROGRESS")
    await driver.send({"type": "driver.location", "data": {"lat": 52.5, "lng": 13.4}})
    await driver.request({"type": "echo.message"})  # the location went out before this
    await server.hub.send(trip_id, {"type": "trip.fare_estimate", "data": 23.5})
    await until(lambda: proxy.refused >= 1, "a dial while offline")
    assert rider.state in ("connecting", "disconnected")
    proxy.online()

    await until(lambda: seen.resumed, "session.resumed")
    assert seen.resumed == [{"groups": {trip_id: {"recovered": True, "missed": 3}}}]
    await move(driver, trip_id, "COMPLETED")
    await until(lambda: len(seen.offsets(trip_id)) == 5, "the live COMPLETED")
    assert seen.offsets(trip_id) == [1, 2, 3, 4, 5]
    assert [e["type"] for e in seen.events] == [
        "trip.updated", "trip.updated", "driver.location", "trip.fare_estimate",
        "trip.updated"]
    assert seen.events[-1]["data"]["status"] == "COMPLETED"
    assert seen.states[-1] == "connected" and rider.positions[trip_id]["offset"] == 5
    await rider.close()


async def test_live_events_that_overtake_the_replay_are_held_and_delivered_in_order(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy)
    seen = Recorder(rider, "trip.updated", "trip.fare_estimate")
    await rider.connect()
    trip_id, driver = await claimed(server, rider)
    await until(lambda: seen.offsets(trip_id) == [1], "the STARTED event")

    proxy.offline()
    await until(lambda: seen.disconnects, "the client to notice the drop")
    await move(driver, trip_id, "IN_PROGRESS")  # 2 and 3: missed, to be replayed
    await server.hub.send(trip_id, {"type": "trip.fare_estimate", "data": 1})
    proxy.hold_after_handshake()  # the resume frame waits in the proxy ...
    proxy.online()
    link = await proxy.wait_links(2)
    await server.hub.send(trip_id, {"type": "trip.fare_estimate", "data": 2})
    await until(lambda: b'"offset":4' in link.down, "the live event at the client")
    proxy.release()  # ... so the live 4 reached the client before the replay of 2 and 3

    await until(lambda: seen.resumed, "session.resumed")
    await until(lambda: len(seen.offsets(trip_id)) == 4, "every event")
    assert seen.offsets(trip_id) == [1, 2, 3, 4]
    assert [e["data"] for e in seen.events[2:]] == [1, 2]
    await rider.close()
    driver.close()


async def test_a_trip_request_whose_reply_was_lost_resolves_after_the_reconnect_once(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, user = await rider_client(server, proxy)
    seen = Recorder(rider)
    await rider.connect()
    proxy.blackhole("down")  # the reply is lost on the way
    sent = proxy.last.sent()
    request = asyncio.ensure_future(rider.request("trip.request", TRIP))
    await until(lambda: proxy.last.sent() > sent, "the request to leave")
    trips: list[Any] = []

    async def stored() -> bool:
        trips[:] = await server.store.list_trips(user)
        return bool(trips)

    for _ in range(500):
        if await stored():
            break
        await asyncio.sleep(0.01)
    assert len(trips) == 1 and not request.done()
    proxy.blackhole()
    proxy.cut()  # the link drops before the reply came

    reply = await asyncio.wait_for(request, 10)
    assert reply["id"] == trips[0].id and reply["status"] == "REQUESTED"
    assert seen.disconnects and len(proxy.links) == 2
    assert [trip.id for trip in await server.store.list_trips(user)] == [trips[0].id]
    # A second trip would have come from a resend without the first key.
    await rider.close()


async def test_requests_made_while_disconnected_go_out_after_the_reconnect(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, user = await rider_client(server, proxy)
    seen = Recorder(rider)
    await rider.connect()
    proxy.offline()
    await until(lambda: seen.disconnects, "the client to notice the drop")
    echoes = [asyncio.ensure_future(rider.request("echo.message", n)) for n in range(3)]
    trip = asyncio.ensure_future(rider.request("trip.request", TRIP))
    await until(lambda: proxy.refused >= 2, "two dials while offline")
    assert not any(task.done() for task in [*echoes, trip])
    proxy.online()

    assert await asyncio.wait_for(asyncio.gather(*echoes), 10) == [0, 1, 2]
    made = await asyncio.wait_for(trip, 10)
    assert [t.id for t in await server.store.list_trips(user)] == [made["id"]]
    await rider.close()


async def test_the_queue_of_a_disconnected_client_is_bounded(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy, queue_limit=2)
    seen = Recorder(rider)
    await rider.connect()
    proxy.offline()
    await until(lambda: seen.disconnects, "the client to notice the drop")
    waiting = [asyncio.ensure_future(rider.request("echo.message", n)) for n in range(2)]
    await asyncio.sleep(0)  # both queued
    with pytest.raises(TaxiError) as full:
        await rider.request("echo.message", 3)
    assert full.value.code == "queue_full"
    proxy.online()
    assert await asyncio.wait_for(asyncio.gather(*waiting), 10) == [0, 1]
    await rider.close()


async def test_a_request_past_its_timeout_raises_timeout_queued_or_sent(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy)
    seen = Recorder(rider)
    await rider.connect()
    proxy.blackhole("down")
    with pytest.raises(TaxiError) as late:
        await rider.request("echo.message", 1, timeout=0.3)
    assert late.value.code == "timeout"
    proxy.blackhole()

    proxy.offline()  # the timeout runs from the call, not from the send
    await until(lambda: seen.disconnects, "the client to notice the drop")
    with pytest.raises(TaxiError) as queued:
        await rider.request("echo.message", 2, timeout=0.3)
    assert queued.value.code == "timeout"
    proxy.online()
    await rider.connect()
    assert await rider.request("echo.message", 3) == 3
    await rider.close()


async def test_an_error_frame_raises_its_code_detail_and_field_errors(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy)
    await rider.connect()
    with pytest.raises(TaxiError) as invalid:
        await rider.request("trip.request", {"pick_up_address": "", "drop_off_address": "B"})
    assert invalid.value.code == "invalid" and "pick_up_address" in invalid.value.errors
    with pytest.raises(TaxiError) as unknown:
        await rider.request("no.such.type")
    assert unknown.value.code == "unknown_type" and unknown.value.detail
    await rider.close()


async def test_rate_limited_says_when_to_try_again(tmp_path: Path, start: Start) -> None:
    server = await start(make_settings(tmp_path, limits={"trip_requests": 1}))
    user, _ = await server.user("rider")
    rider = TaxiClient(server.ws_url, token_source(server, user))
    await rider.connect()
    await rider.request("trip.request", TRIP)
    with pytest.raises(TaxiError) as limited:
        await rider.request("trip.request", TRIP)
    assert limited.value.code == "rate_limited"
    assert limited.value.retry_after is not None and limited.value.retry_after > 0
    await rider.close()


async def test_a_driver_sends_positions_without_replies_and_not_while_offline(
    server: RunningServer, proxy: LinkProxy
) -> None:
    driver_user, _ = await server.user("driver", "driver")
    driver = TaxiClient(proxy.url, token_source(server, driver_user), reconnect=FAST)
    errors: list[Any] = []
    driver.on("error", lambda data, _frame: errors.append(data))
    await driver.connect()
    _, rider_token = await server.user("rider")
    rider = await server.connect(rider_token, v2=True)
    trip = (await rider.request({"type": "trip.request", "data": TRIP}))["data"]
    claimed = await driver.request("trip.update", {"id": trip["id"], "status": "STARTED"})
    assert claimed["driver"]["id"] == driver_user.id
    assert (await rider.receive())["data"]["status"] == "STARTED"

    assert await driver.send("driver.location", {"lat": 52.5, "lng": 13.4}) is True
    location = await rider.receive()
    assert location["type"] == "driver.location" and location["data"]["lat"] == 52.5
    assert await driver.send("driver.location", {"lat": 91, "lng": 0}) is True
    await until(lambda: errors, "the error frame")
    assert errors[0]["code"] == "invalid" and errors[0]["for"] == "driver.location"

    proxy.offline()
    await until(lambda: driver.state != "connected", "the client to notice the drop")
    assert await driver.send("driver.location", {"lat": 52.6, "lng": 13.4}) is False
    proxy.online()
    await driver.connect()
    await rider.nothing()  # the position from the tunnel was not kept for later
    await driver.close()


async def test_close_ends_it_for_good(server: RunningServer, proxy: LinkProxy) -> None:
    rider, _ = await rider_client(server, proxy)
    seen = Recorder(rider)
    await rider.connect()
    proxy.blackhole("down")
    sent = proxy.last.sent()
    pending = asyncio.ensure_future(rider.request("echo.message", 1))
    await until(lambda: proxy.last.sent() > sent, "the request to leave")
    await rider.close()
    with pytest.raises(TaxiError) as closed:
        await pending
    assert closed.value.code == "closed"
    assert rider.state == "closed" and seen.states[-1] == "closed"
    with pytest.raises(TaxiError, match="closed"):
        await rider.request("echo.message", 2)
    with pytest.raises(TaxiError, match="closed"):
        await rider.connect()
    proxy.blackhole()
    await asyncio.sleep(0.5)  # more than the longest backoff: nothing dials again
    assert len(proxy.links) == 1 and seen.disconnects == []


async def test_close_while_waiting_to_reconnect_stops_the_dialling(
    server: RunningServer, proxy: LinkProxy
) -> None:
    rider, _ = await rider_client(server, proxy)
    seen = Recorder(rider)
    await rider.connect()
    proxy.offline()
    await until(lambda: proxy.refused >= 1, "a dial while offline")
    queued = asyncio.ensure_future(rider.request("echo.message", 1))
    await rider.close()
    with pytest.raises(TaxiError, match="closed"):
        await queued
    await asyncio.sleep(0.05)  # a dial that reached the proxy before close() is counted
    refused = proxy.refused
    await asyncio.sleep(0.5)  # at most 0.2 s between dials: a dialling client would show
    assert proxy.refused == refused and seen.states[-1] == "closed"


# --- tokens ----------------------------------------------------------------------------

TTL = 4  # seconds: a refresh early in a life keeps a margin on a loaded machine (whole-second exp)


@pytest.fixture
async def short_lived(tmp_path: Path, start: Start) -> AsyncIterator[tuple[RunningServer,
                                                                          LinkProxy]]:
    """Access tokens that live TTL seconds; a socket waits 1 s for a refresh after that."""
    server = await start(make_settings(tmp_path, auth={
        "secret_key": SECRET, "access_ttl": TTL, "refresh_grace": 1.0, "leeway": 0}))
    running = LinkProxy(server.port)
    await running.start()
    yield server, running
    await running.stop()


async def test_the_socket_outlives_several_token_expiries_without_a_4001(
    short_lived: tuple[RunningServer, LinkProxy],
) -> None:
    server, proxy = short_lived
    user, _ = await server.user("rider")
    issued: list[str] = []

    def get_token() -> str:
        issued.append(server.tokens.issue_access(user, server.url))
        return issued[-1]

    rider = TaxiClient(proxy.url, get_token, reconnect=FAST)
    seen = Recorder(rider, "auth.expired")
    await rider.connect()
    first_exp = token_expiry(issued[0]) or 0.0
    # Past three expiries, each with its grace.
    await until(lambda: time.time() > first_exp + 2 * TTL + 1.5, "three expiries",
                timeout=4 * TTL)
    assert len(issued) >= 4  # the handshake's token, then one refresh per lifetime
    assert seen.disconnects == [] and seen.events == [] and len(proxy.links) == 1
    assert rider.state == "connected"
    assert (await rider.request("trip.request", TRIP))["status"] == "REQUESTED"
    await rider.close()


async def test_after_a_4001_it_reconnects_with_a_new_token(
    short_lived: tuple[RunningServer, LinkProxy],
) -> None:
    server, proxy = short_lived
    user, _ = await server.user("rider")
    gate = asyncio.Event()
    issued: list[str] = []

    async def get_token() -> str:
        if issued:  # the first token at once; every later one when the test says
            await gate.wait()
        issued.append(server.tokens.issue_access(user, server.url))
        return issued[-1]

    rider = TaxiClient(proxy.url, get_token, reconnect=FAST)
    seen = Recorder(rider, "auth.expired")
    await rider.connect()
    await until(lambda: seen.disconnects, "the close", timeout=TTL + 6)
    assert seen.disconnects == [4001] and [e["type"] for e in seen.events] == ["auth.expired"]
    await until(lambda: rider.state == "connecting", "the client to dial again")
    await asyncio.sleep(0.3)
    assert rider.state == "connecting" and len(proxy.links) == 1  # no socket without a token
    gate.set()
    await until(lambda: rider.state == "connected", "the reconnect with a fresh token")
    assert len(proxy.links) == 2 and issued[-1].encode() in proxy.last.up
    assert issued[0].encode() not in proxy.last.up
    assert (await rider.request("trip.request", TRIP))["status"] == "REQUESTED"
    await rider.close()


# --- the server's closes ---------------------------------------------------------------

async def test_after_a_1013_it_resumes_at_once_and_after_a_1008_it_waits_half_the_longest(
    tmp_path: Path, start: Start
) -> None:
    """1013 (read too slowly: a proxy that stops reading fills the server's queue) backs
    off as usual and resumes; 1008 (a flood of frames) waits at least half of max_delay."""
    server = await start(make_settings(tmp_path, limits={
        "outbound_queue": 4, "outbound_bytes": 64 * 1024, "rate": 5, "burst": 5}))
    proxy = LinkProxy(server.port)
    await proxy.start()
    user, _ = await server.user("rider")
    rider = TaxiClient(proxy.url, token_source(server, user), reconnect=(0.05, 1.0))
    seen = Recorder(rider)
    stamps: list[tuple[str, float]] = []
    rider.on("state", lambda state: stamps.append((state, time.monotonic())))
    await rider.connect()
    trip = await rider.request("trip.request", TRIP)

    proxy.stall()
    sockets = server.server.services.sockets
    for _ in range(5000):  # 50 MB at most: the kernel's buffers fill first
        await server.hub.send(trip["id"], {"type": "test.flood", "data": "x" * 10_000})
        if any(getattr(socket, "close_sent", None) == 1013 for socket in sockets):
            break
    proxy.flow()
    await until(lambda: seen.resumed, "the resume after the 1013", timeout=20)
    assert seen.disconnects == [1013] and trip["id"] in seen.resumed[0]["groups"]
    assert len(proxy.links) == 2 and rider.state == "connected"

    stamps.clear()
    flood = [rider.request("echo.message", n, timeout=5) for n in range(20)]
    await asyncio.gather(*flood, return_exceptions=True)
    await until(lambda: len(seen.disconnects) == 2 and rider.state == "connected",
                "the reconnect after the 1008")
    assert seen.disconnects[1] == 1008
    went = next(at for state, at in stamps if state == "disconnected")
    dialled = next(at for state, at in stamps if state == "connecting" and at >= went)
    assert dialled - went >= 1.0 / 2 - 0.01  # the floor: half of max_delay (1.0)
    await rider.close()
    await proxy.stop()


# --- the small parts -------------------------------------------------------------------

def test_backoff_draws_below_a_ceiling_that_doubles_up_to_the_largest() -> None:
    assert [backoff(n, 0.5, 3.0, draw=lambda: 1.0) for n in range(5)] == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff(1000, 0.5, 3.0, draw=lambda: 0.5) == 1.5
    assert backoff(2, 0.5, 3.0, draw=lambda: 0.0) == 0.0  # full jitter: from zero


def test_token_expiry_reads_exp_without_verifying_and_none_when_it_cannot() -> None:
    import jwt

    token = jwt.encode({"exp": 1_900_000_000}, "any key, never checked", algorithm="HS256")
    assert token_expiry(token) == 1_900_000_000.0
    assert token_expiry(jwt.encode({"sub": "x"}, "k", algorithm="HS256")) is None
    assert token_expiry("not.a-jwt!.at all") is None and token_expiry("opaque") is None


def test_a_token_in_the_url_is_refused() -> None:
    with pytest.raises(ValueError, match="never in the URL"):
        TaxiClient("ws://host/taxi/?token=abc", lambda: "abc")


# --- docs/clients.md -------------------------------------------------------------------

def flow(heading: str) -> dict[str, Any]:
    """Run the Python block under `### heading` in docs/clients.md; its namespace."""
    text = (ROOT / "docs" / "clients.md").read_text()
    body = text[text.index(f"### {heading}\n"):]
    code = body[body.index("```python\n") + 10:body.index("```\n", body.index("```python"))]
    namespace: dict[str, Any] = {}
    exec(compile(code, f"docs/clients.md ({heading})", "exec"), namespace)
    return namespace


async def test_the_riders_flow_of_the_docs_rides(server: RunningServer) -> None:
    user, _ = await server.user("rider")
    reloads: list[bool] = []

    async def reload_trips() -> None:
        reloads.append(True)

    ride = asyncio.ensure_future(flow("A rider")["ride"](
        server.ws_url, token_source(server, user), reload_trips))
    _, driver_token = await server.user("driver", "driver")
    driver = await server.connect(driver_token, v2=True)
    trip = (await driver.receive())["data"]
    for status in ("STARTED", "IN_PROGRESS", "COMPLETED"):
        await move(driver, trip["id"], status)
    await asyncio.wait_for(ride, 10)
    assert (await server.store.get_trip(trip["id"])).status == "COMPLETED"


async def test_the_drivers_flow_of_the_docs_drives(server: RunningServer) -> None:
    user, _ = await server.user("driver", "driver")
    namespace = flow("A driver")

    class Clock:  # the flow's minute of driving passes at once here
        Queue = asyncio.Queue

        @staticmethod
        async def sleep(_seconds: float) -> None:
            await asyncio.sleep(0)

    namespace["asyncio"] = Clock
    drive = asyncio.ensure_future(namespace["drive"](
        server.ws_url, token_source(server, user), lambda: {"lat": 52.5, "lng": 13.4}))
    _, rider_token = await server.user("rider")
    rider = await server.connect(rider_token, v2=True)
    await until(lambda: server.hub.members("drivers") == 1, "the driver's socket")
    trip = (await rider.request({"type": "trip.request", "data": TRIP}))["data"]
    await asyncio.wait_for(drive, 10)
    stored = await server.store.get_trip(trip["id"])
    assert stored.status == "COMPLETED" and stored.driver_id == user.id
    rider.close()


# --- tokens that cannot work, and tokens kept out of what the client says --------------

def no_token_in(token: str, *texts: object) -> bool:
    """Neither the token nor its signature appears in any of `texts`."""
    signature = token.rsplit(".", 1)[1]
    return not any(token in str(text) or signature in str(text) for text in texts)


async def test_a_token_with_a_trailing_newline_is_stripped_and_connects(
    server: RunningServer, proxy: LinkProxy
) -> None:
    user, _ = await server.user("rider")
    rider = TaxiClient(proxy.url, lambda: server.tokens.issue_access(user, server.url) + "\n",
                       reconnect=FAST)
    await asyncio.wait_for(rider.connect(), 10)
    assert await rider.request("echo.message", 1) == 1
    await rider.close()


@pytest.mark.parametrize("stray", ['"{}"', "{}\tx", "Bearer {}", "{}\nx", "{}.x", "opaque"])
async def test_a_token_that_cannot_be_a_subprotocol_fails_connect_without_saying_it(
    server: RunningServer, proxy: LinkProxy, caplog: pytest.LogCaptureFixture, stray: str
) -> None:
    user, _ = await server.user("rider")
    good = server.tokens.issue_access(user, server.url)
    handed = [stray.format(good)]
    rider = TaxiClient(proxy.url, lambda: handed[0], reconnect=FAST)
    errors: list[dict[str, Any]] = []
    rider.on("error", lambda data, _frame: errors.append(data))
    seen = Recorder(rider)

    with pytest.raises(TaxiError) as refused:
        await asyncio.wait_for(rider.connect(), 10)
    assert refused.value.code == "bad_token" and "JWT" in refused.value.detail
    assert no_token_in(good, refused.value, repr(refused.value), errors)
    assert [error["code"] for error in errors] == ["bad_token"]
    assert rider.state == "disconnected" and seen.states == ["connecting", "disconnected"]
    await asyncio.sleep(0.3)  # more than the longest backoff: it does not dial on its own
    assert proxy.links == [] and len(errors) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    handed[0] = good  # the app fixed its token: connect() starts over
    await asyncio.wait_for(rider.connect(), 10)
    assert await rider.request("echo.message", 2) == 2
    await rider.close()


async def test_a_bad_token_after_a_session_is_reported_and_the_client_keeps_trying(
    server: RunningServer, proxy: LinkProxy
) -> None:
    user, _ = await server.user("rider")
    good = server.tokens.issue_access(user, server.url)
    handed = [good]
    rider = TaxiClient(proxy.url, lambda: handed[0], reconnect=FAST)
    errors: list[dict[str, Any]] = []
    rider.on("error", lambda data, _frame: errors.append(data))
    await rider.connect()
    handed[0] = f'"{good}"'
    proxy.cut()
    await until(lambda: len(errors) >= 2, "two refusals of the bad token")
    assert {error["code"] for error in errors} == {"bad_token"}
    assert no_token_in(good, errors)
    with pytest.raises(TaxiError) as refused:
        await asyncio.wait_for(rider.connect(), 10)
    assert refused.value.code == "bad_token" and len(proxy.links) == 1
    handed[0] = good
    await until(lambda: rider.state == "connected", "the reconnect with a good token")
    assert await rider.request("echo.message", 3) == 3
    await rider.close()


async def test_an_unexpected_failure_to_dial_is_a_disconnect_and_the_loop_goes_on() -> None:
    import jwt

    token = jwt.encode({"sub": "1"}, "k" * 32, algorithm="HS256")
    rider = TaxiClient("ws://127.0.0.1:99999/taxi/", lambda: token, reconnect=FAST)
    reasons: list[str] = []
    rider.on("disconnect", lambda data: reasons.append(data["reason"]))
    connecting = asyncio.ensure_future(rider.connect())
    await until(lambda: len(reasons) >= 2, "two failed dials")  # the loop is alive
    assert "ValueError" in reasons[0] and not connecting.done()
    await rider.close()
    with pytest.raises(TaxiError, match="closed"):
        await connecting


async def test_a_peer_that_echoes_the_token_hears_it_in_no_reason_and_no_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A proxy or a broken server that echoes both offered subprotocols: the library's
    error names them, and at DEBUG it logs every handshake header."""
    import jwt
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    def echo_both(_connection: ServerConnection, request: Request,
                  response: Response) -> None:
        response.headers["Sec-WebSocket-Protocol"] = request.headers["Sec-WebSocket-Protocol"]

    async def handler(socket: ServerConnection) -> None:
        await socket.wait_closed()

    token = jwt.encode({"sub": "1", "exp": int(time.time()) + 600}, "k" * 32,
                       algorithm="HS256")
    caplog.set_level(logging.DEBUG)
    async with serve(handler, "127.0.0.1", 0, process_response=echo_both) as fake:
        port = fake.sockets[0].getsockname()[1]
        rider = TaxiClient(f"ws://127.0.0.1:{port}/taxi/", lambda: token, reconnect=FAST)
        reasons: list[str] = []
        rider.on("disconnect", lambda data: reasons.append(data["reason"]))
        connecting = asyncio.ensure_future(rider.connect())
        await until(lambda: reasons, "the failed handshake")
        await rider.close()
        with pytest.raises(TaxiError):
            await connecting
    assert "multiple values" in reasons[0] and "bearer.<redacted>" in reasons[0]
    assert no_token_in(token, reasons)
    lines = [(record.getMessage(), record.exc_text or "") for record in caplog.records
             if not record.name.startswith("websockets.server")]  # the fake's own lines
    assert any("bearer.<redacted>" in message for message, _ in lines)  # it was logged
    assert no_token_in(token, lines)


def test_redact_hides_subprotocol_tokens_jwts_and_token_fields() -> None:
    jwt_text = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert redact(f"multiple values: taxi.v2, bearer.{jwt_text}") == (
        "multiple values: taxi.v2, bearer.<redacted>")
    assert redact(f"ValueError('{jwt_text}\\n')") == "ValueError('<redacted>')"
    assert redact('> TEXT \'{"data":{"token":"eyJhbG...XR1cmU"}}\'') == (
        '> TEXT \'{"data":{"token":<redacted>}}\'')
    assert redact("could not connect: taxi.example.com: timed out") == (
        "could not connect: taxi.example.com: timed out")
    assert TaxiError("forbidden", f"not {jwt_text}").detail == "not <redacted>"


def test_the_client_keys_exactly_the_types_the_built_in_plugins_mark_keyed() -> None:
    """A keyed type the client does not know is resent after a drop without its key (or
    not at all): the list must follow the server's registry, aliases included."""
    registry, _ = load_plugins(settings=PluginsSettings(disabled=("sos",)))
    keyed = {name for name, entry in registry.types.items() if entry.keyed}
    assert keyed == KEYED_TYPES
