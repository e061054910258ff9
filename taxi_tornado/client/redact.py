"""Keeping the token out of what the client says: error details, disconnect reasons and
log lines end up in crash reports and support tickets, where a live access token is a
key anybody can use until it expires."""

from __future__ import annotations

import logging
import re

_B64 = "[A-Za-z0-9_-]"
#: A token offered as a subprotocol (`bearer.<token>`), as a peer or the websockets
#: library echoes it; a JWT anywhere (a JSON header always encodes to "ey" or "ew", and
#: the tail of a truncated one goes too); a token field of a frame in a debug line.
_SECRETS = re.compile(
    rf"bearer\.\S+"
    rf"|(?<!{_B64})e[yw]{_B64}{{6,}}\.[^\s'\"]*"
    rf'|(?<="token":)\s*"[^"]*"?')
REDACTED = "<redacted>"
#: What a token must look like: three base64url parts (a JWT), header and payload not
#: empty. Every such character is allowed in a subprotocol (RFC 6455, a token of RFC 7230).
_TOKEN = re.compile(rf"{_B64}+\.{_B64}+\.{_B64}*")


def redact(text: str) -> str:
    """`text` with every token-shaped part replaced by `<redacted>`."""
    return _SECRETS.sub(lambda match: _keep_prefix(match.group()), text)


def _keep_prefix(secret: str) -> str:
    if secret.startswith("bearer."):
        return "bearer." + REDACTED
    return REDACTED


def is_token_shaped(token: str) -> bool:
    """Whether `token` can travel as `bearer.<token>` and looks like a JWT."""
    return _TOKEN.fullmatch(token) is not None


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and its traceback) without tokens. On the
    websockets library's logger it keeps `Sec-WebSocket-Protocol: taxi.v2, bearer.<JWT>`
    out of DEBUG logs; on the client's own, tokens in exceptions a listener raised."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
