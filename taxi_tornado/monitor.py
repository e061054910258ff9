"""What this process and the whole deployment look like now, for the operators.

Every STATS_INTERVAL seconds each process samples itself: its connections, the drivers
and staff on them, its message and error counters (with rates), the readiness of its
store and hub, its version and uptime. With the Redis hub it writes the sample to a key
of its own that expires NODE_TTL seconds later, so that any process reads the samples of
every live process; with the in-process hub the process is the whole deployment.

`overview()` joins the samples with what the store knows about trips into the document
that `GET /api/admin/` answers and the `admin.stats` event carries. Each process pushes
that event to the staff connections it holds itself, so with several processes nobody
hears it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from taxi_tornado import __version__, metrics
from taxi_tornado.background import cancel_and_wait
from taxi_tornado.frames import message_frame
from taxi_tornado.hub import hub_keys, redis_client
from taxi_tornado.store import (
    ACTIVE_STATUSES,
    STAFF,
    StoreError,
    Trip,
    TripStatus,
    User,
    format_time,
    now,
)

if TYPE_CHECKING:
    from taxi_tornado.connection import Connection
    from taxi_tornado.dispatch.service import Dispatch
    from taxi_tornado.hub import Hub
    from taxi_tornado.settings import Settings
    from taxi_tornado.store import Store

log = logging.getLogger("taxi_tornado.monitor")

STATS_INTERVAL = 1.0  # seconds between samples, and between admin.stats events
NODE_TTL = 5  # seconds a process's sample outlives its last write
RATE_WINDOW = 10.0  # seconds of counter history behind a rate
TRIP_ROWS = 200  # unfinished trips listed, oldest first
MAP_DRIVERS = 2000  # located drivers drawn on the map
REDIS_TIMEOUT = 1.0
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# The counters whose totals and rates the page shows: name in the document -> series.
COUNTERS: dict[str, Collector] = {
    "in": metrics.FRAMES_IN,
    "out": metrics.FRAMES_OUT,
    "errors": metrics.ERRORS,
}


class SocketCensus:
    """This process's open sockets by protocol version, and the distinct drivers and staff
    behind them, kept as sockets open and close. Staff sockets (the operators' own pages)
    are counted apart: they are not the service's connections.

    The operators' view reads them every second; walking every socket for them took about
    4 µs a socket (20 ms of the loop each second at 5,000 sockets, a stall every frame
    that arrived meanwhile waited through).
    """

    def __init__(self) -> None:
        self._by_version: dict[int, int] = {}  # riders' and drivers' sockets
        self.staff_sockets = 0
        self._users: dict[str, dict[str, int]] = {"driver": {}, STAFF: {}}  # id -> sockets

    def opened(self, conn: Connection) -> None:
        if conn.user.group == STAFF:
            self.staff_sockets += 1
        else:
            self._by_version[conn.version] = self._by_version.get(conn.version, 0) + 1
        users = self._users.get(conn.user.group)
        if users is not None:
            users[conn.user.id] = users.get(conn.user.id, 0) + 1

    def closed(self, conn: Connection) -> None:
        if conn.user.group == STAFF:
            self.staff_sockets -= 1
        else:
            _decrement(self._by_version, conn.version)
        users = self._users.get(conn.user.group)
        if users is not None:
            _decrement(users, conn.user.id)

    def by_version(self) -> dict[str, int]:
        """Riders' and drivers' sockets by protocol version."""
        return {str(version): count for version, count in sorted(self._by_version.items())}

    def users(self, group: str) -> int:
        """Distinct users of `group` ("driver" or "staff") with an open socket here."""
        return len(self._users[group])


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class Monitored(Protocol):
    """The server's parts the monitor reads (services.py's Services is one; it builds the
    Monitor, so the monitor names what it reads instead of importing it back)."""

    settings: Settings
    hub: Hub
    store: Store
    dispatch: Dispatch
    census: SocketCensus
    draining: bool


class Monitor:
    """Samples this process, shares the samples, and builds the deployment's overview.

    Every second it also sends the overview to the members of `staff_group` (the admin
    plugin's group of operators' sockets), on this process.
    """

    def __init__(self, services: Monitored, staff_group: str) -> None:
        self.services = services
        self.staff_group = staff_group
        self.node_id = services.hub.broker.node_id
        self.started = now()
        self._started_at = time.monotonic()
        self._history: deque[tuple[float, dict[str, dict[str, float]]]] = deque()
        self._nodes: RedisNodes | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.listen: list[str] = []  # host:port of each listening socket

    async def start(self, sockets: Iterable[socket.socket] = ()) -> None:
        """Sample every STATS_INTERVAL; `sockets` are the process's listening sockets,
        whose addresses the page shows (several processes may run on one host)."""
        self.listen = [listen_address(sock) for sock in sockets]
        self._nodes = _nodes_for(self.services)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        nodes, self._nodes = self._nodes, None
        if nodes is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await nodes.forget(self.node_id)
            await nodes.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not self._failing:
                    log.warning("operators' stats failed (%s: %s); retrying every %ss",
                                type(error).__name__, error, STATS_INTERVAL)
                self._failing = True
            else:
                if self._failing:
                    log.warning("operators' stats work again")
                self._failing = False
            await asyncio.sleep(STATS_INTERVAL)

    async def _tick(self) -> None:
        sample = await self.sample()
        if self._nodes is not None:
            await self._nodes.put(sample)
        staff = self.services.hub.groups.get(self.staff_group)
        if not staff:
            return
        frame = message_frame({"type": "admin.stats", "data": await self.overview(sample)})
        for member in tuple(staff):
            member.deliver(frame)

    # This process

    async def sample(self) -> dict[str, Any]:
        """This process now, as one JSON object."""
        services = self.services
        census = services.census
        by_version = census.by_version()
        return {
            "id": self.node_id,
            "version": __version__,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "listen": self.listen,
            "started": format_time(self.started),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "sampled": format_time(now()),
            "connections": {"total": sum(by_version.values()), "by_version": by_version,
                            "staff": census.staff_sockets},
            "drivers_connected": census.users("driver"),
            "staff_connected": census.users(STAFF),
            "ready": {"store": await self._store_ready(), "hub": services.hub.broker.ready,
                      "draining": services.draining},
            "messages": self._messages(),
        }

    async def _store_ready(self) -> bool:
        try:
            await self.services.store.ping()
        except Exception:  # /readyz tells why; the page only needs up or down
            return False
        return True

    def _messages(self) -> dict[str, dict[str, float]]:
        """Counter totals by label, and their rates per second over RATE_WINDOW."""
        stamp = time.monotonic()
        totals = {name: _counter_totals(counter) for name, counter in COUNTERS.items()}
        self._history.append((stamp, totals))
        while len(self._history) > 2 and stamp - self._history[1][0] >= RATE_WINDOW:
            self._history.popleft()
        then, old = self._history[0]
        elapsed = stamp - then
        result: dict[str, dict[str, float]] = dict(totals)
        for name, current in totals.items():
            result[f"{name}_per_s"] = {
                label: round((value - old[name].get(label, 0.0)) / elapsed, 2)
                for label, value in current.items()
            } if elapsed > 0 else dict.fromkeys(current, 0.0)
        return result

    # The deployment

    async def nodes(self, local: dict[str, Any] | None = None
                    ) -> tuple[list[dict[str, Any]], bool]:
        """Every live process's latest sample (this one's `local`, else taken now), and
        whether that list is complete."""
        local = local or await self.sample()
        if self._nodes is None:
            return [local], True
        try:
            found = await self._nodes.all()
        except REDIS_ERRORS:
            return [local], False
        others = [node for node in found if node.get("id") != self.node_id]
        return sorted([local, *others], key=lambda node: str(node.get("started"))), True

    async def overview(self, local: dict[str, Any] | None = None) -> dict[str, Any]:
        """The document of GET /api/admin/ and of the `admin.stats` event."""
        moment = now()
        nodes, complete = await self.nodes(local)
        trips = await self._trips()
        drivers = await self._drivers()
        settings = self.services.settings
        return {
            "generated": format_time(moment),
            "complete": complete,
            "nodes": nodes,
            "connections": _sum_connections(nodes),
            "drivers": {**drivers.counts, "on_trip": trips.drivers_on_trip()},
            "trips": trips.summary(moment),
            "messages": _sum_messages(nodes),
            "health": {
                "store": all(node["ready"]["store"] for node in nodes) and not trips.error,
                "hub": all(node["ready"]["hub"] for node in nodes) and complete
                       and not drivers.error,
            },
            "map": {"drivers": drivers.located, "pick_ups": trips.pick_ups()},
            "page": {"socket_path": settings.server.socket_path,
                     "tile_url": settings.admin.tile_url, "stats_interval": STATS_INTERVAL},
        }

    async def _drivers(self) -> DriversNow:
        """Drivers as the dispatch location index sees them (every process's, with the
        Redis hub: a driver with sockets on two processes counts once)."""
        locations = self.services.dispatch.locations
        try:
            census = await locations.census()
            located = await locations.located(MAP_DRIVERS)
        except REDIS_ERRORS as error:
            return DriversNow({"connected": None, "located": None, "available": None}, [],
                              str(error))
        return DriversNow(
            {"connected": census.connected, "located": census.located,
             "available": census.available},
            [{"id": driver.driver_id, "lat": driver.lat, "lng": driver.lng,
              "heading": driver.heading, "state": driver.state} for driver in located])

    async def _trips(self) -> TripsNow:
        store = self.services.store
        try:
            return TripsNow(await store.trip_counts(), await store.unfinished_trips(TRIP_ROWS))
        except StoreError as error:
            return TripsNow({}, [], str(error))


@dataclass(frozen=True)
class DriversNow:
    """Driver counts and positions from the location index; `error` when it failed."""

    counts: dict[str, int | None]
    located: list[dict[str, Any]]
    error: str | None = None


@dataclass(frozen=True)
class TripsNow:
    """What the store says about trips at one moment; `error` when it could not say."""

    counts: dict[TripStatus, int]
    unfinished: list[Trip]
    error: str | None = None

    def summary(self, moment: datetime) -> dict[str, Any]:
        return {
            "by_status": {status.value: count for status, count in self.counts.items()},
            "unfinished": [trip_row(trip, moment) for trip in self.unfinished],
            "unfinished_total": sum(self.counts.get(status, 0) for status in ACTIVE_STATUSES),
            "error": self.error,
        }

    def drivers_on_trip(self) -> int:
        """Drivers holding a STARTED or IN_PROGRESS trip (among the TRIP_ROWS listed)."""
        return len({trip.driver_id for trip in self.unfinished
                    if trip.driver_id and trip.status is not TripStatus.REQUESTED})

    def pick_ups(self) -> list[dict[str, Any]]:
        """Waiting trips that gave a pick-up position."""
        return [{"trip": trip.id, **trip.pick_up.to_json()} for trip in self.unfinished
                if trip.status is TripStatus.REQUESTED and trip.pick_up is not None]


def trip_row(trip: Trip, moment: datetime) -> dict[str, Any]:
    """A Trip object with rider and driver cut to id and username, and its age."""
    return {
        "id": trip.id,
        "created": format_time(trip.created),
        "updated": format_time(trip.updated),
        "age_s": round((moment - trip.created).total_seconds(), 1),
        "status": trip.status.value,
        "pick_up_address": trip.pick_up_address,
        "drop_off_address": trip.drop_off_address,
        "pick_up": trip.pick_up.to_json() if trip.pick_up else None,
        "drop_off": trip.drop_off.to_json() if trip.drop_off else None,
        "rider": _person(trip.rider),
        "driver": _person(trip.driver),
    }


def _person(user: User | None) -> dict[str, str] | None:
    return {"id": user.id, "username": user.username} if user is not None else None


def listen_address(sock: socket.socket) -> str:
    """`host:port` of a listening socket, an IPv6 host in brackets."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sum_connections(nodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Riders' and drivers' sockets by version, and staff sockets apart."""
    by_version: dict[str, int] = {}
    staff = 0
    for node in nodes:
        connections = node["connections"]
        for version, count in connections["by_version"].items():
            by_version[version] = by_version.get(version, 0) + count
        staff += connections.get("staff", 0)  # absent from a process of an older release
    return {"total": sum(by_version.values()), "by_version": by_version, "staff": staff}


