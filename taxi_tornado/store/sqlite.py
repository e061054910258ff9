"""The embedded store: one SQLite file through aiosqlite, so the IOLoop never blocks."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from taxi_tornado.coalescer import Coalescer
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    username_key TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    grp TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    photo TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trips (
    id TEXT PRIMARY KEY,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    pick_up_address TEXT NOT NULL,
    drop_off_address TEXT NOT NULL,
    status TEXT NOT NULL,
    rider_id TEXT REFERENCES users(id),
    driver_id TEXT REFERENCES users(id),
    pick_up_lat REAL,
    pick_up_lng REAL,
    drop_off_lat REAL,
    drop_off_lng REAL
);
CREATE TABLE IF NOT EXISTS request_keys (
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    answer BLOB,
    expires REAL NOT NULL,
    claim TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_keys_expires ON request_keys(expires);
CREATE INDEX IF NOT EXISTS trips_rider ON trips(rider_id, created);
CREATE INDEX IF NOT EXISTS trips_driver ON trips(driver_id, created);
CREATE INDEX IF NOT EXISTS trips_status ON trips(status, created);
"""
# Columns added after the first release: open() adds each one a database made before
# lacks, so an existing file upgrades itself (SQLite's ADD COLUMN leaves old rows NULL).
ADDED_TRIP_COLUMNS = (
    ("pick_up_lat", "REAL"),
    ("pick_up_lng", "REAL"),
    ("drop_off_lat", "REAL"),
    ("drop_off_lng", "REAL"),
)

USER_COLUMNS = "id, username, grp, first_name, last_name, photo, password_hash"
TRIP_SELECT = """
SELECT t.id, t.created, t.updated, t.pick_up_address, t.drop_off_address, t.status,
       r.id, r.username, r.grp, r.first_name, r.last_name, r.photo,
       d.id, d.username, d.grp, d.first_name, d.last_name, d.photo,
       t.pick_up_lat, t.pick_up_lng, t.drop_off_lat, t.drop_off_lng
FROM trips t
LEFT JOIN users r ON r.id = t.rider_id
LEFT JOIN users d ON d.id = t.driver_id
"""
log = logging.getLogger("taxi_tornado.store.sqlite")
ACTIVE_MARKS = ", ".join("?" for _ in ACTIVE_STATUSES)
# Ids per `IN (…)` list: the active-trips query binds each twice, and 2 * 400 + 3 stays
# under 999, the smallest variable limit an SQLite build may have.
CHUNK = 400
# One statement claims a key, takes over a lapsed one, or reads the one held: every
# column keeps its value unless the row had lapsed (each CASE reads the old row), and the
# claim token coming back says which happened.
CLAIM_KEY = """
INSERT INTO request_keys (user_id, key, fingerprint, answer, expires, claim)
VALUES (:user, :key, :fingerprint, NULL, :expires, :claim)
ON CONFLICT (user_id, key) DO UPDATE SET
    fingerprint = CASE WHEN expires <= :now THEN excluded.fingerprint ELSE fingerprint END,
    answer = CASE WHEN expires <= :now THEN NULL ELSE answer END,
    claim = CASE WHEN expires <= :now THEN excluded.claim ELSE claim END,
    expires = CASE WHEN expires <= :now THEN excluded.expires ELSE expires END
RETURNING claim, fingerprint, answer
"""
PURGE_EVERY = 60.0  # seconds between two sweeps of lapsed keys
LOCKED_RETRY_S = 10.0  # how long opening waits out a file other workers are setting up


class SQLiteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # Every WebSocket handshake asks for its user and active trips: during a connect
        # storm these answer a loop turn's worth of askers with one hop to aiosqlite's
        # thread each, instead of one hop per asker.
        self._users = Coalescer(self._users_by_id)
        self._active_trips = Coalescer(self._active_trips_by_user)
        self._purged_at = time.monotonic()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the SQLite store is not open")
        return self._db

    async def open(self) -> None:
        if self._db is not None:
            return
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._while_locked(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._while_locked(lambda: self.db.executescript(SCHEMA))
            await self._add_missing_columns()
            await self._refold_usernames()
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open SQLite database {self.path}: {error}") from error

    async def _while_locked(self, statement: Callable[[], Awaitable[object]]) -> None:
        """Run `statement`, again while the file is locked, for up to LOCKED_RETRY_S.

        Worker processes open one file together at start-up. Switching it to WAL, or
        creating its tables, needs it to themselves for a moment, and SQLite may answer
        "database is locked" at once there rather than wait out busy_timeout (seen with
        eight openers of one old file).
        """
        deadline = time.monotonic() + LOCKED_RETRY_S
        while True:
            try:
                await statement()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _refold_usernames(self) -> None:
        """Give users stored before usernames were NFKC-folded their key of today.

        Only names with a character outside printable ASCII can fold differently. A key
        that another user already holds is left as it was, and logged.
        """
        rows = await self.db.execute_fetchall(
            "SELECT id, username, username_key FROM users WHERE username GLOB '*[^ -~]*'"
        )
        for user_id, username, key in rows:
            folded = username_key(username)
            if folded == key:
                continue
            try:
                await self.db.execute("UPDATE users SET username_key = ? WHERE id = ?",
                                      (folded, user_id))
            except sqlite3.IntegrityError:
                log.warning("user %s: username %r folds to the name of another user; it "
                            "can log in only as written before", user_id, username)

    async def _add_missing_columns(self) -> None:
        """Several worker processes may open one old file at once: a column another added
        meanwhile is not an error."""
        present = {row[1] for row in await self.db.execute_fetchall("PRAGMA table_info(trips)")}
        for name, kind in ADDED_TRIP_COLUMNS:
            if name in present:
                continue
            try:
                await self.db.execute(f"ALTER TABLE trips ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):
                    raise

    async def close(self) -> None:
        await self._users.drain()
        await self._active_trips.drain()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> None:
        try:
            await self.db.execute("SELECT 1")
        except (sqlite3.Error, ValueError) as error:
            raise StoreError(f"SQLite does not answer: {error}") from error

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
        try:
            await self.db.execute(
                "INSERT INTO users (id, username, username_key, password_hash, grp,"
                " first_name, last_name, photo, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (user.id, username, username_key(username), password_hash, group,
                 first_name, last_name, photo, _stamp()),
            )
        except sqlite3.IntegrityError:
            raise UsernameTaken(username) from None
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._users.get(user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._one_user(
            f"SELECT {USER_COLUMNS} FROM users WHERE username_key = ?", username_key(username)
        )

    async def _one_user(self, query: str, value: str) -> User | None:
        # One trip to aiosqlite's thread, not three (execute, fetch, close).
        rows = list(await self.db.execute_fetchall(query, (value,)))
        return User(*rows[0]) if rows else None

    async def _users_by_id(self, user_ids: list[str]) -> dict[str, User | None]:
        found: dict[str, User | None] = dict.fromkeys(user_ids)
        for chunk in _chunks(user_ids):
            query = f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({_marks(chunk)})"
            for row in await self._read(query, chunk):
                found[row[0]] = User(*row)
        return found

    async def create_trip(
        self,
        rider_id: str,
        pick_up_address: str,
        drop_off_address: str,
        pick_up: LatLng | None = None,
        drop_off: LatLng | None = None,
    ) -> Trip:
        trip_id, moment = new_id(), _stamp()
        try:
            await self.db.execute(
                "INSERT INTO trips (id, created, updated, pick_up_address, drop_off_address,"
                " status, rider_id, pick_up_lat, pick_up_lng, drop_off_lat, drop_off_lng)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trip_id, moment, moment, pick_up_address, drop_off_address,
                 TripStatus.REQUESTED.value, rider_id, *_columns(pick_up), *_columns(drop_off)),
            )
        except sqlite3.IntegrityError as error:
            raise StoreError(f"cannot create trip: {error}") from error
        trip = await self.get_trip(trip_id)
        assert trip is not None
        return trip

    async def get_trip(self, trip_id: str) -> Trip | None:
        async with self.db.execute(TRIP_SELECT + " WHERE t.id = ?", (trip_id,)) as cursor:
            row = await cursor.fetchone()
        return _trip(row) if row else None

    async def list_trips(
        self, user: User, *, before: datetime | None = None, limit: int = 100
    ) -> list[Trip]:
        if user.group == "driver":
            where = "(t.driver_id = ? OR t.status = 'REQUESTED')"
        else:
            where = "t.rider_id = ?"
        parameters: list[Any] = [user.id]
        if before is not None:
            where += " AND t.created < ?"
            parameters.append(_stamp(before))
        query = f"{TRIP_SELECT} WHERE {where} ORDER BY t.created DESC, t.id LIMIT ?"
        parameters.append(limit)
        async with self.db.execute(query, parameters) as cursor:
            rows = await cursor.fetchall()
        return [_trip(row) for row in rows]

    async def active_trip_ids(self, user_id: str) -> list[str]:
        return list(await self._active_trips.get(user_id))  # a list of the caller's own

    async def _active_trips_by_user(self, user_ids: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {user_id: [] for user_id in user_ids}
        for chunk in _chunks(user_ids):
            marks = _marks(chunk)
            # `+status`: look trips up by rider and driver index; without statistics the
            # planner would otherwise scan every unfinished trip by the status index.
            query = (
                f"SELECT id, rider_id, driver_id FROM trips"
                f" WHERE (rider_id IN ({marks}) OR driver_id IN ({marks}))"
                f" AND +status IN ({ACTIVE_MARKS})"
            )
            for trip_id, rider_id, driver_id in await self._read(
                query, (*chunk, *chunk, *ACTIVE_STATUSES)
            ):
                for user_id in {rider_id, driver_id}:
                    if user_id in found:
                        found[user_id].append(trip_id)
        return found

    async def _read(self, query: str, parameters: Sequence[object]) -> Iterable[sqlite3.Row]:
        """One round trip to aiosqlite's thread; its failures become StoreError."""
        try:
            return await self.db.execute_fetchall(query, parameters)
        except (sqlite3.Error, ValueError) as error:  # ValueError: aiosqlite closed under us
            raise StoreError(f"SQLite read failed: {error}") from error

    async def update_trip(
        self,
        trip_id: str,
        *,
        expected_status: TripStatus,
        expected_driver_id: str | None,
        status: TripStatus,
        driver_id: str | None,
    ) -> Trip | None:
        cursor = await self.db.execute(
            "UPDATE trips SET status = ?, driver_id = ?, updated = ?"
            " WHERE id = ? AND status = ? AND driver_id IS ?",
            (status.value, driver_id, _stamp(), trip_id,
             expected_status.value, expected_driver_id),
        )
        if cursor.rowcount != 1:
            return None
        return await self.get_trip(trip_id)

    async def trip_counts(self) -> dict[TripStatus, int]:
        counts = dict.fromkeys(TripStatus, 0)
        rows = await self._read("SELECT status, COUNT(*) FROM trips GROUP BY status", ())
        for status, count in rows:
            counts[TripStatus(status)] = count
        return counts

    async def unfinished_trips(self, limit: int) -> list[Trip]:
        query = (f"{TRIP_SELECT} WHERE t.status IN ({ACTIVE_MARKS})"
                 " ORDER BY t.created, t.id LIMIT ?")
        rows = await self._read(query, (*ACTIVE_STATUSES, limit))
        return [_trip(row) for row in rows]

    async def find_users(self, prefix: str, limit: int) -> list[User]:
        # A range on the unique username_key index, not LIKE (which would scan).
        query = (f"SELECT {USER_COLUMNS} FROM users WHERE username_key >= ?"
                 " AND username_key < ? ORDER BY username_key LIMIT ?")
        rows = await self._read(query, (*username_range(prefix), limit))
        return [User(*row) for row in rows]

    # Idempotency keys (a block of its own: see Store.claim_key).

    async def claim_key(self, user_id: str, key: str, fingerprint: str,
                        lease: float, claim: str = "") -> RequestKey | None:
        moment, token = time.time(), claim or uuid.uuid4().hex
        rows = list(await self._write(CLAIM_KEY, {
            "user": user_id, "key": key, "fingerprint": fingerprint,
            "expires": moment + lease, "claim": token, "now": moment}))
        held_claim, held_fingerprint, answer = rows[0]
        return None if held_claim == token else RequestKey(held_fingerprint, answer)

    async def remember_key(self, user_id: str, key: str, fingerprint: str, answer: bytes,
                           ttl: float, claim: str = "") -> bool:
        moment = time.time()
        if claim:  # an answered key's claim is '': never a token
            rows = await self._write(
                "UPDATE request_keys SET answer = ?, expires = ?, claim = ''"
                " WHERE user_id = ? AND key = ? AND claim = ? RETURNING 1",
                (answer, moment + ttl, user_id, key, claim))
            kept = bool(list(rows))
        else:
            await self._write(
                "INSERT OR REPLACE INTO request_keys (user_id, key, fingerprint, answer,"
                " expires, claim) VALUES (?, ?, ?, ?, ?, '')",
                (user_id, key, fingerprint, answer, moment + ttl))
            kept = True
        if time.monotonic() - self._purged_at >= PURGE_EVERY:
            self._purged_at = time.monotonic()
            await self._write("DELETE FROM request_keys WHERE expires <= ?", (moment,))
        return kept

    async def release_key(self, user_id: str, key: str, claim: str = "") -> None:
        if claim:
            await self._write("DELETE FROM request_keys WHERE user_id = ? AND key = ?"
                              " AND claim = ?", (user_id, key, claim))
            return
        await self._write("DELETE FROM request_keys WHERE user_id = ? AND key = ?",
                          (user_id, key))

    async def _write(self, query: str, parameters: Any) -> Iterable[sqlite3.Row]:
        """One round trip to aiosqlite's thread for a statement that writes (RETURNING
        rows, if any); its failures become StoreError."""
        try:
            return await self.db.execute_fetchall(query, parameters)
        except (sqlite3.Error, ValueError) as error:
            raise StoreError(f"SQLite write failed: {error}") from error


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    return (keys[start:start + CHUNK] for start in range(0, len(keys), CHUNK))


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _user(row: Any, offset: int) -> User | None:
    if row[offset] is None:
        return None
    return User(*row[offset:offset + 6])


def _trip(row: Any) -> Trip:
    return Trip(
        id=row[0],
        created=datetime.fromisoformat(row[1]),
        updated=datetime.fromisoformat(row[2]),
        pick_up_address=row[3],
        drop_off_address=row[4],
        status=TripStatus(row[5]),
        rider=_user(row, 6),
        driver=_user(row, 12),
        pick_up=_lat_lng(row[18], row[19]),
        drop_off=_lat_lng(row[20], row[21]),
    )


def _columns(point: LatLng | None) -> tuple[float | None, float | None]:
    return (point.lat, point.lng) if point else (None, None)


def _lat_lng(lat: float | None, lng: float | None) -> LatLng | None:
    return None if lat is None or lng is None else LatLng(lat, lng)


def _stamp(moment: datetime | None = None) -> str:
    """A time (now by default) as fixed-width ISO text in UTC, so that text order is
    time order."""
    return (moment or now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
