"""An SOS button: a rider or driver raises an alarm about a trip they are part of.

The alarm goes to the other people on the trip (v2 clients only: the course's v1 client
would take any frame for a trip) and to the `dispatch` group, which an operator's console
joins. The plugin registers one message type and one on-connect hook, and uses the store
and the hub only through the Connection it is given.
"""

from __future__ import annotations

from typing import Any

from taxi_tornado.plugins import Connection, ProtocolError, Registry

DISPATCH = "dispatch"
MAX_NOTE = 500


def setup(registry: Registry) -> None:
    registry.add_message_type("sos.alert", raise_alert)
    registry.on_connect(join_dispatch)


async def join_dispatch(conn: Connection) -> None:
    """Users whose username starts with `dispatch` watch every alert."""
    if conn.user.username.startswith("dispatch"):
        await conn.join(DISPATCH)


async def raise_alert(conn: Connection, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("trip"), str):
        raise ProtocolError("invalid", "An SOS names its trip.",
                            {"trip": ["This field is required."]})
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ProtocolError("invalid", "The note is not valid.",
                            {"note": [f"At most {MAX_NOTE} characters of text."]})
    trip = await conn.store.get_trip(data["trip"])
    if trip is None or conn.user.id not in (trip.rider_id, trip.driver_id):
        raise ProtocolError("not_found", "No such trip.")
    alert = {"type": "sos.alert", "data": {"trip": trip.id, "from": conn.user.id, "note": note}}
    await conn.send_group(trip.id, alert, exclude_self=True, min_version=2)
    await conn.send_group(DISPATCH, alert, exclude_self=True)
    return {"type": "sos.sent", "data": {"trip": trip.id}}
