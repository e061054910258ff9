"""A run from start to report: a server (the one at --url, or one of its own), the
accounts, a phone per person, the workload for `duration` seconds, a wind-down in which
rides under way end, a settle time for the last events, the store's trips over HTTP,
and the checker's report. A progress line goes to stderr every few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from taxi_tornado.client import TaxiClient
from taxi_tornado.simulate import api
from taxi_tornado.simulate.accounts import Account, prepare
from taxi_tornado.simulate.checker import History, check
from taxi_tornado.simulate.city import City, Point
from taxi_tornado.simulate.clock import Clock
from taxi_tornado.simulate.drivers import Driver, Duty
from taxi_tornado.simulate.options import Options
from taxi_tornado.simulate.recorder import Phone, PhoneLog
from taxi_tornado.simulate.riders import Rider
from taxi_tornado.simulate.server import own_server

CONNECTING_AT_ONCE = 25
#: Seconds an account's access token must still live when the run starts.
TOKEN_MARGIN = 600.0


async def simulate(options: Options, progress: TextIO = sys.stderr) -> dict[str, Any]:
    """Run the simulation and return the report (also written to `options.report`)."""
    async with _server(options) as base:
        report = await _Run(options, base, progress).run()
    if options.report is not None:
        options.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


@contextlib.asynccontextmanager
async def _server(options: Options) -> AsyncIterator[str]:
    if options.url is not None:
        yield http_base(options.url)
        return
    if options.accounts is not None:  # kept with the accounts, so they stay valid
        async with own_server(options, Path(f"{options.accounts}.data")) as base:
            yield base
        return
    with tempfile.TemporaryDirectory(prefix="taxi-simulate-") as data_dir:
        async with own_server(options, Path(data_dir)) as base:
            yield base


def http_base(url: str) -> str:
    """http(s)://host:port from any URL of the server (ws(s):// too)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


def socket_url(base: str) -> str:
    return ("wss" if base.startswith("https") else "ws") + base[base.index(":"):] + "/taxi/"


