"""Sign-up (with a photo), log-in returning the JWT pair, refresh, and photo serving."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from taxi_tornado.auth import REFRESH, HashingBusy, InvalidToken, hash_password, verify_password
from taxi_tornado.handlers.base import (
    NOT_FOUND,
    TOKEN_INVALID,
    ApiError,
    ApiHandler,
    base_url,
    field_errors,
)
from taxi_tornado.store import GROUPS, UsernameTaken

REQUIRED = "This field is required."
USERNAME_TAKEN = "A user with that username already exists."
USERNAME_PATTERN = re.compile(r"[\w.@+-]+\Z")
MAX_NAME = 150
PASSWORD_MIN = 8
LOGIN_FAILED = {"detail": "No active account found with the given credentials"}
PHOTO_NAME = re.compile(r"[A-Za-z0-9_-]{8,64}\.(png|jpg|gif|webp)\Z")
PHOTO_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
HASHING_BUSY = {"detail": "The server is busy checking passwords; try again in a moment."}
T = TypeVar("T")


class AuthRateLimited(ApiHandler):
    """Log-in, sign-up and refresh share one budget per client address
    (`limits.auth_rate`), spent before any field is looked at or password hashed."""

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "POST":
            return
        wait = self.services.auth_rate.take(self.request.remote_ip or "")
        if wait:
            raise ApiError(
                429,
                {"detail": "Too many log-in, sign-up or token refresh requests from your "
                           f"address; try again in {wait} seconds."},
                {"Retry-After": str(wait)},
            )


async def password_work(work: Awaitable[T]) -> T:
    """Await a hash or a verification; a full hashing pool is a 429 to come back soon."""
    try:
        return await work
    except HashingBusy:
        raise ApiError(429, HASHING_BUSY, {"Retry-After": "1"}) from None


class SignUpHandler(AuthRateLimited):
    async def post(self) -> None:
        fields = self.body_fields()
        errors = validate_sign_up(fields)
        photo_bytes, photo_ext = self._photo(errors)
        if errors:
            raise field_errors(errors)
        store = self.services.store
        if await store.get_user_by_username(fields["username"]) is not None:
            raise field_errors({"username": [USERNAME_TAKEN]})
        photo = f"{secrets.token_urlsafe(18)}.{photo_ext}" if photo_bytes is not None else None
        try:
            user = await store.create_user(
                username=fields["username"],
                password_hash=await password_work(hash_password(fields["password1"])),
                group=fields["group"],
                first_name=fields.get("first_name") or "",
                last_name=fields.get("last_name") or "",
                photo=photo,
            )
        except UsernameTaken:
            raise field_errors({"username": [USERNAME_TAKEN]}) from None
        if photo is not None and photo_bytes is not None:
            # Only now that the user exists: a sign-up that fails leaves no file behind.
            await self._save_photo(photo, photo_bytes)
        self.write_json(user.to_json(base_url(self.request, self.services.settings.server)), 201)

    def _photo(self, errors: dict[str, list[str]]) -> tuple[bytes | None, str | None]:
        files = self.request.files.get("photo")
        if not files:
            return None, None
        body = files[0].body
        limit = self.services.settings.media.max_photo_bytes
        if len(body) > limit:
            errors["photo"] = [f"The photo is larger than {limit} bytes."]
            return None, None
        ext = image_type(body)
        if ext is None:
            errors["photo"] = [
                "Upload a valid image. The file you uploaded was either not an image or a "
                "corrupted image (JPEG, PNG, GIF or WebP)."
            ]
            return None, None
        return body, ext

    async def _save_photo(self, name: str, body: bytes) -> None:
        await asyncio.to_thread(_write_file, self.services.settings.photos_dir, name, body)


def _write_file(directory: Path, name: str, body: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(body)


def validate_sign_up(
    fields: dict[str, Any], groups: tuple[str, ...] = GROUPS
) -> dict[str, list[str]]:
    """Field errors for a sign-up body, in docs/protocol.md's words; empty when valid.

    `groups` are the groups allowed: sign-up's riders and drivers; the terminal's
    `createuser` also allows staff.
    """
    errors: dict[str, list[str]] = {}
    for name in ("username", "password1", "password2", "group"):
        value = fields.get(name)
        if not isinstance(value, str) or not value:
            errors[name] = [REQUIRED]
    for name in ("first_name", "last_name"):
        value = fields.get(name, "")
        if value is None:
            continue
        if not isinstance(value, str):
            errors[name] = ["Not a valid string."]
        elif len(value) > MAX_NAME:
            errors[name] = [f"Ensure this field has no more than {MAX_NAME} characters."]
    username = fields.get("username")
    if "username" not in errors:
        errors.update(_username_errors(username))
    password = fields.get("password1")
    if "password1" not in errors:
        errors.update(_password_errors(password))
    if "password2" not in errors and "password1" not in errors and password != fields["password2"]:
        errors["password2"] = ["Passwords must match."]
    group = fields.get("group")
    if "group" not in errors and group not in groups:
        errors["group"] = [f'"{group}" is not a valid choice.']
    return errors


def _username_errors(username: Any) -> dict[str, list[str]]:
    messages = []
    if len(username) > MAX_NAME:
        messages.append(f"Ensure this field has no more than {MAX_NAME} characters.")
    if not USERNAME_PATTERN.match(username):
        messages.append(
            "Enter a valid username. This value may contain only letters, numbers, "
            "and @/./+/-/_ characters."
        )
    return {"username": messages} if messages else {}


def _password_errors(password: Any) -> dict[str, list[str]]:
    messages = []
    if len(password) < PASSWORD_MIN:
        messages.append(
            f"This password is too short. It must contain at least {PASSWORD_MIN} characters."
        )
    if password.isdigit():
        messages.append("This password is entirely numeric.")
    return {"password1": messages} if messages else {}


def image_type(body: bytes) -> str | None:
    """The image's extension judged by its first bytes, never by its file name."""
    if body.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "webp"
    return None


