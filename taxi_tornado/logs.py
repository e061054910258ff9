"""Logging set-up (text or one JSON object per line) and the redacting access log."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from tornado.web import RequestHandler

from taxi_tornado.settings import LogSettings

access_log = logging.getLogger("taxi_tornado.access")

TOKEN_PARAMETER = re.compile(r"([?&](?:token|access|refresh)=)[^&#]*", re.IGNORECASE)


def redact(uri: str) -> str:
    """The URI with every token-bearing query parameter's value replaced."""
    return TOKEN_PARAMETER.sub(r"\1[redacted]", uri)


def log_request(handler: RequestHandler) -> None:
    """Tornado's access log line, minus tokens."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redact(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
