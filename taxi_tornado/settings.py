"""Settings: frozen dataclasses read from settings.toml, then TAXI_* environment variables.

Every key has a default so that a bare `taxi-tornado serve` runs on embedded parts. A bad
value raises SettingsError whose message is one line naming the key, so start-up can stop
with exactly that line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from taxi_tornado.hosts import allowed_entry, host_name

log = logging.getLogger("taxi_tornado.settings")

ENV_PREFIX = "TAXI_"
SETTINGS_FILE = "settings.toml"


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


class SettingsError(Exception):
    """A setting is missing, unknown or out of range; str(error) names the key."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    socket_path: str = "/taxi/"
    xheaders: bool = False
    allowed_origins: tuple[str, ...] = ()
    max_message_size: int = 65536
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    drain_timeout: float = 10.0
    tls_cert: str = ""
    tls_key: str = ""
    processes: int = 1
    public_url: str = ""
    allowed_hosts: tuple[str, ...] = ()
    header_timeout: float = 60.0
    body_timeout: float = 120.0
    event_loop: str = "auto"


@dataclass(frozen=True)
class AuthSettings:
    secret_key: str = ""
    access_ttl: int = 3600
    refresh_ttl: int = 86400
    user_id_claim: str = "id"
    leeway: int = 30
    refresh_grace: float = 30.0


@dataclass(frozen=True)
class StoreSettings:
    url: str = ""


@dataclass(frozen=True)
class HubSettings:
    url: str = "memory://"
    api_key: str = ""
    prefix: str = "taxi"
    history_size: int = 100
    history_ttl: float = 300.0
    history_bytes: int = 1048576


@dataclass(frozen=True)
class MediaSettings:
    max_photo_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True)
class LimitsSettings:
    rate: float = 20.0
    burst: int = 40
    outbound_queue: int = 256
    auth_rate: int = 20
    sockets_per_user: int = 20
    trips_per_rider: int = 3
    trip_requests: int = 10
    keyed_requests: int = 60
    idempotency_ttl: float = 86400.0
    outbound_bytes: int = 1048576


@dataclass(frozen=True)
class PluginsSettings:
    disabled: tuple[str, ...] = ()
    # Each plugin's own `[plugins.<name>]` table, as read from the file.
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # TAXI_PLUGINS_<NAME>_<KEY> variables, keyed by what follows TAXI_PLUGINS_: only the
    # plugin loader knows the installed names that split it into plugin and key.
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True)
class DispatchSettings:
    mode: str = "broadcast"
    batch: int = 3
    radius_m: float = 2000.0
    max_radius_m: float = 10000.0
    offer_timeout: float = 15.0
    max_wait: float = 120.0
    location_ttl: float = 30.0
    region_resolution: int = 4


@dataclass(frozen=True)
class AdminSettings:
    enabled: bool = True
    tile_url: str = ""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("taxi-data")
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    plugins: PluginsSettings = field(default_factory=PluginsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)

    @property
    def store_url(self) -> str:
        """The store URL, defaulting to the SQLite file inside data_dir."""
        return self.store.url or f"sqlite:///{self.data_dir / 'taxi.db'}"

    @property
    def photos_dir(self) -> Path:
        return self.data_dir / "photos"


SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(Settings)
    if f.name != "data_dir"
}

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# PluginsSettings fields filled from plugin tables and variables, not settable as keys.
PLUGIN_OPTION_FIELDS = ("tables", "environment")
HUB_SCHEMES = ("memory://", "redis://", "rediss://", "unix://", "redis+cluster://",
               "rediss+cluster://")
STORE_SCHEMES = ("sqlite:///", "mongodb://", "mongodb+srv://")
# A map tile URL for the operators' page: http(s), a plain host (it goes into the page's
# Content Security Policy), and a path with {z}, {x} and {y}.
TILE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[^\s\"'<>;,]*")
TILE_PLACEHOLDERS = ("{z}", "{x}", "{y}")


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    create_secret: bool = True,
) -> Settings:
    """Read the settings file (if any), apply TAXI_* variables, validate, fill the secret.

    `path` wins over TAXI_SETTINGS, which wins over ./settings.toml; only an explicitly
    named file must exist.
    """
    env = os.environ if environ is None else environ
    return settings_from_mapping(_read_file(path, env), env, create_secret=create_secret)


