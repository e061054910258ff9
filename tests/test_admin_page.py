"""The operators' page in a real browser: Debian's headless Chromium driven by Playwright.

Playwright's own browser download is never used: the tests launch /usr/bin/chromium
(scripts/test.sh installs it). Every test that logs in saves a screenshot of the page
under build/screenshots/ (git ignores build/), so that a person can look at it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import PASSWORD, ROOT, Client, RunningServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "build" / "screenshots"
ADDRESSES = {"pick_up_address": "1 Dock Road", "drop_off_address": "9 Hill Street"}
QUICK = 2000  # ms: what the page must show within two seconds


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "install Debian's chromium (scripts/test.sh does)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, server: RunningServer) -> AsyncIterator[Page]:
    """A page that fails the test on any script error or policy violation; it closes
    before the server stops (else its socket's reconnects would be errors)."""
    opened = await browser.new_page(viewport={"width": 1280, "height": 960})
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on("console", lambda message: problems.append(message.text)
              if message.type == "error" and "403" not in message.text else None)
    yield opened
    await opened.close()
    assert problems == []


async def log_in(page: Page, server: RunningServer, username: str) -> None:
    await page.goto(f"{server.url}/admin/")
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")


async def staff_page(page: Page, server: RunningServer) -> Page:
    await server.user("olga", "staff")
    await log_in(page, server, "olga")
    await expect(page.locator("#dashboard")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")
    return page


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def redrawn(page: Page) -> None:
    """Wait until the trips table has been drawn anew (it is, on every admin.stats)."""
    await page.evaluate("document.querySelector('#trips tr').dataset.old = 'yes'")
    await expect(page.locator("#trips tr[data-old]")).to_have_count(0)


def row(page: Page, trip_id: str) -> Any:
    return page.locator(f'#trips tr[data-trip="{trip_id}"]')


async def test_staff_logs_in_and_the_page_goes_live(page: Page, server: RunningServer) -> None:
    await staff_page(page, server)
    await expect(page.locator("#who")).to_have_text("olga")
    # Its own socket is an operator's, not a connection of the service.
    await expect(page.locator("#connections-total")).to_have_text("0")
    await expect(page.locator("#connections-versions")).to_have_text("none open · and 1 operator")
    await expect(page.locator("#health")).to_have_text("OK")
    await expect(page.locator("#nodes tr")).to_have_count(1)
    await expect(page.locator("#nodes tr td").nth(1)).to_have_text(f"127.0.0.1:{server.port}")
    await page.reload()  # the token lives in sessionStorage: no second log-in
    await expect(page.locator("#live")).to_have_text("live")
    await page.click("#log-out")
    await expect(page.locator("#login")).to_be_visible()


async def test_the_socket_carries_the_token_outside_its_url(
    page: Page, server: RunningServer,
) -> None:
    """A staff token in a URL lands in proxies' logs; the page offers it as a
    `bearer.` subprotocol instead, and the server still takes it (the page goes live)."""
    urls: list[str] = []
    page.on("websocket", lambda socket: urls.append(socket.url))
    await staff_page(page, server)
    token = await page.evaluate(
        "JSON.parse(sessionStorage.getItem('taxi-admin-tokens')).access")
    assert urls == [f"ws://127.0.0.1:{server.port}/taxi/"]
    assert all(token not in url and "token" not in url for url in urls)


async def test_driver_appears_on_map_and_in_counts_within_two_seconds(
    page: Page, server: RunningServer,
) -> None:
    await staff_page(page, server)
    await expect(page.locator("#drivers-connected")).to_have_text("0")
    driver, token = await server.user("dan", "driver")
    client = await server.connect(token, v2=True)
    await client.send({"type": "driver.location", "data": {"lat": 51.5072, "lng": -0.1276}})
    await expect(page.locator("#drivers-connected")).to_have_text("1", timeout=QUICK)
    dot = page.locator(f'#map circle.driver[data-driver="{driver.id}"]')
    await expect(dot).to_have_class(re.compile(r"\bavailable\b"), timeout=QUICK)
    await expect(page.locator("#drivers-available")).to_have_text("1", timeout=QUICK)
    await screenshot(page, "admin-driver")


async def test_trip_requested_and_claimed_moves_through_the_table(
    page: Page, server: RunningServer,
) -> None:
    await staff_page(page, server)
    _, rider_token = await server.user("rita")
    driver, driver_token = await server.user("dan", "driver")
    rider = await server.connect(rider_token, v2=True)
    driver_ws = await server.connect(driver_token, v2=True)
    await driver_ws.send({"type": "driver.location", "data": {"lat": 51.51, "lng": -0.12}})
    reply = await rider.request({"type": "trip.request", "data": {
        **ADDRESSES, "pick_up": {"lat": 51.5033, "lng": -0.1196}}})
    trip = reply["data"]
    await expect(row(page, trip["id"])).to_have_attribute("data-status", "REQUESTED",
                                                           timeout=QUICK)
    await expect(page.locator(f'#map .pick-up[data-trip="{trip["id"]}"]')).to_have_count(1)
    await expect(row(page, trip["id"]).locator("td.rider")).to_contain_text("rita")
    await expect(row(page, trip["id"]).locator("td.id")).to_have_text(trip["id"][:8])
    await expect(row(page, trip["id"]).locator("td.drop-off")).to_have_text("9 Hill Street")
    for status in ("STARTED", "IN_PROGRESS"):
        await driver_ws.send({"type": "trip.update", "data": {"id": trip["id"],
                                                              "status": status}})
        await expect(row(page, trip["id"])).to_have_attribute("data-status", status,
                                                               timeout=QUICK)
    await expect(row(page, trip["id"]).locator("td.driver")).to_contain_text("dan")
    await expect(page.locator(f'#map .pick-up[data-trip="{trip["id"]}"]')).to_have_count(0)
    await expect(page.locator(f'#map circle.driver[data-driver="{driver.id}"]')) \
        .to_have_class(re.compile(r"\bbusy\b"), timeout=QUICK)
    await driver_ws.send({"type": "trip.update", "data": {"id": trip["id"],
                                                          "status": "COMPLETED"}})
    await expect(row(page, trip["id"])).to_have_count(0, timeout=QUICK)


async def test_a_burst_of_trip_events_is_drawn_together(
    page: Page, server: RunningServer,
) -> None:
    """A busy city sends the page dozens of `admin.trip` events a second. Each one used to
    redraw the whole table and map at once: with a simulated city of 200 drivers and 100
    riders (docs/simulate.md) the page's main thread was busy 9 s of every 10. Events
    that come together are drawn together, at most once per 250 ms (plus once per
    `admin.stats`): 40 requests at once redraw the table a few times, not 40 (41
    before). The bound grows with the time the burst took: a slow machine gets more
    redraws, and the test still holds."""
    await staff_page(page, server)
    riders = []
    for number in range(20):  # limits.trips_per_rider: 3 unfinished at once
        _, token = await server.user(f"rider{number}")
        riders.append(await server.connect(token, v2=True))
    await page.evaluate("""() => {
        window.tripRedraws = 0;
        new MutationObserver((records) => { window.tripRedraws += records.length; })
            .observe(document.getElementById('trips'), { childList: true });
    }""")
    started = time.monotonic()
    for number, rider in enumerate(riders):
        for request in range(2):
            await rider.send({"type": "trip.request", "id": f"{number}-{request}",
                              "data": ADDRESSES})
    await expect(page.locator("#trips tr")).to_have_count(40, timeout=3 * QUICK)
    elapsed = time.monotonic() - started
    redraws = await page.evaluate("window.tripRedraws")
    assert redraws <= 2 + elapsed * (1 / 0.25 + 1), (redraws, elapsed)


async def test_cancel_from_the_page_reaches_the_riders_socket(
    page: Page, server: RunningServer,
) -> None:
    await staff_page(page, server)
    _, rider_token = await server.user("rita")
    rider = await server.connect(rider_token)
    trip = (await rider.request({"type": "trip.request", "data": ADDRESSES}))["data"]
    cancel = row(page, trip["id"]).locator("button.cancel")
    await cancel.click()
    await expect(cancel).to_have_text("Sure?")
    await cancel.click()
    heard = await rider.receive()
    assert heard["type"] == "trip.updated"
    assert (heard["data"]["id"], heard["data"]["status"]) == (trip["id"], "CANCELED")
    await expect(row(page, trip["id"])).to_have_count(0, timeout=QUICK)
    await expect(page.locator("#actions li").first).to_contain_text("canceled trip")


async def test_closing_a_riders_sockets_from_the_page(page: Page, server: RunningServer) -> None:
    await staff_page(page, server)
    _, rider_token = await server.user("rita")
    rider: Client = await server.connect(rider_token)
    trip = (await rider.request({"type": "trip.request", "data": ADDRESSES}))["data"]
    close = row(page, trip["id"]).locator("button.close-sockets").first
    await close.click()
    await expect(close).to_have_text("Sure?")
    await redrawn(page)  # the table is redrawn every second: the button stays armed
    await expect(close).to_have_text("Sure?")
    await close.click()
    assert await rider.closed() == 4000
    await expect(page.locator("#actions li").first).to_contain_text("closed the sockets")


async def test_a_driver_holding_two_trips_is_flagged(page: Page, server: RunningServer) -> None:
    """Two STARTED trips of one driver: each row says which trip it is and where it goes,
    and both rows, and a line above the table, say the driver holds two."""
    await staff_page(page, server)
    rider, _ = await server.user("rita")
    dan, _ = await server.user("dan", "driver")
    dora, _ = await server.user("dora", "driver")
    first = await server.store.create_trip(rider.id, "1 Dock Road", "9 Hill Street")
    second = await server.store.create_trip(rider.id, "1 Dock Road", "4 Mill Lane")
    alone = await server.store.create_trip(rider.id, "2 Quay", "5 Bank")
    for trip, driver in ((first, dan), (second, dan), (alone, dora)):
        await server.assign(trip.id, "STARTED", driver.id)
    for trip in (first, second):
        await expect(row(page, trip.id)).to_have_class(re.compile(r"\bflagged\b"),
                                                        timeout=QUICK)
        await expect(row(page, trip.id).locator("td.driver .badge")).to_have_text("2 trips")
    await expect(row(page, first.id).locator("td.drop-off")).to_have_text("9 Hill Street")
    await expect(row(page, second.id).locator("td.drop-off")).to_have_text("4 Mill Lane")
    await expect(row(page, alone.id)).not_to_have_class(re.compile(r"\bflagged\b"))
    warning = page.locator("#trips-warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("dan holds 2 trips at once")
    await expect(warning).to_contain_text(first.id[:8])
    await screenshot(page, "admin-flagged")


async def test_find_a_user_by_name_and_close_their_sockets(
    page: Page, server: RunningServer,
) -> None:
    await staff_page(page, server)
    rita, rita_token = await server.user("rita")
    await server.user("rick", "driver")
    await server.user("bob")
    rider = await server.connect(rita_token)
    await page.fill("#user-query", "RI")
    await page.click("#user-search button[type=submit]")
    found = page.locator("#users tr")
    await expect(found).to_have_count(2)
    await expect(found.locator("td.name")).to_have_text(["rick", "rita"])
    close = page.locator(f'#users tr[data-user="{rita.id}"] button.close-sockets')
    await close.click()
    await expect(close).to_have_text("Sure?")
    await close.click()
    assert await rider.closed() == 4000
    await expect(page.locator("#actions li").first).to_contain_text(
        "closed the sockets of rita")
    await page.fill("#user-query", "zed")
    await page.click("#user-search button[type=submit]")
    await expect(found).to_have_count(0)
    await expect(page.locator("#users-note")).to_have_text("No user's name starts so.")


async def test_a_riders_token_cannot_open_the_page_or_its_api(
    page: Page, server: RunningServer,
) -> None:
    _, rider_token = await server.user("rita")
    await log_in(page, server, "rita")
    await expect(page.locator("#login-error")).to_have_text("Only staff can use the admin API.")
    await expect(page.locator("#dashboard")).to_be_hidden()
    status = await page.evaluate(
        """async (token) => (await fetch("/api/admin/",
               {headers: {Authorization: `Bearer ${token}`}})).status""", rider_token)
    assert status == 403


async def test_screenshot_of_a_busy_city(page: Page, server: RunningServer) -> None:
    """Drivers in every state and trips at every stage, drawn together: the picture in
    docs/operations.md comes from this test's build/screenshots/admin-page.png."""
    await staff_page(page, server)
    spots = [(51.5079, -0.0877), (51.5155, -0.0922), (51.5033, -0.1196), (51.5138, -0.0984),
             (51.5007, -0.1246), (51.5194, -0.1270), (51.5110, -0.1180)]
    drivers: list[Client] = []
    for number, (lat, lng) in enumerate(spots):
        _, token = await server.user(f"driver{number}", "driver")
        client = await server.connect(token, v2=True)
        await client.send({"type": "driver.location", "data": {"lat": lat, "lng": lng}})
        drivers.append(client)
    await drivers[6].request({"type": "driver.status", "data": {"status": "unavailable"}})
    places = [("Tower Bridge", 51.5055, -0.0754), ("King's Cross", 51.5308, -0.1238),
              ("Borough Market", 51.5055, -0.0910), ("Covent Garden", 51.5117, -0.1240)]
    trips = []
    for number, (address, lat, lng) in enumerate(places):
        _, token = await server.user(f"rider{number}")
        rider = await server.connect(token, v2=True)
        reply = await rider.request({"type": "trip.request", "data": {
            "pick_up_address": address, "drop_off_address": "Paddington",
            "pick_up": {"lat": lat, "lng": lng}}})
        trips.append(reply["data"]["id"])
    for driver, trip_id, status in ((drivers[0], trips[0], "STARTED"),
                                    (drivers[1], trips[1], "IN_PROGRESS")):
        await driver.send({"type": "trip.update", "data": {"id": trip_id, "status": status}})
    await drivers[2].request({"type": "no.such.type"})  # one error frame, for the table
    await expect(page.locator("#drivers-available")).to_have_text("4")
    await expect(page.locator("#map circle.driver")).to_have_count(7)
    await expect(page.locator("#map .pick-up")).to_have_count(2)
    await expect(page.locator("#errors")).to_contain_text("unknown_type")
    # The snapshot with the error frame counts every trip request before it too: their
    # trip.follow messages went to the server's own listeners, not to clients.
    await expect(page.locator("#messages")).to_contain_text("trip.updated")
    await expect(page.locator("#messages")).not_to_contain_text("trip.follow")
    await page.fill("#user-query", "rider")
    await page.click("#user-search button[type=submit]")
    await expect(page.locator("#users tr")).to_have_count(4)
    await screenshot(page, "admin-page")
