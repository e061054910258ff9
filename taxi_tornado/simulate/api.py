"""The HTTP side of the simulated phones: sign-up, log-in, token refresh and the trips
list, as an app calls them. A 429 (the server's `limits.auth_rate`) waits for its
Retry-After and tries again, so a run against a guarded server signs up slowly rather
than failing."""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from urllib.parse import quote

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: How many 429s in a row one call sits out before it gives up.
MAX_RATE_LIMITED = 60
PAGE = 100  # GET /api/trip/ answers at most this many


class ApiError(Exception):
    """A refused HTTP call: its status and JSON body."""

    def __init__(self, status: int, body: Any, where: str) -> None:
        super().__init__(f"{where}: HTTP {status} {body}")
        self.status = status
        self.body = body


async def sign_up(base: str, username: str, password: str, group: str) -> dict[str, Any]:
    user = await _call(base, "POST", "/api/sign_up/", {
        "username": username, "password1": password, "password2": password,
        "group": group, "first_name": "Sim", "last_name": username})
    return user if isinstance(user, dict) else {}


async def log_in(base: str, username: str, password: str) -> tuple[str, str]:
    """(access, refresh)."""
    pair = await _call(base, "POST", "/api/log_in/",
                       {"username": username, "password": password})
    return str(pair["access"]), str(pair["refresh"])


async def refresh(base: str, refresh_token: str) -> str:
    reply = await _call(base, "POST", "/api/token/refresh/", {"refresh": refresh_token})
    return str(reply["access"])


async def trips(base: str, token: str, since: str = "") -> list[dict[str, Any]]:
    """Every trip the user sees that was created after `since` (an RFC 3339 time, "" for
    all), following `?before=` past the first page."""
    found: list[dict[str, Any]] = []
    before = ""
    while True:
        path = "/api/trip/" + (f"?before={quote(before)}" if before else "")
        page = await _call(base, "GET", path, token=token)
        if not isinstance(page, list):
            return found
        fresh = [trip for trip in page if str(trip.get("created", "")) > since]
        found += fresh
        if len(page) < PAGE or len(fresh) < len(page):
            return found
        before = str(page[-1]["created"])


async def healthy(base: str) -> bool:
    try:
        await _call(base, "GET", "/healthz")
    except (ApiError, OSError):
        return False
    return True


async def _call(base: str, method: str, path: str, body: Any = None,
                token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = HTTPRequest(base.rstrip("/") + path, method=method, headers=headers,
                          body=orjson.dumps(body) if body is not None else None,
                          request_timeout=30.0)
    client = AsyncHTTPClient()
    for _ in range(MAX_RATE_LIMITED):
        try:
            response = await client.fetch(request)
        except HTTPClientError as error:
            if error.code == 429 and error.response is not None:
                wait = float(error.response.headers.get("Retry-After", "3") or 3)
                print(f"simulate: {path} is rate limited by the server (limits.auth_rate): "
                      f"waiting {wait:g} s", file=sys.stderr)
                await asyncio.sleep(wait)
                continue
            response_body = error.response.body if error.response is not None else b""
            raise ApiError(error.code, _json(response_body), f"{method} {path}") from None
        return _json(response.body)
    raise ApiError(429, "still rate limited", f"{method} {path}")


def _json(body: bytes | None) -> Any:
    try:
        return orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        return None
