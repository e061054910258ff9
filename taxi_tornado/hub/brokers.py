"""What a broker is, and the in-process one.

A broker takes every group send of its hub: it numbers the send in the group's history
(when history is on, and the group is not one of its `live_only` groups), carries it to
the other processes, and hands it to the hub's `receiver` for the local members, with
its position. It also answers resumes from that history.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping

from taxi_tornado.hub.budget import MemoryBudgets
from taxi_tornado.hub.history import HistoryLimits, MemoryHistory, Position, Replay

# What a broker hands back to the hub: group, JSON payload, excluded member id, min
# version, and the send's position (None when no history numbered it).
Receiver = Callable[[str, bytes, str | None, int, Position | None], int]


def _nobody(group: str, payload: bytes, exclude: str | None, min_version: int,
            position: Position | None) -> int:
    return 0


class Broker(abc.ABC):
    """Carries group sends to members, here and on the other processes."""

    node_id: str = ""

    def __init__(self) -> None:
        self.receiver: Receiver = _nobody  # the Hub puts its own here
        self.budgets = MemoryBudgets()  # this process's (hub/budget.py)
        # Groups whose sends are carried but never numbered nor kept (Hub.live_only).
        self.live_only: set[str] = set()

    @property
    def ready(self) -> bool:
        """Whether the broker link is up now (for /readyz)."""
        return True

    def describe(self) -> str:
        return type(self).__name__

    def problem(self) -> str:
        """What /readyz says while the broker is not ready."""
        return f"{self.describe()} is not connected"

    async def start(self) -> None:
        """Begin handing messages from other processes to `receiver`."""
        return None

    async def stop(self) -> None:
        return None

    async def subscribe(self, group: str) -> None:
        """Called for the first local member of `group`."""
        return None

    async def unsubscribe(self, group: str) -> None:
        """Called when the last local member of `group` left."""
        return None

    @abc.abstractmethod
    async def send(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        """Number, record and deliver one group send everywhere.

        Returns the local deliveries made during the call (0 when the local members get
        the send back through the broker, in the order of its offsets).
        """

    async def since(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        """For each group, the events after its position, or None when the history
        cannot give every one of them."""
        return dict.fromkeys(positions)

    async def end(self, group: str) -> None:
        """`group` had its last event: keep its counter only as long as its events."""
        return None

    async def spend(self, key: str, per_minute: int) -> float:
        """Spend one action of the budget `key` (hub/budget.py): 0.0 when allowed, else
        the seconds to wait. In process here; a shared broker shares it."""
        return self.budgets.spend(key, per_minute)


class MemoryBroker(Broker):
    """The default: one process is the whole world; history is a ring buffer per group."""

    def __init__(self, limits: HistoryLimits | None = None) -> None:
        super().__init__()
        limits = limits or HistoryLimits()
        self.history = MemoryHistory(limits) if limits.enabled else None

    async def send(
        self, group: str, payload: bytes, exclude: str | None, min_version: int
    ) -> int:
        position = None
        if self.history is not None and group not in self.live_only:
            position = self.history.append(group, payload)
        return self.receiver(group, payload, exclude, min_version, position)

    async def since(self, positions: Mapping[str, Position]) -> dict[str, Replay | None]:
        history = self.history
        if history is None:
            return dict.fromkeys(positions)
        return {group: history.since(group, position) for group, position in positions.items()}

    async def end(self, group: str) -> None:
        if self.history is not None:
            self.history.end(group)
