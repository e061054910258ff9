"""`taxi-tornado new-plugin NAME [DIR]`: a plugin package whose tests pass on the first run.

The package has a message type, an HTTP route, a setting, tests written with the kit
(taxi_tornado.testing) and a README; `pip install -e 'DIR[test]'` then `pytest DIR`.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


class ScaffoldError(Exception):
    """The name is not a valid plugin name, or the directory is in use."""


def write_plugin(name: str, directory: str | Path | None = None) -> Path:
    """Write the package for plugin `name` into `directory` (default
    ./taxi-plugin-NAME); returns the directory. Refuses a non-empty directory."""
    if not NAME.fullmatch(name):
        raise ScaffoldError(f"plugin name {name!r}: use 1 to 40 lower-case letters, digits "
                            "and _, starting with a letter")
    dashed = name.replace("_", "-")
    target = Path(directory) if directory else Path(f"taxi-plugin-{dashed}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} exists and is not an empty directory")
    values = {"name": name, "dashed": dashed, "package": f"taxi_plugin_{name}",
              "NAME": name.upper()}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"taxi_plugin_{name}/__init__.py": PLUGIN,
        f"tests/test_{name}.py": TESTS,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return target


PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "taxi-plugin-$dashed"
version = "0.1.0"
description = "A taxi_tornado plugin."
requires-python = ">=3.11"
dependencies = ["taxi-tornado"]

[project.optional-dependencies]
test = ["taxi-tornado[testing]"]

# This is the whole integration: taxi_tornado finds the plugin through this entry point.
[project.entry-points."taxi_tornado.plugins"]
$name = "$package"

[tool.setuptools]
packages = ["$package"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
testpaths = ["tests"]
"""

README = """\
# taxi-plugin-$dashed

A [taxi_tornado](https://pypi.org/project/taxi-tornado/) plugin, named `$name`.

    pip install -e '.[test]'
    pytest
    taxi-tornado plugins          # lists $name with its message type, route and setting

What it adds:

- the message type `$name.hello` on the `/taxi/` socket: send
  `{"type": "$name.hello", "data": {"name": "Ada"}}`, get
  `{"type": "$name.greeting", "data": {"text": "Hello, Ada!"}}`;
- the route `GET /api/$name/hello/` (with `Authorization: Bearer <access token>`):
  `{"text": "Hello, <username>!"}`;
- the setting `greeting`, in settings.toml

      [plugins.$name]
      greeting = "Ahoy"

  or in the environment: `TAXI_PLUGINS_${NAME}_GREETING=Ahoy`.

docs/plugins.md in taxi_tornado is the reference for the plugin API and the test kit.
"""

PLUGIN = '''\
"""The $name plugin: a message type, an HTTP route and a setting.

taxi_tornado calls setup(registry) once at start-up (the entry point in pyproject.toml
names this module); docs/plugins.md in taxi_tornado is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taxi_tornado.plugins import Connection, Registry, Request

# JSON Schemas (draft 2020-12) of the frames' `data` and of the reply's: the server
# checks each frame against HELLO before hello() runs, and publishes both in
# GET /api/asyncapi.json.
HELLO = {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}}}
GREETING = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}


@dataclass(frozen=True)
class Settings:
    """[plugins.$name] in settings.toml, or TAXI_PLUGINS_${NAME}_<KEY> variables."""

    greeting: str = "Hello"


def setup(registry: Registry) -> None:
    plugin = Plugin(registry.settings(Settings))
    registry.add_message_type("$name.hello", plugin.hello, schema=HELLO,
                              reply={"$name.greeting": GREETING})
    registry.add_route("/api/$name/hello/", plugin.hello_over_http)


class Plugin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def hello(self, conn: Connection, data: Any) -> dict[str, Any]:
        """{"type": "$name.hello", "data": {"name": "Ada"}}: a greeting for the sender.

        `data` matched HELLO (a frame that does not gets `invalid` without coming
        here): what is left to check is what a schema cannot say.
        """
        text = f"{self.settings.greeting}, {data['name']}!"
        return {"type": "$name.greeting", "data": {"text": text}}

    async def hello_over_http(self, request: Request) -> dict[str, Any]:
        """GET /api/$name/hello/ with an access token: a greeting for its user."""
        assert request.user is not None  # auth="required" (the default) let it through
        return {"text": f"{self.settings.greeting}, {request.user.username}!"}
'''

TESTS = '''\
"""Tests of the $name plugin against a real server: fixtures from taxi_tornado.testing."""

from __future__ import annotations

import pytest

from taxi_tornado.testing import TaxiServer


async def test_hello_greets_the_sender(taxi_server: TaxiServer) -> None:
    rider = await taxi_server.rider()
    socket = await rider.connect()

    reply = await socket.request("$name.hello", {"name": "Ada"})

    assert reply["type"] == "$name.greeting"
    assert reply["data"] == {"text": "Hello, Ada!"}


async def test_hello_without_a_name_is_invalid(taxi_server: TaxiServer) -> None:
    socket = await (await taxi_server.rider()).connect()

    reply = await socket.request("$name.hello", {})

    assert reply["type"] == "error"
    assert reply["data"]["code"] == "invalid"
    assert reply["data"]["errors"] == {"name": ["This field is required."]}


@pytest.mark.taxi_settings(plugins={"$name": {"greeting": "Ahoy"}})
async def test_greeting_is_a_setting(taxi_server: TaxiServer) -> None:
    socket = await (await taxi_server.driver()).connect()

    reply = await socket.request("$name.hello", {"name": "Ada"})

    assert reply["data"] == {"text": "Ahoy, Ada!"}


async def test_route_greets_the_user_of_the_token(taxi_server: TaxiServer) -> None:
    driver = await taxi_server.driver(username="dora")

    response = await driver.http.get("/api/$name/hello/")

    assert response.status == 200
    assert response.json == {"text": "Hello, dora!"}


async def test_route_without_a_token_is_401(taxi_server: TaxiServer) -> None:
    response = await taxi_server.client().get("/api/$name/hello/")

    assert response.status == 401
'''
