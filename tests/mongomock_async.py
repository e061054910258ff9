"""mongomock dressed as PyMongo's AsyncMongoClient, as far as MongoStore uses it.

Only for checking query semantics (filters, sorts, projections, unique indexes, the
compare-and-set filter of a claim) where no MongoDB runs. Every call yields to the event
loop first, so that concurrent coroutines interleave between operations the way they do
against a server; each operation itself runs whole, which is the atomicity a real
server guarantees for one `find_one_and_update` (mongomock cannot prove that part).
Setting `reachable = False` makes every call fail as PyMongo does when no server answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mongomock
from pymongo.errors import ServerSelectionTimeoutError


class AsyncMockClient:
    def __init__(self, client: mongomock.MongoClient | None = None) -> None:
        self.sync = client if client is not None else mongomock.MongoClient(tz_aware=True)
        self.reachable = True

    def __getitem__(self, name: str) -> AsyncMockDatabase:
        return AsyncMockDatabase(self.sync[name], self)

    def get_database(self, name: str) -> AsyncMockDatabase:
        return self[name]

    @property
    def admin(self) -> AsyncMockDatabase:
        return self["admin"]

    async def close(self) -> None:
        await asyncio.sleep(0)

    async def answer(self) -> None:
        """Let other coroutines run, then fail like PyMongo if the "server" is away."""
        await asyncio.sleep(0)
        if not self.reachable:
            raise ServerSelectionTimeoutError("mongomock: the server is unreachable")


class AsyncMockDatabase:
    def __init__(self, database: Any, client: AsyncMockClient) -> None:
        self.sync = database
        self.client = client

    def __getitem__(self, name: str) -> AsyncMockCollection:
        return AsyncMockCollection(self.sync[name], self.client)

    def get_collection(self, name: str) -> AsyncMockCollection:
        return self[name]

    async def command(self, command: str | dict[str, Any], **kwargs: Any) -> Any:
        await self.client.answer()
        return self.sync.command(command, **kwargs)


class AsyncMockCollection:
    def __init__(self, collection: Any, client: AsyncMockClient) -> None:
        self.sync = collection
        self.client = client

    def find(self, *args: Any, **kwargs: Any) -> AsyncMockCursor:
        return AsyncMockCursor(self.sync.find(*args, **kwargs), self.client)

    def __getattr__(self, name: str) -> Any:
        """insert_one, find_one, find_one_and_update, create_index, …: awaitable."""
        method = getattr(self.sync, name)
        if not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self.client.answer()
            return method(*args, **kwargs)

        return call


class AsyncMockCursor:
    def __init__(self, cursor: Any, client: AsyncMockClient) -> None:
        self.sync = cursor
        self.client = client

    def sort(self, *args: Any, **kwargs: Any) -> AsyncMockCursor:
        self.sync.sort(*args, **kwargs)
        return self

    def limit(self, count: int) -> AsyncMockCursor:
        self.sync.limit(count)
        return self

    async def to_list(self, length: int | None = None) -> list[Any]:
        await self.client.answer()
        documents = list(self.sync)
        return documents if length is None else documents[:length]

    def __aiter__(self) -> AsyncMockCursor:
        return self

    async def __anext__(self) -> Any:
        await self.client.answer()
        try:
            return next(self.sync)
        except StopIteration:
            raise StopAsyncIteration from None
