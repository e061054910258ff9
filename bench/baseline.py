"""The ceiling: a minimal Tornado server speaking the same protocol as taxi_tornado.

Only what a speed-minded author would write in one file: the access JWT is checked in the
upgrade (HS256, same claims, same secret; no user lookup, no store), groups are a dict of
sets, a message for a group is encoded once into one frame and written straight to each
member's IOStream, on_message is a plain function (no task per frame). No rate limit, no
metrics, no logging, no pings. Trips are not stored; the location scenario's trip
pairs are read from a JSON file (`--trips`: [[trip, rider, driver], …]). It runs on the
event loop the server picks by default (uvloop when installed; see loop_factory).

    python bench/baseline.py --port 8123 --trips trips.json   (secret: $TAXI_AUTH_SECRET_KEY)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson
import tornado.web
from tornado.websocket import WebSocketHandler

GROUPS: dict[str, set[BaselineSocket]] = {}
TRIPS_OF: dict[str, list[str]] = {}  # user id -> trip ids (rider or driver)
SECRET = os.environ.get("TAXI_AUTH_SECRET_KEY", "")
REQUIRED = ["exp", "iat", "jti", "token_type", "id"]


def frame(message: Any) -> bytes:
    payload = orjson.dumps(message)
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def send_group(group: str, data: bytes, exclude: BaselineSocket | None = None) -> None:
    for member in GROUPS.get(group, ()):
        if member is not exclude:
            member.stream.write(data)


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BaselineSocket(WebSocketHandler):
    claims: dict[str, Any]
    groups: list[str]

    def prepare(self) -> None:
        try:
            claims = jwt.decode(self.get_query_argument("token", ""), SECRET,
                                algorithms=["HS256"], options={"require": REQUIRED})
        except jwt.PyJWTError:
            self.send_error(401)
            return
        if claims.get("token_type") != "access":
            self.send_error(401)
            return
        self.claims = claims

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "taxi.v2" if "taxi.v2" in subprotocols else None

    def open(self, *args: Any) -> None:
        assert self.ws_connection is not None
        self.stream = self.ws_connection.stream
        self.set_nodelay(True)
        user_id = self.claims["id"]
        self.groups = [f"user:{user_id}", *TRIPS_OF.get(user_id, ())]
        if self.claims["group"] == "driver":
            self.groups.append("drivers")
        for group in self.groups:
            GROUPS.setdefault(group, set()).add(self)

    def on_message(self, message: str | bytes) -> None:
        envelope = orjson.loads(message)
        kind = envelope.get("type")
        if kind == "echo.message":
            reply: dict[str, Any] = {"type": "echo.message", "data": envelope.get("data")}
        elif kind in ("trip.request", "create.trip"):
            reply = self.request_trip(envelope.get("data") or {})
        elif kind == "driver.location":
            self.relay_location(envelope.get("data") or {})
            return
        else:
            reply = {"type": "error", "data": {"code": "unknown_type"}}
        if "id" in envelope:
            reply["id"] = envelope["id"]
        self.stream.write(frame(reply))

    def request_trip(self, data: dict[str, Any]) -> dict[str, Any]:
        claims = self.claims
        moment = stamp()
        rider = {key: claims[key] for key in
                 ("id", "username", "first_name", "last_name", "group", "photo")}
        trip = {"id": str(uuid.uuid4()), "created": moment, "updated": moment,
                "pick_up_address": data.get("pick_up_address"),
                "drop_off_address": data.get("drop_off_address"),
                "status": "REQUESTED", "rider": rider, "driver": None}
        message = {"type": "trip.updated", "data": trip}
        GROUPS.setdefault(trip["id"], set()).add(self)
        self.groups.append(trip["id"])
        send_group("drivers", frame(message))
        return message

    def relay_location(self, data: dict[str, Any]) -> None:
        user_id = self.claims["id"]
        moment = stamp()
        for trip_id in TRIPS_OF.get(user_id, ()):
            message = {"type": "driver.location", "data": {
                "driver": user_id, "trip": trip_id, "lat": data.get("lat"),
                "lng": data.get("lng"), "heading": data.get("heading"),
                "speed": data.get("speed"), "at": moment}}
            send_group(trip_id, frame(message), exclude=self)

    def on_close(self) -> None:
        for group in getattr(self, "groups", ()):
            members = GROUPS.get(group)
            if members is not None:
                members.discard(self)
                if not members:
                    del GROUPS[group]


class Health(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"status": "ok"})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--trips", help="JSON list of [trip, rider, driver]")
    args = parser.parse_args()
    if args.trips:
        with open(args.trips) as handle:
            for trip_id, rider_id, driver_id in json.load(handle):
                TRIPS_OF.setdefault(rider_id, []).append(trip_id)
                TRIPS_OF.setdefault(driver_id, []).append(trip_id)
    app = tornado.web.Application([(r"/taxi/?", BaselineSocket), (r"/healthz", Health)])
    app.listen(args.port, "127.0.0.1")
    await asyncio.Event().wait()


def loop_factory() -> Any:
    """The loop taxi_tornado runs on by default (`server.event_loop = "auto"`: uvloop when
    installed), so that both servers are measured on the same one; TAXI_SERVER_EVENT_LOOP
    set to asyncio in the bench's environment puts both on asyncio's own."""
    if os.environ.get("TAXI_SERVER_EVENT_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main())
