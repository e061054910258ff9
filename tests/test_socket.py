"""The /taxi/ socket: authentication in the upgrade, envelopes, errors, versions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import jwt
import pytest
import websockets
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect
from websockets.exceptions import InvalidStatus

from taxi_tornado.settings import replace
from tests.conftest import SECRET, RunningServer, make_settings, next_frame


async def refused(url: str, headers: dict[str, str] | None = None) -> HTTPResponse:
    """The HTTP response refusing an upgrade (fails if the socket opened)."""
    with pytest.raises(HTTPClientError) as caught:
        await websocket_connect(HTTPRequest(url, headers=headers or {}))
    assert caught.value.response is not None
    return caught.value.response


async def refused_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a refused upgrade (fails if the socket opened)."""
    return (await refused(url, headers)).code


# --- the course's test_websocket.py counterparts -------------------------------------

async def test_can_connect_to_server(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    assert client.ws.protocol is not None
    client.close()


async def test_can_send_and_receive_messages(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    message = {"type": "echo.message", "data": "This is a test message."}
    assert await client.request(message) == message


async def test_cannot_connect_to_socket_without_token(server: RunningServer) -> None:
    assert await refused_status(server.ws_url) == 401


async def test_join_driver_pool(server: RunningServer) -> None:
    _, token = await server.user("driver@example.com", "driver")
    client = await server.connect(token)
    message = {"type": "echo.message", "data": "This is a test message."}
    await server.hub.send("drivers", message)
    assert await client.receive() == message


async def test_rider_is_not_in_driver_pool(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    await server.hub.send("drivers", {"type": "echo.message", "data": 1})
    await client.nothing()


async def test_user_group_reaches_every_connection_of_the_user(server: RunningServer) -> None:
    user, token = await server.user("rider@example.com")
    phone, tablet = await server.connect(token), await server.connect(token)
    await server.hub.send(f"user:{user.id}", {"type": "echo.message", "data": "hi"})
    assert (await phone.receive())["data"] == "hi"
    assert (await tablet.receive())["data"] == "hi"


# --- bad tokens: every case is a 401 before any socket opens --------------------------

def forged(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def good_claims(user_id: str, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"token_type": "access", "exp": now + 60, "iat": now,
                                 "jti": "x", "id": user_id}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    "case",
    ["malformed", "bad_signature", "expired", "refresh", "alg_none", "missing_jti",
     "missing_id", "unknown_user", "empty"],
)
async def test_bad_token_is_refused_with_401(server: RunningServer, case: str) -> None:
    user, _ = await server.user("rider@example.com")
    tokens = {
        "malformed": "not.a.jwt",
        "bad_signature": forged(good_claims(user.id), key="another-key-entirely-0123456789abcdef"),
        "expired": forged(good_claims(user.id, exp=int(time.time()) - 120)),  # past leeway
        "refresh": server.tokens.issue_refresh(user.id),
        "alg_none": jwt.encode(good_claims(user.id), None, algorithm="none"),  # type: ignore[arg-type]
        "missing_jti": forged(good_claims(user.id, jti=None)),
        "missing_id": forged(good_claims(user.id, id=None)),
        "unknown_user": forged(good_claims("no-such-user")),
        "empty": "",
    }
    assert await refused_status(f"{server.ws_url}?token={tokens[case]}") == 401


async def test_bearer_header_opens_socket(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    ws = await websocket_connect(HTTPRequest(server.ws_url,
                                             headers={"Authorization": f"Bearer {token}"}))
    ws.close()


async def test_bad_token_with_independent_client_gets_http_401(server: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(f"{server.ws_url}?token=garbage"):
            pass
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body)["code"] == "token_not_valid"


async def test_path_without_trailing_slash_is_accepted(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    ws = await websocket_connect(f"{server.ws_url.rstrip('/')}?token={token}")
    ws.close()


async def test_disallowed_origin_gets_403(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    response = await refused(f"{server.ws_url}?token={token}",
                             {"Origin": "https://evil.example"})
    assert response.code == 403
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"detail": "Origin not allowed."}


async def test_allowed_origin_and_no_origin_connect(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, server={"port": 0,
                                               "allowed_origins": ("http://localhost:3000",)})
    running = await start(settings)
    _, token = await running.user("rider@example.com")
    ws = await websocket_connect(HTTPRequest(f"{running.ws_url}?token={token}",
                                             headers={"Origin": "http://localhost:3000"}))
    ws.close()
    ws = await websocket_connect(f"{running.ws_url}?token={token}")
    ws.close()


# --- envelopes and error frames -------------------------------------------------------

async def test_malformed_json_gets_error_and_socket_lives(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    await client.send("{not json")  # no id can be read from it: its answer is the next frame
    reply = await client.receive()
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "invalid_json"
    assert reply["data"]["for"] is None
    echo = {"type": "echo.message", "data": "still here"}
    assert await client.request(echo) == echo


@pytest.mark.parametrize("frame", ["[1, 2]", '"text"', "42", "null", '{"data": 1}',
                                   '{"type": 5}', '{"type": ""}'])
async def test_non_object_or_typeless_frame_is_invalid_message(
    server: RunningServer, frame: str
) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    await client.send(frame)  # not an envelope: its answer carries no id
    reply = await client.receive()
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "invalid_message"
    assert await client.request({"type": "echo.message", "data": 1}) == {
        "type": "echo.message", "data": 1}


async def test_type_longer_than_64_is_invalid_message(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    reply = await client.request({"type": "x" * 65, "id": 3})
    assert reply["data"]["code"] == "invalid_message"
    assert reply["id"] == 3


async def test_unknown_type_names_the_type_and_keeps_id(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    reply = await client.request({"type": "no.such.type", "id": "abc"})
    assert reply == {
        "type": "error",
        "data": {"code": "unknown_type", "detail": "No plugin handles 'no.such.type'.",
                 "for": "no.such.type", "errors": {}},
        "id": "abc",
    }


async def test_reply_carries_the_frame_id(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    client = await server.connect(token)
    assert await client.request({"type": "echo.message", "data": [1], "id": 7}) == {
        "type": "echo.message", "data": [1], "id": 7}
    assert (await client.request({"type": "echo.message", "id": "q"}))["id"] == "q"


async def test_oversize_frame_closes_with_1009(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    running = await start(make_settings(tmp_path, server={"port": 0, "max_message_size": 1024}))
    _, token = await running.user("rider@example.com")
    client = await running.connect(token)
    await client.send({"type": "echo.message", "data": "x" * 2000})
    assert await client.closed() == 1009


async def test_frame_just_under_limit_is_echoed(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    running = await start(make_settings(tmp_path, server={"port": 0, "max_message_size": 1024}))
    _, token = await running.user("rider@example.com")
    client = await running.connect(token)
    message = {"type": "echo.message", "data": "x" * 900}
    assert await client.request(message) == message


async def test_rate_limit_answers_rate_limited_then_closes_1008(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    settings = replace(settings, limits={"rate": 1, "burst": 3})
    running = await start(settings)
    _, token = await running.user("rider@example.com")
    client = await running.connect(token)
    for _ in range(3):
        await client.send({"type": "echo.message"})
    for _ in range(3):
        assert (await client.receive())["type"] == "echo.message"
    await client.send({"type": "echo.message"})
    reply = await client.receive()
    assert reply["data"]["code"] == "rate_limited"
    for _ in range(10):
        await client.send({"type": "echo.message"})
    assert await client.closed() == 1008


# --- protocol versions ------------------------------------------------------------------

async def test_v2_is_selected_only_when_offered(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    v2 = await server.connect(token, v2=True)
    assert v2.ws.selected_subprotocol == "taxi.v2"
    v1 = await server.connect(token)
    assert v1.ws.selected_subprotocol is None


async def test_unknown_subprotocol_is_never_selected(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    async with websockets.connect(f"{server.ws_url}?token={token}",
                                  subprotocols=["taxi.v9"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None
        await ws.send(json.dumps({"type": "echo.message", "data": 1}))
        assert json.loads(await next_frame(ws)) == {"type": "echo.message", "data": 1}


async def test_v2_only_message_skips_v1_connections(server: RunningServer) -> None:
    _, token = await server.user("driver@example.com", "driver")
    v1, v2 = await server.connect(token), await server.connect(token, v2=True)
    await server.hub.send("drivers", {"type": "future.event"}, min_version=2)
    event = await v2.receive()
    assert event.pop("pos")["group"] == "drivers"  # v2 events carry their position
    assert event == {"type": "future.event"}
    await v1.nothing()


async def test_independent_client_echo(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    async with websockets.connect(f"{server.ws_url}?token={token}",
                                  subprotocols=["taxi.v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "taxi.v2"
        await ws.send(json.dumps({"type": "echo.message", "data": {"a": "é"}, "id": 1}))
        assert json.loads(await next_frame(ws)) == {"type": "echo.message", "data": {"a": "é"},
                                               "id": 1}


async def test_closed_socket_leaves_its_groups(server: RunningServer) -> None:
    user, token = await server.user("driver@example.com", "driver")
    client = await server.connect(token)
    assert server.hub.members("drivers") == 1
    client.close()
    for _ in range(50):
        if server.hub.members("drivers") == 0 and server.hub.members(f"user:{user.id}") == 0:
            break
        await asyncio.sleep(0.02)
    assert server.hub.members("drivers") == 0
    assert server.hub.members(f"user:{user.id}") == 0


async def test_plain_http_get_on_socket_path_is_json_400(server: RunningServer) -> None:
    _, token = await server.user("rider@example.com")
    status, data, response = await server.fetch(f"/taxi/?token={token}")
    assert status == 400
    assert data == {"detail": 'Can "Upgrade" only to "WebSocket".'}
    assert response.headers["Content-Type"] == "application/json"


async def test_upgrade_failing_on_a_store_error_says_what_the_api_says(
    server: RunningServer,
) -> None:
    _, token = await server.user("rider@example.com")
    with sqlite3.connect(server.settings.data_dir / "taxi.db") as db:
        db.execute("ALTER TABLE users RENAME TO users_gone")  # every user lookup fails
    response = await refused(f"{server.ws_url}?token={token}")
    status, api_body, _ = await server.fetch("/api/trip/", token=token)
    assert (response.code, status) == (500, 500)
    assert json.loads(response.body) == api_body == {"detail": "A server error occurred."}
    assert response.headers["Content-Type"] == "application/json"
