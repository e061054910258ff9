"""Plugins' own settings: [plugins.<name>] tables, TAXI_PLUGINS_<NAME>_<KEY> variables,
and registry.settings(SpecDataclass), whose errors stop start-up naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.plugins.config import plugin_configs
from taxi_tornado.plugins.loader import load_plugins
from taxi_tornado.settings import PluginsSettings, SettingsError, load_settings
from tests.conftest import FakeDistributions

CONF = """
    from dataclasses import dataclass, field

    SEEN = []

    @dataclass(frozen=True)
    class Spec:
        region: str
        retries: int = 3
        ratio: float = 0.5
        strict: bool = False
        zones: list[str] = field(default_factory=list)

    def setup(registry):
        SEEN.append((dict(registry.config), registry.settings(Spec)))
"""


def loaded_settings(toml: str, tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    """Load the plugins with a settings file; what the `conf` plugin saw in setup."""
    file = tmp_path / "settings.toml"
    file.write_text(toml)
    settings = load_settings(file, env or {}, create_secret=False)
    load_plugins(settings=settings.plugins)
    return sys.modules["fake_conf"].SEEN[-1]


def test_plugin_reads_its_table_converted_to_its_dataclass(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("conf", CONF)
    raw, spec = loaded_settings('[plugins.conf]\nregion = "north"\nretries = 5\n'
                                'strict = true\nzones = ["a", "b"]\n', tmp_path)
    assert raw == {"region": "north", "retries": 5, "strict": True, "zones": ["a", "b"]}
    assert (spec.region, spec.retries, spec.ratio, spec.strict, spec.zones) == (
        "north", 5, 0.5, True, ["a", "b"])


def test_environment_wins_over_the_table(fake_plugins: FakeDistributions,
                                         tmp_path: Path) -> None:
    fake_plugins.add("conf", CONF)
    raw, spec = loaded_settings('[plugins.conf]\nregion = "north"\nretries = 5\n', tmp_path, {
        "TAXI_PLUGINS_CONF_RETRIES": "7", "TAXI_PLUGINS_CONF_RATIO": "0.25",
        "TAXI_PLUGINS_CONF_STRICT": "yes", "TAXI_PLUGINS_CONF_ZONES": "x, y",
    })
    assert raw["retries"] == "7"  # the raw mapping holds what the variable said
    assert (spec.region, spec.retries, spec.ratio, spec.strict, spec.zones) == (
        "north", 7, 0.25, True, ["x", "y"])


@pytest.mark.parametrize(("toml", "env", "key", "says"), [
    ('region = "n"\ncolour = "red"\n', {}, "plugins.conf.colour", "unknown setting"),
    ("retries = 1\n", {}, "plugins.conf.region", "required"),
    ('region = "n"\nretries = "many"\n', {}, "plugins.conf.retries", "integer"),
    ('region = "n"\n', {"TAXI_PLUGINS_CONF_RATIO": "half"}, "plugins.conf.ratio", "number"),
    ('region = "n"\nstrict = "maybe"\n', {}, "plugins.conf.strict", "true or false"),
    ('region = "n"\nzones = [1, 2]\n', {}, "plugins.conf.zones", "list of strings"),
    ("region = 5\n", {}, "plugins.conf.region", "string"),
])
def test_bad_plugin_setting_names_the_key(
    fake_plugins: FakeDistributions, tmp_path: Path, toml: str, env: dict[str, str],
    key: str, says: str
) -> None:
    fake_plugins.add("conf", CONF)
    with pytest.raises(SettingsError) as caught:
        loaded_settings("[plugins.conf]\n" + toml, tmp_path, env)
    message = str(caught.value)
    assert message.startswith(key + ":") and says in message
    assert "\n" not in message


def test_table_of_a_plugin_not_installed_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "settings.toml"
    file.write_text('[plugins.nosuchplugin]\nkey = 1\n')
    settings = load_settings(file, {}, create_secret=False)
    with pytest.raises(SettingsError, match=r"^plugins.nosuchplugin: no plugin named"):
        load_plugins(settings=settings.plugins)


def test_disabled_still_works_beside_plugin_tables(fake_plugins: FakeDistributions,
                                                  tmp_path: Path) -> None:
    fake_plugins.add("conf", CONF)
    file = tmp_path / "settings.toml"
    file.write_text('[plugins]\ndisabled = ["echo", "conf"]\n\n[plugins.conf]\nwrong = 1\n')
    settings = load_settings(file, {"TAXI_PLUGINS_CONF_ALSO_WRONG": "1"}, create_secret=False)
    registry, plugins = load_plugins(settings=settings.plugins)
    assert settings.plugins.disabled == ("echo", "conf")
    assert {plugin.name for plugin in plugins}.isdisjoint({"echo", "conf"})
    assert "echo.message" not in registry.types


def test_non_table_unknown_key_under_plugins_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "settings.toml"
    file.write_text('[plugins]\ndisabld = ["echo"]\n')
    with pytest.raises(SettingsError, match=r"^plugins.disabld: unknown setting"):
        load_settings(file, {}, create_secret=False)


def test_variable_belongs_to_the_longest_matching_plugin_name() -> None:
    options = PluginsSettings(environment={"SOS_DESK_GROUP": "a", "SOS_GROUP": "b",
                                           "OTHER_KEY": "ignored"})
    configs = plugin_configs(["sos", "sos_desk"], options)
    assert configs == {"sos": {"group": "b"}, "sos_desk": {"group": "a"}}


def test_cli_check_stops_on_a_bad_plugin_setting_with_one_line(
    fake_plugins: FakeDistributions, tmp_path: Path
) -> None:
    fake_plugins.add("conf", CONF)
    (tmp_path / "settings.toml").write_text('[plugins.conf]\nregion = "n"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAXI_")}
    env.update(PYTHONPATH=f"{fake_plugins.root}{os.pathsep}{env.get('PYTHONPATH', '')}",
               TAXI_PLUGINS_CONF_RETRIES="lots", TAXI_DATA_DIR=str(tmp_path / "d"))
    for command in ("check", "serve"):
        result = subprocess.run([sys.executable, "-m", "taxi_tornado", command], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "taxi-tornado: plugins.conf.retries: must be an integer, got 'lots'"]
