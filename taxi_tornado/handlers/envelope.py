"""A client frame's envelope, checked before any handler runs, and the error frame that
answers a frame the server cannot act on (the protocol's Errors)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taxi_tornado.connection import Connection
from taxi_tornado.plugins.api import MessageType

# Deepest nesting of arrays and objects in a frame, the envelope counting as one level.
# orjson alone stops at 1024; a client never needs more than a few levels.
MAX_NESTING = 32
TOO_DEEP = f"The frame nests arrays and objects deeper than {MAX_NESTING} levels."


def error_frame(code: str, detail: str, for_type: str | None,
                errors: dict[str, list[str]] | None = None,
                retry_after: float | None = None) -> dict[str, Any]:
    """An error frame (docs/protocol.md, Errors), without the `id` of the frame it answers."""
    data: dict[str, Any] = {"code": code, "detail": detail, "for": for_type,
                            "errors": errors or {}}
    if retry_after is not None:
        data["retry_after"] = retry_after
    return {"type": "error", "data": data}


# A frame that failed because a service the server needs did not answer (Redis down or
# restarting, its link cut): nothing was done, and the same frame (the same `key`) may
# come again after this many seconds.
UNREACHABLE_RETRY_S = 1.0
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)
FAILED = "The server could not handle this message."


def internal_error(for_type: str, error: BaseException) -> dict[str, Any]:
    """`internal`, with `retry_after` when `error` is a service out of reach, not a bug;
    the detail says nothing of the server's insides either way."""
    if isinstance(error, UNREACHABLE):
        return error_frame("internal", FAILED, for_type, retry_after=UNREACHABLE_RETRY_S)
    return error_frame("internal", FAILED, for_type)


def refused(entry: MessageType, conn: Connection) -> tuple[str, str] | None:
    """The error (code, detail) for a connection that may not send this type at all."""
    if conn.version < entry.min_version:
        return "unknown_type", f"{entry.canonical} needs protocol taxi.v{entry.min_version}."
    if entry.senders and conn.user.group not in entry.senders:
        return "forbidden", (f"Only {' and '.join(entry.senders)} users can send "
                             f"{entry.canonical}.")
    return None


def echoed_id(envelope: Any) -> str | int | None:
    """The frame's `id` when it is one an answer carries back (a string or an integer)."""
    frame_id = envelope.get("id") if isinstance(envelope, dict) else None
    if isinstance(frame_id, bool) or not isinstance(frame_id, str | int):
        return None
    return frame_id


def nests_too_deep(message: str | bytes, envelope: Any) -> bool:
    """Whether `envelope` (decoded from `message`) nests deeper than MAX_NESTING.

    Counting brackets in the text is a C-speed scan that clears nearly every frame: with
    no more than MAX_NESTING of them, no nesting can be deeper. Only the rest are walked.
    """
    if isinstance(message, str):
        brackets = message.count("[") + message.count("{")
    else:
        brackets = message.count(b"[") + message.count(b"{")
    return brackets > MAX_NESTING and _deeper_than(envelope, MAX_NESTING)


def _deeper_than(value: Any, limit: int) -> bool:
    """Walk containers only, depth first, stopping at the first one past `limit`."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return False
