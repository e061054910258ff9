"""The body limit's edge over real HTTP (taxi_tornado/handlers/body_limit.py): a body of
exactly the limit (1 MiB on every route but sign-up) is taken whole, one byte more is a
413, whether its length is declared or it comes chunked."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import RunningServer

MIB = 1024 * 1024
PATH = "/api/token/refresh/"


async def refresh_body(server: RunningServer, size: int) -> bytes:
    """A valid refresh request, padded with JSON whitespace to exactly `size` bytes."""
    user, _ = await server.user("rider")
    body = json.dumps({"refresh": server.tokens.issue_refresh(user.id)}).encode()
    return body + b" " * (size - len(body))


async def post(server: RunningServer, body: bytes, *, chunked: bool) -> tuple[int, bytes]:
    """POST `body` on a connection of its own; the status and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode())
    if chunked:
        step = 64 * 1024
        for at in range(0, len(body), step):
            chunk = body[at:at + step]
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        writer.write(b"0\r\n\r\n")
    else:
        writer.write(body)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_body_of_exactly_the_limit_is_accepted(server: RunningServer,
                                                     chunked: bool) -> None:
    body = await refresh_body(server, MIB)
    assert len(body) == MIB
    status, answer = await post(server, body, chunked=chunked)
    assert status == 200, answer
    assert set(json.loads(answer)) == {"access"}


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_body_one_byte_over_the_limit_is_413(server: RunningServer,
                                                   chunked: bool) -> None:
    status, answer = await post(server, await refresh_body(server, MIB + 1), chunked=chunked)
    assert status == 413
    assert json.loads(answer) == {"detail": f"The request body is larger than {MIB} bytes."}
