"""The store contract: users and trips, behind one async interface.

Two implementations pass the same contract suite (tests/store_contract.py): SQLite, the
embedded default, and MongoDB. Handlers and plugins see only this module; a trip claim
happens only through `update_trip`, a compare-and-set on status and driver.
"""

from __future__ import annotations

import abc
import enum
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class TripStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    STARTED = "STARTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        return self in (TripStatus.COMPLETED, TripStatus.CANCELED)

    @property
    def rank(self) -> int:
        """Position on the forward-only path; CANCELED is off the path."""
        return _RANKS[self]


_RANKS = {
    TripStatus.REQUESTED: 0,
    TripStatus.STARTED: 1,
    TripStatus.IN_PROGRESS: 2,
    TripStatus.COMPLETED: 3,
    TripStatus.CANCELED: -1,
}

ACTIVE_STATUSES = (TripStatus.REQUESTED, TripStatus.STARTED, TripStatus.IN_PROGRESS)
GROUPS = ("rider", "driver")  # what sign-up offers
STAFF = "staff"  # operators: made only from the terminal (taxi-tornado createuser --staff)
ALL_GROUPS = (*GROUPS, STAFF)


class StoreError(Exception):
    """The store could not do what was asked (unreachable, corrupt, …)."""


class UsernameTaken(StoreError):
    """A user with that username (ignoring case) already exists."""


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    group: str
    first_name: str = ""
    last_name: str = ""
    photo: str | None = None  # the stored file name under data_dir/photos
    password_hash: str = field(default="", repr=False)

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The docs/protocol.md User object; `base_url` is scheme://host of the request."""
        return {
            "id": self.id,
            "username": self.username,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "group": self.group,
            "photo": photo_url(base_url, self.photo),
        }


@dataclass(frozen=True, slots=True)
class LatLng:
    """A point on the map in degrees: a trip's pick-up or drop-off."""

    lat: float
    lng: float

    def to_json(self) -> dict[str, float]:
        return {"lat": self.lat, "lng": self.lng}


@dataclass(frozen=True, slots=True)
class Trip:
    id: str
    created: datetime
    updated: datetime
    pick_up_address: str
    drop_off_address: str
    status: TripStatus
    rider: User | None
    driver: User | None
    pick_up: LatLng | None = None
    drop_off: LatLng | None = None

    @property
    def rider_id(self) -> str | None:
        return self.rider.id if self.rider else None

    @property
    def driver_id(self) -> str | None:
        return self.driver.id if self.driver else None

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": format_time(self.created),
            "updated": format_time(self.updated),
            "pick_up_address": self.pick_up_address,
            "drop_off_address": self.drop_off_address,
            "status": self.status.value,
            "rider": self.rider.to_json(base_url) if self.rider else None,
            "driver": self.driver.to_json(base_url) if self.driver else None,
            "pick_up": self.pick_up.to_json() if self.pick_up else None,
            "drop_off": self.drop_off.to_json() if self.drop_off else None,
        }


def photo_url(base_url: str, photo: str | None) -> str | None:
    return f"{base_url}/media/photos/{photo}" if photo else None


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and Z, as docs/protocol.md fixes."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def username_key(username: str) -> str:
    """The form usernames are compared in: unique ignoring case and compatibility forms.

    NFKC folds look-alikes such as fullwidth letters (fullwidth `john` is `john`); case
    folding can undo NFKC, so it runs again after (Unicode's NFKC_Casefold, in effect).
    """
    folded = unicodedata.normalize("NFKC", username).casefold()
    return unicodedata.normalize("NFKC", folded)


