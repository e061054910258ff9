"""Close discipline, inbound: after the server's close frame, the client's frames do
nothing (PROTOCOL.md, Close codes).

Tornado hands a client's frames to on_message until the client answers the close, so a
client that does not answer at once can still send. A raw client, which answers the
close only when the test says so, sends a trip.request after the server's close frame
(4000 from an operator, 4001 at the end of the refresh grace, 1008 for a flood); the
store must hold no trip for it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.auth import TokenAuthority
from tests.conftest import RunningServer, make_settings

TEXT, CLOSE = 0x1, 0x8


class RawClient:
    """A WebSocket client over a bare TCP stream: it reads and writes frames and does
    nothing by itself, not even answer a close frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: RunningServer, token: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {server.settings.server.socket_path}?token={token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: taxi.v2\r\n\r\n"
        ).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        """One final, masked frame (a client's frames are masked)."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.writer.write(header + mask + masked)

    def send_json(self, message: Any) -> None:
        self.send(TEXT, json.dumps(message).encode())

    async def frame(self, timeout: float = 5) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload) from the server; None at the end of the
        stream."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            return None
        length = head[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return head[0] & 0x0F, await self.reader.readexactly(length)

    async def close_frame(self) -> int:
        """Read up to the server's close frame; its code."""
        while True:
            frame = await self.frame()
            assert frame is not None, "the stream ended without a close frame"
            if frame[0] == CLOSE:
                code: int = struct.unpack("!H", frame[1][:2])[0]
                return code

    async def answer_close_and_wait_for_the_end(self) -> list[tuple[int, bytes]]:
        """Answer the close; whatever the server sent before the stream ended."""
        self.send(CLOSE, struct.pack("!H", 1000))
        frames = []
        while (frame := await self.frame()) is not None:
            frames.append(frame)
        self.writer.close()
        return frames


async def flood(client: RawClient, server: RunningServer) -> None:
    """More frames than the burst, with none let through past it: the server closes
    with 1008. The bucket fills again before the late frame is sent."""
    for _ in range(2 * server.settings.limits.burst + 2):
        client.send_json({"type": "echo.message", "data": "x"})


async def operator(client: RawClient, server: RunningServer) -> None:
    _, staff_token = await server.user("operator", "staff")
    rider = await server.store.get_user_by_username("rider")
    status, _, _ = await server.fetch(f"/api/admin/user/{rider.id}/disconnect/", "POST",
                                      token=staff_token)
    assert status == 202


async def expiry(client: RawClient, server: RunningServer) -> None:
    """Nothing to do: the token expires, and the grace is 0."""


CLOSES = {1008: flood, 4000: operator, 4001: expiry}


@pytest.mark.parametrize("code", sorted(CLOSES))
async def test_a_trip_request_sent_after_the_servers_close_frame_does_nothing(
    code: int, tmp_path: Path, start: Any,
) -> None:
    server = await start(make_settings(tmp_path, auth={
        "secret_key": "test-secret-key-that-is-long-enough-for-hs256",
        "refresh_grace": 0.0}))
    rider, _ = await server.user("rider")
    ttl = 1 if code == 4001 else 600
    token = TokenAuthority(dataclasses.replace(server.settings.auth, access_ttl=ttl)
                           ).issue_access(rider, server.url)
    client = await RawClient.connect(server, token)

    await CLOSES[code](client, server)
    assert await client.close_frame() == code
    await asyncio.sleep(0.2)  # the rate limit's bucket fills again (1008)
    client.send_json({"type": "trip.request", "id": "late", "data": {
        "pick_up_address": "Station", "drop_off_address": "Airport"}})
    # Tornado reads the next frame (the close answer) once the last one was handled.
    after = await client.answer_close_and_wait_for_the_end()

    assert after == []  # nothing follows the close frame, no reply either
    assert await server.store.list_trips(rider) == []
