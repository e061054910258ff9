"""Regions: the coarse H3 cells that shard driver positions in a Redis Cluster.

Each position is stored in the keys of its region (hub/keys.py tags them by the cell),
so the positions of different regions live on different shards, and a nearest search
asks only the regions its circle reaches: the pick-up's cell and those neighbours whose
boundary lies within the radius (1 to 3 cells for a 10 km circle at resolution 4).

The resolution is `dispatch.region_resolution` (settings.toml says why 4).
"""

from __future__ import annotations

import math
from functools import lru_cache

import h3

EARTH_RADIUS_M = 6_371_008.8
# Cells vary in size over the globe by about a factor of two: the ring count of a
# covering assumes cells half as wide as the average, so it never falls short.
WIDTH_MARGIN = 0.5
# A neighbour counts when its boundary is within the radius, measured on a local flat
# map: the map's error is covered by 10% and 500 m more (asking a region too many costs
# one command, one too few loses drivers).
RADIUS_MARGIN = 1.1
DISTANCE_SLACK_M = 500.0
# Past this many rings (a radius of hundreds of kilometres), every region in use is asked.
MAX_RINGS = 30


class Regions:
    """The region of a position, and the regions a circle reaches, at one resolution."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        edge = h3.average_hexagon_edge_length(resolution, "m")
        self._ring_m = math.sqrt(3) * edge * WIDTH_MARGIN

    def of(self, lat: float, lng: float) -> str:
        """The region (an H3 cell, as hex) that holds this position."""
        return str(h3.latlng_to_cell(lat, lng, self.resolution))

    def covering(self, lat: float, lng: float, radius_m: float) -> list[str] | None:
        """The regions a circle reaches, its own first; None for a circle so large that
        every region in use should be asked instead."""
        rings = 1 + math.ceil(radius_m / self._ring_m)
        if rings > MAX_RINGS:
            return None
        home = self.of(lat, lng)
        reach = radius_m * RADIUS_MARGIN + DISTANCE_SLACK_M
        return [home] + [cell for cell in h3.grid_disk(home, rings)
                         if cell != home and _distance_to_cell(lat, lng, cell) <= reach]


def _distance_to_cell(lat: float, lng: float, cell: str) -> float:
    """Metres from the point to the cell's boundary, on a flat map centred on the point
    (longitudes wrapped, so a cell across the antimeridian is near)."""
    points = [_flat(lat, lng, vertex) for vertex in _boundary(cell)]
    return min(_to_segment(a, b) for a, b in zip(points, points[1:] + points[:1],
                                                  strict=True))


@lru_cache(maxsize=4096)
def _boundary(cell: str) -> tuple[tuple[float, float], ...]:
    return tuple(h3.cell_to_boundary(cell))


def _flat(lat: float, lng: float, vertex: tuple[float, float]) -> tuple[float, float]:
    vertex_lat, vertex_lng = vertex
    east = (vertex_lng - lng + 180.0) % 360.0 - 180.0
    scale = math.cos(math.radians((lat + vertex_lat) / 2))
    return (math.radians(east) * scale * EARTH_RADIUS_M,
            math.radians(vertex_lat - lat) * EARTH_RADIUS_M)


def _to_segment(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length = dx * dx + dy * dy
    t = 0.0 if length == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length))
    return math.hypot(ax + t * dx, ay + t * dy)
