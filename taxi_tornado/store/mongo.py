"""The MongoDB store, on PyMongo's async API (`AsyncMongoClient`, the successor of Motor).

Two collections in the database named by the URL path (docs/mongodb.md shows them):
`users` (`_id` a uuid string, a unique index on the case-folded `username_key`) and
`trips` (indexes on rider, driver and status, each with the creation time). A claim is
one `find_one_and_update` filtered on the expected status and driver: the server applies
it atomically, so of many racing drivers exactly one matches.

MongoDB keeps datetimes to the millisecond while docs/protocol.md shows microseconds, so
every time is stored twice: `created` / `updated` as BSON dates for people and tools,
and `created_us` / `updated_us` as integer microseconds since the epoch, which the store
reads back and sorts on. A trip therefore round-trips exactly, and two trips made in the
same millisecond still sort newest first.

An unreachable server does not stop start-up: `open()` logs it and the process keeps
running; `ping()` (behind /readyz) raises StoreError until the server answers, and the
indexes are created on the first call that finds it reachable.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from taxi_tornado.store import (
    ACTIVE_STATUSES,
    LatLng,
    RequestKey,
    Store,
    StoreError,
    Trip,
    TripStatus,
    User,
    UsernameTaken,
    new_id,
    now,
    username_key,
    username_range,
)

log = logging.getLogger("taxi_tornado.store.mongo")

Document = dict[str, Any]

# How long an operation waits for a reachable server before failing: short, so that
# /readyz answers 503 promptly. A serverSelectionTimeoutMS in the URL wins.
SERVER_SELECTION_TIMEOUT_MS = 2000
NEWEST_FIRST = [("created_us", DESCENDING), ("_id", ASCENDING)]
OLDEST_FIRST = [("created_us", ASCENDING), ("_id", ASCENDING)]
TRIP_INDEXES = (
    [("rider_id", ASCENDING), ("created_us", DESCENDING)],
    [("driver_id", ASCENDING), ("created_us", DESCENDING)],
    [("status", ASCENDING), ("created_us", DESCENDING)],
)
# Users inside trips travel far (to every driver's socket): they carry no password hash.
WITHOUT_SECRETS = {"password_hash": 0}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FORBIDDEN_NAME_CHARACTERS = frozenset('/\\. "$\0')
CLAIM_ATTEMPTS = 3  # a key released or lapsed between two calls is looked at again


class MongoStore(Store):
    """The store on a MongoDB database; `client` lets a caller supply its own client
    (which it then owns and closes)."""

    def __init__(self, url: str, client: AsyncMongoClient[Document] | None = None) -> None:
        self.database_name = database_name(url)
        self._owns_client = client is None
        self._client = client if client is not None else _client(url)
        self._database = self._client[self.database_name]
        self._users = self._database["users"]
        self._trips = self._database["trips"]
        self._keys = self._database["request_keys"]
        self._opened = False
        self._indexed = False

    async def open(self) -> None:
        """Create the indexes, or, when the server does not answer, leave that to a
        later call: the process stays up and /readyz says why it is not ready."""
        if self._opened:
            return
        self._opened = True
        try:
            await self._ensure_indexes()
        except PyMongoError as error:
            log.warning("MongoDB does not answer (%s); /readyz stays 503 until it does",
                        _one_line(error))

    async def close(self) -> None:
        self._opened = False
        if self._owns_client:
            await self._client.close()

    async def ping(self) -> None:
        with _driver_errors("MongoDB does not answer"):
            await self._client.admin.command("ping")
            await self._ensure_indexes()

    async def create_user(
        self,
        username: str,
        password_hash: str,
        group: str,
        first_name: str = "",
        last_name: str = "",
        photo: str | None = None,
    ) -> User:
        user = User(new_id(), username, group, first_name, last_name, photo, password_hash)
        document = {
            "_id": user.id,
            "username": username,
            "username_key": username_key(username),
            "password_hash": password_hash,
            "group": group,
            "first_name": first_name,
            "last_name": last_name,
            "photo": photo,
            **_stamp("created", now()),
        }
        with _driver_errors("cannot create user"):
            await self._ensure_indexes()
            try:
                await self._users.insert_one(document)
            except DuplicateKeyError:
                raise UsernameTaken(username) from None
        return user

    async def get_user(self, user_id: str) -> User | None:
        with _driver_errors("cannot read user"):
            document = await self._users.find_one({"_id": user_id})
        return _user(document) if document else None

    async def get_user_by_username(self, username: str) -> User | None:
        with _driver_errors("cannot read user"):
            document = await self._users.find_one({"username_key": username_key(username)})
        return _user(document) if document else None

    async def create_trip(
        self,
        rider_id: str,
        pick_up_address: str,
        drop_off_address: str,
        pick_up: LatLng | None = None,
        drop_off: LatLng | None = None,
    ) -> Trip:
        moment = now()
        document = {
            "_id": new_id(),
            **_stamp("created", moment),
            **_stamp("updated", moment),
            "pick_up_address": pick_up_address,
            "drop_off_address": drop_off_address,
            "status": TripStatus.REQUESTED.value,
            "rider_id": rider_id,
            "driver_id": None,
            "pick_up": pick_up.to_json() if pick_up else None,
            "drop_off": drop_off.to_json() if drop_off else None,
        }
        with _driver_errors("cannot create trip"):
            await self._ensure_indexes()
            rider = await self._users.find_one({"_id": rider_id}, WITHOUT_SECRETS)
            if rider is None:
                raise StoreError(f"cannot create trip: no user {rider_id!r}")
            await self._trips.insert_one(document)
        return _trip(document, {rider_id: _user(rider)})

    async def get_trip(self, trip_id: str) -> Trip | None:
        with _driver_errors("cannot read trip"):
            document = await self._trips.find_one({"_id": trip_id})
        if document is None:
            return None
        return (await self._resolve([document]))[0]

    async def list_trips(
        self, user: User, *, before: datetime | None = None, limit: int = 100
    ) -> list[Trip]:
        if user.group == "driver":
            query: Document = {"$or": [{"driver_id": user.id},
                                       {"status": TripStatus.REQUESTED.value}]}
        else:
            query = {"rider_id": user.id}
        if before is not None:
            query["created_us"] = {"$lt": _microseconds(before)}
        with _driver_errors("cannot list trips"):
            cursor = self._trips.find(query).sort(NEWEST_FIRST).limit(limit)
            documents = await cursor.to_list(None)
        return await self._resolve(documents)

    async def active_trip_ids(self, user_id: str) -> list[str]:
        query = {
            "$or": [{"rider_id": user_id}, {"driver_id": user_id}],
            "status": {"$in": [status.value for status in ACTIVE_STATUSES]},
        }
        with _driver_errors("cannot list trips"):
            documents = await self._trips.find(query, {"_id": 1}).to_list(None)
        return [document["_id"] for document in documents]

    async def update_trip(
        self,
        trip_id: str,
        *,
        expected_status: TripStatus,
        expected_driver_id: str | None,
        status: TripStatus,
        driver_id: str | None,
    ) -> Trip | None:
        expected = {"_id": trip_id, "status": expected_status.value,
                    "driver_id": expected_driver_id}
        change = {"$set": {"status": status.value, "driver_id": driver_id,
                           **_stamp("updated", now())}}
        with _driver_errors("cannot update trip"):
            document = await self._trips.find_one_and_update(
                expected, change, return_document=ReturnDocument.AFTER,
            )
        if document is None:
            return None
        return (await self._resolve([document]))[0]

    async def trip_counts(self) -> dict[TripStatus, int]:
        counts = dict.fromkeys(TripStatus, 0)
        with _driver_errors("cannot count trips"):
            for status in TripStatus:  # one index count each, never a collection scan
                counts[status] = await self._trips.count_documents({"status": status.value})
        return counts

    async def unfinished_trips(self, limit: int) -> list[Trip]:
        query = {"status": {"$in": [status.value for status in ACTIVE_STATUSES]}}
        with _driver_errors("cannot list trips"):
            cursor = self._trips.find(query).sort(OLDEST_FIRST).limit(limit)
            documents = await cursor.to_list(None)
        return await self._resolve(documents)

    async def find_users(self, prefix: str, limit: int) -> list[User]:
        low, high = username_range(prefix)  # a range on the unique username_key index
        query = {"username_key": {"$gte": low, "$lt": high}}
        with _driver_errors("cannot find users"):
            cursor = self._users.find(query).sort("username_key", ASCENDING).limit(limit)
            documents = await cursor.to_list(None)
        return [_user(document) for document in documents]

    # Idempotency keys (a block of its own: see Store.claim_key). `_id` names the (user,
    # key) pair, so the unique _id index settles racing claims: one insert wins.

    async def claim_key(self, user_id: str, key: str, fingerprint: str,
                        lease: float, claim: str = "") -> RequestKey | None:
        pair = _key_id(user_id, key)
        mine = {"fingerprint": fingerprint, "answer": None,
                "claim": claim or uuid.uuid4().hex}
        with _driver_errors("cannot claim a request key"):
            await self._ensure_indexes()
            for _ in range(CLAIM_ATTEMPTS):
                moment = now()
                expires = moment + timedelta(seconds=lease)
                try:
                    await self._keys.insert_one({"_id": pair, **mine, "expires": expires})
                    return None
                except DuplicateKeyError:
                    pass
                held = await self._keys.find_one({"_id": pair})
                if held is not None and _aware(held["expires"]) > moment:
                    return RequestKey(held["fingerprint"], held["answer"])
                # Lapsed (the TTL monitor runs only once a minute): take it over, unless
                # another claim did first; then look again.
                taken = await self._keys.find_one_and_update(
                    {"_id": pair, "expires": {"$lte": moment}},
                    {"$set": {**mine, "expires": expires}})
                if taken is not None:
                    return None
        raise StoreError("cannot claim a request key: it keeps changing")

    async def remember_key(self, user_id: str, key: str, fingerprint: str, answer: bytes,
                           ttl: float, claim: str = "") -> bool:
        document = {"fingerprint": fingerprint, "answer": answer, "claim": "",
                    "expires": now() + timedelta(seconds=ttl)}
        with _driver_errors("cannot remember a request key"):
            if claim:  # an answered key's claim is "": never a token
                done = await self._keys.replace_one(
                    {"_id": _key_id(user_id, key), "claim": claim}, document)
                return done.matched_count == 1
            await self._keys.replace_one({"_id": _key_id(user_id, key)}, document,
                                         upsert=True)
        return True

    async def release_key(self, user_id: str, key: str, claim: str = "") -> None:
        query = {"_id": _key_id(user_id, key), **({"claim": claim} if claim else {})}
        with _driver_errors("cannot release a request key"):
            await self._keys.delete_one(query)

    async def _ensure_indexes(self) -> None:
        """Create the indexes once per store; creating an existing index is a no-op."""
        if self._indexed:
            return
        await self._users.create_index("username_key", unique=True, name="username_key")
        for keys in TRIP_INDEXES:
            await self._trips.create_index(keys)
        # MongoDB's TTL monitor deletes lapsed keys (about once a minute; reads check).
        await self._keys.create_index("expires", expireAfterSeconds=0, name="expires")
        await self._refold_usernames()
        self._indexed = True

    async def _refold_usernames(self) -> None:
        """Give users stored before usernames were NFKC-folded their key of today.

        Only names with a character outside printable ASCII can fold differently. A key
        that another user already holds is left as it was, and logged.
        """
        query = {"username": {"$regex": "[^ -~]"}}
        async for document in self._users.find(query, {"username": 1, "username_key": 1}):
            key = username_key(document["username"])
            if key == document.get("username_key"):
                continue
            try:
                await self._users.update_one({"_id": document["_id"]},
                                             {"$set": {"username_key": key}})
            except DuplicateKeyError:
                log.warning("user %s: username %r folds to the name of another user; it "
                            "can log in only as written before", document["_id"],
                            document["username"])

    async def _resolve(self, documents: list[Document]) -> list[Trip]:
        """Trips with riders and drivers as Users, fetched in one `$in` query for all."""
        ids = _user_ids(documents)
        users: dict[str, User] = {}
        if ids:
            with _driver_errors("cannot read users"):
                found = await self._users.find({"_id": {"$in": ids}}, WITHOUT_SECRETS).to_list(None)
            users = {document["_id"]: _user(document) for document in found}
        return [_trip(document, users) for document in documents]


def database_name(url: str) -> str:
    """The database named by the URL path, as PyMongo reads it; StoreError when none."""
    _, _, rest = url.partition("://")
    _, _, path = rest.partition("/")
    name = unquote_plus(path.partition("?")[0]).partition(".")[0]
    if not name:
        raise StoreError("store.url: names no database; use mongodb://host:port/dbname")
    if FORBIDDEN_NAME_CHARACTERS & set(name):
        raise StoreError(f"store.url: {name!r} is not a valid MongoDB database name")
    return name


def _client(url: str) -> AsyncMongoClient[Document]:
    """A client for `url`; it parses the URL now and connects on first use."""
    options: dict[str, Any] = {"tz_aware": True}
    if "serverselectiontimeoutms" not in url.lower():
        options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
    try:
        return AsyncMongoClient(url, **options)
    except (PyMongoError, ValueError, TypeError) as error:
        raise StoreError(f"store.url: {_one_line(error)}") from None


@contextmanager
def _driver_errors(doing: str) -> Iterator[None]:
    """Driver failures become StoreError, the one error the contract names."""
    try:
        yield
    except PyMongoError as error:
        raise StoreError(f"{doing}: {_one_line(error)}") from error


def _one_line(error: BaseException) -> str:
    """PyMongo's messages can span lines and end in a topology dump; logs want one
    short line."""
    text = " ".join(str(error).split()).partition(", Topology Description:")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _stamp(name: str, moment: datetime) -> Document:
    """A time as a BSON date (milliseconds) and as exact integer microseconds."""
    return {name: moment, f"{name}_us": _microseconds(moment)}


def _microseconds(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _time(microseconds: int) -> datetime:
    return EPOCH + timedelta(microseconds=microseconds)


def _key_id(user_id: str, key: str) -> str:
    """One string per (user, key): a key never holds a newline, so the last one splits."""
    return f"{user_id}\n{key}"


def _aware(moment: datetime) -> datetime:
    """A stored time as an aware datetime (a client without tz_aware gives naive UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _user_ids(documents: Iterable[Document]) -> list[str]:
    ids = {document.get(key) for document in documents for key in ("rider_id", "driver_id")}
    return sorted(user_id for user_id in ids if user_id is not None)


def _user(document: Document) -> User:
    return User(
        id=document["_id"],
        username=document["username"],
        group=document["group"],
        first_name=document.get("first_name", ""),
        last_name=document.get("last_name", ""),
        photo=document.get("photo"),
        password_hash=document.get("password_hash", ""),
    )


def _trip(document: Document, users: dict[str, User]) -> Trip:
    rider_id, driver_id = document.get("rider_id"), document.get("driver_id")
    return Trip(
        id=document["_id"],
        created=_time(document["created_us"]),
        updated=_time(document["updated_us"]),
        pick_up_address=document["pick_up_address"],
        drop_off_address=document["drop_off_address"],
        status=TripStatus(document["status"]),
        rider=users.get(rider_id) if rider_id else None,
        driver=users.get(driver_id) if driver_id else None,
        pick_up=_lat_lng(document.get("pick_up")),
        drop_off=_lat_lng(document.get("drop_off")),
    )


def _lat_lng(value: Any) -> LatLng | None:
    """A stored {"lat", "lng"} object; trips stored before positions existed have none."""
    if not isinstance(value, dict):
        return None
    return LatLng(float(value["lat"]), float(value["lng"]))
