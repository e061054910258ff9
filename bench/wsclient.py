"""A lean asyncio WebSocket client for the load generator.

Why not `websockets` or Tornado's client: on this 2-core machine the generator shares a
core budget with the server, and both libraries spend several times more CPU per frame
than this (a futures-and-tasks reader per socket). Here a socket is one asyncio Protocol:
the upgrade is one write and one parse, every inbound chunk is split into frames in one
callback, pings are answered in place, and an outbound text frame is masked with the
integer XOR trick. Enough of RFC 6455 for the taxi protocol (text frames, ping, close);
the server never fragments, so neither do we.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

FrameHandler = Callable[["WsClient", bytes], None]


class HandshakeError(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class WsClient(asyncio.Protocol):
    """One client socket; `on_frame(client, payload)` runs for every text frame."""

    def __init__(self, request: bytes, on_frame: FrameHandler) -> None:
        self.request = request
        self.on_frame = on_frame
        self.opened: asyncio.Future[WsClient] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.buffer = b""
        self.mask = os.urandom(4)
        self.tag: object = None  # free for the scenario
        self.close_code: int | None = None  # the code of the server's close frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            status = int(buffer[9:12])
            if status != 101:
                self._fail(HandshakeError(status))
                return
            self.upgraded = True
            self.opened.set_result(self)
            buffer = buffer[end + 4:]
        self.buffer = self._frames(buffer)

    def _frames(self, buffer: bytes) -> bytes:
        """Handle every complete frame in `buffer`; return what is left over."""
        size = len(buffer)
        at = 0
        while size - at >= 2:
            opcode = buffer[at] & 0x0F
            length = buffer[at + 1] & 0x7F
            start = at + 2
            if length == 126:
                if size - at < 4:
                    break
                length = (buffer[at + 2] << 8) | buffer[at + 3]
                start = at + 4
            elif length == 127:
                if size - at < 10:
                    break
                length = struct.unpack_from("!Q", buffer, at + 2)[0]
                start = at + 10
            end = start + length
            if end > size:
                break
            payload = buffer[start:end]
            at = end
            if opcode == 0x1:
                self.on_frame(self, payload)
            elif opcode == 0x9:
                self._write(0x8A, payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if length >= 2 else 1005
                self._write(0x88, payload[:2])
                if self.transport is not None:
                    self.transport.close()
        return buffer[at:] if at < size else b""

    def send(self, payload: bytes) -> None:
        """Write one masked text frame."""
        self._write(0x81, payload)

    def _write(self, first: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            header = bytes((first, 0x80 | size))
        elif size <= 0xFFFF:
            header = struct.pack("!BBH", first, 0xFE, size)
        else:
            header = struct.pack("!BBQ", first, 0xFF, size)
        mask = self.mask
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            size, "little"
        )
        transport.write(header + mask + masked)

    def close(self) -> None:
        """Send a normal close frame and drop the connection."""
        self._write(0x88, b"\x03\xe8")
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("closed before upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(error)
        if self.transport is not None:
            self.transport.close()


def upgrade_request(host: str, port: int, path: str, token: str,
                    subprotocol: str | None = None) -> bytes:
    """The HTTP/1.1 upgrade request for `path?token=…`."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path}?token={token} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(host: str, port: int, path: str, token: str, on_frame: FrameHandler,
                  subprotocol: str | None = None, timeout: float = 30) -> WsClient:
    """Open one socket; HandshakeError when the server refuses the upgrade."""
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, path, token, subprotocol)
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(request, on_frame), host, port), timeout
    )
    return await asyncio.wait_for(client.opened, timeout)
