"""Positions in a group's history, and the in-process history (docs/protocol.md, Sessions).

Every group send takes the group's next offset; the last `size` events of a group, at
most `ttl` seconds old and together at most `bytes` long, can be replayed to a client
that comes back with its position. An epoch names one unbroken history: when it is
lost, the epoch changes and offsets restart from 1. The counter of a group outlives its
events (for META_TTL seconds after its last send), so a group whose history expired
keeps counting; the counter of a group that has ended (a trip's group after its last
event: `end`) lives only as long as its events, so that trips nobody took leave nothing
behind for a day. The in-process history remembers at most MAX_GROUPS counters,
forgetting the group silent the longest first.

Events are kept without gaps: an event longer than `bytes` is sent but not kept, and
the events before it go too (no client could replay past the missing one).

The Redis broker keeps the same history in Redis (hub/redis_history.py); both answer
`since()` with the same rule, written once here in `replay_from`.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taxi_tornado.frames import encode

# How long a group's counter and epoch live after its last send, when longer than the
# history's ttl. A client away for longer comes back to a new epoch and reloads over HTTP.
META_TTL = 24 * 3600.0
# How many groups' counters the in-process history remembers (about 300 bytes each):
# the group silent the longest starts a new epoch at its next send, and a client coming
# back to it reloads over HTTP, as after META_TTL.
MAX_GROUPS = 100_000


@dataclass(frozen=True, slots=True)
class Position:
    """A place in one group's history: the `offset`-th send of the history `epoch`."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """hub.history_size events per group, at most hub.history_ttl seconds old and
    hub.history_bytes long together.

    A size of 0 turns history off: no positions, and every resume is `recovered: false`.
    """

    size: int = 100
    ttl: float = 300.0
    bytes: int = 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.size > 0

    @property
    def meta_ttl(self) -> float:
        return max(META_TTL, self.ttl)


# One event of a replay: its position and the payload as it was sent (without `pos`).
Event = tuple[Position, bytes]


@dataclass(frozen=True, slots=True)
class Replay:
    """The events of one group after a client's position, oldest first."""

    events: list[Event]


def replay_from(
    position: Position, epoch: str | None, top: int, kept: Sequence[tuple[int, bytes]]
) -> Replay | None:
    """The events after `position`, or None when the history cannot give all of them.

    `epoch` and `top` are the group's current epoch and last offset; `kept` holds
    (offset, payload) of the events after `position` that the history still holds (at
    most `size` of them, none older than the ttl), oldest first.
    """
    if epoch is None or epoch != position.epoch or position.offset > top:
        return None
    missed = top - position.offset
    if missed == 0:
        return Replay([])
    if len(kept) != missed or kept[0][0] != position.offset + 1:
        return None
    return Replay([(Position(offset, epoch), payload) for offset, payload in kept])


def with_position(payload: bytes, group: str, position: Position) -> bytes | None:
    """The JSON object `payload` with `"pos"` added as its last key; None for a payload
    that is not an object (it goes out without a position).

    Spliced into the encoded bytes: the message is not decoded again. The sender removed
    any `pos` of its own before encoding, so the key appears once.
    """
    if payload[:1] != b"{" or payload[-1:] != b"}":
        return None
    tail = b'"pos":{"group":%s,"offset":%d,"epoch":%s}}' % (
        encode(group), position.offset, encode(position.epoch))
    if payload == b"{}":
        return b"{" + tail
    return payload[:-1] + b"," + tail


def new_epoch() -> str:
    return uuid.uuid4().hex[:16]


