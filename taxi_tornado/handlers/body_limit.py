"""Request bodies over the server's limits get a 413 with a JSON body, on every route.

Tornado's own limit (HTTPServer's max_body_size) acts before any handler runs and answers
a bare 400 with no body, so the server sets it out of reach and limits bodies here, in a
delegate wrapped around the application that sees every request first. A declared
`Content-Length` over the route's limit is refused as soon as the headers arrive, a
chunked body as soon as it passes the limit; the application never sees either.

After the 413 the rest of the body is read and dropped, up to DRAIN_BYTES, before the
connection closes: closing a socket with unread data resets it, and a client still
sending would then lose the answer. A client that waits on `Expect: 100-continue` sends
no body, so its connection closes at once.

A `Content-Length` that is not a decimal number (Tornado takes ASCII digits only; `²` is
a digit to str.isdigit) or whose copies differ gets a JSON 400 and the connection
closes: where the body ends is unknown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Sequence

from tornado import httputil

from taxi_tornado.frames import encode

log = logging.getLogger("taxi_tornado.http")

MIB = 1024 * 1024
# Tornado's own limit, set so that it is never reached: BodyLimit answers first.
UNLIMITED = 2**62
# How much of a refused body is read and dropped before the connection is closed.
DRAIN_BYTES = 8 * MIB
BAD_LENGTH = "Content-Length must be one decimal number of bytes."


class BodyLimit(httputil.HTTPServerConnectionDelegate):
    """Wraps the application: `limits` are (path pattern, bytes) pairs matched against
    the request path as Tornado routes do; other paths take `default` bytes."""

    def __init__(
        self,
        application: httputil.HTTPServerConnectionDelegate,
        limits: Sequence[tuple[str, int]],
        default: int,
        allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.application = application
        self.limits = [(re.compile(pattern + r"\Z"), size) for pattern, size in limits]
        self.default = default
        self.allowed_origins = allowed_origins

    def limit_for(self, path: str) -> int:
        path = path.partition("?")[0]
        for pattern, size in self.limits:
            if pattern.match(path):
                return size
        return self.default

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        inner = self.application.start_request(server_conn, request_conn)
        return LimitedMessage(self, inner, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.application.on_close(server_conn)


class LimitedMessage(httputil.HTTPMessageDelegate):
    """One request: passed through to the application until its body passes the limit."""

    def __init__(
        self,
        owner: BodyLimit,
        inner: httputil.HTTPMessageDelegate,
        connection: httputil.HTTPConnection,
    ) -> None:
        self.owner = owner
        self.inner = inner
        self.connection = connection
        self.limit = owner.default
        self.received = 0
        self.refused = False
        self.finished = False
        self.headers = httputil.HTTPHeaders()
        self.start_line: httputil.RequestStartLine | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        self.start_line, self.headers = start_line, headers
        self.limit = self.owner.limit_for(start_line.path)
        length = declared_length(headers)
        if length is None:
            # Without the header Tornado reads no body; with it, it would answer a bare
            # 400 of its own after ours.
            del headers["Content-Length"]
            self._refuse(400, "Bad Request", BAD_LENGTH)
            self._finish()
            return None
        if length > self.limit:
            self._refuse_too_large()
            if headers.get("Expect", "").lower() == "100-continue":
                self._finish()  # the client waits for our word: no body is coming
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.received += len(chunk)
        if self.refused:
            if self.received > self.limit + DRAIN_BYTES:
                self._finish()  # enough draining: close now
            return None
        if self.received > self.limit:
            self.inner.on_connection_close()  # the application's request ends here
            self._refuse_too_large()
            return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.refused:
            self._finish()
            return
        self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()

    def _refuse_too_large(self) -> None:
        self._refuse(413, "Content Too Large",
                     f"The request body is larger than {self.limit} bytes.")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self.refused = True
        start_line = self.start_line
        assert start_line is not None
        log.info("%d %s %s: %s", status, start_line.method,
                 start_line.path.partition("?")[0], detail)
        body = encode({"detail": detail})
        headers = httputil.HTTPHeaders({
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "X-Content-Type-Options": "nosniff",
        })
        origin = self.headers.get("Origin")
        allowed = self.owner.allowed_origins
        if origin and ("*" in allowed or origin in allowed):
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", status, reason), headers, body,
        )

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.connection.finish()


def declared_length(headers: httputil.HTTPHeaders) -> int | None:
    """The body length `Content-Length` declares, 0 without one; None when it is not a
    number Tornado would take: ASCII digits, repeated copies (joined by commas) equal."""
    value = headers.get("Content-Length")
    if value is None:
        return 0
    copies = set(re.split(r",[ \t]*", value))
    length = copies.pop()
    if copies or not (length.isascii() and length.isdigit()):
        return None
    return int(length)
