"""An HTTPServer that knows which of its connections are in the middle of a request.

Tornado's `close_all_connections()` closes every HTTP connection at once, an upload or
a sign-up whose password is being hashed included: SIGTERM cut them. A connection is
*busy* from the moment a request's headers arrive until its response is written (Tornado
then asks for the next request's delegate on that connection) or the connection closes;
otherwise it is idle, waiting for a request that may never come. A drain closes the idle
connections at once, and each busy one as soon as its response is out, so the server can
wait for `busy` to empty (within server.drain_timeout) before it closes the rest.
"""

from __future__ import annotations

from typing import Any

from tornado import httputil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer


class DrainingHTTPServer(HTTPServer):
    idle: set[HTTP1ServerConnection]
    busy: set[HTTP1ServerConnection]
    draining: bool

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        # HTTPServer is a tornado Configurable: initialize() is its constructor.
        super().initialize(*args, **kwargs)
        self.idle = set()
        self.busy = set()
        self.draining = False

    def start_drain(self) -> None:
        """Close every idle connection now; busy ones close once they have answered."""
        self.draining = True
        for conn in list(self.idle):
            conn.stream.close()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        """Called before each request is read, so the connection's previous response is
        out: it is idle now."""
        conn = _server_connection(server_conn)
        self.busy.discard(conn)
        self.idle.add(conn)
        if self.draining:
            conn.stream.close()  # reading the next request meets the closed stream
        delegate = super().start_request(server_conn, request_conn)
        return _BusyWhileServing(delegate, self, conn)

    def on_close(self, server_conn: object) -> None:
        conn = _server_connection(server_conn)
        self.idle.discard(conn)
        self.busy.discard(conn)
        super().on_close(server_conn)


def _server_connection(server_conn: object) -> HTTP1ServerConnection:
    assert isinstance(server_conn, HTTP1ServerConnection)
    return server_conn


class _BusyWhileServing(httputil.HTTPMessageDelegate):
    """Marks its connection busy once a request's headers arrive."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate, server: DrainingHTTPServer,
                 conn: HTTP1ServerConnection) -> None:
        self.delegate = delegate
        self.server = server
        self.conn = conn

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        self.server.idle.discard(self.conn)
        self.server.busy.add(self.conn)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.server.busy.discard(self.conn)
        self.delegate.on_connection_close()
