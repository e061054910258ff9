"""An HTTPServer that knows which of its connections are in the middle of a request.

Tornado's `close_all_connections()` closes every HTTP connection at once, an upload or
a sign-up whose password is being hashed included: SIGTERM cut them. A connection is
*busy* from the moment a request's headers arrive until its response is written (Tornado
then asks for the next request's delegate on that connection) or the connection closes.
The drain waits (within server.drain_timeout) until no connection is busy, then closes
them all. Idle keep-alive connections are served meanwhile: a health check on one sees
/readyz answer 503.
"""

from __future__ import annotations

from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer


class DrainingHTTPServer(HTTPServer):
    busy: set[HTTP1ServerConnection]

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        # HTTPServer is a tornado Configurable: initialize() is its constructor.
        super().initialize(*args, **kwargs)
        self.busy = set()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Called before each request is read, so the connection's previous response is
        out: it is idle until the next request's headers arrive."""
        conn = _server_connection(server_conn)
        self.busy.discard(conn)
        delegate = super().start_request(server_conn, request_conn)
        return _BusyWhileServing(delegate, self.busy, conn)

    def on_close(self, server_conn: object) -> None:
        self.busy.discard(_server_connection(server_conn))
        super().on_close(server_conn)


def _server_connection(server_conn: object) -> HTTP1ServerConnection:
    assert isinstance(server_conn, HTTP1ServerConnection)
    return server_conn


class _BusyWhileServing(httputil.HTTPMessageDelegate):
    """Marks its connection busy once a request's headers arrive."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate,
                 busy: set[HTTP1ServerConnection], conn: HTTP1ServerConnection) -> None:
        self.delegate = delegate
        self.busy = busy
        self.conn = conn

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        self.busy.add(self.conn)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.busy.discard(self.conn)
        self.delegate.on_connection_close()
