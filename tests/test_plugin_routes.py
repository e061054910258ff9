"""Plugins' HTTP routes: handlers get a Request and return JSON; errors, tokens and wrong
methods answer in the API's shapes; conflicts stop start-up naming both sides."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.plugins.api import PluginError
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.testing import TaxiServer, start_server
from tests.conftest import FakeDistributions

Start = Callable[..., Awaitable[TaxiServer]]

NOTES = """
    from taxi_tornado.plugins import HttpError, Response

    NOTES = {}

    async def read_note(request):
        note = NOTES.get(request.path_params["note_id"])
        if note is None:
            raise HttpError(404, "No such note.")
        return {"note": note, "reader": request.user.username, "query": dict(request.query)}

    async def add_note(request):
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise HttpError(400, "Invalid.", {"text": ["This field is required."]})
        NOTES[str(len(NOTES) + 1)] = body["text"]
        return Response({"id": str(len(NOTES))}, status=201, headers={"X-Note": "made"})

    async def whoami(request):
        return {"user": request.user.username if request.user else None}

    async def crash(request):
        raise KeyError("secret internals at /srv/db")

    async def forbidden(request):
        raise HttpError(403, "Staff only.")

    def setup(registry):
        registry.add_route("/api/notes/{note_id}/", read_note)
        registry.add_route("/api/notes/", add_note, methods=("POST",))
        registry.add_route("/api/notes-whoami/", whoami, auth="optional")
        registry.add_route("/api/notes-open", whoami, auth="none")
        registry.add_route("/api/notes-crash/", crash)
        registry.add_route("/api/notes-staff/", forbidden)
"""

TOKEN_INVALID = {"detail": "Token is invalid or expired", "code": "token_not_valid"}


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start servers (after the test installed its fake plugins); all stop at the end."""
    servers: list[TaxiServer] = []

    async def _start(settings: dict[str, Any] | None = None) -> TaxiServer:
        server = await start_server(tmp_path / f"data{len(servers)}", settings)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.close()


