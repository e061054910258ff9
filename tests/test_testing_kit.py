"""The plugin authors' kit (taxi_tornado.testing) and `taxi-tornado new-plugin`.

The kit's fixtures are loaded here through the pytest11 entry point, as in an author's
project. The scaffold test does what an author does: write the package, `pip install -e`
it (into a throwaway venv that sees this one's packages) and run `pytest` on it.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from taxi_tornado.testing import PASSWORD, TaxiServer, TaxiUser

# --- the fixtures and clients -------------------------------------------------------------


async def test_request_waits_for_its_own_reply_keeping_other_frames(
    taxi_server: TaxiServer, taxi_rider: TaxiUser
) -> None:
    socket = await taxi_rider.connect()
    await socket.send("echo.message", "first")

    reply = await socket.request("echo.message", "second")

    assert reply == {"type": "echo.message", "data": "second", "id": "kit-1"}
    assert await socket.receive("echo.message") == {"type": "echo.message", "data": "first"}
    await socket.expect_nothing(timeout=0.1)


async def test_receive_timeout_fails_saying_what_arrived(taxi_rider: TaxiUser) -> None:
    socket = await taxi_rider.connect()
    await socket.send("echo.message", "surprise")

    with pytest.raises(AssertionError) as caught:
        await socket.receive("trip.updated", timeout=0.3)

    assert "expected a frame of type 'trip.updated' within 0.3s" in str(caught.value)
    assert "surprise" in str(caught.value)
    with pytest.raises(AssertionError, match=r"unread: .*surprise"):
        await socket.expect_nothing()


async def test_expect_nothing_fails_on_a_frame_that_arrives(
    taxi_server: TaxiServer, taxi_driver: TaxiUser
) -> None:
    socket = await taxi_driver.connect(version=1)
    await taxi_server.publish(f"user:{taxi_driver.id}", {"type": "note", "data": 1})

    with pytest.raises(AssertionError, match=re.escape("received {'type': 'note', 'data': 1}")):
        await socket.expect_nothing(timeout=2)


async def test_v1_and_v2_sockets(taxi_server: TaxiServer, taxi_rider: TaxiUser) -> None:
    v1 = await taxi_rider.connect(version=1)
    v2 = await taxi_rider.connect()
    await taxi_server.hub.send(f"user:{taxi_rider.id}", {"type": "new.event"}, min_version=2)

    assert await v2.receive() == {"type": "new.event"}
    await v1.expect_nothing(timeout=0.2)
    assert (v1.version, v2.version) == (1, 2)


async def test_refused_socket_says_why(taxi_server: TaxiServer) -> None:
    with pytest.raises(AssertionError, match=r"refused: 401 .*token_not_valid"):
        await taxi_server.connect("not-a-token")


async def test_users_have_tokens_and_the_kit_password(taxi_server: TaxiServer) -> None:
    staff = await taxi_server.staff(username="desk")

    log_in = await taxi_server.client().post("/api/log_in/", json={
        "username": "desk", "password": PASSWORD})
    trips = await staff.http.get("/api/trip/")

    assert (staff.group, staff.username) == ("staff", "desk")
    assert log_in.status == 200 and set(log_in.json) == {"access", "refresh"}
    assert (trips.status, trips.json) == (200, [])


class TestSettingsOverrides:
    """An author overrides `taxi_settings` for a module or a class, and marks tests."""

    @pytest.fixture
    def taxi_settings(self) -> dict[str, object]:
        return {"plugins": {"disabled": ["echo"]}, "server": {"drain_timeout": 1}}

    async def test_fixture_settings_apply(self, taxi_server: TaxiServer,
                                          taxi_rider: TaxiUser) -> None:
        socket = await taxi_rider.connect()
        reply = await socket.request("echo.message", 1)
        assert reply["data"]["code"] == "unknown_type"
        assert taxi_server.settings.server.drain_timeout == 1

    @pytest.mark.taxi_settings(plugins={"disabled": []}, limits={"rate": 7})
    async def test_marker_settings_win_over_the_fixture(self, taxi_server: TaxiServer,
                                                        taxi_rider: TaxiUser) -> None:
        socket = await taxi_rider.connect()
        assert (await socket.request("echo.message", 1))["data"] == 1
        assert taxi_server.settings.limits.rate == 7
        assert taxi_server.settings.server.drain_timeout == 1


@pytest.mark.taxi_settings(limits={"rate": 5, "burst": 11}, server={"drain_timeout": 3})
class TestMarkerPrecedence:
    """The markers of a test and of its class (or module) all apply, key by key; the
    test's own wins."""

    async def test_class_marker_applies_to_its_tests(self, taxi_server: TaxiServer) -> None:
        assert (taxi_server.settings.limits.rate, taxi_server.settings.limits.burst) == (5, 11)

    @pytest.mark.taxi_settings(limits={"rate": 9})
    async def test_test_marker_wins_over_its_class_marker_key_by_key(
            self, taxi_server: TaxiServer) -> None:
        settings = taxi_server.settings
        assert settings.limits.rate == 9
        assert (settings.limits.burst, settings.server.drain_timeout) == (11, 3)


