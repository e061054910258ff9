"""JSON encoding and server-to-client WebSocket frames, built once per message.

A group send encodes its message once and wraps it in one unmasked text frame (RFC 6455,
section 5.2); the same bytes are then written to every member's stream. Tornado's
`write_message` would redo both steps and create a task for every socket.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

decode = orjson.loads
DecodeError = orjson.JSONDecodeError


def encode(message: Any) -> bytes:
    """UTF-8 JSON; orjson is several times faster than json on our messages."""
    return orjson.dumps(message)


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked, uncompressed text frame carrying `payload`."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def message_frame(message: Any) -> bytes:
    return text_frame(encode(message))


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame made by text_frame(): its header is 2, 4 or 10 bytes."""
    size = frame[1] & 0x7F
    if size == 126:
        return frame[4:]
    if size == 127:
        return frame[10:]
    return frame[2:]