async def test_route_gets_user_path_params_and_query(
    fake_plugins: FakeDistributions, start: Start
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    rider = await server.rider(username="rita")
    made = await rider.http.post("/api/notes/", json={"text": "buy milk"})
    assert (made.status, made.json, made.headers["X-Note"]) == (201, {"id": "1"}, "made")

    for path in ("/api/notes/1/?sort=new&sort=old", "/api/notes/1?sort=old"):
        response = await rider.http.get(path)
        assert response.status == 200
        assert response.json == {"note": "buy milk", "reader": "rita",
                                 "query": {"sort": "old"}}


async def test_route_errors_answer_in_the_api_shapes(
    fake_plugins: FakeDistributions, start: Start
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    rider = await server.rider()

    missing = await rider.http.get("/api/notes/9/")
    assert (missing.status, missing.json) == (404, {"detail": "No such note."})
    staff_only = await rider.http.get("/api/notes-staff/")
    assert (staff_only.status, staff_only.json) == (403, {"detail": "Staff only."})
    invalid = await rider.http.post("/api/notes/", json={"txt": 1})
    assert (invalid.status, invalid.json) == (400, {"text": ["This field is required."]})
    not_json = await rider.http.post("/api/notes/", body=b"{oops",
                                     headers={"Content-Type": "application/json"})
    assert not_json.status == 400 and not_json.json["detail"].startswith("JSON parse error")
    assert (await rider.http.post("/api/notes/", body=b"")).status == 400


async def test_missing_or_bad_token_is_401_with_the_contract_body(
    fake_plugins: FakeDistributions, start: Start
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    for client in (server.client(), server.client("not-a-token")):
        response = await client.get("/api/notes/1/")
        assert (response.status, response.json) == (401, TOKEN_INVALID)
        assert response.headers["Content-Type"].startswith("application/json")


async def test_wrong_method_is_405_naming_it(
    fake_plugins: FakeDistributions, start: Start
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    rider = await server.rider()

    response = await rider.http.delete("/api/notes/")

    assert (response.status, response.json) == (405, {"detail": 'Method "DELETE" not allowed.'})
    assert response.headers["Allow"] == "POST"
    # A method no plugin route can serve says the same, with the path's methods.
    response = await rider.http.request("HEAD", "/api/notes/")
    assert (response.status, response.headers["Allow"]) == (405, "POST")


async def test_optional_and_no_auth(fake_plugins: FakeDistributions, start: Start) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    rider = await server.rider(username="rita")

    assert (await server.client().get("/api/notes-whoami/")).json == {"user": None}
    assert (await rider.http.get("/api/notes-whoami/")).json == {"user": "rita"}
    bad = await server.client("bad").get("/api/notes-whoami/")
    assert (bad.status, bad.json) == (401, TOKEN_INVALID)
    assert (await server.client("bad").get("/api/notes-open/")).json == {"user": None}


async def test_failing_route_is_500_without_details_and_logged(
    fake_plugins: FakeDistributions, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start()
    rider = await server.rider()

    with caplog.at_level(logging.ERROR, logger="taxi_tornado.plugins"):
        response = await rider.http.get("/api/notes-crash/")

    assert (response.status, response.json) == (500, {"detail": "A server error occurred."})
    assert "secret" not in response.text
    assert any("notes" in r.getMessage() and r.exc_info for r in caplog.records)
    metrics = (await server.client().get("/metrics")).text
    assert 'taxi_plugin_route_errors_total{plugin="notes"}' in metrics


async def test_preflight_allows_the_routes_methods(
    fake_plugins: FakeDistributions, start: Start
) -> None:
    fake_plugins.add("notes", NOTES)
    server = await start({"server": {"allowed_origins": ["https://app.example"]}})

    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}

    response = await server.client().request("OPTIONS", "/api/notes/", headers=preflight)
    with_param = await server.client().request("OPTIONS", "/api/notes/1/", headers=preflight)

    assert response.status == 204
    assert response.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert with_param.status == 204
    assert with_param.headers["Access-Control-Allow-Methods"] == "GET, OPTIONS"


def test_two_plugins_claiming_one_path_name_both(fake_plugins: FakeDistributions) -> None:
    fake_plugins.add("notes", NOTES)
    fake_plugins.add("copycat", """
        async def mine(request):
            return {}

        def setup(registry):
            registry.add_route("/api/notes/{other_name}", mine, methods=("GET",))
    """)
    with pytest.raises(PluginError) as caught:
        load_plugins()
    message = str(caught.value)
    assert "'copycat'" in message and "'notes'" in message and "/api/notes/" in message


@pytest.mark.parametrize("path", ["/api/trip/{trip_id}/", "/healthz", "/taxi", "/{anything}/"])
async def test_plugin_claiming_a_core_path_stops_start_up(
    fake_plugins: FakeDistributions, tmp_path: Path, path: str
) -> None:
    fake_plugins.add("squatter", f"""
        async def mine(request):
            return {{}}

        def setup(registry):
            registry.add_route({path!r}, mine)
    """)
    with pytest.raises(PluginError) as caught:
        await start_server(tmp_path / "data")
    message = str(caught.value)
    assert "'squatter'" in message and repr(path) in message and "core path" in message


@pytest.mark.parametrize(("path", "options", "says"), [
    ("api/x", "", "starts with /"),
    ("/api/{a}/{a}", "", "starts with /"),
    ("/api/x", ", methods=('FETCH',)", "methods"),
    ("/api/x", ", auth='maybe'", "auth"),
])
def test_malformed_route_is_refused_at_setup(
    fake_plugins: FakeDistributions, path: str, options: str, says: str
) -> None:
    fake_plugins.add("odd", f"""
        async def mine(request):
            return {{}}

        def setup(registry):
            registry.add_route({path!r}, mine{options})
    """)
    with pytest.raises(PluginError, match=says):
        load_plugins()


def test_cli_check_stops_on_a_route_conflict_with_one_line(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("squatter", """
        async def mine(request):
            return {}

        def setup(registry):
            registry.add_route("/metrics", mine)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    env.update(PYTHONPATH=f"{fake_plugins.root}{os.pathsep}{env.get('PYTHONPATH', '')}",
               TAXI_DATA_DIR=str(tmp_path / "d"))
    result = subprocess.run([sys.executable, "-m", "taxi_tornado", "check"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taxi-tornado: plugin 'squatter': route '/metrics' claims the core path '/metrics/'"]
