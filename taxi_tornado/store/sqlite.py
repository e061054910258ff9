"""The embedded store: one SQLite file through aiosqlite, so the IOLoop never blocks."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from taxi_tornado.store import (
    ACTIVE_STATUSES,
    Store,
    StoreError,
    Trip,
    TripStatus,
    User,
    UsernameTaken,
    new_id,
    now,
    username_key,
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
    driver_id TEXT REFERENCES users(id)
);
CREATE INDEX IF NOT EXISTS trips_rider ON trips(rider_id, created);
CREATE INDEX IF NOT EXISTS trips_driver ON trips(driver_id, created);
CREATE INDEX IF NOT EXISTS trips_status ON trips(status, created);
"""

USER_COLUMNS = "id, username, grp, first_name, last_name, photo, password_hash"
TRIP_SELECT = """
SELECT t.id, t.created, t.updated, t.pick_up_address, t.drop_off_address, t.status,
       r.id, r.username, r.grp, r.first_name, r.last_name, r.photo,
       d.id, d.username, d.grp, d.first_name, d.last_name, d.photo
FROM trips t
LEFT JOIN users r ON r.id = t.rider_id
LEFT JOIN users d ON d.id = t.driver_id
"""


class SQLiteStore(Store):
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

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
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open SQLite database {self.path}: {error}") from error

    async def close(self) -> None:
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
        return await self._one_user(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        return await self._one_user(
            f"SELECT {USER_COLUMNS} FROM users WHERE username_key = ?", username_key(username)
        )

    async def _one_user(self, query: str, value: str) -> User | None:
        # One trip to aiosqlite's thread, not three (execute, fetch, close): this runs on
        # every WebSocket connect.
        rows = list(await self.db.execute_fetchall(query, (value,)))
        return User(*rows[0]) if rows else None

    async def create_trip(self, rider_id: str, pick_up_address: str, drop_off_address: str) -> Trip:
        trip_id, moment = new_id(), _stamp()
        try:
            await self.db.execute(
                "INSERT INTO trips (id, created, updated, pick_up_address, drop_off_address,"
                " status, rider_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (trip_id, moment, moment, pick_up_address, drop_off_address,
                 TripStatus.REQUESTED.value, rider_id),
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

    async def list_trips(self, user: User) -> list[Trip]:
        if user.group == "driver":
            where = "t.driver_id = ? OR t.status = 'REQUESTED'"
        else:
            where = "t.rider_id = ?"
        query = f"{TRIP_SELECT} WHERE {where} ORDER BY t.created DESC, t.id"
        async with self.db.execute(query, (user.id,)) as cursor:
            rows = await cursor.fetchall()
        return [_trip(row) for row in rows]

    async def active_trip_ids(self, user_id: str) -> list[str]:
        marks = ", ".join("?" for _ in ACTIVE_STATUSES)
        query = (
            f"SELECT id FROM trips WHERE (rider_id = ? OR driver_id = ?) AND status IN ({marks})"
        )
        rows = await self.db.execute_fetchall(query, (user_id, user_id, *ACTIVE_STATUSES))
        return [row[0] for row in rows]

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
    )


def _stamp() -> str:
    """Now as fixed-width ISO text, so that text order is time order."""
    return now().strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
