"""Writes prebuilt WebSocket frames straight to a socket's IOStream.

This is the one module that leans on Tornado internals: `WebSocketProtocol13.stream`,
the IOStream a WebSocket handler detaches after its handshake. Writing a frame there
costs one buffer append, where `write_message` re-encodes the message, rebuilds the
frame and creates a task for every socket. tests/test_stream_writer.py fails loudly if a
Tornado upgrade moves any of this.

Backpressure without a task per write: the stream's buffer is the outbound queue. While
the stream is still writing (the kernel would not take everything), each further frame
counts towards `limit`; once it is exceeded, the reader is too slow and the connection
is closed with 1013. When the buffer drains, the count starts again.
"""

from __future__ import annotations

from collections.abc import Callable

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketHandler

TRY_AGAIN_LATER = 1013


def socket_stream(handler: WebSocketHandler) -> IOStream | None:
    """The IOStream under an open WebSocket, or None once it has gone."""
    protocol = handler.ws_connection
    if protocol is None:
        return None
    stream: IOStream | None = getattr(protocol, "stream", None)
    return stream


class StreamWriter:
    """Frame writer for one socket with a bounded queue."""

    __slots__ = ("stream", "limit", "backlog", "on_overflow")

    def __init__(self, stream: IOStream, limit: int, on_overflow: Callable[[], None]) -> None:
        self.stream = stream
        self.limit = limit
        self.backlog = 0
        self.on_overflow = on_overflow

    def write(self, frame: bytes) -> bool:
        """Queue `frame`; False when the socket is gone or was just closed as too slow."""
        stream = self.stream
        if stream.closed():
            return False
        if stream.writing():
            self.backlog += 1
            if self.backlog > self.limit:
                self.on_overflow()
                return False
        else:
            self.backlog = 0
        try:
            stream.write(frame)
        except StreamClosedError:
            return False
        return True