async def test_stop_drains_the_sockets(taxi_server: TaxiServer, taxi_rider: TaxiUser) -> None:
    socket = await taxi_rider.connect()
    await taxi_server.stop()
    assert await socket.wait_closed() == 1001


# --- the kit in other projects' pytest set-ups ----------------------------------------------

AUTHOR_TEST = """
import pytest


@pytest.mark.asyncio
async def test_echo(taxi_rider):
    socket = await taxi_rider.connect()
    assert (await socket.request("echo.message", 7))["data"] == 7
"""


def run_author_test(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_author.py").write_text(AUTHOR_TEST)
    return run(sys.executable, "-c", code, cwd=tmp_path, timeout=60)


def test_fixtures_work_in_strict_asyncio_mode(tmp_path: Path) -> None:
    result = run_author_test(tmp_path, "import pytest, sys; sys.exit(pytest.main(["
                             "'-q', '-p', 'no:cacheprovider', '-o', 'asyncio_mode=strict', "
                             "'test_author.py']))")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_pytest_asyncio_the_fixtures_say_what_to_install(tmp_path: Path) -> None:
    # No plugin loads by itself (pytest-asyncio would), and importing pytest_asyncio fails.
    result = run_author_test(tmp_path, "import os, pytest, sys; sys.modules['pytest_asyncio']"
                             " = None; os.environ['PYTEST_DISABLE_PLUGIN_AUTOLOAD'] = '1'; "
                             "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-p', "
                             "'taxi_tornado.testing', '-W', 'ignore', 'test_author.py']))")
    assert result.returncode != 0
    assert "need pytest-asyncio: pip install 'taxi-tornado[testing]'" in result.stdout


# --- new-plugin ---------------------------------------------------------------------------

def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAXI_", "PYTEST_"))}
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def throwaway_venv(path: Path) -> Path:
    """A venv that sees this one's packages (taxi-tornado, pytest) but installs into its
    own, so the scaffolded plugin never lands in the suite's environment."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    own_site = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                   cwd=path).stdout.strip()
    adds = "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages())
    Path(own_site, "taxi_parent_env.pth").write_text(f"import site; {adds}\n")
    return python


def test_new_plugin_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    made = run(sys.executable, "-m", "taxi_tornado", "new-plugin", "weather", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "taxi-plugin-weather"
    python = throwaway_venv(tmp_path / "venv")

    # Offline: the build backend and every dependency are already installed.
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-build-isolation", "--no-index", "-e", f"{package}[test]",
                    cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    tested = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", package, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "5 passed" in tested.stdout
    listed = run(python, "-m", "taxi_tornado", "plugins", cwd=tmp_path)
    assert "weather (taxi-plugin-weather 0.1.0, taxi_plugin_weather)" in listed.stdout
    assert "    route GET /api/weather/hello/ (auth required)" in listed.stdout
    assert "    setting plugins.weather.greeting (str, default 'Hello')" in listed.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["Weather"], "plugin name 'Weather'"),
    (["my-plugin"], "plugin name 'my-plugin'"),
    (["weather", "busy"], "busy exists and is not an empty directory"),
])
def test_new_plugin_refuses_bad_names_and_used_directories(
    tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine")
    result = run(sys.executable, "-m", "taxi_tornado", "new-plugin", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"taxi-tornado: {says}" + (
        ": use 1 to 40 lower-case letters, digits and _, starting with a letter"
        if "name" in says else "")]
