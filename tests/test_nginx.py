"""A real nginx, configured from deploy/nginx.conf, in front of two server processes.

The test turns the shipped site file into a runnable config by substituting only ports,
paths and the site's name (every substitution must match, so an edit to deploy/nginx.conf
that the test no longer understands fails here rather than passing untested). The two
processes share the Redis hub on 127.0.0.1:6379 under a prefix of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import ROOT, Client, ServerProcess, free_port, spawn_server
from tests.test_hosts import EVIL, INVALID_HOST, raw_request, upgrade
from tests.test_operations import (
    Seeded,
    client_tls,
    eventually,
    seed_users,
    self_signed_cert,
    ws_client,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
# The client connects from this loopback address; nginx reaches the servers from
# 127.0.0.1. A server that shows this address got it from the X-Real-IP header.
CLIENT_IP = "127.0.0.7"
# The site's server_name here: the names the tests reach nginx by.
SITE_NAMES = ("localhost", "127.0.0.1")


@dataclass
class Proxy:
    root: Path  # the servers' working directory: seed users here
    http_port: int
    https_port: int
    directory: Path
    cert: Path
    servers: list[ServerProcess]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/taxi/"

    @property
    def wss_url(self) -> str:
        return f"wss://localhost:{self.https_port}/taxi/"

    def logs(self) -> str:
        """nginx's access and error logs and every server's log."""
        parts = [path.read_text(errors="replace") for path in
                 (self.directory / "taxi-tornado.access.log",
                  self.directory / "taxi-tornado.error.log", self.directory / "error.log")
                 if path.exists()]
        return "\n".join(parts + [server.log() for server in self.servers])

    def access_log(self) -> str:
        return (self.directory / "taxi-tornado.access.log").read_text()


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                       else None)
    assert binary, "nginx is not installed: scripts/test.sh installs Debian's nginx-light"
    return binary


def site_config(directory: Path, http_port: int, https_port: int, upstreams: list[int],
                cert: Path, key: Path) -> str:
    """deploy/nginx.conf with this test's ports and paths."""
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = "\n".join(line for line in site.splitlines() if "[::]" not in line)  # no IPv6 here
    upstream_lines = "\n".join(
        f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in upstreams
    )
    substitutions = [
        (r"    server 127\.0\.0\.1:8001 [^\n]*\n    server 127\.0\.0\.1:8002 [^\n]*",
         upstream_lines),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        (r"listen 80 default_server;", f"listen 127.0.0.1:{http_port} default_server;"),
        (r"listen 443 ssl default_server;",
         f"listen 127.0.0.1:{https_port} ssl default_server;"),
        (r"server_name taxi\.example\.com;", f"server_name {' '.join(SITE_NAMES)};"),
        (r"/etc/letsencrypt/live/taxi\.example\.com/fullchain\.pem", str(cert)),
        (r"/etc/letsencrypt/live/taxi\.example\.com/privkey\.pem", str(key)),
        (r"/var/log/nginx/", f"{directory}/"),
    ]
    for pattern, replacement in substitutions:
        site, count = re.subn(pattern, replacement.replace("\\", "\\\\"), site)
        assert count, f"deploy/nginx.conf no longer contains {pattern!r}"
    return site


