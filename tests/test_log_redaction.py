"""No token reaches the log: every record passes the redactor setup_logging installs.

The server's own crash paths are driven for real: a server process whose store fails
under it (its users table renamed away) answers upgrades and API calls carrying tokens
with 500s, and Tornado's uncaught-exception log, which prints the request URI, must not
carry them. Then every kind of secret is logged through the real logging set-up, in the
message, its arguments and the exception text, for text and JSON.
"""

from __future__ import annotations

import gc
import io
import json
import logging
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from taxi_tornado.auth import TokenAuthority
from taxi_tornado.logs import setup_logging
from taxi_tornado.settings import AuthSettings, LogSettings
from taxi_tornado.store import User
from tests.conftest import SECRET, RunningServer, ServerProcess
from tests.test_hosts import upgrade
from tests.test_operations import eventually, seed_users

FORMATS = ["text", "json"]


def break_store(data_dir: Path) -> None:
    """Every store call that reads users fails from now on, as a lost table would."""
    with sqlite3.connect(data_dir / "taxi.db") as db:
        db.execute("ALTER TABLE users RENAME TO users_gone")


@pytest.mark.parametrize("log_format", FORMATS)
async def test_store_error_during_upgrade_and_api_calls_logs_no_token(
    tmp_path: Path, processes: Any, log_format: str
) -> None:
    seeded = await seed_users(tmp_path, ("rider.crash", "rider"))
    access = seeded["rider.crash"].token
    refresh = TokenAuthority(AuthSettings(secret_key=SECRET)).issue_refresh(
        seeded["rider.crash"].id)
    running: ServerProcess = processes(env={"TAXI_LOG_FORMAT": log_format})
    break_store(tmp_path / "data")

    # The socket's upgrade: the token in the query, and in the header too.
    status, _ = await upgrade(running.port, f"/taxi/?token={access}", "127.0.0.1")
    assert status == 500
    status, _ = await upgrade(running.port, f"/taxi/?x=1&token={access}", "127.0.0.1",
                              extra=f"Authorization: Bearer {access}\r\n")
    assert status == 500
    # The HTTP API: a Bearer header with the token in the query as well; a refresh.
    client = AsyncHTTPClient()
    trips = await client.fetch(HTTPRequest(
        f"{running.url}/api/trip/?access={access}&refresh={refresh}",
        headers={"Authorization": f"Bearer {access}"}), raise_error=False)
    assert trips.code == 500
    renewed = await client.fetch(HTTPRequest(
        f"{running.url}/api/token/refresh/?refresh={refresh}", "POST",
        body=json.dumps({"refresh": refresh}), headers={"Content-Type": "application/json"}),
        raise_error=False)
    assert renewed.code == 500

    await eventually(lambda: running.log().count("Uncaught exception") == 4, timeout=10)
    log = running.log()
    assert "no such table: users" in log  # the crash was logged, traceback and all
    assert access not in log and refresh not in log
    for part in (access, refresh):
        for segment in part.split("."):  # not even a piece of one
            assert segment not in log
    assert "?token=[redacted]" in log and "refresh=[redacted]" in log
    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines() if line.strip()]
        crashes = [entry for entry in entries if "Uncaught exception" in entry["message"]]
        assert len(crashes) == 4
        assert all("OperationalError" in entry["exception"] for entry in crashes)


# --- the redactor, through the server's own logging set-up ------------------------------

