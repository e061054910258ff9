"""The format of a group send on a Redis channel.

    taxi1 <node> <min_version> <exclude>\\n<JSON payload>                 (history off)
    taxi2 <node> <min_version> <exclude> <offset> <epoch>\\n<JSON payload>  (history on)

`-` stands for none. The header lets a receiving process skip its own taxi1 messages (it
delivered them locally already), apply `exclude` and `min_version`, and give v2 members
the event's position; the payload stays the JSON the sender encoded, so the receiver
frames it without decoding. A taxi2 message is written by the history script in Redis
(hub/redis_history.py), which appends the offset and epoch it took to the header the
sender gave it.
"""

from __future__ import annotations

from dataclasses import dataclass

from taxi_tornado.hub.history import Position

WIRE_TAG = b"taxi1"
POSITIONED_TAG = b"taxi2"


@dataclass(frozen=True, slots=True)
class WireMessage:
    node: bytes
    exclude: str | None
    min_version: int
    payload: bytes
    position: Position | None


def wire_message(node: bytes, payload: bytes, exclude: str | None, min_version: int) -> bytes:
    """A taxi1 message: a group send that no history numbered."""
    return b"%s\n%s" % (wire_header(WIRE_TAG, node, exclude, min_version), payload)


def wire_header(tag: bytes, node: bytes, exclude: str | None, min_version: int) -> bytes:
    return b"%s %s %d %s" % (tag, node or b"-", min_version,
                             exclude.encode() if exclude else b"-")


def parse_wire_message(data: bytes) -> tuple[bytes, str | None, int, bytes] | None:
    """(node, exclude, min_version, payload) of a taxi1 message, or None for another format."""
    message = read_wire(data)
    if message is None or message.position is not None:
        return None
    return message.node, message.exclude, message.min_version, message.payload


def read_wire(data: bytes) -> WireMessage | None:
    """A taxi1 or taxi2 message, or None for a message in another format."""
    header, newline, payload = data.partition(b"\n")
    fields = header.split(b" ")
    if not newline or fields[0] not in (WIRE_TAG, POSITIONED_TAG):
        return None
    positioned = fields[0] == POSITIONED_TAG
    if len(fields) != (6 if positioned else 4) or not fields[2].isdigit():
        return None
    node, exclude = fields[1], fields[3]
    position = None
    if positioned:
        if not fields[4].isdigit() or not fields[5]:
            return None
        position = Position(int(fields[4]), fields[5].decode())
    return WireMessage(node, None if exclude == b"-" else exclude.decode(),
                       int(fields[2]), payload, position)
