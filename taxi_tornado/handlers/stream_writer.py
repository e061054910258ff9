"""Writes prebuilt WebSocket frames straight to a socket's IOStream.

This is the one module that leans on Tornado internals: `WebSocketProtocol13.stream`,
the IOStream a WebSocket handler detaches after its handshake. Writing a frame there
costs one buffer append, where `write_message` re-encodes the message, rebuilds the
frame and creates a task for every socket. tests/test_stream_writer.py fails loudly if a
Tornado upgrade moves any of this.

Backpressure without a task per write: the stream's buffer is the outbound queue. While
the stream is still writing (the kernel would not take everything), each further frame
counts towards `limit`; once it is exceeded, or once the buffer would hold more than
`byte_limit` bytes, the reader is too slow and the connection is closed with 1013. When
the buffer drains, the frame count starts again. The byte count is the buffer's own
size (`len(stream._write_buffer)`, another internal the tests pin), so a frame limit of
256 cannot turn into 256 frames of 64 KiB held for one slow phone.

The common case skips even the buffer: when nothing is queued on a plain (not TLS)
stream, the frame goes to `stream.socket.send()` at once. `IOStream.write` would make a
Future, attach a callback and schedule it on the loop for every frame, which profiles
showed to cost more than the send itself in a fan-out. Whatever the kernel does not take
(a full socket buffer) is handed to `stream.write`, so order and backpressure hold; a
send error is left for the stream's own write to meet, so it closes the stream as usual.
"""

from __future__ import annotations

from collections.abc import Callable

from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketHandler


def socket_stream(handler: WebSocketHandler) -> IOStream | None:
    """The IOStream under an open WebSocket, or None once it has gone."""
    protocol = handler.ws_connection
    if protocol is None:
        return None
    stream: IOStream | None = getattr(protocol, "stream", None)
    return stream


def queued_bytes(stream: IOStream) -> int:
    """Bytes the stream holds that the kernel has not taken yet."""
    return len(stream._write_buffer)


class StreamWriter:
    """Frame writer for one socket with a bounded queue."""

    __slots__ = ("backlog", "byte_limit", "limit", "on_overflow", "send", "stream")

    def __init__(self, stream: IOStream, limit: int, on_overflow: Callable[[], None],
                 byte_limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.byte_limit = byte_limit
        self.backlog = 0
        self.on_overflow = on_overflow
        # TLS streams keep their own state around the socket: always go through them.
        self.send: Callable[[bytes], int] | None = (
            stream.socket.send if type(stream) is IOStream else None
        )

    def write(self, frame: bytes) -> bool:
        """Queue `frame`; False when the socket is gone or was just closed as too slow.

        A close frame the server sent is not checked here (a cost per frame and member):
        the socket's close() detaches its Connection first, so no frame reaches this.
        """
        stream = self.stream
        if stream.closed():
            return False
        if stream.writing():
            self.backlog += 1
            if self.backlog > self.limit or queued_bytes(stream) + len(frame) > self.byte_limit:
                self.on_overflow()
                return False
            return self._queue(frame)
        self.backlog = 0
        send = self.send
        if send is not None:
            try:
                sent = send(frame)
            except OSError:  # BlockingIOError, or an error the stream's write will meet
                sent = 0
            if sent == len(frame):
                return True
            frame = frame[sent:]
        return self._queue(frame)

    def _queue(self, frame: bytes) -> bool:
        try:
            self.stream.write(frame)
        except StreamClosedError:
            return False
        return True
