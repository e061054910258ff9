"""Pins what handlers/stream_writer.py relies on in Tornado, so an upgrade fails here, loudly.

The writer reaches past WebSocketHandler's public API: it takes `ws_connection.stream` (the
IOStream detached after the handshake), sends prebuilt frames with `stream.socket.send`
while `stream.writing()` is False, hands the rest to `stream.write`, and reads
`stream.writing()` as "the kernel did not take everything", and `len(stream._write_buffer)`
as the bytes queued. Each test names one of these.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from tornado.iostream import IOStream, SSLIOStream

from taxi_tornado.frames import encode, text_frame
from taxi_tornado.handlers.socket import TaxiSocket
from taxi_tornado.handlers.stream_writer import StreamWriter, queued_bytes, socket_stream
from taxi_tornado.settings import replace
from tests.conftest import Client, RunningServer, make_settings
from tests.test_operations import RawSocket, Starter, close_code, eventually


async def handler_of(running: RunningServer, user_id: str) -> TaxiSocket:
    """The server-side handler of `user_id`'s open socket."""

    def find() -> TaxiSocket | None:
        for sock in running.server.services.sockets:
            if sock.connection is not None and sock.connection.user.id == user_id:
                return sock
        return None

    await eventually(lambda: find() is not None)
    found = find()
    assert found is not None
    return found


async def connected(running: RunningServer, name: str) -> tuple[Client, TaxiSocket]:
    user, token = await running.user(name, "driver")
    client = await running.connect(token)
    return client, await handler_of(running, user.id)


async def test_ws_connection_stream_is_the_plain_iostream_with_its_socket(
    server: RunningServer,
) -> None:
    client, handler = await connected(server, "driver")
    stream = socket_stream(handler)
    assert handler.ws_connection is not None
    assert stream is handler.ws_connection.stream
    assert type(stream) is IOStream
    assert isinstance(stream.socket, socket.socket)
    assert not stream.closed()
    assert not stream.writing()  # an idle socket has nothing queued
    assert handler.writer is not None
    assert handler.writer.send is not None  # the direct path is in use
    client.close()


async def test_prebuilt_frames_arrive_intact_and_in_order_with_tornados_own_writes(
    server: RunningServer,
) -> None:
    client, handler = await connected(server, "driver")
    writer = handler.writer
    assert writer is not None
    small = {"type": "echo.message", "data": "s"}
    medium = {"type": "echo.message", "data": "m" * 300}  # 16-bit length
    large = {"type": "echo.message", "data": "l" * 70_000}  # 64-bit length
    assert writer.write(text_frame(encode(small)))
    await handler.write_message(encode(medium).decode())  # Tornado's own frame writer
    assert writer.write(text_frame(encode(large)))
    assert writer.write(text_frame(encode(small)))
    assert [await client.receive() for _ in range(4)] == [small, medium, large, small]
    client.close()


async def test_writing_reflects_a_pending_buffer_and_overflow_closes_1013(
    tmp_path: Path, start: Starter,
) -> None:
    limit = 4
    running = await start(replace(make_settings(tmp_path), limits={"outbound_queue": limit}))
    slow_user, slow_token = await running.user("slow", "driver")
    slow = await asyncio.to_thread(  # never reads until told to
        lambda: RawSocket(running.port, "/taxi/", slow_token, receive_buffer=4096))
    slow_handler = await handler_of(running, slow_user.id)
    good, good_handler = await connected(running, "good")
    writer, stream = slow_handler.writer, socket_stream(slow_handler)
    assert writer is not None and stream is not None
    payload = encode({"type": "flood", "pad": "x" * 65_000})
    frame = text_frame(payload)

    written = 0
    while not stream.writing():  # until the kernel stops taking it all
        assert writer.write(frame)
        written += 1
        assert written < 2000, "8 MB went into the socket without stream.writing()"
    assert stream.writing()
    outcomes = [writer.write(frame) for _ in range(limit + 1)]
    assert outcomes == [True] * limit + [False]
    assert slow_handler.close_sent == 1013

    # Everybody else goes on receiving.
    assert good_handler.writer is not None
    assert good_handler.writer.write(text_frame(b'{"type":"echo.message","data":1}'))
    assert await good.receive() == {"type": "echo.message", "data": 1}

    # The slow reader gets whole frames (partial sends were completed from the buffer),
    # then the 1013 close.
    frames = await asyncio.to_thread(slow.read_frames, 10)
    data = [body for opcode, body in frames if opcode == 0x1]
    assert data and all(body == payload for body in data)
    assert close_code(frames) == 1013
    slow.answer_close(1013)
    slow.close()
    await eventually(lambda: stream.closed())
    assert not writer.write(frame)  # a closed stream takes nothing and raises nothing
    good.close()


async def test_queued_bytes_is_what_the_stream_still_holds_for_the_kernel(
    tmp_path: Path, start: Starter,
) -> None:
    running = await start(make_settings(tmp_path))
    user, token = await running.user("slow", "driver")
    slow = await asyncio.to_thread(  # never reads
        lambda: RawSocket(running.port, "/taxi/", token, receive_buffer=4096))
    handler = await handler_of(running, user.id)
    stream = socket_stream(handler)
    assert stream is not None
    assert queued_bytes(stream) == 0
    frame = text_frame(encode({"type": "flood", "pad": "x" * 65_000}))
    while not stream.writing():  # until the kernel stops taking it all
        stream.write(frame)
    held = queued_bytes(stream)
    assert 0 < held < len(frame) * 2
    stream.write(frame)  # a full socket takes nothing more: all of it is queued
    assert queued_bytes(stream) == held + len(frame)
    slow.close()


def test_tls_streams_are_written_through_the_stream() -> None:
    """SSLIOStream keeps handshake and record state around its socket: no direct send."""
    left, right = socket.socketpair()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def build() -> StreamWriter:
        stream = SSLIOStream(left, ssl_options=context)
        return StreamWriter(stream, 4, lambda: None, 1 << 20)

    try:
        assert asyncio.run(build()).send is None
    finally:
        left.close()
        right.close()
