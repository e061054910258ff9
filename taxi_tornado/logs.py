"""Logging set-up (text or one JSON object per line) that never writes a token.

Every record the server's handler writes passes TokenRedactor first, whatever logger
made it (ours, Tornado's uncaught-exception log, a plugin's): query values of
token/access/refresh, Authorization header values, `bearer.<jwt>` subprotocol entries
and bare JWTs are replaced in the message and in the exception text.

Tornado percent-decodes query keys and values, so `?%74oken=%65yJ…` is a working token
that none of those patterns sees. The access log therefore writes the query as the
handler read it, rebuilt from the parsed arguments and redacted value by value; and the
redactor decodes what is percent-encoded in any line before judging it.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import orjson
from tornado.httputil import HTTPServerRequest
from tornado.web import RequestHandler

from taxi_tornado.settings import LogSettings

access_log = logging.getLogger("taxi_tornado.access")

REDACTED = "[redacted]"
# Any JWT: three base64url segments, the header's starting {" (eyJ); `none` has no
# signature.
JWT = re.compile(r"\beyJ[\w-]*\.[\w-]*\.[\w-]*")
# Query keys whose values are secrets, compared in lower case.
SECRET_KEYS = frozenset({"token", "access", "refresh", "access_token", "refresh_token"})
# (words, pattern, replacement): each pattern keeps what names the secret and drops the
# secret; it runs only on text holding one of its words (lower case), as few lines do.
SECRETS = [
    # ?token=… &access=… ;refresh_token=… in a URI, a query string or a form body.
    (("token=", "access=", "refresh="),
     re.compile(r"([?&;](?:token|access|refresh|access_token|refresh_token)=)[^&#;\s'\"<>]*",
                re.IGNORECASE),
     rf"\1{REDACTED}"),
    # An Authorization header as a log line or a dict repr shows it: the whole value.
    (("authorization",),
     re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]+", re.IGNORECASE),
     rf"\1{REDACTED}"),
    # "Bearer <token>" seen without its header name.
    (("bearer",), re.compile(r"(\bbearer\s+)[\w.~+/=-]{16,}", re.IGNORECASE), rf"\1{REDACTED}"),
    # The v2 subprotocol entry bearer.<jwt> (Sec-WebSocket-Protocol).
    (("bearer.",), re.compile(r"(\bbearer\.)[\w.~+/=-]+", re.IGNORECASE), rf"\1{REDACTED}"),
    # Any JWT.
    (("eyj",), JWT, REDACTED),
]
# A query pair, and a run of URL characters holding a %XX escape, in a logged line.
QUERY_PAIR = re.compile(r"([?&;])([^=&#;\s'\"<>]+)=([^&#;\s'\"<>]*)")
ESCAPED_RUN = re.compile(r"(?:[\w.~+-]|%[0-9A-Fa-f]{2})*%[0-9A-Fa-f]{2}"
                         r"(?:[\w.~+-]|%[0-9A-Fa-f]{2})*")


def redact(text: str) -> str:
    """`text` with every token it holds replaced by [redacted], percent-encoded or not."""
    lower = text.lower()
    for words, pattern, replacement in SECRETS:
        if any(word in lower for word in words):
            text = pattern.sub(replacement, text)
    if "%" in text:
        text = QUERY_PAIR.sub(_redact_encoded_pair, text)
        text = ESCAPED_RUN.sub(_redact_encoded_run, text)
    return text


def _redact_encoded_pair(match: re.Match[str]) -> str:
    """A pair whose key decodes to a secret's name keeps the key, not the value."""
    if unquote(match[2]).lower() in SECRET_KEYS:
        return f"{match[1]}{match[2]}={REDACTED}"
    return match[0]


def _redact_encoded_run(match: re.Match[str]) -> str:
    """A percent-encoded run that decodes to text holding a JWT goes whole."""
    return REDACTED if JWT.search(unquote(match[0])) else match[0]


class TokenRedactor(logging.Filter):
    """Rewrites each record (message, arguments, exception, stack) without tokens.

    The record is formatted here, once, so a token in an argument cannot slip past; the
    exception text is formatted here too and left in `exc_text`, which formatters use
    instead of formatting the exception again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, without tokens
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_EXCEPTION_FORMATTER = logging.Formatter()


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
        logged_uri(request),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


def logged_uri(request: HTTPServerRequest) -> str:
    """The path, and the query as Tornado parsed it for the handler: each pair decoded,
    redacted (a secret key's value whole), and encoded again."""
    path = redact(request.path)
    if not request.query:
        return path
    pairs = []
    for key, values in request.query_arguments.items():
        name = key.encode("latin-1").decode("utf-8", "replace")  # Tornado's keys: latin-1
        secret = name.lower() in SECRET_KEYS
        for value in values:
            text = REDACTED if secret else redact(value.decode("utf-8", "replace"))
            pairs.append(f"{quote(redact(name), safe='[]')}={quote(text, safe='[]')}")
    return f"{path}?{'&'.join(pairs)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return orjson.dumps(entry).decode()


def setup_logging(settings: LogSettings) -> None:
    """One handler on the root logger, for every logger, behind the token redactor."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TokenRedactor())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
