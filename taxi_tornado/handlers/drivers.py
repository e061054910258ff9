"""`GET /api/drivers/nearby/`: the available drivers around a point, for a rider's map."""

from __future__ import annotations

import math

from taxi_tornado.handlers.base import ApiHandler, field_errors

MAX_DRIVERS = 50


class NearbyDriversHandler(ApiHandler):
    """Positions and headings only, nearest first: never who the drivers are."""

    async def get(self) -> None:
        await self.authenticate()
        config = self.services.settings.dispatch
        errors: dict[str, list[str]] = {}
        lat = self._number("lat", -90, 90, errors)
        lng = self._number("lng", -180, 180, errors)
        radius = self._number("radius_m", 0, math.inf, errors, default=config.max_radius_m)
        if (radius is not None and radius <= 0) or "radius_m" in errors:
            errors["radius_m"] = ["Must be a positive number of metres."]
        if errors:
            raise field_errors(errors)
        assert lat is not None and lng is not None and radius is not None
        found = await self.services.dispatch.locations.nearest(
            lat, lng, min(radius, config.max_radius_m), MAX_DRIVERS)
        self.write_json({"count": len(found), "drivers": [
            {"lat": driver.lat, "lng": driver.lng, "heading": driver.heading}
            for driver in found]})

    def _number(self, name: str, low: float, high: float, errors: dict[str, list[str]],
                default: float | None = None) -> float | None:
        text = self.get_query_argument(name, None)
        if text is None or not text.strip():
            if default is None:
                errors[name] = ["This field is required."]
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # also refuses nan
            errors[name] = [f"Must be a number from {low:g} to {high:g}."]
            return None
        return value