class Store(abc.ABC):
    """What the server needs from a database. Every method is a coroutine."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create schema and indexes; idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the database answers now (for /readyz)."""

    @abc.abstractmethod
    async def create_user(
        self,
        username: str,
        password_hash: str,
        group: str,
        first_name: str = "",
        last_name: str = "",
        photo: str | None = None,
    ) -> User:
        """Create a user; raise UsernameTaken when the name exists ignoring case."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def get_user_by_username(self, username: str) -> User | None:
        """Look a user up by name, ignoring case."""

    @abc.abstractmethod
    async def create_trip(
        self,
        rider_id: str,
        pick_up_address: str,
        drop_off_address: str,
        pick_up: LatLng | None = None,
        drop_off: LatLng | None = None,
    ) -> Trip:
        """Store a new REQUESTED trip for `rider_id` (with its positions, when given) and
        return it, rider resolved."""

    @abc.abstractmethod
    async def get_trip(self, trip_id: str) -> Trip | None: ...

    @abc.abstractmethod
    async def list_trips(
        self, user: User, *, before: datetime | None = None, limit: int = 100
    ) -> list[Trip]:
        """The trips `user` may see, newest first: a rider's own; a driver's own plus
        every REQUESTED trip. At most `limit`; with `before`, only those created strictly
        before it (the `created` of the last trip of a page gives the next page)."""

    @abc.abstractmethod
    async def active_trip_ids(self, user_id: str) -> list[str]:
        """Ids of the trips, not COMPLETED or CANCELED, with user_id as rider or driver."""

    @abc.abstractmethod
    async def update_trip(
        self,
        trip_id: str,
        *,
        expected_status: TripStatus,
        expected_driver_id: str | None,
        status: TripStatus,
        driver_id: str | None,
    ) -> Trip | None:
        """Atomically set status and driver if the trip still has the expected ones.

        Returns the updated trip, or None when the trip is missing or changed meanwhile.
        This compare-and-set is the only way a driver claims a trip.
        """

    # What the operators' page shows: the whole deployment, not one user's view.

    @abc.abstractmethod
    async def trip_counts(self) -> dict[TripStatus, int]:
        """How many trips have each status (every status present, 0 when none)."""

    @abc.abstractmethod
    async def unfinished_trips(self, limit: int) -> list[Trip]:
        """The REQUESTED, STARTED and IN_PROGRESS trips, oldest first, at most `limit`."""

    @abc.abstractmethod
    async def find_users(self, prefix: str, limit: int) -> list[User]:
        """Users whose name starts with `prefix`, compared as usernames are (username_key),
        in that order, at most `limit`: operators look a user up by name, not by id."""

    # Idempotent requests (taxi_tornado/idempotency.py): one round trip per call.

    @abc.abstractmethod
    async def claim_key(self, user_id: str, key: str, fingerprint: str,
                        lease: float, claim: str = "") -> RequestKey | None:
        """Claim (user, key) for `lease` seconds, with `fingerprint`, no answer and the
        token `claim` (one of the store's own when empty), and return None; when it is
        held (claimed or answered, and not lapsed), change nothing and return what it
        holds. Of racing claims exactly one gets None."""

    @abc.abstractmethod
    async def remember_key(self, user_id: str, key: str, fingerprint: str, answer: bytes,
                           ttl: float, claim: str = "") -> bool:
        """Hold `answer` under (user, key) for `ttl` seconds from now; given a `claim`,
        only while the key still holds that claim (lapsed or not) unanswered. Whether it
        was held."""

    @abc.abstractmethod
    async def release_key(self, user_id: str, key: str, claim: str = "") -> None:
        """Forget (user, key), so that the next claim of it succeeds; given a `claim`,
        only while the key still holds that claim unanswered."""


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What an idempotency key holds: the fingerprint of the request that claimed it,
    and its remembered answer (None while that request is being handled)."""

    fingerprint: str
    answer: bytes | None


def username_range(prefix: str) -> tuple[str, str]:
    """The keys that start with `prefix`'s key: at least the key, and below the key
    followed by the last code point (both stores compare keys code point by code point)."""
    key = username_key(prefix)
    return key, key + "\U0010ffff"


def open_store(url: str) -> Store:
    """Build (not yet open) the store named by `url`."""
    if url.startswith("sqlite:///"):
        from taxi_tornado.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from taxi_tornado.store.mongo import MongoStore

        return MongoStore(url)
    raise StoreError(f"store.url: unsupported scheme in {url!r}")
