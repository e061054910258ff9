"""The `session` plugin: sessions that survive a phone (PROTOCOL.md, v2 only).

`session.resume` replays what a reconnecting client missed from each group's history;
`auth.refresh` gives a live socket a new access token before its old one expires (the
expiry itself is enforced by handlers/expiry.py). Registered through its entry point
like any third-party plugin.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taxi_tornado.auth import InvalidToken, TokenAuthority
from taxi_tornado.frames import text_frame
from taxi_tornado.hub import Position, Replay, with_position
from taxi_tornado.plugins.api import Connection, ProtocolError, Registry
from taxi_tornado.store import format_time

V2 = 2
NOT_RECOVERED = {"recovered": False, "missed": 0}


def setup(registry: Registry) -> None:
    registry.add_message_type("session.resume", resume)
    registry.add_message_type("auth.refresh", refresh)


async def resume(conn: Connection, data: Any) -> dict[str, Any]:
    """Replay each listed group the connection is in from its position, then answer.

    While the history is read, the live events of those groups are held back; after the
    replay they follow, without those the replay already sent.
    """
    _require_v2(conn, "session.resume")
    positions = _positions(data)
    wanted = {group: position for group, position in positions.items()
              if group in conn.groups}
    for group in wanted:
        conn.hold(group)
    try:
        replays = await conn.hub.replay(wanted)
    except BaseException:
        for group in wanted:
            conn.release(group, None)
        raise
    results: dict[str, dict[str, Any]] = {}
    for group, position in positions.items():
        replay = replays.get(group)
        if group not in wanted or replay is None:
            results[group] = NOT_RECOVERED
            if group in wanted:
                conn.release(group, None)
            continue
        missed = _send_replay(conn, group, replay)
        top = replay.events[-1][0] if replay.events else position
        conn.release(group, top)
        results[group] = {"recovered": True, "missed": missed}
    return {"type": "session.resumed", "data": {"groups": results}}


def _send_replay(conn: Connection, group: str, replay: Replay) -> int:
    """Write the replayed events this connection did not receive live, as one write;
    returns how many."""
    received = conn.received(group)
    frames: list[bytes] = []
    for position, payload in replay.events:
        if received and received[0].epoch == position.epoch and \
                received[0].offset <= position.offset <= received[1].offset:
            continue
        spliced = with_position(payload, group, position)
        frames.append(text_frame(spliced if spliced is not None else payload))
    if frames:
        conn.deliver(b"".join(frames))
    return len(frames)


def _positions(data: Any) -> dict[str, Position]:
    if not isinstance(data, dict):
        raise _invalid({"data": ["Expected an object."]})
    positions = data.get("positions")
    if not isinstance(positions, dict):
        raise _invalid({"positions": ["Expected an object of group: position."]})
    errors: dict[str, list[str]] = {}
    parsed: dict[str, Position] = {}
    for group, position in positions.items():
        field = f"positions.{group}"
        if not isinstance(position, dict):
            errors[field] = ["Expected an object with offset and epoch."]
            continue
        offset, epoch = position.get("offset"), position.get("epoch")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            errors[f"{field}.offset"] = ["Expected a non-negative integer."]
        if not isinstance(epoch, str):
            errors[f"{field}.epoch"] = ["Expected a string."]
        if isinstance(offset, int) and isinstance(epoch, str):
            parsed[group] = Position(offset, epoch)
    if errors:
        raise _invalid(errors)
    return parsed


def _invalid(errors: dict[str, list[str]]) -> ProtocolError:
    return ProtocolError("invalid", "The resume request is not valid.", errors)


async def refresh(conn: Connection, data: Any) -> dict[str, Any]:
    """A new access token of the same user moves the connection's expiry; an invalid
    one or another user's leaves it as it was."""
    _require_v2(conn, "auth.refresh")
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise ProtocolError("invalid", "The refresh request is not valid.",
                            {"token": ["This field is required."]})
    tokens = TokenAuthority(conn.settings.auth)
    try:
        claims = tokens.verify(token, exp_leeway=0)  # PROTOCOL.md: no leeway here
    except InvalidToken:
        raise ProtocolError("token_not_valid", "Token is invalid or expired") from None
    if tokens.user_id(claims) != conn.user.id:
        raise ProtocolError("forbidden", "The token belongs to another user.")
    if await conn.store.get_user(conn.user.id) is None:
        raise ProtocolError("token_not_valid", "The token's user no longer exists.")
    expires = float(claims["exp"])
    if conn.expires is None or expires > conn.expires:
        conn.expires = expires
    return {"type": "auth.refreshed", "data": {"exp": unix_time(conn.expires)}}


def unix_time(moment: float) -> str:
    return format_time(datetime.fromtimestamp(moment, UTC))


def _require_v2(conn: Connection, message_type: str) -> None:
    if conn.version < V2:
        raise ProtocolError("unknown_type", f"{message_type} needs protocol taxi.v2.")
