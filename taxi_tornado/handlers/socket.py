"""The `/taxi/` WebSocket: authenticate in the upgrade, then one loop of frames.

Authentication and group joins happen in prepare(), before the handshake answer is
written: a bad token is an HTTP 401 and no socket ever opens, and a message sent to the
connection's groups once the client's connect returned reaches it.

So a connection is in groups before its socket exists, and the client may vanish at any
await of the upgrade. Every way out (a refused or abandoned upgrade, open() meeting a
closed stream or failing, a close the server sends, on_close) reaches one idempotent
`_end()`: the Connection drops its frames and socket at once, leaves every group, and
the disconnect hooks run once the connect hooks are over. Tornado calls on_close at most
once and not at all when open() fails, so nothing may rely on on_close alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream
from tornado.websocket import WebSocketHandler

from taxi_tornado import metrics
from taxi_tornado.auth import InvalidToken, token_from_request
from taxi_tornado.connection import TRY_AGAIN_LATER
from taxi_tornado.frames import DecodeError, decode, encode
from taxi_tornado.handlers.base import SERVER_ERROR, TOKEN_INVALID, base_url, origin_allowed
from taxi_tornado.handlers.envelope import (
    TOO_DEEP,
    UNREACHABLE,
    echoed_id,
    error_frame,
    internal_error,
    nests_too_deep,
    refused,
)
from taxi_tornado.handlers.inline import run_inline
from taxi_tornado.handlers.stream_writer import StreamWriter, socket_stream
from taxi_tornado.idempotency import KEY_RULE, valid_key
from taxi_tornado.plugins.api import MAX_TYPE_LENGTH, Connection, MessageType, ProtocolError
from taxi_tornado.rate_limit import TokenBucket

if TYPE_CHECKING:
    from taxi_tornado.services import Services

log = logging.getLogger("taxi_tornado.socket")

SUBPROTOCOL_V2 = "taxi.v2"
# `bearer.<access JWT>` offered beside taxi.v2 carries the token out of URLs and logs.
BEARER_SUBPROTOCOL = "bearer."
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
# nginx's status for a request whose client went away before the answer: the access log
# shows it for an upgrade abandoned in prepare().
CLIENT_CLOSED_REQUEST = 499


PING_FRAME = bytes((0x89, 0))  # final, opcode 9 (ping), unmasked, no payload


class TaxiSocket(WebSocketHandler):
    services: Services
    connection: Connection | None = None
    writer: StreamWriter | None = None
    ping_sent_at = 0.0  # see handlers/keepalive.py

    def on_pong(self, data: bytes) -> None:
        self.ping_sent_at = 0.0

    def ping(self, data: str | bytes = b"") -> None:
        """The keepalive's ping: one prebuilt frame through the socket's writer, where
        Tornado's own builds the frame and makes a Future for every ping."""
        writer = self.writer
        if data or writer is None:
            super().ping(data)
            return
        writer.write(PING_FRAME)

    def initialize(self, services: Services) -> None:
        self.services = services
        self.bucket = TokenBucket(services.settings.limits.rate, services.settings.limits.burst)
        self.opened_at = 0.0
        self.dropped_in_a_row = 0
        self.close_sent: int | None = None
        self.ended = False  # _end() ran: the connection was let go
        self.connecting: asyncio.Event | None = None  # while the connect hooks run

    async def prepare(self) -> None:
        services = self.services
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            self._refuse(400, {"detail": 'Can "Upgrade" only to "WebSocket".'}, "not_websocket")
            return
        if services.draining:
            self._refuse(503, {"detail": "The server is shutting down."}, "draining")
            return
        offered = self._offered_subprotocols()
        bearer = next((item for item in offered if item.startswith(BEARER_SUBPROTOCOL)), None)
        if bearer is not None and SUBPROTOCOL_V2 not in offered:
            self._refuse(400, {"detail": "A bearer. subprotocol needs taxi.v2 beside it."},
                         "bearer_without_v2")
            return
        token = token_from_request(
            self.request.headers.get("Authorization"), self.get_query_argument("token", None),
            bearer[len(BEARER_SUBPROTOCOL):] if bearer is not None else None,
        )
        try:
            claims = services.tokens.verify(token)
        except InvalidToken:
            self._refuse(401, TOKEN_INVALID, "token")
            return
        user = await services.store.get_user(services.tokens.user_id(claims))
        if user is None:
            self._refuse(401, TOKEN_INVALID, "user")
            return
        origin = self.request.headers.get("Origin")
        if origin and not self.check_origin(origin):
            self._refuse(403, {"detail": "Origin not allowed."}, "origin")
            return
        limit = services.settings.limits.sockets_per_user
        if limit and services.hub.members(f"user:{user.id}") >= limit:
            # Counted and joined with no wait between: racing upgrades cannot both pass.
            self._refuse(429, {"detail": f"Too many open sockets for this user (at most "
                                         f"{limit} on one server)."}, "sockets_per_user")
            return
        version = 2 if SUBPROTOCOL_V2 in offered else 1
        conn = Connection(user, version, services.hub, services.store, services.settings,
                          base_url(self.request, services.settings.server), services.dispatch)
        if version >= 2:  # v1 stays authenticated until it closes, as in the seed app
            conn.expires = float(claims["exp"])
        self.connection = conn
        if self.ended:  # the client left while we looked it up
            self._abandon()
            return
        connecting = self.connecting = asyncio.Event()
        try:
            await self._connect(conn)
        finally:
            connecting.set()  # a _leave() already waiting holds the event itself
            self.connecting = None

    async def _connect(self, conn: Connection) -> None:
        """Join the user's group and run the connect hooks; stop as soon as the client is
        gone (on_close ended the connection meanwhile)."""
        await conn.join(f"user:{conn.user.id}")
        for plugin, hook in self.services.registry.connect_hooks:
            if self.ended:
                break
            try:
                await hook(conn)
            except Exception:
                log.exception("on-connect hook of plugin %s failed", plugin)
                self._end()
                self._refuse(500, SERVER_ERROR, "hook")
                return
        if self.ended:
            self._abandon()

    def _abandon(self) -> None:
        """Finish an upgrade whose client already left: nobody reads the answer."""
        metrics.HANDSHAKES_REFUSED.labels("client_gone").inc()
        self.set_status(CLIENT_CLOSED_REQUEST, "Client Closed Request")
        self.finish()

    def _refuse(self, status: int, body: dict[str, Any], reason: str) -> None:
        metrics.HANDSHAKES_REFUSED.labels(reason).inc()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(encode(body))

    def _offered_subprotocols(self) -> list[str]:
        header = self.request.headers.get("Sec-WebSocket-Protocol", "")
        return [item.strip() for item in header.split(",") if item.strip()]

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return SUBPROTOCOL_V2 if SUBPROTOCOL_V2 in subprotocols else None

    def check_origin(self, origin: str) -> bool:
        allowed = self.services.settings.server.allowed_origins
        return origin_allowed(origin, allowed, self.request.host)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The API's bodies: a 5xx says no more than the API's 500 does."""
        body = SERVER_ERROR if status_code >= 500 else {"detail": self._reason}
        self.set_header("Content-Type", "application/json")
        self.finish(encode(body))

    def open(self, *args: Any, **kwargs: Any) -> None:
        conn = self.connection
        stream = socket_stream(self)
        if conn is None or stream is None or stream.closed() or self.ended:
            # The client left as the 101 went out. Tornado's read loop meets the closed
            # stream next and ends the socket; the connection goes now.
            self._end()
            return
        try:
            self._start(conn, stream)
        except Exception:
            self.on_close()  # Tornado logs it and aborts without calling on_close
            raise

    def _start(self, conn: Connection, stream: IOStream) -> None:
        limits = self.services.settings.limits
        self.set_nodelay(True)
        self.opened_at = time.monotonic()
        self.writer = StreamWriter(stream, limits.outbound_queue, self._too_slow,
                                   limits.outbound_bytes)
        self.services.sockets.add(self)
        self.services.census.opened(conn)
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPENED.inc()
        conn.attach(self)
        self.services.expiry.watch(self)
        self.services.keepalive.watch(self)
        log.info("socket open user=%s remote=%s version=%s", conn.user.id,
                 self.request.remote_ip, conn.version)
        self._forget_the_upgrade()
        if self.services.draining:  # the drain began while this handshake was under way
            self.shut_down()

    def _forget_the_upgrade(self) -> None:
        """Drop what only the upgrade needed: the request's headers, arguments and query
        and the HTTP/1 connection it came on (the token among them: none stays on an open
        socket), and the 101's headers, already written. An idle socket is mostly such
        bookkeeping: 20.7 -> 16.6 KiB per connection (bench/README.md). Nothing reads
        them later: the access log line was written with the 101."""
        request = self.request
        request.headers = HTTPHeaders()
        request.arguments, request.query_arguments = {}, {}
        request.uri, request.query = request.path, ""
        request.connection = None  # the HTTP/1 connection left: it kept the raw head
        self._headers = HTTPHeaders()

    def write_frame(self, frame: bytes) -> None:
        """The Transport side of Connection: write a prebuilt frame.

        A frame the socket does not take (gone, or just closed as too slow) ends the
        connection at once, before Tornado's read loop notices.
        """
        writer = self.writer
        if writer is not None and not writer.write(frame):
            self._end()

    def _too_slow(self) -> None:
        if self.close_sent is not None:
            return  # already closing: count and log a slow reader once
        metrics.SLOW_CLIENT_CLOSES.inc()
        log.warning("closing a slow reader: user=%s remote=%s", self._user_id(),
                    self.request.remote_ip)
        self.close(TRY_AGAIN_LATER, "outbound queue overflow")

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Check and dispatch one frame; a handler that never waits costs no task.

        Tornado reads the connection's next frame only once the awaitable returned here
        has finished, so frames are still handled one at a time, in order.
        """
        conn = self.connection
        if conn is None or conn.closed:
            return None
        if not self.bucket.take():
            self._rate_limited(conn)
            return None
        self.dropped_in_a_row = 0
        try:
            envelope = decode(message)
        except DecodeError:
            self._send_error(conn, "invalid_json", "The frame is not valid JSON.", None, None)
            return None
        if nests_too_deep(message, envelope):
            self._send_error(conn, "invalid_message", TOO_DEEP, None, echoed_id(envelope))
            return None
        return run_inline(self._dispatch(conn, envelope))

    async def _dispatch(self, conn: Connection, envelope: Any) -> None:
        """Envelope, type, sender and `data` checks, then the handler (through the
        idempotency step for a keyed type's frame with a `key`), then the answer."""
        if not isinstance(envelope, dict):
            self._send_error(conn, "invalid_message", "A frame must be a JSON object.",
                             None, None)
            return
        frame_id = envelope.get("id")
        if frame_id is not None and (
            isinstance(frame_id, bool) or not isinstance(frame_id, str | int)
        ):
            self._send_error(conn, "invalid_message", "`id` must be a string or an integer.",
                             None, None)
            return
        message_type = envelope.get("type")
        if not isinstance(message_type, str) or not message_type:
            self._send_error(conn, "invalid_message", "A frame needs a string `type`.",
                             None, frame_id)
            return
        if len(message_type) > MAX_TYPE_LENGTH:
            self._send_error(conn, "invalid_message",
                             f"`type` is longer than {MAX_TYPE_LENGTH} characters.",
                             None, frame_id)
            return
        key = envelope.get("key")
        if key is not None and not valid_key(key):
            self._send_error(conn, "invalid_message", KEY_RULE, None, frame_id)
            return
        entry = self.services.registry.types.get(message_type)
        if entry is None:
            self._send_error(conn, "unknown_type", f"No plugin handles {message_type!r}.",
                             message_type, frame_id)
            return
        metrics.frames_in(message_type).inc()
        if entry.senders or entry.min_version > 1:  # most types: anyone, any version
            refusal = refused(entry, conn)
            if refusal is not None:
                self._send_error(conn, *refusal, message_type, frame_id)
                return
        data = envelope.get("data")
        if entry.check is not None:
            errors = entry.check(data)
            if errors is not None:
                self._send_error(conn, "invalid", f"The {entry.canonical} data is not valid.",
                                 message_type, frame_id, errors)
                return
        if key is not None and entry.keyed:
            answer = await self._handle_once(conn, entry, message_type, data, key)
        else:
            answer = await self._handle(conn, entry, message_type, data)
        if answer is None:
            return
        if frame_id is not None:
            answer = {**answer, "id": frame_id}
        self._answer(conn, answer)

    async def _handle(self, conn: Connection, entry: MessageType, message_type: str,
                      data: Any) -> dict[str, Any] | None:
        """Run the handler: its reply, an error frame (not yet sent), or None."""
        started = time.perf_counter()
        try:
            return await entry.handler(conn, data)
        except ProtocolError as error:
            return error_frame(error.code, error.detail, message_type, error.errors,
                               error.retry_after)
        except Exception as error:
            log_failure(error, "handler for %r (plugin %s) failed", message_type,
                        entry.plugin)
            return internal_error(message_type, error)
        finally:
            metrics.handler_seconds(message_type).observe(time.perf_counter() - started)

    async def _handle_once(self, conn: Connection, entry: MessageType, message_type: str,
                           data: Any, key: str) -> dict[str, Any] | None:
        """A keyed frame: handled at most once per (user, key); a repeat gets the
        remembered answer (idempotency.py)."""
        charge = (lambda: self._charge_key(conn, message_type)) if (
            self.services.settings.limits.keyed_requests) else None
        try:
            return await self.services.idempotency.answer(
                conn.user.id, key, entry.canonical, message_type, data,
                lambda: self._handle(conn, entry, message_type, data), charge)
        except Exception as error:  # the keys' store or Redis failed: the handler did not run
            log_failure(error, "idempotency step for %r failed", message_type)
            return internal_error(message_type, error)

    async def _charge_key(self, conn: Connection,
                          message_type: str) -> dict[str, Any] | None:
        """A keyed frame that claimed its key anew spends one of its user's keyed requests
        of this minute (limits.keyed_requests; from the hub: across sockets and
        processes), or is refused: each makes a key kept for a day."""
        per_minute = self.services.settings.limits.keyed_requests
        wait = await conn.hub.spend(f"keyed_requests:{conn.user.id}", per_minute)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return error_frame("rate_limited", f"You sent {per_minute} frames with a key within "
                           f"a minute: try again in {seconds} s.", message_type,
                           retry_after=seconds)

    def _answer(self, conn: Connection, answer: dict[str, Any]) -> None:
        """Send a reply or an error frame to the sender, counted as such."""
        if answer.get("type") == "error":
            metrics.errors(answer["data"]["code"]).inc()
            metrics.FRAMES_OUT_ERROR.inc()
        else:
            metrics.frames_out(answer.get("type", "")).inc()
        conn.send(answer)

    def _rate_limited(self, conn: Connection) -> None:
        metrics.RATE_LIMITED.inc()
        self.dropped_in_a_row += 1
        if self.dropped_in_a_row > self.bucket.burst:
            log.warning("closing an abusive client: user=%s remote=%s", conn.user.id,
                        self.request.remote_ip)
            self.close(POLICY_VIOLATION, "message rate limit exceeded")
            return
        if self.dropped_in_a_row == 1:
            self._send_error(conn, "rate_limited",
                             "Too many messages; this frame was dropped.", None, None)

    def _send_error(
        self,
        conn: Connection,
        code: str,
        detail: str,
        for_type: str | None,
        frame_id: Any,
        errors: dict[str, list[str]] | None = None,
    ) -> None:
        frame = error_frame(code, detail, for_type, errors)
        if frame_id is not None:
            frame["id"] = frame_id
        self._answer(conn, frame)

    def on_finish(self) -> None:
        if self.get_status() != 101:  # refused or abandoned: no socket will open
            self._end()

    def on_close(self) -> None:
        """The stream is gone; also called by Tornado when the client leaves during
        prepare(), and by open() when it fails."""
        self._end()
        # The writer calls back into this handler (too slow): the one cycle a socket
        # has. Broken here, a closed socket is freed at once, not at the next full
        # collection, which collector.py makes rare (tests/test_collector.py).
        self.writer = None
        sockets = self.services.sockets
        if self not in sockets:
            return
        sockets.discard(self)
        if self.connection is not None:  # always, once in `sockets`
            self.services.census.closed(self.connection)
        metrics.CONNECTIONS.dec()
        log.info(
            "socket close user=%s remote=%s code=%s duration=%.3fs", self._user_id(),
            self.request.remote_ip, self._logged_close_code(),
            time.monotonic() - self.opened_at,
        )

    def _end(self) -> None:
        """Let the connection go, once: from now on it holds and sends nothing, and it
        leaves every group."""
        if self.ended:
            return
        self.ended = True
        self.services.expiry.forget(self)
        self.services.keepalive.forget(self)
        conn = self.connection
        if conn is None:
            return
        conn.detach()
        self.services.spawn(self._leave(conn))

    async def _leave(self, conn: Connection) -> None:
        """Leave the groups now, all at once; run the disconnect hooks after the connect
        hooks, so that a hook still running in prepare() is not undone before it ends."""
        await conn.hub.leave_all(conn, conn.groups)
        if self.connecting is not None:
            await self.connecting.wait()
        for plugin, hook in self.services.registry.disconnect_hooks:
            try:
                await hook(conn)
            except Exception:
                log.exception("on-disconnect hook of plugin %s failed", plugin)

    def _logged_close_code(self) -> int | str:
        """The code we sent, else the client's; "-" when neither side sent one (a lost
        link, a ping timeout, or a close frame without a code)."""
        if self.close_sent is not None:
            return self.close_sent
        return self.close_code if self.close_code is not None else "-"

    def _user_id(self) -> str:
        return self.connection.user.id if self.connection else "-"

    def shut_down(self) -> None:
        """Close for a server shutdown: 1001 tells the client to reconnect elsewhere."""
        self.close(GOING_AWAY, "server shutting down")

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close, remembering the first code we sent: the close log line reports it.

        Nothing follows the close frame, and the connection leaves its groups now, not
        when the client answers (docs/protocol.md, Close codes).
        """
        if self.close_sent is None:
            self.close_sent = code
        self._end()
        super().close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection without waiting for the client's closing handshake."""
        if self.writer is not None:
            self.writer.stream.close()


def log_failure(error: Exception, message: str, *args: Any) -> None:
    """A service out of reach is one warning line a frame (the hub logs the outage
    itself); anything else is a bug, logged with its traceback."""
    if isinstance(error, UNREACHABLE):
        log.warning(message + " (%s: %s)", *args, type(error).__name__, error)
        return
    log.exception(message, *args)
