"""Plugins own message types. The API is in plugins.api; loading in plugins.loader."""

from taxi_tornado.plugins.api import (
    Connection,
    MessageHandler,
    PluginError,
    ProtocolError,
    Registry,
)

__all__ = ["Connection", "MessageHandler", "PluginError", "ProtocolError", "Registry"]