def main_config(directory: Path, site: Path) -> str:
    """The few main-context lines a distribution's nginx.conf provides, all inside tmp."""
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {directory}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 256; }}
http {{
{temp}
    access_log off;
    include {site};
}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """nginx on free ports in front of two server processes sharing the Redis hub.

    One for the whole module: starting three processes costs more than every test here.
    Tests use usernames of their own.
    """
    tmp_path = tmp_path_factory.mktemp("proxy")
    directory = tmp_path / "nginx"
    directory.mkdir()
    cert, key = self_signed_cert(tmp_path)
    env = {"TAXI_SERVER_XHEADERS": "true", "TAXI_HUB_URL": SHARED_REDIS,
           "TAXI_HUB_PREFIX": f"test-nginx-{uuid.uuid4().hex[:12]}"}
    servers = [spawn_server(tmp_path, env=env, name=f"server{index}") for index in (1, 2)]
    http_port, https_port = free_port(), free_port()
    site = directory / "taxi-tornado.conf"
    site.write_text(site_config(directory, http_port, https_port,
                                [server.port for server in servers], cert, key))
    conf = directory / "nginx.conf"
    conf.write_text(main_config(directory, site))
    nginx = subprocess.Popen(
        [nginx_binary(), "-p", str(directory), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(nginx, http_port, https_port)
        yield Proxy(tmp_path, http_port, https_port, directory, cert, servers)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        for server in servers:
            server.stop()


def wait_listening(nginx: subprocess.Popen[bytes], *ports: int) -> None:
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            if nginx.poll() is not None:
                output = nginx.stdout.read().decode() if nginx.stdout else ""
                raise AssertionError(f"nginx exited {nginx.returncode}: {output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nginx is not listening on {port}"
                time.sleep(0.05)


async def connect(proxy: Proxy, token: str, tls: bool, **kwargs: object) -> Client:
    if tls:
        return await ws_client(proxy.wss_url, token, ssl_context=client_tls(proxy.cert),
                               **kwargs)  # type: ignore[arg-type]
    return await ws_client(proxy.ws_url, token, **kwargs)  # type: ignore[arg-type]


async def seed(proxy: Proxy, *users: tuple[str, str]) -> dict[str, Seeded]:
    """Users with names of this test's own (the proxy and its store outlive a test)."""
    tag = uuid.uuid4().hex[:8]
    seeded = await seed_users(proxy.root, *((f"{name}.{tag}", group) for name, group in users))
    return {name.split(".")[0]: value for name, value in seeded.items()}


async def server_of(proxy: Proxy, user_id: str) -> int:
    """Which server process (index) logged the socket of `user_id`.

    The line is written when the socket opens, just after the handshake answer left.
    """
    def found() -> list[int]:
        return [index for index, server in enumerate(proxy.servers)
                if f"socket open user={user_id} " in server.log()]

    await eventually(lambda: bool(found()))
    assert len(found()) == 1, f"user {user_id} seen on servers {found()}"
    return found()[0]


# --- the tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_echo_through_nginx(proxy: Proxy, tls: bool) -> None:
    users = await seed(proxy, ("rider", "rider"))
    client = await connect(proxy, users["rider"].token, tls)
    message = {"type": "echo.message", "data": {"hello": "nginx"}, "id": 1}
    assert await client.request(message) == message
    client.ws.close(1000)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_trip_flow_across_two_processes_through_nginx(
    proxy: Proxy, tls: bool
) -> None:
    users = await seed(proxy, ("rider", "rider"), ("driver1", "driver"),
                             ("driver2", "driver"))
    # nginx balances round-robin: two drivers in a row land on different processes.
    drivers = [await connect(proxy, users[name].token, tls) for name in ("driver1", "driver2")]
    rider = await connect(proxy, users["rider"].token, tls)
    places = {name: await server_of(proxy, users[name].id)
              for name in ("driver1", "driver2", "rider")}
    assert places["driver1"] != places["driver2"]

    request = {"type": "trip.request", "id": "r1",
               "data": {"pick_up_address": "A", "drop_off_address": "B"}}
    reply = await rider.request(request)
    assert reply["type"] == "trip.updated" and reply["id"] == "r1"
    trip = reply["data"]
    for driver in drivers:  # one of them is on the other process
        event = await driver.receive()
        assert event["data"]["id"] == trip["id"] and event["data"]["status"] == "REQUESTED"

    # The driver on the process the rider is not on claims; the rider sees it.
    remote = "driver1" if places["driver1"] != places["rider"] else "driver2"
    claimer = drivers[0] if remote == "driver1" else drivers[1]
    claim = await claimer.request({"type": "trip.update", "id": 2,
                                   "data": {"id": trip["id"], "status": "STARTED"}})
    assert claim["data"]["status"] == "STARTED" and claim["id"] == 2
    seen = await rider.receive()
    assert seen["type"] == "trip.updated"
    assert seen["data"]["status"] == "STARTED"
    assert seen["data"]["driver"]["id"] == users[remote].id
    for client in (rider, *drivers):
        client.ws.close(1000)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_server_sees_the_client_address_not_a_forged_one(
    proxy: Proxy, tls: bool
) -> None:
    users = await seed(proxy, ("rider", "rider"))
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
    client = await connect(proxy, users["rider"].token, tls, source_ip=CLIENT_IP,
                           headers=forged)
    assert (await client.request({"type": "echo.message", "data": 1}))["data"] == 1
    index = await server_of(proxy, users["rider"].id)
    log = proxy.servers[index].log()
    assert f"socket open user={users['rider'].id} remote={CLIENT_IP} " in log
    assert "203.0.113.9" not in log
    client.ws.close(1000)
    # nginx writes a WebSocket's access line when it ends.
    await eventually(lambda: f"{CLIENT_IP} - [" in proxy.access_log())


async def test_https_through_nginx_builds_https_urls(proxy: Proxy) -> None:
    """X-Forwarded-Proto and Host reach the server: a photo URL names the public origin."""
    boundary = "taxiboundary"
    fields = {"username": "photo.rider", "password1": "pAssw0rd!", "password2": "pAssw0rd!",
              "group": "rider"}
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        .encode() for name, value in fields.items()
    ) + (f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; '
         'filename="me.png"\r\nContent-Type: image/png\r\n\r\n').encode() + PNG + (
        f"\r\n--{boundary}--\r\n").encode()
    request = HTTPRequest(
        f"https://localhost:{proxy.https_port}/api/sign_up/", method="POST", body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ssl_options=client_tls(proxy.cert),
    )
    response = await AsyncHTTPClient().fetch(request)
    assert response.code == 201
    photo = json.loads(response.body)["photo"]
    assert photo.startswith(f"https://localhost:{proxy.https_port}/media/photos/"), photo


async def test_token_is_in_no_log(proxy: Proxy) -> None:
    users = await seed(proxy, ("rider", "rider"))
    token = users["rider"].token
    before = len(proxy.access_log())
    for tls in (False, True):
        client = await connect(proxy, token, tls)
        await client.request({"type": "echo.message"})
        client.ws.close(1000)
    bogus = "NOT-A-JWT-" + uuid.uuid4().hex  # refused upgrades are logged too
    for path in (f"/taxi/?token={bogus}", f"/healthz?token={token}",
                 f"/api/trip/?token={token}&x=1"):
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"}
        await AsyncHTTPClient().fetch(
            HTTPRequest(f"http://127.0.0.1:{proxy.http_port}{path}",
                        headers=upgrade if path.startswith("/taxi") else {}),
            raise_error=False)
    user_id = users["rider"].id
    await eventually(lambda: proxy.logs().count(f"socket close user={user_id} ") == 2)
    await eventually(lambda: proxy.access_log()[before:].count("GET /taxi/ ") == 3)
    logs = proxy.logs()
    assert token not in logs and bogus not in logs
    ours = proxy.access_log()[before:]
    assert "GET /healthz " in ours and "GET /api/trip/ " in ours
    assert "?" not in proxy.access_log()


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_foreign_host_never_reaches_the_servers_through_nginx(
    proxy: Proxy, tls: bool
) -> None:
    """nginx's default server answers a Host other than the site's name itself."""
    users = await seed(proxy, ("rider", "rider"))
    token = users["rider"].token
    marker = uuid.uuid4().hex
    before = len(proxy.access_log())
    port = proxy.https_port if tls else proxy.http_port
    context = client_tls(proxy.cert) if tls else None
    path = f"/taxi/?marker={marker}&token={token}"
    assert await upgrade(port, path, EVIL, tls=context) == (400, INVALID_HOST)
    assert await upgrade(port, path, f"{EVIL}:{port}", tls=context) == (400, INVALID_HOST)
    status, body = await raw_request(
        port, f"GET /api/trip/?marker={marker} HTTP/1.1\r\nHost: {EVIL}\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        tls=context, server_hostname="localhost")
    assert (status, json.loads(body)) == (400, INVALID_HOST)
    # The site's own name still opens the socket.
    assert (await upgrade(port, f"/taxi/?token={token}", f"localhost:{port}",
                          tls=context))[0] == 101
    await eventually(
        lambda: proxy.access_log()[before:].count('"GET /taxi/ HTTP/1.1" 400 ') == 2)
    assert not any(marker in server.log() for server in proxy.servers)
    assert token not in proxy.logs() and marker not in proxy.access_log()


async def test_tls_for_a_name_the_site_does_not_serve_is_refused(proxy: Proxy) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # refused before any certificate is sent
    with pytest.raises(ssl.SSLError):
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", proxy.https_port, ssl=context, server_hostname=EVIL), 5)
        writer.close()


async def test_metrics_is_not_served_through_nginx_with_or_without_the_slash(
    proxy: Proxy,
) -> None:
    # Behind nginx, each server serves every one of these paths' targets itself.
    for path in ("/metrics", "/metrics/"):
        with urlopen(f"{proxy.servers[0].url}{path}", timeout=5) as direct:
            assert b"# HELP" in direct.read()
    for path in ("/metrics", "/metrics/", "/metrics?x=1", "/metrics/?x=1", "//metrics",
                 "/%6Detrics", "/%6detrics/", "/metrics/../metrics/", "/./metrics/",
                 "/metrics%2F"):
        for tls in (False, True):
            status, body = await raw_request(
                proxy.https_port if tls else proxy.http_port,
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                tls=client_tls(proxy.cert) if tls else None, server_hostname="localhost")
            assert status == 404, (path, tls, body[:60])
            assert json.loads(body) == {"detail": "Not found."}


# A 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