class GroupHistory:
    """One group in this process: its counter, epoch and last events."""

    __slots__ = ("ended", "epoch", "events", "kept_bytes", "last_send", "offset")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        self.last_send = 0.0
        # (offset, monotonic time, payload), oldest first, without gaps; None once they
        # expired, so that a counter alone costs no buffer.
        self.events: deque[tuple[int, float, bytes]] | None = None
        self.kept_bytes = 0  # the payloads' length in `events`
        self.ended = False  # the counter goes with the events (MemoryHistory.end)

    def keep(self, now: float, payload: bytes, limits: HistoryLimits) -> None:
        """Keep the event just numbered, the oldest going first past size or bytes."""
        events = self.events
        if events is None:
            events = self.events = deque()
        if len(payload) > limits.bytes:  # sent, not kept; nobody can replay past it
            events.clear()
            self.kept_bytes = 0
            return
        events.append((self.offset, now, payload))
        self.kept_bytes += len(payload)
        while len(events) > limits.size or self.kept_bytes > limits.bytes:
            self.kept_bytes -= len(events.popleft()[2])


class MemoryHistory:
    """The in-process history: a ring buffer per group.

    Memory stays bounded without a timer: each append first forgets the events of groups
    silent for longer than the ttl (and the counters of those that ended), and the
    counters of groups silent for longer than META_TTL (two dicts in order of last send,
    swept from their old end); a new group past `max_groups` pushes out the one silent
    the longest.
    """

    def __init__(self, limits: HistoryLimits, max_groups: int = MAX_GROUPS) -> None:
        self.limits = limits
        self.max_groups = max_groups
        self._groups: OrderedDict[str, GroupHistory] = OrderedDict()
        self._with_events: OrderedDict[str, GroupHistory] = OrderedDict()

    def append(self, group: str, payload: bytes) -> Position:
        now = time.monotonic()
        self._sweep(now)
        history = self._groups.get(group)
        if history is None:
            history = self._groups[group] = GroupHistory()
            self._cap()
        else:
            self._groups.move_to_end(group)
        history.offset += 1
        history.last_send = now
        history.keep(now, payload, self.limits)
        self._with_events[group] = history
        self._with_events.move_to_end(group)
        return Position(history.offset, history.epoch)

    def end(self, group: str) -> None:
        """The group had its last event: its counter goes when its events expire (at
        once when none is left), not META_TTL after its last send."""
        history = self._groups.get(group)
        if history is None:
            return
        history.ended = True
        if group not in self._with_events:
            del self._groups[group]

    def since(self, group: str, position: Position) -> Replay | None:
        history = self._groups.get(group)
        if history is None:
            return None
        oldest_allowed = time.monotonic() - self.limits.ttl
        kept = [(offset, payload) for offset, at, payload in history.events or ()
                if offset > position.offset and at >= oldest_allowed]
        return replay_from(position, history.epoch, history.offset, kept)

    def position(self, group: str) -> Position | None:
        """The group's last position; None when its counter is not (or no longer) kept."""
        history = self._groups.get(group)
        return None if history is None else Position(history.offset, history.epoch)

    def groups(self) -> int:
        """How many groups' counters are remembered (at most `max_groups`)."""
        return len(self._groups)

    def groups_with_events(self) -> int:
        """How many groups hold events (those that sent within the ttl)."""
        return len(self._with_events)

    def _cap(self) -> None:
        while len(self._groups) > self.max_groups:
            group, _ = self._groups.popitem(last=False)
            self._with_events.pop(group, None)

    def _sweep(self, now: float) -> None:
        events_cutoff = now - self.limits.ttl
        while self._with_events:
            group, history = next(iter(self._with_events.items()))
            if history.last_send >= events_cutoff:
                break
            history.events = None
            history.kept_bytes = 0
            del self._with_events[group]
            if history.ended:
                self._groups.pop(group, None)
        meta_cutoff = now - self.limits.meta_ttl
        while self._groups:
            group, history = next(iter(self._groups.items()))
            if history.last_send >= meta_cutoff:
                break
            del self._groups[group]


def without_position(message: Any) -> Any:
    """The message less any `pos` of its own: the hub gives the position."""
    if isinstance(message, dict) and "pos" in message:
        return {key: value for key, value in message.items() if key != "pos"}
    return message
