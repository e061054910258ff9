"""Settings from file and TAXI_* variables, one-line errors, and the CLI commands."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest

from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.settings import Settings, SettingsError, load_settings
from tests.conftest import PASSWORD, ROOT, ServerProcess, free_port, spawn_server, wait_healthy


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "taxi_tornado", *args], cwd=cwd, env=full_env,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_defaults_need_no_file_and_no_variables(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={}, create_secret=False)
    assert settings == Settings()
    assert settings.store_url == "sqlite:///taxi-data/taxi.db"
    assert settings.hub.url == "memory://"


def test_every_documented_key_is_in_settings_toml() -> None:
    settings = load_settings(ROOT / "settings.toml", environ={}, create_secret=False)
    assert settings == Settings()


def test_environment_overrides_file(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text('[server]\nport = 9000\nallowed_origins = ["http://a.example"]\n')
    settings = load_settings(file, {
        "TAXI_SERVER_PORT": "9100", "TAXI_LIMITS_RATE": "5.5",
        "TAXI_SERVER_ALLOWED_ORIGINS": "http://b.example, http://c.example",
        "TAXI_SERVER_XHEADERS": "true", "TAXI_DATA_DIR": str(tmp_path / "d"),
        "TAXI_PLUGINS_DISABLED": "echo",
    }, create_secret=False)
    assert settings.server.port == 9100
    assert settings.limits.rate == 5.5
    assert settings.server.allowed_origins == ("http://b.example", "http://c.example")
    assert settings.server.xheaders is True
    assert settings.plugins.disabled == ("echo",)
    assert settings.data_dir == tmp_path / "d"


@pytest.mark.parametrize(("env", "key"), [
    ({"TAXI_SERVER_PORT": "eighty"}, "server.port"),
    ({"TAXI_SERVER_PORT": "70000"}, "server.port"),
    ({"TAXI_SERVER_XHEADERS": "maybe"}, "server.xheaders"),
    ({"TAXI_HUB_URL": "amqp://x"}, "hub.url"),
    ({"TAXI_STORE_URL": "postgres://x"}, "store.url"),
    ({"TAXI_LOG_FORMAT": "xml"}, "log.format"),
    ({"TAXI_LIMITS_BURST": "0"}, "limits.burst"),
    ({"TAXI_SERVER_PING_TIMEOUT": "30"}, "server.ping_timeout"),
    ({"TAXI_SERVER_TLS_CERT": "/nonexistent.pem"}, "server.tls_cert"),
    ({"TAXI_SERVER_PROCESSES": "2"}, "server.processes"),
    ({"TAXI_SERVER_ALLOWED_ORIGINS": "localhost:3000"}, "server.allowed_origins"),
    ({"TAXI_DISPATCH_BATCH": "0"}, "dispatch.batch"),
    ({"TAXI_DISPATCH_RADIUS_M": "-5"}, "dispatch.radius_m"),
    ({"TAXI_DISPATCH_MAX_RADIUS_M": "100"}, "dispatch.max_radius_m"),
    ({"TAXI_DISPATCH_OFFER_TIMEOUT": "0"}, "dispatch.offer_timeout"),
    ({"TAXI_DISPATCH_MAX_WAIT": "soon"}, "dispatch.max_wait"),
    ({"TAXI_DISPATCH_LOCATION_TTL": "0"}, "dispatch.location_ttl"),
    ({"TAXI_SERVER_EVENT_LOOP": "trio"}, "server.event_loop"),
])
def test_bad_value_names_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=env, create_secret=False, path=None)
    assert str(caught.value).startswith(key + ":")
    assert "\n" not in str(caught.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "s.toml"
    file.write_text("[server]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"^server\.prot: unknown setting"):
        load_settings(file, {}, create_secret=False)


def test_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    env = {"TAXI_DATA_DIR": str(tmp_path / "d")}
    first = load_settings(environ=env).auth.secret_key
    second = load_settings(environ=env).auth.secret_key
    assert first and first == second
    mode = stat.S_IMODE((tmp_path / "d" / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_cli_bad_setting_stops_with_one_line(tmp_path: Path) -> None:
    result = cli("serve", cwd=tmp_path, env={"TAXI_SERVER_PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "taxi-tornado: server.port: must be an integer, got 'eighty'"]


def loaded_plugin_names(disabled: tuple[str, ...] = ()) -> list[str]:
    """The plugins this environment loads, as the server loads them."""
    return [plugin.name for plugin in load_plugins(disabled)[1]]


def test_cli_check_validates_and_exits(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "settings OK" in result.stdout
    assert not (tmp_path / "taxi-data" / "secret_key").exists()
    bad = cli("check", cwd=tmp_path, env={"TAXI_LOG_LEVEL": "loud"})
    assert bad.returncode == 2 and "log.level" in bad.stderr


def test_cli_check_says_the_dispatch_mode_and_the_plugins(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path, env={"TAXI_DISPATCH_MODE": "nearest",
                                             "TAXI_PLUGINS_DISABLED": "echo"})
    assert result.returncode == 0, result.stderr
    registry, loaded = load_plugins(("echo",))
    plugins = [plugin.name for plugin in loaded]
    assert "echo" not in plugins and {"trips", "dispatch"} <= set(plugins)
    strategies = sorted(registry.dispatch_strategies)
    assert {"broadcast", "nearest"} <= set(strategies)
    assert result.stdout.splitlines() == [
        "settings OK: store sqlite:///taxi-data/taxi.db, hub memory://",
        f"dispatch mode nearest (registered: {', '.join(strategies)})",
        f"plugins {', '.join(plugins)} (disabled: echo)",
    ]


def test_cli_check_hides_credentials_in_urls(tmp_path: Path) -> None:
    result = cli("check", cwd=tmp_path, env={"TAXI_HUB_URL": "redis://:s3cret@127.0.0.1:1/0"})
    assert result.returncode == 0, result.stderr
    assert "hub redis://***@127.0.0.1:1/0" in result.stdout
    assert "s3cret" not in result.stdout


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = cli("--config", str(tmp_path / "none.toml"), "check", cwd=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_createuser_then_log_in_over_http(tmp_path: Path) -> None:
    created = cli("createuser", "dana", "--group", "driver", "--first-name", "Dana",
                  "--password-stdin", cwd=tmp_path, stdin=PASSWORD + "\n")
    assert created.returncode == 0, created.stderr
    user_id = created.stdout.strip()  # the id alone, for scripts
    assert re.fullmatch(r"[0-9a-f-]{36}", user_id), created.stdout
    assert created.stderr.strip().splitlines()[-1] == (
        f"created the driver user 'dana' (id {user_id}) in sqlite:///taxi-data/taxi.db")
    again = cli("createuser", "DANA", "--group", "rider", cwd=tmp_path, stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = cli("createuser", "erin", "--group", "rider", cwd=tmp_path, stdin="123\n")
    assert weak.returncode == 2 and "password1" in weak.stderr
    running = spawn_server(tmp_path, env={"TAXI_DATA_DIR": str(tmp_path / "taxi-data")})
    try:
        request = Request(f"{running.url}/api/log_in/", method="POST",
                          data=json.dumps({"username": "dana", "password": PASSWORD}).encode(),
                          headers={"Content-Type": "application/json"})
        with urlopen(request, timeout=5) as response:
            tokens = json.loads(response.read())
        assert tokens["access"] and tokens["refresh"]
    finally:
        assert running.stop() == 0
    assert user_id


def test_serve_on_embedded_defaults_as_a_new_user(tmp_path: Path) -> None:
    """No settings file, no services: SQLite in ./taxi-data and the in-process hub."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    env["TAXI_SERVER_PORT"] = str(port)
    process = subprocess.Popen([sys.executable, "-m", "taxi_tornado", "serve"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(ServerProcess(process, port, tmp_path / "unused.log"))
        with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        assert (tmp_path / "taxi-data" / "taxi.db").exists()
        assert (tmp_path / "taxi-data" / "secret_key").exists()
    finally:
        process.terminate()
        output = process.communicate(timeout=15)[0].decode()
    assert process.returncode == 0
    assert "generated one into" in output and "TAXI_AUTH_SECRET_KEY" in output


def test_busy_port_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", cwd=tmp_path, env={"TAXI_SERVER_PORT": str(port)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"taxi-tornado: server.port: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_several_processes_need_a_fixed_port() -> None:
    with pytest.raises(SettingsError, match=r"^server\.port: must be a fixed port"):
        load_settings(environ={"TAXI_SERVER_PROCESSES": "2", "TAXI_SERVER_PORT": "0",
                               "TAXI_HUB_URL": "redis://127.0.0.1:6379/0"},
                      create_secret=False)


def test_start_up_line_names_the_dispatch_mode_and_the_plugins(tmp_path: Path) -> None:
    server = spawn_server(tmp_path, {"TAXI_DISPATCH_MODE": "nearest",
                                     "TAXI_PLUGINS_DISABLED": "echo"})
    try:
        plugins = ", ".join(loaded_plugin_names(("echo",)))
        line = next(line for line in server.log().splitlines() if "listening on" in line)
        assert line.endswith(f"); dispatch mode nearest; plugins {plugins}"), line
        assert "echo" not in line
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_server_runs_on_the_event_loop_chosen(tmp_path: Path, choice: str, loop: str) -> None:
    """uvloop is a dependency on Linux, so `auto` takes it; `asyncio` is the way back."""
    server = spawn_server(tmp_path, {"TAXI_SERVER_EVENT_LOOP": choice})
    try:
        assert f"event loop {loop})" in server.log(), server.log()
        # collector.py: start-up objects are frozen once the server listens.
        frozen = re.search(r"young collections every 50000 allocations, (\d+) start-up "
                           r"objects frozen", server.log())
        assert frozen is not None, server.log()
        assert int(frozen.group(1)) > 10_000
    finally:
        server.process.terminate()
        server.process.wait(20)
