"""The `session` plugin: sessions that survive a phone (docs/protocol.md, v2 only).

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
TIME = {"type": "string", "format": "date-time"}
POSITION = {"type": "object", "required": ["offset", "epoch"],
            "properties": {"offset": {"type": "integer", "minimum": 0},
                           "epoch": {"type": "string"}}}
# Groups one resume may list: a connection is in a handful (user, drivers, its trips);
# the cap keeps a resume's work, and the errors of a bad one, small.
MAX_POSITIONS = 256
RESUME = {"type": "object", "required": ["positions"],
          "properties": {"positions": {"type": "object", "additionalProperties": POSITION,
                                       "maxProperties": MAX_POSITIONS,
                                       "description": "group: the last position received"}}}
RESUMED = {"type": "object", "required": ["groups"], "properties": {"groups": {
    "type": "object", "additionalProperties": {
        "type": "object", "required": ["recovered", "missed"],
        "properties": {"recovered": {"type": "boolean"},
                       "missed": {"type": "integer", "minimum": 0}}}}}}
REFRESH = {"type": "object", "required": ["token"],
           "properties": {"token": {"type": "string", "minLength": 1}}}
REFRESHED = {"type": "object", "required": ["exp"], "properties": {"exp": TIME}}


def setup(registry: Registry) -> None:
    registry.add_message_type("session.resume", resume, min_version=V2, schema=RESUME,
                              reply={"session.resumed": RESUMED})
    registry.add_message_type("auth.refresh", refresh, min_version=V2, schema=REFRESH,
                              reply={"auth.refreshed": REFRESHED},
                              events={"auth.expired": REFRESHED})


async def resume(conn: Connection, data: Any) -> dict[str, Any]:
    """Replay each listed group the connection is in from its position, then answer.

    While the history is read, the live events of those groups are held back; after the
    replay they follow, without those the replay already sent.
    """
    positions = {group: Position(int(position["offset"]), position["epoch"])
                 for group, position in data["positions"].items()}  # checked: RESUME
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
    """Write the replayed events this connection was not sent live, nor left out of as
    their sender (it got a reply), as one write; returns how many."""
    frames: list[bytes] = []
    for position, payload in conn.unsent(group, replay.events):
        spliced = with_position(payload, group, position)
        frames.append(text_frame(spliced if spliced is not None else payload))
    if frames:
        conn.deliver(b"".join(frames))
    return len(frames)


async def refresh(conn: Connection, data: Any) -> dict[str, Any]:
    """A new access token of the same user moves the connection's expiry; an invalid
    one or another user's leaves it as it was."""
    token = data["token"]  # checked: REFRESH
    tokens = TokenAuthority(conn.settings.auth)
    try:
        claims = tokens.verify(token, exp_leeway=0)  # docs/protocol.md: no leeway here
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
