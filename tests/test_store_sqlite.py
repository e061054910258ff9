"""The store contract against SQLiteStore on a real database file."""

from __future__ import annotations

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