class LogInHandler(AuthRateLimited):
    async def post(self) -> None:
        fields = self.body_fields()
        errors = {
            name: [REQUIRED]
            for name in ("username", "password")
            if not isinstance(fields.get(name), str) or not fields.get(name)
        }
        if errors:
            raise field_errors(errors)
        user = await self.services.store.get_user_by_username(fields["username"])
        password_hash = user.password_hash if user else None
        matches = await password_work(verify_password(password_hash, fields["password"]))
        if not matches or user is None:
            raise ApiError(401, LOGIN_FAILED)
        base = base_url(self.request, self.services.settings.server)
        self.write_json(self.services.tokens.issue_pair(user, base))


class RefreshHandler(AuthRateLimited):
    async def post(self) -> None:
        fields = self.body_fields(allow_multipart=False)
        token = fields.get("refresh")
        if not isinstance(token, str) or not token:
            raise field_errors({"refresh": [REQUIRED]})
        tokens = self.services.tokens
        try:
            claims = tokens.verify(token, REFRESH)
        except InvalidToken:
            raise ApiError(401, TOKEN_INVALID) from None
        user = await self.services.store.get_user(tokens.user_id(claims))
        if user is None:
            raise ApiError(401, TOKEN_INVALID)
        base = base_url(self.request, self.services.settings.server)
        self.write_json({"access": tokens.issue_access(user, base)})


class PhotoHandler(ApiHandler):
    """Serves sign-up photos; names are random and checked, so no path escapes."""

    async def get(self, name: str) -> None:
        match = PHOTO_NAME.match(name)
        if match is None:
            raise ApiError(404, NOT_FOUND)
        path = self.services.settings.photos_dir / name
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise ApiError(404, NOT_FOUND) from None
        self.set_header("Content-Type", PHOTO_TYPES[match.group(1)])
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish(body)
