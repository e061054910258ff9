"""The store contract against MongoStore, and how it starts when MongoDB is away.

With `TAXI_TEST_MONGO_URL` set (e.g. mongodb://127.0.0.1:27017/taxi_test) the contract
runs against that real MongoDB, each test in a database of its own that is dropped
afterwards. Without it the contract runs against mongomock behind the small async
adapter in tests/mongomock_async.py: those tests (marked `mongomock`) check query
semantics only — filters, sorts, projections, the unique index, the claim's filter —
not a real server's atomicity, wire behaviour or index builds.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient

from taxi_tornado.store import StoreError, UsernameTaken, open_store
from taxi_tornado.store.mongo import MongoStore
from tests.conftest import RunningServer, free_port, make_settings
from tests.mongomock_async import AsyncMockClient
from tests.store_contract import StoreContract, StoreFactory

REAL_MONGO_URL = os.environ.get("TAXI_TEST_MONGO_URL", "")


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead, options kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.mark.skipif(not REAL_MONGO_URL, reason="TAXI_TEST_MONGO_URL is not set")
class TestMongoStoreOnMongoDB(StoreContract):
    @pytest.fixture
    async def store_factory(self) -> AsyncIterator[StoreFactory]:
        url = with_database(REAL_MONGO_URL, f"taxi_test_{uuid.uuid4().hex[:12]}")
        yield lambda: MongoStore(url)
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
        await client.drop_database(urlsplit(url).path.lstrip("/"))
        await client.close()


@pytest.mark.mongomock
@pytest.mark.skipif(bool(REAL_MONGO_URL), reason="a real MongoDB is configured")
class TestMongoStoreOnMongomock(StoreContract):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        client = AsyncMockClient()  # one in-memory server: reopening sees the same data
        return lambda: MongoStore("mongodb://mongomock.invalid/taxi", client=client)  # type: ignore[arg-type]


@pytest.mark.mongomock
async def test_indexes_follow_once_a_late_server_answers() -> None:
    """Start with the server away: open() passes, ping() fails, and the first call
    that reaches the server creates the unique index before any user is written."""
    client = AsyncMockClient()
    client.reachable = False
    store = MongoStore("mongodb://mongomock.invalid/taxi", client=client)  # type: ignore[arg-type]
    await store.open()
    with pytest.raises(StoreError, match="MongoDB does not answer"):
        await store.ping()
    with pytest.raises(StoreError, match="cannot create user"):
        await store.create_user("alice", "hash", "rider")
    client.reachable = True
    await store.create_user("alice", "hash", "rider")
    with pytest.raises(UsernameTaken):
        await store.create_user("ALICE", "hash", "rider")
    await store.ping()
    assert "username_key" in client.sync["taxi"]["users"].index_information()
    await store.close()


@pytest.mark.parametrize("url", [
    "mongodb://",
    "mongodb://127.0.0.1:99999/taxi",
    "mongodb://127.0.0.1:27017",
    "mongodb://127.0.0.1:27017/",
    "mongodb://127.0.0.1:27017/?replicaSet=rs0",
])
def test_malformed_url_fails_at_construction_naming_the_setting(url: str) -> None:
    with pytest.raises(StoreError, match=r"^store\.url: ") as caught:
        open_store(url)
    assert "\n" not in str(caught.value)


def test_database_is_named_by_the_url_path() -> None:
    store = MongoStore("mongodb://user:pass@127.0.0.1:27017/fleet?authSource=admin")
    assert store.database_name == "fleet"


async def test_unreachable_server_leaves_open_running_and_ping_failing() -> None:
    store = MongoStore(unreachable_url())
    started = time.monotonic()
    await store.open()  # logs instead of raising
    try:
        assert time.monotonic() - started < 10, "open() waited far past the selection timeout"
        with pytest.raises(StoreError, match="MongoDB does not answer"):
            await store.ping()
    finally:
        await store.close()


async def test_server_with_unreachable_mongodb_runs_and_is_not_ready(
    tmp_path: Path, start: Callable[..., Awaitable[RunningServer]],
) -> None:
    running = await start(make_settings(tmp_path, store={"url": unreachable_url()}))
    status, body, _ = await running.fetch("/healthz")
    assert status == 200
    status, body, _ = await running.fetch("/readyz")
    assert status == 503
    assert "MongoDB does not answer" in body["failures"]["store"]


def unreachable_url() -> str:
    """A MongoDB URL on a port where nothing listens, with a short selection timeout."""
    return f"mongodb://127.0.0.1:{free_port()}/taxi?serverSelectionTimeoutMS=300"


@pytest.mark.mongomock
async def test_users_stored_before_compatibility_folding_get_the_new_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Documents written when usernames were only case-folded: once the store reaches
    the server, each fullwidth name takes its folded key unless another user holds it."""
    client = AsyncMockClient()
    users = client.sync["taxi"]["users"]
    users.insert_one({"_id": "u-jane1", "username": "jane", "username_key": "jane",
                      "group": "rider", "password_hash": "hash"})
    for user_id, name in (("u-john", "\uff4a\uff4f\uff48\uff4e"),
                          ("u-jane2", "\uff4a\uff41\uff4e\uff45")):
        users.insert_one({"_id": user_id, "username": name, "username_key": name.casefold(),
                          "group": "rider", "password_hash": "hash"})
    store = MongoStore("mongodb://mongomock.invalid/taxi", client=client)  # type: ignore[arg-type]
    await store.open()
    john = await store.get_user_by_username("John")
    assert john is not None and john.id == "u-john"
    jane = await store.get_user_by_username("jane")
    assert jane is not None and jane.id == "u-jane1"
    assert "folds to the name of another user" in caplog.text
    await store.close()
