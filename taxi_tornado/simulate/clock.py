"""Simulated time: it runs `speed` times faster than the wall clock, so that a 10-minute
ride takes 20 seconds at the default speed of 30. Agents think in simulated seconds;
the recorder and the checker keep wall seconds since the start, which they share with
the server's own timeouts."""

from __future__ import annotations

import asyncio


class Clock:
    """Wall and simulated seconds since `start()`."""

    __slots__ = ("_loop", "_start", "speed")

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()

    def start(self) -> None:
        self._start = self._loop.time()

    def wall(self) -> float:
        """Wall seconds since the start."""
        return self._loop.time() - self._start

    def sim(self) -> float:
        """Simulated seconds since the start."""
        return self.wall() * self.speed

    def to_wall(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(max(0.0, sim_seconds / self.speed))
