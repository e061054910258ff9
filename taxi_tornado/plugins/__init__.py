"""The plugin API (plugins.api) re-exported; loading in plugins.loader."""

from taxi_tornado.plugins.api import (
    Connection,
    HttpError,
    MessageHandler,
    PluginContext,
    PluginError,
    ProtocolError,
    Registry,
    Request,
    Response,
    RouteHandler,
    TaskFunction,
)
from taxi_tornado.settings import SettingsError
from taxi_tornado.store import User

__all__ = [
    "Connection",
    "HttpError",
    "MessageHandler",
    "PluginContext",
    "PluginError",
    "ProtocolError",
    "Registry",
    "Request",
    "Response",
    "RouteHandler",
    "SettingsError",
    "TaskFunction",
    "User",
]
