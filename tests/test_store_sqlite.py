"""The store contract against SQLiteStore on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from taxi_tornado.store import LatLng, StoreError
from taxi_tornado.store.sqlite import SQLiteStore
from tests.store_contract import StoreContract, StoreFactory


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        path = tmp_path / "data" / "taxi.db"
        return lambda: SQLiteStore(str(path))


async def test_unwritable_path_fails_open_with_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        await SQLiteStore(str(tmp_path / "file" / "taxi.db")).open()


async def test_failed_batch_fails_every_asker_with_store_error(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "taxi.db"))
    await store.open()
    try:
        with sqlite3.connect(tmp_path / "taxi.db") as other:
            other.execute("DROP TABLE trips")
        results = await asyncio.gather(*(store.active_trip_ids(f"user{number}")
                                         for number in range(10)), return_exceptions=True)
        assert all(isinstance(result, StoreError) for result in results), results
    finally:
        await store.close()


async def test_close_answers_the_lookups_already_asked(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "taxi.db"))
    await store.open()
    user = await store.create_user("rider", "hash", "rider")
    *found, _ = await asyncio.gather(*(store.get_user(user.id) for _ in range(10)), store.close())
    assert [result.id if result else None for result in found] == [user.id] * 10
    with pytest.raises(StoreError, match="not open"):
        await store.get_user(user.id)


OLD_TRIPS_TABLE = """
CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL,
    username_key TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL, grp TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '', last_name TEXT NOT NULL DEFAULT '', photo TEXT,
    created TEXT NOT NULL);
CREATE TABLE trips (id TEXT PRIMARY KEY, created TEXT NOT NULL, updated TEXT NOT NULL,
    pick_up_address TEXT NOT NULL, drop_off_address TEXT NOT NULL, status TEXT NOT NULL,
    rider_id TEXT REFERENCES users(id), driver_id TEXT REFERENCES users(id));
INSERT INTO users VALUES ('u1', 'old', 'old', 'hash', 'rider', '', '', NULL,
    '2026-01-01T00:00:00.000000+00:00');
INSERT INTO trips VALUES ('t1', '2026-01-01T00:00:00.000000+00:00',
    '2026-01-01T00:00:00.000000+00:00', 'A', 'B', 'REQUESTED', 'u1', NULL);
"""


async def test_database_from_before_positions_upgrades_itself_on_open(tmp_path: Path) -> None:
    path = tmp_path / "taxi.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_TRIPS_TABLE)
    store = SQLiteStore(str(path))
    await store.open()
    try:
        before = await store.get_trip("t1")
        assert before is not None and (before.pick_up, before.drop_off) == (None, None)
        made = await store.create_trip("u1", "C", "D", pick_up=LatLng(48.85, 2.35))
        stored = await store.get_trip(made.id)
        assert stored is not None and stored.pick_up == LatLng(48.85, 2.35)
    finally:
        await store.close()
    reopened = SQLiteStore(str(path))  # a second open finds the columns and adds nothing
    await reopened.open()
    await reopened.close()
