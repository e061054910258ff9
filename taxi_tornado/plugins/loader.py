"""Finds plugins through entry points and runs their setup(), failing at start-up."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from taxi_tornado.plugins.api import ENTRY_POINT_GROUP, PluginError, Registry
from taxi_tornado.plugins.config import describe_spec, plugin_configs
from taxi_tornado.settings import PluginsSettings, SettingsError

log = logging.getLogger("taxi_tornado.plugins")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    target: str  # module:object the entry point names
    distribution: str
    version: str
    types: tuple[str, ...]
    routes: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    strategies: tuple[str, ...] = ()  # dispatch strategies: see docs/dispatch.md


def load_plugins(
    disabled: Iterable[str] = (), *, settings: PluginsSettings | None = None
) -> tuple[Registry, list[PluginInfo]]:
    """Import and set up every plugin not disabled (by `disabled` or by
    `settings.disabled`), in name order, each with its own settings from `settings`.

    A plugin that fails to import or to set up, or that claims another plugin's message
    type or route, raises PluginError naming the plugin(s); a bad plugin setting raises
    SettingsError naming `plugins.<name>.<key>`. Nothing is loaded half-way.
    """
    options = settings or PluginsSettings()
    skip = set(disabled) | set(options.disabled)
    entries = _plugin_entry_points()
    registry = Registry()
    registry.configs.update(plugin_configs([entry.name for entry in entries], options))
    loaded: list[PluginInfo] = []
    for entry in entries:
        if entry.name in skip:
            log.info("plugin %s is disabled by plugins.disabled", entry.name)
            continue
        registry.plugin = entry.name
        _setup(entry, registry)
        loaded.append(_info(entry, registry))
    registry.plugin = "<core>"
    return registry, loaded


def _plugin_entry_points() -> list[EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        other = found.get(entry.name)
        if other is not None and other.value != entry.value:
            raise PluginError(
                f"two plugins are named {entry.name!r}: {other.value} and {entry.value}"
            )
        found[entry.name] = entry
    return [found[name] for name in sorted(found)]


def _setup(entry: EntryPoint, registry: Registry) -> None:
    try:
        plugin = entry.load()
    except Exception as error:
        raise PluginError(
            f"plugin {entry.name!r} ({entry.value}) failed to import: "
            f"{type(error).__name__}: {error}"
        ) from error
    setup = getattr(plugin, "setup", None)
    if not callable(setup):
        raise PluginError(f"plugin {entry.name!r} ({entry.value}) has no setup(registry)")
    try:
        setup(registry)
    except (PluginError, SettingsError):
        raise
    except Exception as error:
        raise PluginError(
            f"plugin {entry.name!r} ({entry.value}) failed in setup(): "
            f"{type(error).__name__}: {error}"
        ) from error


def _info(entry: EntryPoint, registry: Registry) -> PluginInfo:
    dist = entry.dist
    spec = registry.setting_specs.get(entry.name)
    return PluginInfo(
        name=entry.name,
        target=entry.value,
        distribution=dist.name if dist else "?",
        version=dist.version if dist else "?",
        types=tuple(registry.types_of(entry.name)),
        routes=tuple(registry.routes_of(entry.name)),
        tasks=tuple(registry.tasks_of(entry.name)),
        strategies=tuple(sorted(name for name, strategy in registry.dispatch_strategies.items()
                                if strategy.plugin == entry.name)),
        settings=tuple(describe_spec(entry.name, spec)) if spec else (),
    )
