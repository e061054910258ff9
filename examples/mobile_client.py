"""A reference taxi_tornado client for mobile links (docs/mobile.md), on `websockets`.

It does what a phone app should do, in the order docs/mobile.md gives:

- opens `/taxi/` with `taxi.v2` and the access token as a `bearer.<token>` subprotocol
  (never in the URL);
- remembers the last position (`pos`) of every group it hears from, drops an event it
  already has, and sends `session.resume` with those positions as its first frame after
  every reconnect; until `session.resumed` it holds the events of those groups back and
  hands them over in offset order;
- reloads its trips over HTTP (`GET /api/trip/`) when a group was not recovered, when
  it holds an unfinished trip whose group it has no position for (the rider's fresh
  trip before anybody took it), when a live event brings a new epoch, and on its first
  connect;
- refreshes the access token before it expires (`/api/token/refresh/`, then
  `auth.refresh` on the live socket), and at once on `auth.expired` or close 4001;
- reconnects after a lost link with exponential backoff and full jitter, at once (to the
  next server) after 1001, and gives up on 1000, 1008, 403 and a refresh token that no
  longer works.

    client = MobileClient(["http://127.0.0.1:8000"], access, refresh)
    await client.start()
    reply = await client.request("trip.request", {"pick_up_address": "A", ...})
    event = await client.next_event()

`network_lost()` / `network_back()` stand for the phone's connectivity callbacks (a
tunnel: the TCP link drops without a close frame, and nothing is dialled until the
network is back); the tests use them too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

FINAL_STATUSES = ("COMPLETED", "CANCELED")
GIVE_UP_CODES = (1000, 1008)


class SessionEnded(Exception):
    """The client stopped for good: it needs the user to log in again, or a fix."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: a random wait up to min(cap, first * 2**n)."""

    first: float = 0.5
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap, self.first * 2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


