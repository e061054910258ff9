"""Where the client stands in each group's history, and the rule that hands every group
event to the app once and in offset order across a replay and live sends (the wire
side is docs/protocol.md, "Sessions that survive a phone")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict


class Position(TypedDict):
    """The last event heard in one group: what `session.resume` lists for it."""

    offset: int
    epoch: str


Frame = dict[str, Any]
Deliver = Callable[[Frame], None]


def _place(frame: Frame) -> tuple[str, int, str] | None:
    """(group, offset, epoch) of a frame's `pos`, or None for a frame without a usable
    one (a reply, or an event sent while the server had lost its Redis)."""
    pos = frame.get("pos")
    if not isinstance(pos, dict):
        return None
    group, offset, epoch = pos.get("group"), pos.get("offset"), pos.get("epoch")
    if not isinstance(group, str) or not isinstance(epoch, str) \
            or not isinstance(offset, int) or isinstance(offset, bool):
        return None
    return group, offset, epoch


class Positions:
    """The last position heard per group, and the events held back during a resume.

    An event at or below the position held (same epoch) is one the app already has and
    is dropped. While a resume is being answered, the events of the groups it lists are
    held and then delivered sorted by offset: a live event that arrived between the
    handshake and the server reading the resume can come before older replayed ones.
    """

    __slots__ = ("_held", "_last")

    def __init__(self, initial: Mapping[str, Position] | None = None) -> None:
        self._last: dict[str, Position] = {
            group: {"offset": position["offset"], "epoch": position["epoch"]}
            for group, position in (initial or {}).items()}
        self._held: dict[str, list[Frame]] | None = None

    def __bool__(self) -> bool:
        return bool(self._last)

    def snapshot(self) -> dict[str, Position]:
        """A copy of every position, to store across an app restart."""
        return {group: {"offset": p["offset"], "epoch": p["epoch"]}
                for group, p in self._last.items()}

    def resume(self) -> dict[str, Position]:
        """The `positions` of a `session.resume`; holds those groups' events until
        `release()` (or `drop()`)."""
        self._held = {group: [] for group in self._last}
        return self.snapshot()

    def accept(self, frame: Frame, deliver: Deliver) -> None:
        """Deliver `frame` unless it is held back or was delivered already."""
        place = _place(frame)
        if place is None:
            deliver(frame)
            return
        group, offset, epoch = place
        if self._held is not None:
            waiting = self._held.get(group)
            if waiting is not None:
                waiting.append(frame)
                return
        last = self._last.get(group)
        if last is not None and last["epoch"] == epoch and offset <= last["offset"]:
            return
        self._last[group] = {"offset": offset, "epoch": epoch}
        deliver(frame)

    def release(self, deliver: Deliver, lost: Iterable[str] = ()) -> None:
        """The resume was answered: forget the positions of the groups it could not
        recover (the app reloads them; the next event sets a new position, and a group
        the socket left is not listed again), then deliver what was held, per group in
        offset order."""
        for group in lost:
            self._last.pop(group, None)
        held, self._held = self._held, None
        if not held:
            return
        for frames in held.values():
            frames.sort(key=lambda frame: frame["pos"]["offset"])
            for frame in frames:
                self.accept(frame, deliver)

    def drop(self) -> None:
        """The link dropped during a resume: forget what was held without moving the
        positions, so that the next resume asks for those events again (delivering them
        now could skip older ones still to be replayed)."""
        self._held = None
