"""The errors of the plugin surface: what a handler raises to answer with an error frame,
what a route raises to answer with an HTTP error, and what stops start-up.

They live apart from plugins/api.py so that the modules api.py builds on (the settings
of a plugin, config.py) can raise them too; plugins import them from api.py.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """Raised by a handler to answer the sender with an error frame (docs/protocol.md, Errors).

    `retry_after` (seconds), when known, goes into the frame's data: when to try again.
    """

    def __init__(
        self, code: str, detail: str, errors: dict[str, list[str]] | None = None,
        *, retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = errors or {}
        self.retry_after = retry_after


class HttpError(Exception):
    """Raised by a route handler to answer with an HTTP error in the API's shapes.

    The body is `{"detail": detail}`; a 400 with `errors` is the field errors themselves,
    `{"field": ["message", ...]}`, as every 400 of the API.
    """

    def __init__(
        self, status: int, detail: str, errors: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or {}

    @property
    def body(self) -> dict[str, Any]:
        if self.status == 400 and self.errors:
            return dict(self.errors)
        return {"detail": self.detail}


class PluginError(Exception):
    """A plugin cannot be loaded or conflicts with another; start-up stops on it."""
