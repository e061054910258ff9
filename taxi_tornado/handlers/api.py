"""Trips over HTTP, the hub publish API, and health checks."""

from __future__ import annotations

import hmac
import uuid
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from taxi_tornado.dispatch.strategy import DispatchStrategy
from taxi_tornado.handlers.base import NOT_FOUND, ApiError, ApiHandler, base_url, field_errors
from taxi_tornado.store import StoreError, Trip, User


def visible(trip: Trip, user: User) -> bool:
    """docs/protocol.md: a rider sees their trips; a driver their own and every REQUESTED one."""
    if user.group == "driver":
        return trip.driver_id == user.id or trip.status == "REQUESTED"
    return trip.rider_id == user.id


PAGE_SIZE = 100
BAD_TIME = "Enter a valid time with a time zone (RFC 3339, e.g. 2026-11-21T17:03:04.123456Z)."


async def visible_to(trips: list[Trip], user: User, strategy: DispatchStrategy) -> list[Trip]:
    """The trips a user may see: REQUESTED trips nobody holds are the dispatch strategy's
    to show (in `nearest`, a driver sees only those they were offered)."""
    if user.group != "driver":
        return trips
    open_trips = [trip for trip in trips
                  if trip.status == "REQUESTED" and trip.driver_id is None]
    if not open_trips:
        return trips
    shown = {trip.id for trip in await strategy.visible(user.id, open_trips)}
    return [trip for trip in trips if trip.driver_id is not None
            or trip.status != "REQUESTED" or trip.id in shown]


class TripListHandler(ApiHandler):
    """A page of the user's trips, newest first; `?before=<time>` for the page after."""

    async def get(self) -> None:
        user = await self.authenticate()
        before = None
        text = self.get_query_argument("before", None)
        if text is not None:
            before = parse_time(text)
            if before is None:
                raise field_errors({"before": [BAD_TIME]})
        trips = await visible_to(
            await self.services.store.list_trips(user, before=before, limit=PAGE_SIZE), user,
            self.services.dispatch.strategy)
        base = base_url(self.request, self.services.settings.server)
        self.write_json([trip.to_json(base) for trip in trips])


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time with its offset (a trip's `created`) in UTC; None when not one."""
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            return None
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


class TripDetailHandler(ApiHandler):
    async def get(self, trip_id: str) -> None:
        user = await self.authenticate()
        if not _is_uuid(trip_id):
            raise ApiError(404, NOT_FOUND)
        trip = await self.services.store.get_trip(trip_id)
        if trip is None or not visible(trip, user):
            raise ApiError(404, NOT_FOUND)
        if not await visible_to([trip], user, self.services.dispatch.strategy):
            raise ApiError(404, NOT_FOUND)
        self.write_json(trip.to_json(base_url(self.request, self.services.settings.server)))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class HubPublishHandler(ApiHandler):
    """Lets a trusted service reach a group on every process: `Authorization: Apikey K`."""

    async def post(self) -> None:
        key = self.services.settings.hub.api_key
        if not key:
            raise ApiError(404, NOT_FOUND)
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters.
        if scheme.lower() != "apikey" or not hmac.compare_digest(given.strip().encode(),
                                                                 key.encode()):
            raise ApiError(403, {"detail": "Invalid API key."})
        body = self.body_fields(allow_multipart=False)
        group, message = body.get("group"), body.get("message")
        errors: dict[str, list[str]] = {}
        if not isinstance(group, str) or not group:
            errors["group"] = ["A non-empty string is required."]
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            errors["message"] = ["An object with a string `type` is required."]
        if errors:
            raise field_errors(errors)
        assert isinstance(group, str)
        await self.services.hub.send(group, message)
        self.write_json({}, 202)


class AsyncApiHandler(ApiHandler):
    """The socket protocol as an AsyncAPI 3.0 document (asyncapi.py), for anyone: client
    libraries generate their types from it."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(self.services.asyncapi)


class HealthHandler(ApiHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyHandler(ApiHandler):
    """200 when the store and the broker answer and we are not draining; else 503."""

    async def get(self) -> None:
        services = self.services
        failures: dict[str, str] = {}
        if services.draining:
            failures["server"] = "draining"
        try:
            await services.store.ping()
        except StoreError as error:
            failures["store"] = str(error)
        except Exception as error:  # a driver error we did not foresee is still "down"
            failures["store"] = f"{type(error).__name__}: {error}"
        if not services.hub.broker.ready:
            failures["hub"] = services.hub.broker.problem()
        if failures:
            self.write_json({"status": "unavailable", "failures": failures}, 503)
            return
        self.write_json({"status": "ok"})


class MetricsHandler(ApiHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())
