"""The synthetic people's accounts: signed up once over the HTTP API and, with
`--accounts FILE`, kept with their tokens, so that a second run neither signs up again
nor (within an access token's life) logs in: a server's `limits.auth_rate` then costs a
run nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taxi_tornado.client import token_expiry
from taxi_tornado.simulate import api

#: Sign-ups and log-ins in flight at once (each hashes a password on the server).
CONCURRENCY = 4


@dataclass
class Account:
    username: str
    password: str
    group: str  # "rider" | "driver"
    id: str = ""
    access: str = ""
    refresh: str = ""


def new_password() -> str:
    """A random password sign-up takes: hex digits alone were all digits one time in about
    1,900, which sign-up refuses ("entirely numeric"), and a run of thirty accounts then
    failed now and then."""
    return "sim-" + secrets.token_hex(8)


async def prepare(base: str, drivers: int, riders: int, path: Path | None, server_key: str,
                  needed_for: float) -> tuple[list[Account], list[Account]]:
    """`drivers` and `riders` accounts with access tokens valid for `needed_for` more
    seconds: those in `path` (under `server_key`) first, new ones signed up for the
    rest; `path` is written back with all of them."""
    book = _load(path)
    kept = [Account(**entry) for entry in book.get(server_key, [])]
    tag = secrets.token_hex(3)
    wanted: list[Account] = []
    for group, count in (("driver", drivers), ("rider", riders)):
        mine = [account for account in kept if account.group == group][:count]
        mine += [Account(f"sim{group[0]}{index}-{tag}", new_password(), group)
                 for index in range(len(mine), count)]
        wanted += mine
    limit = asyncio.Semaphore(CONCURRENCY)

    async def ready(account: Account) -> None:
        async with limit:
            await _make_ready(base, account, needed_for)

    await asyncio.gather(*(ready(account) for account in wanted))
    if path is not None:
        names = {account.username for account in wanted}
        book[server_key] = [asdict(account) for account in wanted] + [
            asdict(account) for account in kept if account.username not in names]
        path.write_text(json.dumps(book, indent=1))
    return ([a for a in wanted if a.group == "driver"], [a for a in wanted if a.group == "rider"])


async def _make_ready(base: str, account: Account, needed_for: float) -> None:
    """A kept access token that lives long enough; else a refresh; else a log-in;
    and a sign-up first for an account this server does not know."""
    if _lives(account.access, needed_for):
        return
    if _lives(account.refresh, 60.0):
        try:
            account.access = await api.refresh(base, account.refresh)
            return
        except api.ApiError:
            pass
    try:
        account.access, account.refresh = await api.log_in(base, account.username,
                                                           account.password)
    except api.ApiError as error:
        if error.status != 401:
            raise
        user = await api.sign_up(base, account.username, account.password, account.group)
        account.id = str(user.get("id", ""))
        account.access, account.refresh = await api.log_in(base, account.username,
                                                           account.password)
    if not account.id:
        account.id = _claim_id(account.access)


def _lives(token: str, seconds: float) -> bool:
    exp = token_expiry(token) if token else None
    return exp is not None and exp > time.time() + seconds


def _claim_id(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("id", ""))


def _load(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    book = json.loads(path.read_text() or "{}")
    return book if isinstance(book, dict) else {}
