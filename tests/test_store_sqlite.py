"""The store contract against SQLiteStore on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from taxi_tornado.store import StoreError
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
