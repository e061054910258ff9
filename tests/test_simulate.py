"""`taxi-tornado simulate`: a short run of a small city against a server it starts keeps
every invariant and completes trips; and the checker, fed crafted histories, counts
each kind of broken invariant (so it can fail) and leaves alone what the protocol
allows (a sender left out of its own send, a span broken by a resume that could not
recover)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable
from pathlib import Path

from taxi_tornado.handlers.auth import _password_errors
from taxi_tornado.simulate import History, Options, check, simulate
from taxi_tornado.simulate.accounts import new_password
from taxi_tornado.simulate.recorder import Event, PhoneLog, Request, Send
from tests.conftest import ServerProcess
from tests.link_proxy import LinkProxy, until

RIDER, DRIVER, OTHER = "rider-1", "driver-1", "driver-2"
TRIP = "trip-1"


async def test_a_short_run_keeps_every_invariant_and_completes_trips(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    progress = io.StringIO()
    report = await simulate(Options(
        drivers=16, riders=6, duration=10, seed=3, speed=60, dispatch="nearest",
        report=report_path, wind_down=15, progress_every=2), progress)

    assert report["invariants"] == {name: 0 for name in report["invariants"]}, report
    assert len(report["invariants"]) == 6
    assert report["ok"] is True
    assert report["trips"]["requested"] > 0
    assert report["trips"]["completed"] > 0, report["trips"]
    assert report["pickup_distance_m"]["count"] == report["trips"]["matched"]
    assert report["offers_per_trip"]["count"] == report["trips"]["requested"]
    assert report_path.read_text().startswith("{")
    assert "phones connected" in progress.getvalue()
    assert "trips" in progress.getvalue()


def event(offset: int, t: float, *, group: str = TRIP, status: str | None = "IN_PROGRESS",
          origin: str | None = DRIVER, type: str = "trip.updated") -> Event:
    return Event(t, type, group, "epoch-1", offset, TRIP, status, origin)


def trip(status: str, driver: str | None = DRIVER) -> dict[str, object]:
    return {"id": TRIP, "status": status, "rider": {"id": RIDER},
            "driver": {"id": driver} if driver else None,
            "created": "2026-01-01T00:00:00.000000Z"}


def rider_log(*events: Event) -> PhoneLog:
    log = PhoneLog(RIDER, "rider", "rider", events=list(events))
    log.requests.append(Request(0.0, 0.1, "trip.request", TRIP, "REQUESTED", "ok"))
    return log


def test_checker_counts_an_event_handed_twice_and_one_missed() -> None:
    rider = rider_log(event(1, 1.0, status="STARTED"), event(2, 2.0), event(2, 2.1),
                      event(4, 4.0, status="COMPLETED"))
    others = PhoneLog(OTHER, "other", "driver",
                      events=[event(3, 3.0, type="driver.location", status=None)])

    report = check(History([rider, others], {TRIP: trip("COMPLETED")}))

    assert report["invariants"]["events_twice"] == 1
    assert report["examples"]["events_twice"]["offset"] == 2
    # offset 3 reached another phone, and the rider did not cause it: missed
    assert report["invariants"]["events_missed"] == 1
    assert report["examples"]["events_missed"] == {
        "phone": "rider", "group": TRIP, "epoch": "epoch-1", "offset": 3, "span": [1, 4]}
    assert report["ok"] is False


def test_checker_counts_a_trip_claimed_by_two_drivers() -> None:
    first = PhoneLog(DRIVER, "first", "driver", requests=[
        Request(1.0, 1.1, "trip.update", TRIP, "STARTED", "ok", 300.0)])
    second = PhoneLog(OTHER, "second", "driver", requests=[
        Request(1.0, 1.2, "trip.update", TRIP, "STARTED", "ok", 500.0)])

    report = check(History([rider_log(), first, second], {TRIP: trip("STARTED")}))

    assert report["invariants"]["double_claims"] == 1
    assert report["examples"]["double_claims"] == {"trip": TRIP, "drivers": [DRIVER, OTHER]}


def test_checker_counts_an_unseen_end_a_late_request_and_a_second_trip() -> None:
    second = {**trip("REQUESTED", None), "id": "trip-2",
              "created": "2026-01-01T00:00:00.000000Z"}
    history = History([rider_log(event(1, 1.0, status="STARTED"))],
                      {TRIP: trip("COMPLETED"), "trip-2": second}, mode="nearest",
                      max_wait=4.0, checked_at=1767225600.0 + 10)

    report = check(history)

    assert report["invariants"]["final_status_unseen"] == 1
    assert report["examples"]["final_status_unseen"]["seen"] == ["REQUESTED", "STARTED"]
    assert report["invariants"]["requested_past_max_wait"] == 1
    assert report["invariants"]["requests_acted_twice"] == 1  # two trips, one request


def test_checker_allows_what_the_protocol_allows() -> None:
    # The driver is left out of its own sends (offset 2: its location, heard by the
    # rider); offset 4 nobody heard, but the driver changed the group just then; the
    # rider's resume lost the group after offset 5, so 6..7 are no gap.
    driver = PhoneLog(DRIVER, "driver", "driver",
                      events=[event(1, 1.0, origin=RIDER), event(3, 3.0, origin=RIDER),
                              event(5, 5.0, origin=RIDER)],
                      sends=[Send(4.0, TRIP)])
    rider = rider_log(event(1, 1.0), event(2, 2.0, type="driver.location", status=None),
                      event(3, 3.0), event(5, 5.0), event(8, 8.0, status="COMPLETED"))
    rider.breaks.append((4, TRIP))  # the disconnect came after the 4th event handed over

    report = check(History([driver, rider], {TRIP: trip("COMPLETED")}))

    assert report["invariants"]["events_missed"] == 1  # only the rider's offset 4
    assert report["examples"]["events_missed"]["phone"] == "rider"
    assert report["examples"]["events_missed"]["offset"] == 4
    rider.sends.append(Send(4.1, TRIP))  # had the rider caused it, it would be allowed
    assert check(History([driver, rider], {TRIP: trip("COMPLETED")}))["ok"] is True


async def test_a_run_through_cut_links_and_a_killed_process_keeps_every_invariant(
        tmp_path: Path, processes: Callable[..., ServerProcess]) -> None:
    """Two processes on the Redis hub behind a proxy that stands for the phones' links:
    every link is cut once, then the process they reach is killed and the proxy sends
    them to the other; the phones reconnect and resume, the survivor takes over the
    dispatch, and the checker still finds nothing broken."""
    env = {"TAXI_HUB_URL": "redis://127.0.0.1:6379/0",
           "TAXI_HUB_PREFIX": f"sim-{uuid.uuid4().hex[:12]}",
           "TAXI_LIMITS_AUTH_RATE": "0", "TAXI_DISPATCH_MODE": "nearest",
           "TAXI_DISPATCH_OFFER_TIMEOUT": "0.25", "TAXI_DISPATCH_MAX_WAIT": "2",
           "TAXI_DISPATCH_LOCATION_TTL": "1.2"}
    first = processes(env=env, name="first")
    second = processes(env=env, name="second")
    proxy = LinkProxy(first.port)
    await proxy.start()
    drivers, riders = 12, 6
    options = Options(url=f"http://127.0.0.1:{proxy.port}", drivers=drivers, riders=riders,
                      duration=14, seed=5, speed=60, wind_down=15, progress_every=0,
                      server_offer_timeout=0.25, server_max_wait=2.0)

    async def faults() -> None:
        await until(lambda: sum(link.open.is_set() for link in proxy.links) >= drivers + riders,
                    "every phone connected", timeout=60)
        await asyncio.sleep(4)
        proxy.cut()
        await asyncio.sleep(4)
        first.process.kill()
        proxy.upstream_port = second.port
        proxy.cut()

    fault = asyncio.ensure_future(faults())
    try:
        report = await simulate(options, io.StringIO())
        await fault
    finally:
        fault.cancel()
        await proxy.stop()

    assert report["invariants"] == {name: 0 for name in report["invariants"]}, report
    assert report["connections"]["reconnects"] >= 2 * (drivers + riders)
    assert report["connections"]["resumes"] >= 2 * (drivers + riders)
    assert report["trips"]["completed"] > 0, report["trips"]


def test_simulated_accounts_get_passwords_that_sign_up_takes() -> None:
    # Hex alone is all digits about once in 1,900 passwords: sign-up refused such a run.
    assert all(_password_errors(new_password()) == {} for _ in range(5000))
    assert _password_errors("1234567890123456") != {}  # what the old generator could make
