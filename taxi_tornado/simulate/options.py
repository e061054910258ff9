"""What a run is asked to do (`taxi-tornado simulate`'s options) and how its people
behave. Durations named `_s` are simulated seconds unless they say `wall`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: The server's dispatch timeouts at speed 1 (settings.toml's defaults).
OFFER_TIMEOUT_S = 15.0
MAX_WAIT_S = 120.0
LOCATION_TTL_S = 30.0


@dataclass(frozen=True)
class Behaviour:
    """How synthetic people act; every choice is drawn from the run's seeded random."""

    drive_speed_mps: tuple[float, float] = (8.0, 13.0)  # 30 to 45 km/h through town
    position_every_s: float = 4.0  # a phone's GPS report...
    position_min_wall: float = 0.3  # ...but not more often than this, in wall seconds
    accept: float = 0.85  # a driver takes an offer (or a broadcast request near enough)
    decide_s: tuple[float, float] = (2.0, 8.0)  # looking at the screen before tapping
    reach_m: float = 5000.0  # broadcast: the requests a driver even looks at
    off_every_s: float = 2400.0  # a driver goes unavailable about this often...
    off_for_s: float = 400.0  # ...for about this long
    request_every_s: float = 240.0  # a rider's mean wait before the next trip (Poisson)
    trip_m: tuple[float, float] = (800.0, 5000.0)  # pick-up to drop-off
    cancel: float = 0.15  # a rider changes their mind while the trip is REQUESTED
    cancel_after_s: tuple[float, float] = (1.0, 15.0)
    patience_s: float = 180.0  # a rider gives up on a REQUESTED trip (past max_wait)
    follow_limit_s: float = 5400.0  # a rider stops waiting for a trip's end, reloads


@dataclass(frozen=True)
class Options:
    """One run. Without `url` the runner starts its own server with `dispatch`."""

    url: str | None = None
    drivers: int = 50
    riders: int = 10
    duration: float = 60.0  # wall seconds in which riders request trips
    seed: int = 1
    speed: float = 30.0
    center: tuple[float, float] = (52.52, 13.405)
    radius_km: float = 5.0
    dispatch: str = "broadcast"
    report: Path | None = None
    accounts: Path | None = None
    progress_every: float = 5.0  # wall seconds between progress lines; 0 for none
    wind_down: float = 30.0  # wall seconds at most for rides under way to end
    settle: float = 2.0  # wall seconds for the last events to arrive before the check
    behaviour: Behaviour = field(default_factory=Behaviour)
    # The dispatch timeouts (wall seconds) of a server at `url` that does not run the
    # defaults: the checker judges `requested_past_max_wait` by them.
    server_offer_timeout: float | None = None
    server_max_wait: float | None = None

    @property
    def offer_timeout(self) -> float:
        """Wall seconds: the server's offer timeout as the self-started server runs it
        (scaled), or the default of a server at --url."""
        if self.url is None:
            return OFFER_TIMEOUT_S / self.speed
        return self.server_offer_timeout or OFFER_TIMEOUT_S

    @property
    def max_wait(self) -> float:
        if self.url is None:
            return MAX_WAIT_S / self.speed
        return self.server_max_wait or MAX_WAIT_S

    @property
    def position_every_wall(self) -> float:
        return max(self.behaviour.position_every_s / self.speed,
                   self.behaviour.position_min_wall)

    @property
    def location_ttl(self) -> float:
        """Wall seconds a position counts on the self-started server: scaled, but long
        enough for a few missed reports."""
        return max(LOCATION_TTL_S / self.speed, 4 * self.position_every_wall)