def settings_from_mapping(
    raw: Mapping[str, Any], environ: Mapping[str, str], *, create_secret: bool = True
) -> Settings:
    """Settings from `raw` shaped like a parsed settings.toml, then `environ`'s TAXI_*
    variables, validated like a file (the testing kit builds its servers this way)."""
    settings = _build(_apply_environment(dict(raw), environ), environ)
    _validate(settings)
    if create_secret:
        settings = with_secret(settings)
    return settings


def _read_file(path: str | Path | None, env: Mapping[str, str]) -> dict[str, Any]:
    explicit = path or env.get(f"{ENV_PREFIX}SETTINGS")
    file = Path(explicit) if explicit else Path(SETTINGS_FILE)
    if not file.exists():
        if explicit:
            raise SettingsError(f"settings file {file} does not exist")
        return {}
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"settings file {file} is not valid TOML: {error}") from None


def _apply_environment(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    if f"{ENV_PREFIX}DATA_DIR" in env:
        merged["data_dir"] = env[f"{ENV_PREFIX}DATA_DIR"]
    for section, cls in SECTIONS.items():
        for f in _settable_fields(section, cls):
            name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if name in env:
                target = merged.setdefault(section, {})
                if not isinstance(target, dict):
                    raise SettingsError(f"{section}: must be a table")
                target[f.name] = env[name]
    return merged


def _settable_fields(section: str, cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls)
            if section != "plugins" or f.name not in PLUGIN_OPTION_FIELDS]


def _plugin_environment(env: Mapping[str, str]) -> dict[str, str]:
    """TAXI_PLUGINS_<NAME>_<KEY> variables, keyed by <NAME>_<KEY>."""
    prefix = f"{ENV_PREFIX}PLUGINS_"
    own = {f"{prefix}{name.upper()}" for name in PLUGIN_OPTION_FIELDS}
    own |= {f"{prefix}{f.name.upper()}" for f in _settable_fields("plugins", PluginsSettings)}
    return {name.removeprefix(prefix): value for name, value in env.items()
            if name.startswith(prefix) and name not in own}


def _build(raw: dict[str, Any], env: Mapping[str, str]) -> Settings:
    unknown = set(raw) - set(SECTIONS) - {"data_dir"}
    if unknown:
        raise SettingsError(f"{sorted(unknown)[0]}: unknown setting")
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise SettingsError(f"{section}: must be a table")
        if section == "plugins":
            sections[section] = _build_plugins(values, env)
            continue
        sections[section] = _build_section(section, cls, values)
    data_dir = raw.get("data_dir", "taxi-data")
    if not isinstance(data_dir, str) or not data_dir:
        raise SettingsError("data_dir: must be a non-empty path")
    return Settings(data_dir=Path(data_dir), **sections)


def _build_plugins(values: dict[str, Any], env: Mapping[str, str]) -> PluginsSettings:
    """[plugins] holds the core's keys and one table per plugin, [plugins.<name>]."""
    tables = {name: dict(table) for name, table in values.items() if isinstance(table, dict)}
    keys = {name: value for name, value in values.items() if name not in tables}
    settings: PluginsSettings = _build_section("plugins", PluginsSettings, keys)
    return dataclasses.replace(settings, tables=tables, environment=_plugin_environment(env))


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    defaults = {f.name: f.default for f in _settable_fields(section, cls)}
    unknown = set(values) - set(defaults)
    if unknown:
        raise SettingsError(f"{section}.{sorted(unknown)[0]}: unknown setting")
    coerced = {
        key: _coerce(f"{section}.{key}", value, defaults[key]) for key, value in values.items()
    }
    return cls(**coerced)


def coerce_value(key: str, value: Any, example: Any) -> Any:
    """`value` (from TOML or an environment string) as the type of `example`, by the rules
    of every setting; plugin settings use it too. A tuple example gives a tuple of str."""
    return _coerce(key, value, example)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Turn a TOML value or an environment string into the default's type."""
    if isinstance(default, bool):
        return _coerce_bool(key, value)
    if isinstance(default, int):
        return _coerce_number(key, value, int, "an integer")
    if isinstance(default, float):
        return float(_coerce_number(key, value, float, "a number"))
    if isinstance(default, tuple):
        return _coerce_list(key, value)
    if not isinstance(value, str):
        raise SettingsError(f"{key}: must be a string, got {value!r}")
    return value


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{key}: must be true or false, got {value!r}")


