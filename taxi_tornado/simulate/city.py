"""The simulated city: points around a centre, distances, and movement along plausible
street paths (a grid city: one axis, then the other) at street speeds.

Everything here is plain arithmetic on latitude and longitude, good to well under a
percent over the few kilometres a simulation spans.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

EARTH_RADIUS_M = 6_371_000.0


@dataclass(frozen=True)
class Point:
    lat: float
    lng: float

    def as_json(self) -> dict[str, float]:
        return {"lat": round(self.lat, 6), "lng": round(self.lng, 6)}


def distance_m(a: Point, b: Point) -> float:
    """Great-circle distance (haversine) in metres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat, dlng = lat2 - lat1, math.radians(b.lng - a.lng)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlng / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def moved(origin: Point, north_m: float, east_m: float) -> Point:
    """`origin` moved by metres north and east (a flat-earth step: short distances)."""
    lat = origin.lat + math.degrees(north_m / EARTH_RADIUS_M)
    scale = max(1e-9, math.cos(math.radians(origin.lat)))
    return Point(lat, origin.lng + math.degrees(east_m / (EARTH_RADIUS_M * scale)))


@dataclass(frozen=True)
class City:
    """A disc of `radius_m` around `center`, in which every trip and driver stays."""

    center: Point
    radius_m: float

    def random_point(self, rng: random.Random, within: float = 1.0) -> Point:
        """Uniform over the disc (or over its inner fraction `within`)."""
        r = self.radius_m * within * math.sqrt(rng.random())
        angle = rng.uniform(0, 2 * math.pi)
        return moved(self.center, r * math.cos(angle), r * math.sin(angle))

    def point_near(self, rng: random.Random, origin: Point, low_m: float,
                   high_m: float) -> Point:
        """A point `low_m`..`high_m` from `origin` that lies inside the city (tries a few
        directions; falls back to any point in the city)."""
        for _ in range(20):
            r, angle = rng.uniform(low_m, high_m), rng.uniform(0, 2 * math.pi)
            point = moved(origin, r * math.cos(angle), r * math.sin(angle))
            if distance_m(self.center, point) <= self.radius_m:
                return point
        return self.random_point(rng)


@dataclass
class Route:
    """Where a vehicle goes next: waypoints along the streets of a grid city."""

    waypoints: list[Point] = field(default_factory=list)

    @classmethod
    def along_streets(cls, start: Point, end: Point, rng: random.Random) -> Route:
        """North-south then east-west, or the other way round: the shape of a drive
        through a street grid rather than a line across the blocks."""
        corner = Point(end.lat, start.lng) if rng.random() < 0.5 else Point(start.lat, end.lng)
        return cls([corner, end])

    @property
    def done(self) -> bool:
        return not self.waypoints

    def advance(self, position: Point, metres: float) -> tuple[Point, float | None]:
        """Move `metres` along the route from `position`; returns the new position and
        the heading in degrees (None when standing still)."""
        heading: float | None = None
        while metres > 0 and self.waypoints:
            target = self.waypoints[0]
            left = distance_m(position, target)
            heading = _heading(position, target) if left > 0 else heading
            if left <= metres:
                position, metres = target, metres - left
                self.waypoints.pop(0)
                continue
            fraction = metres / left
            position = Point(position.lat + (target.lat - position.lat) * fraction,
                             position.lng + (target.lng - position.lng) * fraction)
            metres = 0
        return position, heading


def _heading(a: Point, b: Point) -> float:
    north = b.lat - a.lat
    east = (b.lng - a.lng) * math.cos(math.radians(a.lat))
    return (math.degrees(math.atan2(east, north)) + 360) % 360
