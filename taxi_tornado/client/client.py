"""`TaxiClient`: one logical session with a taxi_tornado server, kept over any number of
sockets (docs/protocol.md, "Sessions that survive a phone"). It reconnects with backoff,
resumes every group it heard from, keeps its token fresh on the live socket, and sends
again the keyed requests whose replies a dropped link took.

Everything runs in the caller's event loop, without threads: one task per client for
the socket (dial, read, back off, dial again), timers for the refresh and the request
timeouts, so that a simulator can run hundreds of clients in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal, overload

import orjson

try:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.typing import Subprotocol
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError("taxi_tornado.client needs the websockets library: "
                      "pip install 'taxi-tornado[client]'") from missing

from taxi_tornado.client.backoff import backoff
from taxi_tornado.client.errors import TaxiError
from taxi_tornado.client.positions import Frame, Position, Positions
from taxi_tornado.client.redact import RedactingFilter, redact
from taxi_tornado.client.token import check_token, token_expiry

log = logging.getLogger(__name__)
#: The websockets library's logger for the client's sockets: at DEBUG it logs every
#: handshake header, `bearer.<token>` included, so its lines pass the redacting filter.
socket_log = logging.getLogger("taxi_tornado.client.websockets")
for _logger in (log, socket_log):
    _logger.addFilter(RedactingFilter())

State = Literal["connecting", "connected", "disconnected", "closed"]
TokenSource = Callable[[], str | Awaitable[str]]
Unsubscribe = Callable[[], None]

#: Types whose frames carry an idempotency `key` (docs/protocol.md, "Idempotent requests").
KEYED_TYPES: frozenset[str] = frozenset(
    {"trip.request", "trip.update", "trip.cancel", "trip.decline",
     "create.trip", "update.trip"})  # the course's names of the first two
#: Seconds before the token's `exp` at which it is refreshed (or a quarter of its life
#: when that is shorter), leaving room for a slow get_token() and clock skew.
REFRESH_MARGIN = 60.0
#: Seconds before a keyed request answered `in_progress` is asked about again.
IN_PROGRESS_RETRY = 0.25
#: Seconds before a failed refresh (get_token() raised, or the server said no) is tried
#: again; `auth.expired` still triggers one at once.
REFRESH_RETRY = 5.0


class _Pending:
    """A request waiting for its reply: encoded once, so that a resend after a reconnect
    is the same frame with the same `id` and `key`."""

    __slots__ = ("done", "keyed", "socket", "text", "timer", "type")

    def __init__(self, type: str, text: str, keyed: bool,
                 done: Callable[[Any, TaxiError | None], None]) -> None:
        self.type = type
        self.text = text
        self.keyed = keyed
        self.done = done
        # The socket it went out on; anything but the live socket means it has to go.
        self.socket: ClientConnection | None = None
        self.timer: asyncio.TimerHandle | None = None


def _closed_error() -> TaxiError:
    return TaxiError("closed", "the client was closed")


class TaxiClient:
    """A v2 session with a taxi_tornado server that survives lost links and expiring
    tokens.

    `url` is the socket endpoint (``wss://taxi.example.com/taxi/``), without a token:
    the token travels in the `bearer.<token>` subprotocol, never in the URL (proxies
    keep URLs in their access logs). `get_token` returns a valid access JWT, plain or
    awaitable; it is called before every connect and again before the token's `exp`.

    `reconnect` is (min_delay, max_delay) in seconds: the first backoff ceiling, and the
    largest. `request_timeout` is the default timeout of `request()`. `positions` are
    the ones `positions` gave before an app restart, to resume from after a cold start.
    `keyed_types` adds a plugin's keyed types to the built-in ones. `ping_interval`
    (seconds, None for none) is how often the link is checked: a dead link without a
    close frame is noticed within about twice that.
    """

    def __init__(
        self,
        url: str,
        get_token: TokenSource,
        *,
        reconnect: tuple[float, float] = (0.5, 20.0),
        request_timeout: float = 10.0,
        queue_limit: int = 100,
        positions: Mapping[str, Position] | None = None,
        keyed_types: Iterable[str] = (),
        ping_interval: float | None = 20.0,
        open_timeout: float = 10.0,
    ) -> None:
        min_delay, max_delay = reconnect
        if not 0 <= min_delay <= max_delay:
            raise ValueError("reconnect: (min_delay, max_delay) with 0 <= min_delay <= max_delay")
        if "?token=" in url or "&token=" in url:
            raise ValueError("url: the token goes in get_token, never in the URL")
        self._url = url
        self._get_token = get_token
        self._min_delay, self._max_delay = min_delay, max_delay
        self._request_timeout = request_timeout
        self._queue_limit = queue_limit
        self._keyed = KEYED_TYPES | frozenset(keyed_types)
        self._ping_interval = ping_interval
        self._open_timeout = open_timeout
        self._positions = Positions(positions)
        self._listeners: dict[str, list[Callable[..., object]]] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._state: State = "disconnected"
        self._socket: ClientConnection | None = None  # open; `_live` once resumed
        self._live: ClientConnection | None = None
        self._token = ""
        self._attempt = 0
        self._opened = False  # a socket has opened: every later one resumes
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._refreshing = False

    # --- the app's side --------------------------------------------------------------

    @property
    def state(self) -> State:
        """"connecting" | "connected" | "disconnected" | "closed"."""
        return self._state

    @property
    def positions(self) -> dict[str, Position]:
        """A copy of the last position per group: store it if the app wants to resume
        after a cold start (pass it back as `positions=`)."""
        return self._positions.snapshot()

    async def connect(self) -> None:
        """Return once a socket is open (and its resume sent); from then on the client
        reconnects by itself until `close()`. Called while the client waits to
        reconnect, it dials at once: call it when the device's network comes back.

        It waits as long as it takes; wrap it in `asyncio.wait_for` for a deadline (the
        client goes on trying after the deadline). A token from get_token() that cannot
        work (not a JWT) raises `TaxiError("bad_token")` at once; before any socket
        opened, the client then stops dialling until connect() is called again."""
        if self._closed():
            raise _closed_error()
        if self._live is not None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        else:
            self._wake()
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def close(self) -> None:
        """Close for good: no reconnect, and every request still waiting raises
        `TaxiError("closed")`."""
        if self._closed():
            return
        self._set_state("closed")
        self._cancel_refresh()
        self._wake()
        for frame_id in list(self._pending):
            self._settle(frame_id, None, _closed_error())
        self._fail_waiters(_closed_error())
        socket, self._socket, self._live = self._socket, None, None
        current = asyncio.current_task()
        tasks = [task for task in (self._runner, *self._tasks)
                 if task is not None and task is not current]
        for task in tasks:
            task.cancel()
        if socket is not None:
            with contextlib.suppress(OSError, WebSocketException):  # already gone
                await socket.close(1000)
        await asyncio.gather(*tasks, return_exceptions=True)

    @overload
    def on(self, type: Literal["state"], listener: Callable[[State], object]) -> Unsubscribe:
        ...

    @overload
    def on(self, type: Literal["resumed", "disconnect"],
           listener: Callable[[dict[str, Any]], object]) -> Unsubscribe:
        ...

    @overload
    def on(self, type: str, listener: Callable[[Any, Frame], object]) -> Unsubscribe:
        ...

    def on(self, type: str, listener: Callable[..., object]) -> Unsubscribe:
        """Call `listener` for every `type`; returns the function that unsubscribes.

        Server events (any type the server sends: "trip.updated", "driver.location",
        "trip.offer", "auth.expired", "error" frames that answer nothing of ours, ...)
        call `listener(data, frame)`, each group event once and in offset order per
        group. The client's own events call `listener(data)`: "state" (the new state),
        "resumed" (the `session.resumed` data after a reconnect: a group with
        `recovered: false` is one whose state the app reloads over HTTP), and
        "disconnect" (`{"code", "reason"}` of a socket that closed or failed to open,
        not by `close()`; 1008 and 1009 mean the app sent what it must not). Problems
        with no request to raise them from (get_token() failing, a refused refresh) come
        as "error" with `(data, frame)` like an error frame, whose `code` says what.

        Listeners run inside the client's read loop: keep them short, and start a task
        for anything that waits. One that raises is logged and the others still run.
        """
        self._listeners[type] = [*self._listeners.get(type, ()), listener]

        def unsubscribe() -> None:
            listeners = list(self._listeners.get(type, ()))
            if listener in listeners:
                listeners.remove(listener)
                self._listeners[type] = listeners

        return unsubscribe

    async def request(self, type: str, data: Any = None, *,
                      timeout: float | None = None) -> Any:
        """Send `{type, data, id}` and return the reply's `data`.

        Raises `TaxiError`: the error frame's code, or `timeout`, `closed`,
        `disconnected`, `queue_full`, `too_big` (see TaxiError). A keyed type
        (`trip.request`, `trip.update`, `trip.cancel`, `trip.decline`, and
        `keyed_types`) gets a fresh idempotency `key`, and when the link drops before
        its reply it is sent again, same `id` and `key`, on the next socket: the server
        answers it without acting twice. While no socket is open the request waits in
        a queue of at most `queue_limit` and goes out after the reconnect. `timeout`
        (default `request_timeout`) runs from this call, queueing included.
        """
        if self._closed():
            raise _closed_error()
        if self._live is None and len(self._pending) >= self._queue_limit:
            raise TaxiError("queue_full", f"{self._queue_limit} requests already wait for "
                                          "a connection")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(reply: Any, error: TaxiError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)

        frame_id, pending = self._add(type, data, timeout, done)
        try:
            await self._transmit(pending)
            return await future
        finally:
            if frame_id in self._pending:  # the caller was cancelled: nobody waits now
                self._settle(frame_id, None, None)

    async def send(self, type: str, data: Any = None) -> bool:
        """Send a frame that gets no reply (`driver.location`) on the live socket, and
        say whether it went out. Not queued and not sent again: a position is worth
        nothing late, and the next one replaces it. An error frame it causes comes to
        the "error" listeners."""
        if self._closed():
            raise _closed_error()
        socket = self._live
        if socket is None:
            return False
        frame: dict[str, Any] = {"type": type}
        if data is not None:
            frame["data"] = data
        try:
            await socket.send(orjson.dumps(frame).decode())
        except (ConnectionClosed, OSError):
            return False
        return True

    # --- requests ----------------------------------------------------------------------

    def _add(self, type: str, data: Any, timeout: float | None,
             done: Callable[[Any, TaxiError | None], None]) -> tuple[int, _Pending]:
        frame_id = next(self._ids)
        frame: dict[str, Any] = {"type": type, "id": frame_id}
        if data is not None:
            frame["data"] = data
        keyed = type in self._keyed
        if keyed:
            frame["key"] = uuid.uuid4().hex
        pending = _Pending(type, orjson.dumps(frame).decode(), keyed, done)
        wait = self._request_timeout if timeout is None else timeout
        pending.timer = asyncio.get_running_loop().call_later(
            wait, self._time_out, frame_id, wait)
        self._pending[frame_id] = pending
        return frame_id, pending

    def _time_out(self, frame_id: int, wait: float) -> None:
        pending = self._pending.get(frame_id)
        if pending is not None:
            self._settle(frame_id, None, TaxiError(
                "timeout", f"no reply to {pending.type} within {wait:g} s"))

    async def _transmit(self, pending: _Pending) -> None:
        """Send `pending` on the live socket unless it went out there already. A send
        that fails leaves it to the close of that socket (which follows) to decide."""
        socket = self._live
        if socket is None or pending.socket is socket:
            return
        pending.socket = socket
        with contextlib.suppress(ConnectionClosed, OSError):
            await socket.send(pending.text)

    def _settle(self, frame_id: int, reply: Any, error: TaxiError | None) -> None:
        pending = self._pending.pop(frame_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        pending.done(reply, error)

    def _on_reply(self, frame: Frame) -> None:
        """A frame with an `id` answers one of ours; one nobody waits for is dropped."""
        frame_id = frame["id"]
        pending = self._pending.get(frame_id) if type(frame_id) is int else None
        if pending is None:
            return
        if frame["type"] != "error":
            self._settle(frame_id, frame.get("data"), None)
            return
        data = frame.get("data")
        data = data if isinstance(data, dict) else {}
        code = str(data.get("code") or "error")
        if code == "in_progress" and pending.keyed:
            # The copy sent before the link dropped is still being handled: ask again.
            pending.socket = None
            asyncio.get_running_loop().call_later(IN_PROGRESS_RETRY, self._resend, frame_id)
            return
        errors, retry_after = data.get("errors"), data.get("retry_after")
        self._settle(frame_id, None, TaxiError(
            code, str(data.get("detail") or ""), errors if isinstance(errors, dict) else None,
            retry_after=float(retry_after) if isinstance(retry_after, int | float) else None))

    def _resend(self, frame_id: int) -> None:
        pending = self._pending.get(frame_id)
        if pending is not None:
            self._spawn(self._transmit(pending))

    # --- the socket --------------------------------------------------------------------

    async def _run(self) -> None:
        """Dial, read until the socket closes, back off, dial again, until close(); or
        until a token that cannot work before any socket opened (connect() raised)."""
        while not self._closed():
            self._set_state("connecting")
            try:
                code = await self._session()
            except Exception:  # a bug must not leave the client "connecting" for ever
                log.exception("taxi client: the session failed")
                code = 1006
            if self._closed():
                return
            self._set_state("disconnected")
            if code is None:
                self._runner = None
                return
            await self._sleep(self._delay(code))

    async def _session(self) -> int | None:
        """One socket from dialling to its close; returns the close code (1006 for a
        link that dropped without a close frame or never opened), or None to stop: a
        token that cannot work, and no session yet to keep."""
        try:
            token = await self._fetch_token()
        except TaxiError as bad:
            self._emit_error(bad.code, bad.detail)
            self._fail_waiters(bad)
            return 1006 if self._opened else None
        except Exception as error:  # the app's code: whatever it raises, try again later
            self._emit_error("token_unavailable", f"get_token() failed: {error!r}")
            return 1006
        if self._closed():
            return 1000
        socket = await self._dial(token)
        if socket is None:
            return 1006
        self._socket, self._token, self._attempt = socket, token, 0
        try:
            await self._open(socket)
            async for text in socket:
                self._on_frame(text)
        except ConnectionClosed:
            pass
        finally:
            self._on_close(socket)
        return socket.close_code or 1006

    async def _dial(self, token: str) -> ClientConnection | None:
        """The socket, or None after telling the "disconnect" listeners why not."""
        try:
            return await ws_connect(
                self._url, subprotocols=[Subprotocol("taxi.v2"), Subprotocol(f"bearer.{token}")],
                open_timeout=self._open_timeout, ping_interval=self._ping_interval,
                ping_timeout=self._ping_interval, logger=socket_log)
        except InvalidStatus as refused:
            # 401: the token was refused; the next attempt asks get_token() again.
            reason = f"refused with HTTP {refused.response.status_code}"
        except (OSError, TimeoutError, WebSocketException) as error:
            reason = f"could not connect: {error}"
        except Exception as error:  # whatever the library raises, the loop goes on
            reason = f"could not connect: {type(error).__name__}: {error}"
        self._emit("disconnect", {"code": 1006, "reason": redact(reason)})
        return None

    async def _fetch_token(self) -> str:
        """The token from get_token(), without the whitespace around it (a token read
        from a file ends with a newline); TaxiError `bad_token` when it cannot work."""
        token = self._get_token()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise TypeError(f"get_token() gave {type(token).__name__}, not a token string")
        token = token.strip()
        check_token(token)
        return token

    async def _open(self, socket: ClientConnection) -> None:
        """The resume goes first (a live event that beat it could pass older ones), then
        the requests that waited, then the app hears it is connected."""
        if self._opened or self._positions:
            await self._resume(socket)
        self._opened = True
        self._live = socket
        for pending in list(self._pending.values()):
            await self._transmit(pending)
        if self._live is not socket:
            return
        self._schedule_refresh(0.0)
        self._set_state("connected")
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _resume(self, socket: ClientConnection) -> None:
        positions = self._positions.resume()

        def resumed(reply: Any, error: TaxiError | None) -> None:
            groups = reply.get("groups") if isinstance(reply, dict) else None
            lost = [group for group, result in (groups or {}).items()
                    if not (isinstance(result, dict) and result.get("recovered"))]
            self._positions.release(self._deliver, lost)
            if error is None:
                self._emit("resumed", reply)

        _, pending = self._add("session.resume", {"positions": positions}, None, resumed)
        pending.socket = socket
        with contextlib.suppress(ConnectionClosed, OSError):
            await socket.send(pending.text)

    def _on_frame(self, text: str | bytes) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("taxi client: a frame that is not JSON was dropped")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            return
        if frame.get("id") is not None and "pos" not in frame:
            self._on_reply(frame)
            return
        if frame["type"] == "auth.expired":
            self._refresh_now()
        self._positions.accept(frame, self._deliver)

    def _deliver(self, frame: Frame) -> None:
        self._emit(frame["type"], frame.get("data"), frame)

    def _on_close(self, socket: ClientConnection) -> None:
        """Requests in flight on the dead socket: keyed ones go again on the next one;
        the others cannot be known handled or not, and fail with `disconnected`."""
        if socket is not self._socket:
            return
        self._socket = self._live = None
        self._cancel_refresh()
        self._refreshing = False
        self._positions.drop()
        code = socket.close_code or 1006
        for frame_id, pending in list(self._pending.items()):
            if pending.socket is None:
                continue
            if code == 1009:
                self._settle(frame_id, None, TaxiError(
                    "too_big", "the server closed the link over a frame larger than it "
                               "takes (1009); not sent again"))
            elif not pending.keyed:
                self._settle(frame_id, None, TaxiError(
                    "disconnected", "the link dropped before the reply; the request may or "
                                    "may not have been handled"))
        self._emit("disconnect", {"code": code, "reason": redact(socket.close_reason or "")})

    def _delay(self, code: int) -> float:
        """4001 (the token expired) dials at once, with a token fetched first; 1008 and
        1009 (the app sent what it must not) wait at least half of max_delay; anything
        else (1001, 1006, 1011, 1013, ...) backs off as usual."""
        delay = backoff(self._attempt, self._min_delay, self._max_delay)
        self._attempt += 1
        if code == 4001:
            return 0.0
        if code in (1008, 1009):
            return self._max_delay / 2 + delay / 2
        return delay

    async def _sleep(self, delay: float) -> None:
        """Wait `delay` seconds, or less when connect() or close() wakes the client."""
        loop = asyncio.get_running_loop()
        self._wakeup = wakeup = loop.create_future()
        timer = loop.call_later(delay, self._wake)
        try:
            await wakeup
        finally:
            timer.cancel()
            self._wakeup = None

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # --- the token ---------------------------------------------------------------------

    def _schedule_refresh(self, at_least: float) -> None:
        """Refresh before the token's exp: a minute before, or a quarter of its life
        before when it is shorter."""
        self._cancel_refresh()
        exp = token_expiry(self._token)
        if self._live is None or exp is None:
            return
        left = exp - time.time()
        delay = max(at_least, left - min(REFRESH_MARGIN, left / 4))
        self._refresh_timer = asyncio.get_running_loop().call_later(delay, self._refresh_now)

    def _cancel_refresh(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None

    def _refresh_now(self) -> None:
        socket = self._live
        if socket is None or self._refreshing:
            return
        self._refreshing = True
        self._cancel_refresh()
        self._spawn(self._refresh(socket))

    async def _refresh(self, socket: ClientConnection) -> None:
        """A new token from get_token(), then `auth.refresh` on the socket it is for."""
        try:
            token = await self._fetch_token()
        except TaxiError as bad:
            self._refresh_failed(socket, bad.code, bad.detail)
            return
        except Exception as error:  # the app's code: report, and try again later
            self._refresh_failed(socket, "token_unavailable", f"get_token() failed: {error!r}")
            return
        if socket is not self._live:
            return
        try:
            await self.request("auth.refresh", {"token": token})
        except TaxiError as error:
            self._refresh_failed(socket, error.code, error.detail)
            return
        if socket is self._live:
            self._refreshing = False
            self._token = token
            self._schedule_refresh(1.0)

    def _refresh_failed(self, socket: ClientConnection, code: str, detail: str) -> None:
        if socket is not self._live:
            return
        self._refreshing = False
        self._emit_error(code, f"token refresh: {detail}")
        self._schedule_refresh(REFRESH_RETRY)

    # --- plumbing ----------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed(self) -> bool:
        return self._state == "closed"

    def _set_state(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self._emit("state", state)

    def _fail_waiters(self, error: TaxiError) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _emit_error(self, code: str, detail: str) -> None:
        data: dict[str, Any] = {"code": code, "detail": redact(detail), "for": None,
                                "errors": {}}
        self._emit("error", data, {"type": "error", "data": data})

    def _emit(self, type: str, *args: Any) -> None:
        for listener in self._listeners.get(type, ()):
            try:
                listener(*args)
            except Exception:
                log.exception("taxi client: a listener of %s failed", type)