@pytest.fixture
def server_logging() -> Iterator[Any]:
    """setup_logging as the server calls it, writing into a buffer; the root logger's
    handlers and level are put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()

    def install(log_format: str) -> io.StringIO:
        stderr, sys.stderr = sys.stderr, buffer
        try:
            setup_logging(LogSettings(format=log_format, level="debug"))
        finally:
            sys.stderr = stderr
        return buffer

    yield install
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def tokens() -> tuple[str, str]:
    authority = TokenAuthority(AuthSettings(secret_key=SECRET))
    user = User(id="u1", username="ann", group="rider", first_name="", last_name="",
                photo=None)
    return authority.issue_access(user, "http://localhost"), authority.issue_refresh("u1")


@pytest.mark.parametrize("log_format", FORMATS)
def test_every_logger_writes_no_token_in_message_arguments_or_exception(
    server_logging: Any, log_format: str
) -> None:
    buffer = server_logging(log_format)
    access, refresh = tokens()
    api_key = "hub-api-key-0123456789abcdef"
    opaque = "NOT-A-JWT-5f1c9a0e7b"
    unsigned = "eyJhbGciOiJub25lIn0.eyJpZCI6InUxIn0."  # alg none: no signature segment
    secrets = [access, refresh, api_key, opaque, unsigned]

    logging.getLogger("tornado.application").error(
        "Uncaught exception %s\n%r", f"GET /taxi/?token={opaque} (127.0.0.1)",
        {"uri": f"/api/trip/?x=1&access={access};refresh={refresh}"})
    logging.getLogger("taxi_tornado.socket").warning(
        "handshake headers %s", {"Authorization": f"Bearer {access}",
                                 "Sec-WebSocket-Protocol": f"taxi.v2, bearer.{refresh}"})
    logging.getLogger("some.plugin").info("Authorization: Apikey %s", api_key)
    logging.getLogger("some.plugin").info("a client sent %s and bearer %s", unsigned, refresh)
    try:
        raise RuntimeError(f"upstream said: Authorization: Bearer {access}; bearer.{refresh}")
    except RuntimeError:
        logging.getLogger("taxi_tornado.http").exception("call for /x?token=%s failed", opaque)
    logging.getLogger("x").warning("stack with %s", "token", stack_info=True,
                                   extra={"unused": access})
    logging.getLogger("x").error("bad format %s %s", access)  # a logging bug of our own

    output = buffer.getvalue()
    for secret in secrets:
        assert secret not in output, secret
    assert output.count("[redacted]") >= 10
    assert "RuntimeError: upstream said" in output and "Traceback" in output
    assert "bearer.[redacted]" in output and "Authorization: [redacted]" in output
    if log_format == "json":
        entries = [json.loads(line) for line in output.splitlines()]
        assert {entry["logger"] for entry in entries} == {
            "tornado.application", "taxi_tornado.socket", "some.plugin", "taxi_tornado.http",
            "x"}
        assert "RuntimeError" in next(e["exception"] for e in entries if "exception" in e)


def test_words_near_token_names_are_left_alone(server_logging: Any) -> None:
    buffer = server_logging("text")
    message = ("the bearer subprotocol was refused; authorization failed; "
               "GET /api/trip/?before=2026-01-01 (127.0.0.1)")
    logging.getLogger("taxi_tornado.app").info(message)
    assert message in buffer.getvalue()


@pytest.mark.parametrize("log_format", FORMATS)
def test_percent_encoded_tokens_are_redacted_in_any_line(
    server_logging: Any, log_format: str
) -> None:
    buffer = server_logging(log_format)
    access, refresh = tokens()
    encoded = "".join(f"%{ord(char):02X}" for char in access)  # every character escaped
    logging.getLogger("some.plugin").info("GET /taxi/?%%74oken=%%65%s (127.0.0.1)", access[1:])
    logging.getLogger("some.plugin").info("uri /api/x/?a=1&%s=%s", "%72efresh", "opaque-value")
    logging.getLogger("some.plugin").info("next=%s; fully %s", refresh.replace(".", "%2E"),
                                          encoded)
    output = buffer.getvalue()
    for secret in (access, refresh, "opaque-value"):
        for segment in secret.split("."):
            assert segment not in output, secret
    assert "?%74oken=[redacted]" in output and "&%72efresh=[redacted]" in output
    assert output.count("[redacted]") == 4


def test_percent_escapes_without_a_token_are_left_alone(server_logging: Any) -> None:
    buffer = server_logging("text")
    message = "GET /api/trip/?before=2026%2D01&q=%C3%A9cole (127.0.0.1) 50% done"
    logging.getLogger("taxi_tornado.app").info(message)
    assert message in buffer.getvalue()



SHARED = ("Services", "Application", "Hub", "SqliteStore", "Settings", "Registry",
          "Dispatch", "TokenAuthority")


def token_holders(root: Any, token: str, depth: int = 8) -> list[str]:
    """Paths from `root` to any string or bytes holding `token`, following references
    (not into modules, classes, functions, or the server's shared parts)."""
    found: list[str] = []
    seen = {id(root)}
    frontier: list[tuple[Any, str]] = [(root, type(root).__name__)]
    for _ in range(depth):
        following: list[tuple[Any, str]] = []
        for item, path in frontier:
            for ref in gc.get_referents(item):
                if isinstance(ref, str | bytes | bytearray):
                    text = ref if isinstance(ref, str) else bytes(ref).decode("latin-1")
                    if token in text:
                        found.append(path)
                    continue
                name = type(ref).__name__
                if (id(ref) in seen or isinstance(ref, type) or name in SHARED
                        or name in ("module", "function", "code", "cell", "frame")):
                    continue
                seen.add(id(ref))
                following.append((ref, f"{path}>{name}"))
        frontier = following
    return found


async def test_an_open_socket_keeps_no_token(server: RunningServer) -> None:
    """Once the socket is open, what only its upgrade needed is let go: the token sent
    in the URL, in Authorization or in the bearer subprotocol is reachable from the
    socket nowhere a later log line, a debugger or a heap dump could find it."""
    _, token = await server.user("rider")
    clients = [
        await server.connect(token),
        await server.connect("", headers={"Authorization": f"Bearer {token}"}),
    ]
    bearer = await websocket_connect(HTTPRequest(server.ws_url, headers={
        "Sec-WebSocket-Protocol": f"taxi.v2, bearer.{token}"}))
    sockets = server.server.services.sockets
    await eventually(lambda: len(sockets) == 3)
    for handler in sockets:
        assert token_holders(handler, token) == []
        assert handler.request.remote_ip == "127.0.0.1"  # what the close line still logs
    for client in clients:
        client.close()
    bearer.close()
