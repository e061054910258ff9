"""The SOS plugin, tested as its users meet it: a real server, real sockets, real HTTP.

Only the test kit is used (taxi_tornado.testing: the `taxi_server` fixture and its users
and clients), so this file is also the model of a plugin's tests. Run with `pytest`
after `pip install -e '.[test]'`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from taxi_tornado.testing import SocketClient, TaxiServer, TaxiUser

FAST_REALERT = {"sos": {"realert_after": 0.3, "check_every": 0.1}}


async def started_trip(rider: SocketClient, driver: SocketClient) -> str:
    """A trip the rider requested and the driver started; its id."""
    trip = (await rider.request("trip.request", {"pick_up_address": "Station",
                                                 "drop_off_address": "Airport"}))["data"]
    await driver.receive("trip.updated")  # the new trip, offered to every driver
    await driver.request("trip.update", {"id": trip["id"], "status": "STARTED"})
    await rider.receive("trip.updated")  # the rider sees the trip start
    trip_id: str = trip["id"]
    return trip_id


async def trip_with_sockets(taxi_server: TaxiServer) -> tuple[TaxiUser, SocketClient,
                                                             SocketClient, str]:
    rider = await taxi_server.rider()
    rider_socket = await rider.connect()
    driver_socket = await (await taxi_server.driver()).connect()
    return rider, rider_socket, driver_socket, await started_trip(rider_socket, driver_socket)


def alert(trip: str, sender: str, note: str, repeat: int = 0) -> dict[str, Any]:
    return {"type": "sos.alert",
            "data": {"trip": trip, "from": sender, "note": note, "repeat": repeat}}


async def test_driver_and_staff_hear_the_riders_sos(taxi_server: TaxiServer) -> None:
    desk = await (await taxi_server.staff()).connect()
    rider, rider_socket, driver_socket, trip = await trip_with_sockets(taxi_server)

    reply = await rider_socket.request("sos.alert", {"trip": trip, "note": "lost"})

    assert reply["type"] == "sos.sent" and reply["data"] == {"trip": trip}
    assert await driver_socket.receive("sos.alert") == alert(trip, rider.id, "lost")
    assert await desk.receive("sos.alert") == alert(trip, rider.id, "lost")


async def test_sos_about_another_riders_trip_is_not_found(taxi_server: TaxiServer) -> None:
    owner = await (await taxi_server.rider()).connect()
    trip = await owner.request("trip.request", {"pick_up_address": "A",
                                                "drop_off_address": "B"})
    stranger = await (await taxi_server.rider()).connect()

    reply = await stranger.request("sos.alert", {"trip": trip["data"]["id"]})

    assert reply["type"] == "error" and reply["data"]["code"] == "not_found"
    await owner.expect_nothing()


async def test_sos_without_a_trip_is_invalid(taxi_rider: TaxiUser) -> None:
    socket = await taxi_rider.connect()

    reply = await socket.request("sos.alert", {"note": "help"})

    assert reply["data"]["code"] == "invalid"
    assert reply["data"]["errors"] == {"trip": ["This field is required."]}


@pytest.mark.taxi_settings(plugins={"sos": {"alert_group": "drivers"}})
async def test_alert_group_setting_chooses_who_hears_alerts(taxi_server: TaxiServer) -> None:
    other_driver = await (await taxi_server.driver()).connect()
    rider, rider_socket, _, trip = await trip_with_sockets(taxi_server)

    await rider_socket.request("sos.alert", {"trip": trip, "note": "flat tyre"})

    assert await other_driver.receive("sos.alert") == alert(trip, rider.id, "flat tyre")


@pytest.mark.taxi_settings(plugins=FAST_REALERT)
async def test_unanswered_alert_is_sent_again(taxi_server: TaxiServer) -> None:
    desk = await (await taxi_server.staff()).connect()
    rider, rider_socket, _, trip = await trip_with_sockets(taxi_server)

    await rider_socket.request("sos.alert", {"trip": trip, "note": "help"})

    assert await desk.receive("sos.alert") == alert(trip, rider.id, "help")
    assert await desk.receive("sos.alert") == alert(trip, rider.id, "help", repeat=1)
    assert await desk.receive("sos.alert") == alert(trip, rider.id, "help", repeat=2)


@pytest.mark.taxi_settings(plugins=FAST_REALERT)
async def test_acknowledged_alert_stops_and_the_trip_hears_it(taxi_server: TaxiServer) -> None:
    staff = await taxi_server.staff()
    desk = await staff.connect()
    _, rider_socket, driver_socket, trip = await trip_with_sockets(taxi_server)
    await rider_socket.request("sos.alert", {"trip": trip})
    await desk.receive("sos.alert")

    reply = await desk.request("sos.ack", {"trip": trip})

    acknowledged = {"type": "sos.acknowledged", "data": {"trip": trip, "by": staff.id}}
    assert {key: reply[key] for key in ("type", "data")} == acknowledged
    assert await rider_socket.receive("sos.acknowledged") == acknowledged
    assert await driver_socket.receive("sos.acknowledged") == acknowledged
    # Staff desks also hear the operators' live events: no further alert is what counts.
    with pytest.raises(AssertionError, match=r"expected a frame of type 'sos\.alert'"):
        await desk.receive("sos.alert", timeout=1.0)  # past realert_after, twice over


async def test_only_staff_acknowledge(taxi_server: TaxiServer) -> None:
    _, rider_socket, _, trip = await trip_with_sockets(taxi_server)
    await rider_socket.request("sos.alert", {"trip": trip})

    reply = await rider_socket.request("sos.ack", {"trip": trip})

    assert reply["data"]["code"] == "forbidden"


async def test_staff_list_open_alerts_over_http(taxi_server: TaxiServer) -> None:
    staff = await taxi_server.staff()
    rider, rider_socket, _, trip = await trip_with_sockets(taxi_server)
    await rider_socket.request("sos.alert", {"trip": trip, "note": "smoke"})

    response = await staff.http.get("/api/sos/alerts/")

    assert response.status == 200
    [listed] = response.json
    assert {key: listed[key] for key in ("trip", "from", "note", "repeat")} == {
        "trip": trip, "from": rider.id, "note": "smoke", "repeat": 0}
    assert listed["raised"].endswith("Z")


async def test_riders_may_not_list_alerts_and_strangers_need_a_token(
    taxi_server: TaxiServer, taxi_rider: TaxiUser
) -> None:
    forbidden = await taxi_rider.http.get("/api/sos/alerts/")
    anonymous = await taxi_server.client().get("/api/sos/alerts/")

    assert forbidden.status == 403
    assert forbidden.json == {"detail": "Only staff can see SOS alerts."}
    assert anonymous.status == 401
    assert anonymous.json == {"detail": "Token is invalid or expired",
                              "code": "token_not_valid"}


# --- what one user can make the desk carry -------------------------------------------------

async def no_more(desk: SocketClient, type: str, timeout: float) -> None:
    """No frame of `type` comes within `timeout` (desks also hear other events)."""
    with pytest.raises(AssertionError, match=re.escape(f"expected a frame of type '{type}'")):
        await desk.receive(type, timeout=timeout)


async def test_a_trip_has_one_open_alert_raising_it_again_repeats_nothing(
    taxi_server: TaxiServer,
) -> None:
    staff = await taxi_server.staff()
    desk = await staff.connect()
    rider, rider_socket, driver_socket, trip = await trip_with_sockets(taxi_server)
    await rider_socket.request("sos.alert", {"trip": trip, "note": "first"})
    assert await desk.receive("sos.alert") == alert(trip, rider.id, "first")

    again = await rider_socket.request("sos.alert", {"trip": trip, "note": "second"})
    also = await driver_socket.request("sos.alert", {"trip": trip, "note": "third"})

    assert again["type"] == also["type"] == "sos.sent"
    await no_more(desk, "sos.alert", timeout=0.5)
    [listed] = (await staff.http.get("/api/sos/alerts/")).json
    assert (listed["note"], listed["from"]) == ("first", rider.id)


async def canceled_trip(rider_socket: SocketClient) -> str:
    trip = (await rider_socket.request("trip.request", {"pick_up_address": "A",
                                                        "drop_off_address": "B"}))["data"]
    canceled = await rider_socket.request("trip.cancel", {"id": trip["id"]})
    assert canceled["data"]["status"] == "CANCELED"
    trip_id: str = trip["id"]
    return trip_id


async def test_an_alert_just_after_a_trip_ended_is_taken(taxi_rider: TaxiUser) -> None:
    socket = await taxi_rider.connect()
    trip = await canceled_trip(socket)

    reply = await socket.request("sos.alert", {"trip": trip, "note": "left my bag"})

    assert (reply["type"], reply["data"]) == ("sos.sent", {"trip": trip})


@pytest.mark.taxi_settings(plugins={"sos": {"ended_grace": 0}})
async def test_an_alert_about_a_trip_that_ended_before_the_grace_is_refused(
    taxi_server: TaxiServer,
) -> None:
    staff = await taxi_server.staff()
    desk = await staff.connect()
    socket = await (await taxi_server.rider()).connect()
    trip = await canceled_trip(socket)

    reply = await socket.request("sos.alert", {"trip": trip})

    assert reply["type"] == "error" and reply["data"]["code"] == "forbidden"
    assert "ended too long ago" in reply["data"]["detail"]
    await no_more(desk, "sos.alert", timeout=0.3)
    assert (await staff.http.get("/api/sos/alerts/")).json == []


@pytest.mark.taxi_settings(plugins={"sos": {"per_user": 2}})
async def test_a_user_holds_at_most_per_user_open_alerts(taxi_rider: TaxiUser) -> None:
    socket = await taxi_rider.connect()
    trips = [(await socket.request("trip.request", {"pick_up_address": "A",
                                                    "drop_off_address": "B"}))["data"]["id"]
             for _ in range(3)]

    replies = [await socket.request("sos.alert", {"trip": trip}) for trip in trips]

    assert [reply["type"] for reply in replies[:2]] == ["sos.sent"] * 2
    assert replies[2]["data"]["code"] == "rate_limited"


@pytest.mark.taxi_settings(plugins={"sos": {"max_open": 1}})
async def test_the_desk_holds_at_most_max_open_alerts(taxi_server: TaxiServer) -> None:
    first, second = [await (await taxi_server.rider()).connect() for _ in range(2)]
    trips = [(await socket.request("trip.request", {"pick_up_address": "A",
                                                    "drop_off_address": "B"}))["data"]["id"]
             for socket in (first, second)]

    taken = await first.request("sos.alert", {"trip": trips[0]})
    refused = await second.request("sos.alert", {"trip": trips[1]})

    assert taken["type"] == "sos.sent"
    assert refused["data"]["code"] == "rate_limited"
    assert "desk is full" in refused["data"]["detail"]


@pytest.mark.taxi_settings(plugins={"sos": {**FAST_REALERT["sos"], "ended_grace": 0.2}})
async def test_an_alert_whose_trip_ended_leaves_the_desk_instead_of_ringing_again(
    taxi_server: TaxiServer,
) -> None:
    staff = await taxi_server.staff()
    desk = await staff.connect()
    _, rider_socket, driver_socket, trip = await trip_with_sockets(taxi_server)
    await rider_socket.request("sos.alert", {"trip": trip})
    await desk.receive("sos.alert")

    done = await driver_socket.request("trip.update", {"id": trip, "status": "COMPLETED"})
    assert done["data"]["status"] == "COMPLETED"

    for _ in range(50):  # bounded: 5 s
        if (await staff.http.get("/api/sos/alerts/")).json == []:
            break
        await asyncio.sleep(0.1)
    assert (await staff.http.get("/api/sos/alerts/")).json == []
    while True:  # the repeats sent before the trip's grace ran out
        try:
            await desk.receive("sos.alert", timeout=0.05)
        except AssertionError:
            break
    await no_more(desk, "sos.alert", timeout=1.0)  # past realert_after, three times over