class MobileClient:
    def __init__(self, servers: list[str], access: str, refresh: str | None = None, *,
                 refresh_margin: float = 60.0, backoff: Backoff | None = None) -> None:
        self.servers = servers  # http(s)://host:port; the next one is tried on reconnect
        self.access = access
        self.refresh_token = refresh
        self.refresh_margin = refresh_margin
        self.backoff = backoff or Backoff()
        self.positions: dict[str, dict[str, Any]] = {}  # group -> {"offset", "epoch"}
        self.trips: dict[str, dict[str, Any]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.resumes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reloads = 0
        self.connects = 0
        self.ended: BaseException | None = None
        self.ws: ClientConnection | None = None
        self._online = asyncio.Event()
        self._online.set()
        self._connected = asyncio.Event()
        self._server = itertools.cycle(range(len(servers)))
        self._current = next(self._server)
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._held: list[dict[str, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    # --- what the app calls ---------------------------------------------------------

    async def start(self, timeout: float = 10) -> None:
        """Connect (and resume) in the background; return once the first socket is open."""
        self._tasks = [asyncio.ensure_future(self._run()),
                       asyncio.ensure_future(self._refresh_before_expiry())]
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ws is not None:
            await self.ws.close()

    async def request(self, kind: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        """Send one frame and wait for its reply (or error frame)."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self.ws is not None
        frame_id = next(self._ids)
        reply = self._replies[frame_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"type": kind, "data": data, "id": frame_id}))
        try:
            return await asyncio.wait_for(reply, timeout)
        finally:
            self._replies.pop(frame_id, None)

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def next_resume(self, timeout: float = 10) -> dict[str, Any]:
        """The `data` of the next `session.resumed`."""
        return await asyncio.wait_for(self.resumes.get(), timeout)

    def network_lost(self) -> None:
        """The phone lost its link: the TCP connection drops, no close frame is sent."""
        self._online.clear()
        self._connected.clear()
        if self.ws is not None:
            self.ws.transport.abort()

    def network_back(self) -> None:
        self._online.set()

    # --- the connection loop ----------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._online.wait()
            try:
                delay = await self._connect_once()
            except SessionEnded as ended:
                self.ended = ended
                self._connected.set()  # wake request() callers; they fail on the socket
                return
            await asyncio.sleep(delay)

    async def _connect_once(self) -> float:
        """One socket, from dialling to its close; returns how long to wait before the
        next one."""
        try:
            code = await self._session()
        except InvalidStatus as refused:
            return await self._after_refusal(refused.response.status_code)
        except (OSError, TimeoutError):
            self._current = next(self._server)
            return self.backoff.next_delay()
        finally:
            self._connected.clear()
        return await self._after_close(code)

    async def _session(self) -> int:
        base = self.servers[self._current].replace("http", "ws", 1)
        async with connect(f"{base}/taxi/", subprotocols=[Subprotocol("taxi.v2"),
                                         Subprotocol(f"bearer.{self.access}")],
                           proxy=None, ping_interval=None, max_queue=None) as ws:
            self.ws = ws
            self.connects += 1
            self.backoff.reset()
            await self._resume(ws, first=self.connects == 1)
            self._connected.set()
            with contextlib.suppress(ConnectionClosed):
                async for text in ws:
                    self._receive(json.loads(text))
            return ws.close_code or 1006

    async def _resume(self, ws: ClientConnection, first: bool) -> None:
        """The first frame on every socket; what the server replays comes before the
        answer, which the read loop handles."""
        self._held = [] if self.positions else None
        frame_id = next(self._ids)
        self._replies[frame_id] = asyncio.get_running_loop().create_future()
        self._replies[frame_id].add_done_callback(
            lambda reply: self._spawn(self._resumed(reply.result(), first)))
        await ws.send(json.dumps({"type": "session.resume", "id": frame_id,
                                  "data": {"positions": self.positions}}))

    async def _resumed(self, reply: dict[str, Any], first: bool) -> None:
        groups = reply.get("data", {}).get("groups", {})
        lost = [group for group, result in groups.items() if not result["recovered"]]
        for group in lost:  # the reload below stands for them; go on from the next event
            self.positions.pop(group, None)
        held, self._held = self._held or [], None
        held.sort(key=lambda event: event["pos"]["offset"])
        for event in held:
            self._accept(event)
        unplaced = any(trip["status"] not in FINAL_STATUSES and trip_id not in self.positions
                       for trip_id, trip in self.trips.items())
        if first or lost or unplaced:
            await self._reload()
        self.resumes.put_nowait(reply.get("data", {}))

    def _receive(self, message: dict[str, Any]) -> None:
        reply = self._replies.pop(message.get("id"), None)  # type: ignore[arg-type]
        if reply is not None:
            self._remember_trip(message)
            reply.set_result(message)
            return
        kind = message.get("type")
        if kind == "auth.expired":
            self._spawn(self._refresh())
            return
        if self._held is not None and "pos" in message \
                and message["pos"]["group"] in self.positions:
            self._held.append(message)  # orders after the replay, by offset
            return
        self._accept(message)

    def _accept(self, event: dict[str, Any]) -> None:
        """Hand an event to the app once, remembering its position."""
        pos = event.get("pos")
        if pos is not None:
            known = self.positions.get(pos["group"])
            if known and known["epoch"] == pos["epoch"] and pos["offset"] <= known["offset"]:
                return  # had it already
            if known and known["epoch"] != pos["epoch"]:
                self._spawn(self._reload())  # the server lost that history meanwhile
            self.positions[pos["group"]] = {"offset": pos["offset"], "epoch": pos["epoch"]}
        self._remember_trip(event)
        self.events.put_nowait(event)

    def _remember_trip(self, message: dict[str, Any]) -> None:
        trip = message.get("data") if message.get("type") == "trip.updated" else None
        if not isinstance(trip, dict):
            return
        known = self.trips.get(trip["id"])
        if known is None or known["updated"] <= trip["updated"]:
            self.trips[trip["id"]] = trip

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _after_close(self, code: int) -> float:
        if code in GIVE_UP_CODES:
            raise SessionEnded(f"the server closed the socket with {code}")
        if code == 4001:  # the token expired: a fresh one, then at once
            await self._renew_access()
            return 0.0
        if code == 1001:  # the server is going away: another one, soon
            self._current = next(self._server)
            return random.uniform(0, self.backoff.first)
        self._current = next(self._server)
        return self.backoff.next_delay()  # 1006 (lost link), 1011, 1013, ...

    async def _after_refusal(self, status: int) -> float:
        if status == 401:
            await self._renew_access()
            return 0.0
        if status in (400, 403):
            raise SessionEnded(f"the server refused the socket with HTTP {status}")
        self._current = next(self._server)
        return self.backoff.next_delay()  # 429, 503, ...

    # --- tokens ---------------------------------------------------------------------

    async def _refresh_before_expiry(self) -> None:
        pause = 0.0
        while self.ended is None:
            wait = token_expiry(self.access) - time.time() - self.refresh_margin
            await asyncio.sleep(max(wait, pause))
            await self._refresh()
            pause = 1.0  # a token that lives less than the margin: refresh once a second

    async def _refresh(self) -> None:
        """A new access token, then `auth.refresh` on the live socket."""
        try:
            await self._renew_access()
        except SessionEnded as ended:
            self.ended = ended
            return
        if self._connected.is_set() and self.ws is not None:
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                await self.request("auth.refresh", {"token": self.access})

    async def _renew_access(self) -> None:
        if self.refresh_token is None:
            raise SessionEnded("the access token expired and there is no refresh token")
        status, body = await self._http("POST", "/api/token/refresh/",
                                        {"refresh": self.refresh_token})
        if status != 200:
            raise SessionEnded("the refresh token no longer works: log in again")
        self.access = body["access"]

    async def _reload(self) -> None:
        status, trips = await self._http("GET", "/api/trip/")
        if status == 200:
            self.reloads += 1
            for trip in trips:
                self._remember_trip({"type": "trip.updated", "data": trip})

    async def _http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.servers[self._current] + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.access}"})
        return await asyncio.to_thread(_fetch, request)


def _fetch(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return 0, None


def token_expiry(token: str) -> float:
    """The `exp` of a JWT, read without checking it (the server checks)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return float(claims["exp"])