def _coerce_number(key: str, value: Any, kind: type, noun: str) -> Any:
    if isinstance(value, bool):
        raise SettingsError(f"{key}: must be {noun}, got {value!r}")
    if isinstance(value, int | float) and (kind is float or isinstance(value, int)):
        return value
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            pass
    raise SettingsError(f"{key}: must be {noun}, got {value!r}")


def _coerce_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise SettingsError(f"{key}: must be a list of strings, got {value!r}")


def _validate(s: Settings) -> None:
    checks: list[tuple[bool, str]] = [
        (0 <= s.server.port <= 65535, "server.port: must be from 0 to 65535"),
        (s.server.socket_path.startswith("/"), "server.socket_path: must start with /"),
        (s.server.max_message_size >= 128, "server.max_message_size: must be at least 128"),
        (s.server.ping_interval >= 0, "server.ping_interval: must not be negative"),
        (s.server.ping_timeout >= 0, "server.ping_timeout: must not be negative"),
        (
            s.server.ping_interval == 0 or s.server.ping_timeout <= s.server.ping_interval,
            "server.ping_timeout: must not exceed server.ping_interval",
        ),
        (s.server.drain_timeout >= 0, "server.drain_timeout: must not be negative"),
        (s.server.event_loop in EVENT_LOOPS,
         f"server.event_loop: must be auto, uvloop or asyncio, got {s.server.event_loop!r}"),
        (s.server.event_loop != "uvloop" or uvloop_installed(),
         "server.event_loop: uvloop is not installed (pip install uvloop), or set auto"),
        (
            bool(s.server.tls_cert) == bool(s.server.tls_key),
            "server.tls_cert: server.tls_cert and server.tls_key must be set together",
        ),
        (not s.server.tls_cert or Path(s.server.tls_cert).is_file(),
         f"server.tls_cert: no such file {s.server.tls_cert!r}"),
        (not s.server.tls_key or Path(s.server.tls_key).is_file(),
         f"server.tls_key: no such file {s.server.tls_key!r}"),
        (s.server.processes >= 1, "server.processes: must be at least 1"),
        (s.server.processes == 1 or s.server.port != 0,
         "server.port: must be a fixed port (not 0) when server.processes > 1"),
        (
            s.server.processes == 1 or not s.hub.url.startswith("memory://"),
            "server.processes: more than one process needs a shared hub "
            "(set hub.url to redis://...)",
        ),
        (s.server.header_timeout > 0,
         "server.header_timeout: must be a positive number of seconds"),
        (s.server.body_timeout > 0, "server.body_timeout: must be a positive number of seconds"),
        (s.auth.leeway >= 0, "auth.leeway: must not be negative"),
        (s.auth.access_ttl > 0, "auth.access_ttl: must be a positive number of seconds"),
        (s.auth.refresh_ttl > 0, "auth.refresh_ttl: must be a positive number of seconds"),
        (bool(s.auth.user_id_claim), "auth.user_id_claim: must not be empty"),
        (s.hub.url.startswith(HUB_SCHEMES),
         f"hub.url: must start with one of {', '.join(HUB_SCHEMES)}, got {s.hub.url!r}"),
        (bool(s.hub.prefix), "hub.prefix: must not be empty"),
        (0 <= s.hub.history_size <= 10000, "hub.history_size: must be from 0 to 10000"),
        (s.hub.history_ttl > 0, "hub.history_ttl: must be a positive number of seconds"),
        (s.hub.history_bytes >= 1, "hub.history_bytes: must be at least 1"),
        (s.auth.refresh_grace >= 0, "auth.refresh_grace: must not be negative"),
        (not s.store.url or s.store.url.startswith(STORE_SCHEMES),
         f"store.url: must start with one of {', '.join(STORE_SCHEMES)}, got {s.store.url!r}"),
        (s.media.max_photo_bytes > 0, "media.max_photo_bytes: must be positive"),
        (s.limits.rate > 0, "limits.rate: must be positive"),
        (s.limits.burst >= 1, "limits.burst: must be at least 1"),
        (s.limits.outbound_queue >= 1, "limits.outbound_queue: must be at least 1"),
        (s.limits.auth_rate >= 0, "limits.auth_rate: must not be negative (0 turns it off)"),
        (s.limits.sockets_per_user >= 0,
         "limits.sockets_per_user: must not be negative (0 means no limit)"),
        (s.limits.trips_per_rider >= 0,
         "limits.trips_per_rider: must not be negative (0 means no limit)"),
        (s.limits.idempotency_ttl > 0,
         "limits.idempotency_ttl: must be a positive number of seconds"),
        (s.limits.trip_requests >= 0,
         "limits.trip_requests: must not be negative (0 turns it off)"),
        (s.limits.keyed_requests >= 0,
         "limits.keyed_requests: must not be negative (0 turns it off)"),
        (s.limits.outbound_bytes >= 1, "limits.outbound_bytes: must be at least 1"),
        (s.log.format in LOG_FORMATS, f"log.format: must be text or json, got {s.log.format!r}"),
        (bool(s.dispatch.mode), "dispatch.mode: must name a dispatch strategy"),
        (s.dispatch.batch >= 1, "dispatch.batch: must be at least 1"),
        (s.dispatch.radius_m > 0, "dispatch.radius_m: must be positive"),
        (s.dispatch.max_radius_m >= s.dispatch.radius_m,
         "dispatch.max_radius_m: must not be smaller than dispatch.radius_m"),
        (s.dispatch.offer_timeout > 0, "dispatch.offer_timeout: must be positive"),
        (s.dispatch.max_wait > 0, "dispatch.max_wait: must be positive"),
        (s.dispatch.location_ttl > 0, "dispatch.location_ttl: must be positive"),
        (0 <= s.dispatch.region_resolution <= 15,
         "dispatch.region_resolution: must be an H3 resolution from 0 to 15"),
        (not s.admin.tile_url or (TILE_URL.fullmatch(s.admin.tile_url) is not None and all(
            part in s.admin.tile_url for part in TILE_PLACEHOLDERS)),
         "admin.tile_url: must be an http(s):// URL with {z}, {x} and {y}, "
         f"e.g. https://tiles.example/{{z}}/{{x}}/{{y}}.png, got {s.admin.tile_url!r}"),
        (s.log.level in LOG_LEVELS,
         f"log.level: must be one of {', '.join(LOG_LEVELS)}, got {s.log.level!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(message)
    if not s.hub.url.startswith("memory://"):
        from taxi_tornado.hub import redis_url_problem

        problem = redis_url_problem(s.hub.url)
        if problem:
            raise SettingsError(f"hub.url: {problem}")
    problem = public_url_problem(s.server.public_url)
    if problem:
        raise SettingsError(f"server.public_url: {problem}")
    for host in s.server.allowed_hosts:
        if host != "*" and not allowed_entry(host):
            raise SettingsError(
                f"server.allowed_hosts: {host!r} must be a host name or address (no scheme, "
                "no port), or *"
            )
    for origin in s.server.allowed_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(
                f"server.allowed_origins: {origin!r} must look like https://host[:port]"
            )


def public_url_problem(url: str) -> str:
    """What is wrong with a server.public_url value ("" when nothing is)."""
    if not url:
        return ""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        return f"{url!r} has a bad port"
    if parts.scheme not in ("http", "https") or host_name(parts.netloc) is None:
        return f"{url!r} must look like https://host[:port]"
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"{url!r} must be scheme, host and port only (no path or query)"
    return ""


def with_secret(settings: Settings) -> Settings:
    """Settings with auth.secret_key filled from <data_dir>/secret_key, made (0600) once."""
    if settings.auth.secret_key:
        return settings
    path = settings.data_dir / "secret_key"
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if not key:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(48)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(key + "\n")
        except OSError as error:
            raise SettingsError(f"auth.secret_key: cannot create {path}: {error}") from None
        log.warning(
            "auth.secret_key is not set: generated one into %s. Set auth.secret_key in "
            "settings.toml or TAXI_AUTH_SECRET_KEY to choose your own (every process "
            "serving one deployment needs the same key).",
            path,
        )
    auth = dataclasses.replace(settings.auth, secret_key=key)
    return dataclasses.replace(settings, auth=auth)


def replace(settings: Settings, **sections: Mapping[str, Any]) -> Settings:
    """A copy of `settings` with some keys changed: replace(s, server={"port": 0})."""
    changes: dict[str, Any] = {}
    for name, values in sections.items():
        if name == "data_dir":
            changes[name] = Path(str(values))
            continue
        changes[name] = dataclasses.replace(getattr(settings, name), **values)
    return dataclasses.replace(settings, **changes)
