"""Plugins' own settings: `[plugins.<name>]` tables, TAXI_PLUGINS_<NAME>_<KEY> variables,
and the dataclass a plugin reads them into (Registry.settings).

Values convert by the rules of every core setting (settings.coerce_value): "true"/"1"/
"yes"/"on" are true, a list comes from a TOML array or a comma-separated string.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from taxi_tornado.plugins.errors import PluginError
from taxi_tornado.settings import PluginsSettings, SettingsError, coerce_value

SpecT = TypeVar("SpecT")
# The example value whose type coerce_value converts to, for each supported field type.
_EXAMPLES: dict[Any, Any] = {
    str: "",
    int: 0,
    float: 0.0,
    bool: False,
    list[str]: (),
    tuple[str, ...]: (),
}


def plugin_configs(names: Iterable[str], options: PluginsSettings) -> dict[str, dict[str, Any]]:
    """Each installed plugin's raw settings: its table, with its variables over it.

    A variable TAXI_PLUGINS_<NAME>_<KEY> belongs to the plugin with the longest name that
    fits (so `sos_desk` wins over `sos` for TAXI_PLUGINS_SOS_DESK_GROUP); variables that fit
    no installed plugin are ignored, as are other unknown TAXI_* variables. A table for a
    plugin that is not installed is a SettingsError: it is most likely a typo.
    """
    installed = set(names)
    for name in options.tables:
        if name not in installed:
            raise SettingsError(f"plugins.{name}: no plugin named {name!r} is installed")
    configs = {name: dict(options.tables.get(name, {})) for name in installed}
    by_length = sorted(installed, key=len, reverse=True)
    for variable, value in options.environment.items():
        for name in by_length:
            prefix = env_name(name) + "_"
            if variable.startswith(prefix) and len(variable) > len(prefix):
                configs[name][variable.removeprefix(prefix).lower()] = value
                break
    return configs


def env_name(plugin: str) -> str:
    """How a plugin's name is spelled in its variables: TAXI_PLUGINS_<this>_<KEY>."""
    return plugin.upper().replace("-", "_").replace(".", "_")


def build_spec(plugin: str, spec: type[SpecT], raw: Mapping[str, Any]) -> SpecT:
    """An instance of the dataclass `spec` from `raw`, or a one-line SettingsError."""
    fields = _spec_fields(plugin, spec)
    for key in raw:
        if key not in fields:
            raise SettingsError(f"plugins.{plugin}.{key}: unknown setting (known: "
                                f"{', '.join(fields) or 'none'})")
    values: dict[str, Any] = {}
    for name, (kind, required) in fields.items():
        key = f"plugins.{plugin}.{name}"
        if name not in raw:
            if required:
                raise SettingsError(
                    f"{key}: required; set it under [plugins.{plugin}] in settings.toml or "
                    f"as TAXI_PLUGINS_{env_name(plugin)}_{name.upper()}")
            continue
        value = coerce_value(key, raw[name], _EXAMPLES[kind])
        values[name] = list(value) if kind == list[str] else value
    return spec(**values)


def describe_spec(plugin: str, spec: type) -> list[str]:
    """One line per setting, for `taxi-tornado plugins`: name, type, default (no values:
    a setting may hold a secret)."""
    lines = []
    hints = typing.get_type_hints(spec)
    for field in dataclasses.fields(spec):
        kind = getattr(hints[field.name], "__name__", str(hints[field.name]))
        if kind == "list":
            kind = "list[str]"
        if field.default is not dataclasses.MISSING:
            default = f"default {field.default!r}"
        elif field.default_factory is not dataclasses.MISSING:
            default = f"default {field.default_factory()!r}"
        else:
            default = "required"
        lines.append(f"plugins.{plugin}.{field.name} ({kind}, {default})")
    return lines


def _spec_fields(plugin: str, spec: type) -> dict[str, tuple[Any, bool]]:
    """Field name -> (type, required) of a settings dataclass; a wrong spec is a bug in
    the plugin, reported as such."""
    if not (isinstance(spec, type) and dataclasses.is_dataclass(spec)):
        raise PluginError(f"plugin {plugin!r}: registry.settings() needs a dataclass, "
                          f"got {spec!r}")
    try:
        hints = typing.get_type_hints(spec)
    except Exception as error:
        raise PluginError(f"plugin {plugin!r}: cannot read the types of {spec.__name__}: "
                          f"{error}") from None
    fields: dict[str, tuple[Any, bool]] = {}
    for field in dataclasses.fields(spec):
        if not field.init:
            continue
        kind = hints.get(field.name)
        if kind not in _EXAMPLES:
            raise PluginError(
                f"plugin {plugin!r}: setting {field.name!r} of {spec.__name__} has type "
                f"{kind!r}; use str, int, float, bool or list[str]")
        required = (field.default is dataclasses.MISSING
                    and field.default_factory is dataclasses.MISSING)
        fields[field.name] = (kind, required)
    return fields