def _sum_messages(nodes: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Totals and rates added up over processes, label by label."""
    summed: dict[str, dict[str, float]] = {}
    for node in nodes:
        for name, values in node["messages"].items():
            target = summed.setdefault(name, {})
            for label, value in values.items():
                target[label] = round(target.get(label, 0.0) + value, 2)
    return summed


def _counter_totals(counter: Collector) -> dict[str, float]:
    """A labelled counter's value per label (its one label), read through collect()."""
    totals: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels:
                totals[next(iter(sample.labels.values()))] = sample.value
    return totals


class RedisNodes:
    """The processes' samples in Redis: one key each with a TTL, and an index set.

    A process that stops deletes its key; one that dies is gone NODE_TTL seconds after
    its last write, and its id is dropped from the index by the next reader.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis_client(url, socket_timeout=REDIS_TIMEOUT,
                                  socket_connect_timeout=REDIS_TIMEOUT)
        keys = hub_keys(url, prefix)  # in a cluster: one hash tag, read together
        self.index = keys.admin_nodes()
        self.prefix = keys.admin_node("")

    async def put(self, sample: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.prefix + sample["id"], orjson.dumps(sample), ex=NODE_TTL)
            pipe.sadd(self.index, sample["id"])
            await pipe.execute()

    async def all(self) -> list[dict[str, Any]]:
        members = await self.redis.smembers(self.index)
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not ids:
            return []
        values = await self.redis.mget([self.prefix + node_id for node_id in ids])
        gone = [node_id for node_id, value in zip(ids, values, strict=True) if value is None]
        if gone:
            await self.redis.srem(self.index, *gone)
        return [orjson.loads(value) for value in values if value is not None]

    async def forget(self, node_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.prefix + node_id)
            pipe.srem(self.index, node_id)
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()


def _nodes_for(services: Monitored) -> RedisNodes | None:
    hub = services.settings.hub
    return None if hub.url.startswith("memory://") else RedisNodes(hub.url, hub.prefix)