class _Run:
    def __init__(self, options: Options, base: str, progress: TextIO) -> None:
        self.options, self.base, self.out = options, base, progress
        self.drivers: list[Driver] = []
        self.riders: list[Rider] = []
        self.phones: list[Phone] = []

    async def run(self) -> dict[str, Any]:
        options = self.options
        needed = options.duration + options.wind_down + TOKEN_MARGIN
        key = self.base if options.url is not None else "self-started"
        self._say(f"preparing {options.drivers} drivers and {options.riders} riders "
                  f"on {self.base}")
        driver_accounts, rider_accounts = await prepare(
            self.base, options.drivers, options.riders, options.accounts, key, needed)
        clock = Clock(options.speed)
        await self._connect(clock, driver_accounts, rider_accounts)
        since = _rfc3339(time.time() - 5)
        try:
            await self._workload(clock)
            await asyncio.sleep(options.settle)
            checked_at = time.time()
            trips = await self._store_trips(rider_accounts, since)
        finally:
            await asyncio.gather(*(phone.client.close() for phone in self.phones))
        history = History([phone.log for phone in self.phones], trips, self._mode(),
                          options.max_wait, grace=options.offer_timeout + 2.0,
                          checked_at=checked_at, speed=options.speed)
        report = check(history)
        return {"run": self._describe(), **report}

    async def _connect(self, clock: Clock, driver_accounts: list[Account],
                       rider_accounts: list[Account]) -> None:
        options, behaviour = self.options, self.options.behaviour
        city = City(Point(*options.center), options.radius_km * 1000)
        url = socket_url(self.base)
        people = [*driver_accounts, *rider_accounts]
        for index, account in enumerate(people):
            rng = random.Random(options.seed * 1_000_003 + index)
            client = TaxiClient(url, _token_of(account), reconnect=(0.2, 5.0),
                                request_timeout=10.0)
            phone = Phone(client, PhoneLog(account.id, account.username, account.group), clock)
            self.phones.append(phone)
            if account.group == "driver":
                self.drivers.append(Driver(phone, clock, city, rng, behaviour,
                                           options.position_every_wall))
            else:
                self.riders.append(Rider(phone, clock, city, rng, behaviour,
                                         _reload_of(self.base, account)))
        limit = asyncio.Semaphore(CONNECTING_AT_ONCE)

        async def connect(phone: Phone) -> None:
            async with limit:
                await asyncio.wait_for(phone.client.connect(), 30)

        await asyncio.gather(*(connect(phone) for phone in self.phones))
        self._say(f"{len(self.phones)} phones connected")

    async def _workload(self, clock: Clock) -> None:
        options = self.options
        winding_down, stop = asyncio.Event(), asyncio.Event()
        clock.start()
        drivers = [asyncio.ensure_future(d.run(stop, winding_down)) for d in self.drivers]
        riders = [asyncio.ensure_future(r.run(winding_down, stop)) for r in self.riders]
        reporter = asyncio.ensure_future(self._progress(clock))
        try:
            await asyncio.sleep(options.duration)
            winding_down.set()
            self._say("winding down: no new trips; rides under way end")
            if riders:
                await asyncio.wait(riders, timeout=options.wind_down)
            stop.set()
            await asyncio.wait([*drivers, *riders], timeout=5.0)
        finally:
            stop.set()
            reporter.cancel()
            for task in (*drivers, *riders):
                task.cancel()
            await asyncio.gather(*drivers, *riders, reporter, return_exceptions=True)

    async def _store_trips(self, riders: list[Account],
                           since: str) -> dict[str, dict[str, Any]]:
        """The run's trips as each rider sees them over the HTTP API."""
        limit = asyncio.Semaphore(8)

        async def of(account: Account) -> list[dict[str, Any]]:
            async with limit:
                return await api.trips(self.base, account.access, since)

        lists = await asyncio.gather(*(of(account) for account in riders))
        return {str(trip["id"]): trip for trips in lists for trip in trips}

    async def _progress(self, clock: Clock) -> None:
        every = self.options.progress_every
        if every <= 0:
            return
        while True:
            await asyncio.sleep(every)
            self._say(self._progress_line(clock))

    def _progress_line(self, clock: Clock) -> str:
        requested = matched = completed = 0
        for phone in self.phones:
            for request in phone.log.requests:
                if request.outcome != "ok":
                    continue
                requested += request.type == "trip.request"
                matched += request.type == "trip.update" and request.status == "STARTED"
                completed += request.type == "trip.update" and request.status == "COMPLETED"
        busy = sum(driver.trip is not None for driver in self.drivers)
        off = sum(driver.duty is Duty.OFF for driver in self.drivers)
        reconnects = sum(phone.log.disconnects for phone in self.phones)
        errors = sum(sum(phone.log.errors.values()) for phone in self.phones)
        return (f"{clock.wall():5.0f} s (simulated {clock.sim() / 60:5.1f} min): "
                f"trips {requested} requested, {matched} matched, {completed} completed; "
                f"drivers {busy} on a trip, {off} off; reconnects {reconnects}, "
                f"error replies {errors}")

    def _mode(self) -> str:
        """The self-started server's mode; a server at --url shows it by its offers."""
        if self.options.url is None:
            return self.options.dispatch
        offered = any(event.type == "trip.offer" for driver in self.drivers
                      for event in driver.phone.log.events)
        return "nearest" if offered else "broadcast"

    def _describe(self) -> dict[str, Any]:
        options = self.options
        return {"url": options.url, "server": "own" if options.url is None else "given",
                "dispatch": self._mode(), "drivers": options.drivers,
                "riders": options.riders, "duration_s": options.duration,
                "seed": options.seed, "speed": options.speed,
                "center": list(options.center), "radius_km": options.radius_km,
                "max_wait_s": options.max_wait, "offer_timeout_s": options.offer_timeout}

    def _say(self, line: str) -> None:
        if self.options.progress_every > 0:
            print(f"simulate: {line}", file=self.out, flush=True)


def _token_of(account: Account) -> Any:
    def get_token() -> str:
        return account.access

    return get_token


def _reload_of(base: str, account: Account) -> Any:
    async def reload() -> list[dict[str, Any]]:
        return await api.trips(base, account.access)

    return reload


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
