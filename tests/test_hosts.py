"""server.allowed_hosts and server.public_url over real HTTP and sockets.

A Host the operator did not allow is refused before any handler runs, so no request can
make the server write a URL on an attacker's host, and with public_url set every URL
starts with it whatever Host the causing client used.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from taxi_tornado.hosts import allowed_hosts
from taxi_tornado.settings import SettingsError, load_settings
from tests.conftest import PASSWORD, Client, RunningServer, make_settings
from tests.test_http_api import PNG, SIGN_UP, multipart
from tests.test_settings_cli import cli

EVIL = "tracker.evil.example"
INVALID_HOST = {"detail": "Invalid Host header."}
PUBLIC = "https://taxi.example.com"


async def raw_request(port: int, head: str, *, address: str = "127.0.0.1",
                      tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> tuple[int, bytes]:
    """Send a request head exactly as written (path and Host untouched): (status, body).

    A 101 answer has no body; the connection is closed after one answer either way.
    """
    reader, writer = await asyncio.open_connection(
        address, port, ssl=tls, server_hostname=server_hostname if tls else None)
    try:
        writer.write(head.encode())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(answer.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in answer.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        if status == 101 or not length:
            return status, b""
        return status, await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def upgrade(port: int, path: str, host: str, address: str = "127.0.0.1",
                  extra: str = "", tls: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """A complete WebSocket handshake by hand with this Host: (status, JSON body or None)."""
    status, body = await raw_request(
        port,
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n",
        address=address, tls=tls, server_hostname="localhost")
    return status, json.loads(body) if body else None


async def socket_with_host(running: RunningServer, token: str, host: str,
                           v2: bool = False) -> Client:
    request = HTTPRequest(f"{running.ws_url}?token={token}", headers={"Host": host})
    ws = await websocket_connect(request, subprotocols=["taxi.v2"] if v2 else None)
    return Client(ws)


# --- refused hosts ---------------------------------------------------------------------

async def test_socket_opened_with_a_foreign_host_is_refused_400(server: RunningServer) -> None:
    _, token = await server.user("rider.foreign")
    path = f"/taxi/?token={token}"
    assert await upgrade(server.port, path, EVIL) == (400, INVALID_HOST)
    assert await upgrade(server.port, path, f"{EVIL}:{server.port}") == (400, INVALID_HOST)
    # The same handshake with an allowed Host opens: only the Host was wrong.
    assert (await upgrade(server.port, path, f"localhost:{server.port}"))[0] == 101


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/trip/"), ("GET", "/api/trip/7c4e8f5e-0000-4000-8000-000000000000/"),
    ("POST", "/api/log_in/"), ("POST", "/api/token/refresh/"), ("POST", "/api/hub/publish/"),
    ("GET", "/media/photos/x.png"), ("GET", "/no/such/path"), ("OPTIONS", "/api/trip/"),
])
async def test_api_request_with_a_foreign_host_is_refused_400(
    server: RunningServer, method: str, path: str
) -> None:
    _, token = await server.user("rider.api")
    body = {} if method == "POST" else None
    status, data, _ = await server.fetch(path, method, body=body, token=token,
                                         headers={"Host": EVIL, "Origin": f"http://{EVIL}"})
    assert (status, data) == (400, INVALID_HOST)


async def test_sign_up_with_a_foreign_host_is_refused_and_stores_nothing(
    server: RunningServer,
) -> None:
    body, content_type = multipart(SIGN_UP, {"photo": ("p.png", PNG, "image/png")})
    status, data, _ = await server.fetch("/api/sign_up/", "POST", raw_body=body,
                                         headers={"Content-Type": content_type, "Host": EVIL})
    assert (status, data) == (400, INVALID_HOST)
    assert await server.store.get_user_by_username(SIGN_UP["username"]) is None
    assert not server.settings.photos_dir.exists() or not any(server.settings.photos_dir.iterdir())


@pytest.mark.parametrize("host", [
    EVIL, "localhost.evil.example", "127.0.0.1.nip.io", "evil.localhost", "localhost:port",
    "[::2]:8000", "[::1", "::1", "local%68ost", "localhost:80:80",
])
async def test_hosts_outside_the_default_list_or_malformed_are_refused(
    server: RunningServer, host: str
) -> None:
    _, token = await server.user("rider.bad")
    status, data, _ = await server.fetch("/api/trip/", token=token, headers={"Host": host})
    assert (status, data) == (400, INVALID_HOST)


@pytest.mark.parametrize("host", ["localhost:80@evil.example", "localhost/x", "a,localhost"])
async def test_hosts_tornado_cannot_parse_are_refused_before_routing(
    server: RunningServer, host: str
) -> None:
    """Tornado answers these itself, a bare 400 (no handler runs, so no URL is written)."""
    _, token = await server.user("rider.bad")
    status, _, _ = await server.fetch("/api/trip/", token=token, headers={"Host": host})
    assert status == 400


@pytest.mark.parametrize("host", [
    "localhost", "localhost:8000", "LocalHost:1", "localhost.", "127.0.0.1", "127.0.0.1:9",
    "[::1]", "[::1]:8000", "[0:0:0:0:0:0:0:1]:80",
])
async def test_default_hosts_are_allowed_on_any_port(server: RunningServer, host: str) -> None:
    _, token = await server.user("rider.ok")
    status, data, _ = await server.fetch("/api/trip/", token=token, headers={"Host": host})
    assert (status, data) == (200, [])


@pytest.mark.parametrize("path", ["/healthz", "/healthz/", "/readyz", "/metrics", "/metrics/"])
async def test_probes_answer_whatever_the_host(server: RunningServer, path: str) -> None:
    for host in (EVIL, "10.0.0.5:8000", "[::1"):
        status, _, response = await server.fetch(path, headers={"Host": host})
        assert status == 200, (host, response.body)


async def test_set_allowed_hosts_replace_the_default_list(tmp_path: Path, start: Any) -> None:
    running = await start(make_settings(
        tmp_path, server={"port": 0, "allowed_hosts": ("taxi.example.com", "[fd00::7]")}))
    _, token = await running.user("rider.listed")
    for host in ("taxi.example.com", "TAXI.example.com:443", "[fd00::7]:8000"):
        status, _, _ = await running.fetch("/api/trip/", token=token, headers={"Host": host})
        assert status == 200, host
    for host in ("localhost", f"127.0.0.1:{running.port}", EVIL):
        status, data, _ = await running.fetch("/api/trip/", token=token, headers={"Host": host})
        assert (status, data) == (400, INVALID_HOST), host
    assert (await running.fetch("/healthz"))[0] == 200


async def test_star_allows_any_well_formed_host(tmp_path: Path, start: Any) -> None:
    running = await start(make_settings(tmp_path, server={"port": 0, "allowed_hosts": ("*",)}))
    _, token = await running.user("rider.star")
    assert (await upgrade(running.port, f"/taxi/?token={token}", EVIL))[0] == 101
    status, data, _ = await running.fetch("/api/trip/", token=token, headers={"Host": EVIL})
    assert (status, data) == (200, [])
    status, data, _ = await running.fetch("/api/trip/", token=token,
                                          headers={"Host": "evil.example:80:80"})
    assert (status, data) == (400, INVALID_HOST)


async def test_server_host_is_in_the_default_list(tmp_path: Path, start: Any) -> None:
    running = await start(make_settings(tmp_path, server={"port": 0, "host": "127.0.0.2"}))
    _, token = await running.user("rider.own")
    path = f"/taxi/?token={token}"
    assert (await upgrade(running.port, path, f"127.0.0.2:{running.port}", "127.0.0.2"))[0] == 101
    assert await upgrade(running.port, path, "127.0.0.3", "127.0.0.2") == (400, INVALID_HOST)


async def test_ipv6_server_writes_bracketed_photo_urls(tmp_path: Path, start: Any) -> None:
    running = await start(make_settings(tmp_path, server={"port": 0, "host": "::1"}))
    body, content_type = multipart(SIGN_UP, {"photo": ("p.png", PNG, "image/png")})
    response = await AsyncHTTPClient().fetch(HTTPRequest(
        f"http://[::1]:{running.port}/api/sign_up/", "POST", body=body,
        headers={"Content-Type": content_type}))
    photo = json.loads(response.body)["photo"]
    assert photo.startswith(f"http://[::1]:{running.port}/media/photos/"), photo


# --- public_url ------------------------------------------------------------------------

async def test_trip_event_carries_public_url_whatever_host_the_rider_used(
    tmp_path: Path, start: Any
) -> None:
    running = await start(make_settings(
        tmp_path, server={"port": 0, "public_url": PUBLIC, "allowed_hosts": ("*",)}))
    _, rider_token = await running.user("rider.pub", "rider", photo="rider.png")
    _, driver_token = await running.user("driver.pub", "driver", photo="driver.png")
    driver = await running.connect(driver_token)
    rider = await socket_with_host(running, rider_token, EVIL)
    reply = await rider.request({"type": "trip.request", "id": 1,
                                 "data": {"pick_up_address": "A", "drop_off_address": "B"}})
    assert reply["data"]["rider"]["photo"] == f"{PUBLIC}/media/photos/rider.png"
    event = await driver.receive()
    assert event["type"] == "trip.updated"
    assert event["data"]["rider"]["photo"] == f"{PUBLIC}/media/photos/rider.png"

    # The driver, on a socket of its own with another foreign Host, takes the trip.
    taker = await socket_with_host(running, driver_token, f"other.evil.example:{running.port}")
    claimed = await taker.request({"type": "trip.update", "id": 2,
                                   "data": {"id": reply["data"]["id"], "status": "STARTED"}})
    assert claimed["data"]["driver"]["photo"] == f"{PUBLIC}/media/photos/driver.png"
    seen = await rider.receive()
    assert seen["data"]["driver"]["photo"] == f"{PUBLIC}/media/photos/driver.png"
    assert seen["data"]["rider"]["photo"] == f"{PUBLIC}/media/photos/rider.png"
    for client in (driver, rider, taker):
        client.close()


async def test_http_api_writes_public_url_whatever_the_host(tmp_path: Path, start: Any) -> None:
    running = await start(make_settings(
        tmp_path, server={"port": 0, "public_url": PUBLIC + ":8443/", "allowed_hosts": ("*",)}))
    body, content_type = multipart(SIGN_UP, {"photo": ("p.png", PNG, "image/png")})
    status, user, _ = await running.fetch("/api/sign_up/", "POST", raw_body=body,
                                          headers={"Content-Type": content_type, "Host": EVIL})
    assert status == 201
    assert user["photo"].startswith(f"{PUBLIC}:8443/media/photos/"), user["photo"]
    status, tokens, _ = await running.fetch(
        "/api/log_in/", "POST", body={"username": SIGN_UP["username"], "password": PASSWORD},
        headers={"Host": EVIL, "X-Forwarded-Proto": "http"})
    assert status == 200
    claims = running.tokens.verify(tokens["access"])
    assert claims["photo"] == user["photo"]


# --- settings --------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("PUBLIC_URL", "taxi.example.com"),
    ("PUBLIC_URL", "ftp://taxi.example.com"),
    ("PUBLIC_URL", "https://taxi.example.com/app"),
    ("PUBLIC_URL", "https://taxi.example.com/?x=1"),
    ("PUBLIC_URL", "https://user:pw@taxi.example.com"),
    ("PUBLIC_URL", "https://taxi.example.com:99999"),
    ("PUBLIC_URL", "https://"),
    ("ALLOWED_HOSTS", "https://taxi.example.com"),
    ("ALLOWED_HOSTS", "taxi.example.com:443"),
    ("ALLOWED_HOSTS", "localhost, taxi example"),
])
def test_bad_public_url_or_allowed_host_names_the_key(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={f"TAXI_SERVER_{key}": value}, create_secret=False)
    message = str(caught.value)
    assert message.startswith(f"server.{key.lower()}: ") and "\n" not in message


def test_allowed_hosts_from_the_environment() -> None:
    settings = load_settings(environ={
        "TAXI_SERVER_ALLOWED_HOSTS": "Taxi.Example.com, [::1], 10.0.0.5",
        "TAXI_SERVER_PUBLIC_URL": "https://taxi.example.com"}, create_secret=False)
    assert allowed_hosts(settings.server) == {"taxi.example.com", "::1", "10.0.0.5"}
    assert settings.server.public_url == "https://taxi.example.com"
    default = load_settings(environ={"TAXI_SERVER_HOST": "0.0.0.0"}, create_secret=False)
    assert allowed_hosts(default.server) == {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
    star = load_settings(environ={"TAXI_SERVER_ALLOWED_HOSTS": "*"}, create_secret=False)
    assert allowed_hosts(star.server) is None


def test_cli_stops_on_a_bad_public_url_with_one_line(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path, env={"TAXI_SERVER_PUBLIC_URL": "taxi.example.com"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taxi-tornado: server.public_url: 'taxi.example.com' must look like "
        "https://host[:port]"]
