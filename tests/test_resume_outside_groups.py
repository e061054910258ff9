"""`session.resume` replays only the groups the socket is in (PROTOCOL.md, Sessions), on
the memory hub and on Redis: a position of another user's group, with that group's real
epoch, replays nothing of it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from taxi_tornado.settings import Settings
from tests.conftest import Client, RunningServer, make_settings
from tests.redis_server import SHARED_REDIS

Start = Callable[[Settings], Awaitable[RunningServer]]


@pytest.fixture(params=["memory", "redis"])
async def any_hub(request: pytest.FixtureRequest, tmp_path: Path,
                  start: Start) -> RunningServer:
    if request.param == "memory":
        return await start(make_settings(tmp_path))
    return await start(make_settings(tmp_path, hub={
        "url": SHARED_REDIS, "prefix": f"test-{uuid.uuid4().hex[:12]}"}))


async def resume(client: Client, positions: Any) -> Any:
    return await client.request({"type": "session.resume", "data": {"positions": positions}})


async def test_resume_of_a_group_the_socket_is_not_in_replays_nothing_even_with_its_epoch(
    any_hub: RunningServer,
) -> None:
    owner_user, owner_token = await any_hub.user("owner", "driver")
    _, stranger_token = await any_hub.user("stranger", "driver")
    owner = await any_hub.connect(owner_token, v2=True)
    stranger = await any_hub.connect(stranger_token, v2=True)
    group = f"user:{owner_user.id}"
    for number in (1, 2):
        await any_hub.hub.send(group, {"type": "private.note", "data": number})
    first = await owner.receive()
    assert (await owner.receive())["data"] == 2
    assert first["pos"]["group"] == group and first["pos"]["offset"] == 1
    start_of_history = {group: {"offset": 0, "epoch": first["pos"]["epoch"]}}

    # The owner's socket, which is in the group, recovers from this very position...
    reply = await resume(owner, start_of_history)
    assert reply["data"]["groups"][group]["recovered"] is True
    # ...a socket that is not in it does not, and hears none of the group's events.
    reply = await resume(stranger, start_of_history)
    assert reply["data"] == {"groups": {group: {"recovered": False, "missed": 0}}}
    await stranger.nothing()
