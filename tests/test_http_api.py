"""The HTTP API over real HTTP: sign-up, log-in, refresh, photos, trips, hub publish."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from tests.conftest import PASSWORD, RunningServer, make_settings

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[
    bytes, str
]:
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, (filename, body, content_type) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
            + body + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


SIGN_UP = {"username": "user@example.com", "first_name": "Test", "last_name": "User",
           "password1": PASSWORD, "password2": PASSWORD, "group": "rider"}


async def sign_up_multipart(server: RunningServer, fields: dict[str, str],
                            photo: tuple[str, bytes, str] | None = None) -> tuple[int, Any]:
    body, content_type = multipart(fields, {"photo": photo} if photo else {})
    status, data, _ = await server.fetch("/api/sign_up/", "POST", raw_body=body,
                                         headers={"Content-Type": content_type})
    return status, data


def jwt_payload(token: str) -> dict[str, Any]:
    """Decoded as the course's test does: standard base64 with padding appended."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(f"{payload}=="))


# --- the course's test_http.py counterparts ---------------------------------------------

async def test_user_can_sign_up(server: RunningServer) -> None:
    status, data = await sign_up_multipart(server, SIGN_UP, ("photo.png", PNG, "image/png"))
    assert status == 201
    user = await server.store.get_user_by_username("user@example.com")
    assert data["id"] == user.id
    assert data["username"] == "user@example.com"
    assert data["first_name"] == "Test" and data["last_name"] == "User"
    assert data["group"] == "rider"
    assert user.photo is not None
    assert data["photo"] == f"{server.url}/media/photos/{user.photo}"


async def test_user_can_log_in(server: RunningServer) -> None:
    user, _ = await server.user("user@example.com")
    status, data, _ = await server.fetch("/api/log_in/", "POST",
                                         body={"username": "user@example.com",
                                               "password": PASSWORD})
    assert status == 200
    assert data["refresh"]
    claims = jwt_payload(data["access"])
    assert claims["id"] == user.id
    assert claims["username"] == "user@example.com"
    assert claims["first_name"] == "" and claims["last_name"] == ""
    assert claims["group"] == "rider" and claims["token_type"] == "access"
    assert {"exp", "iat", "jti", "photo"} <= set(claims)


async def test_user_can_list_trips(server: RunningServer) -> None:
    user, token = await server.user("user@example.com")
    other, _ = await server.user("other@example.com")
    first = await server.store.create_trip(user.id, "A", "B")
    second = await server.store.create_trip(user.id, "B", "C")
    await server.store.create_trip(other.id, "C", "D")
    status, data, _ = await server.fetch("/api/trip/", token=token)
    assert status == 200
    assert [trip["id"] for trip in data] == [second.id, first.id]  # newest first


async def test_user_can_retrieve_trip_by_id(server: RunningServer) -> None:
    user, token = await server.user("user@example.com")
    trip = await server.store.create_trip(user.id, "A", "B")
    status, data, _ = await server.fetch(f"/api/trip/{trip.id}/", token=token)
    assert status == 200
    assert data["id"] == trip.id
    assert data["status"] == "REQUESTED" and data["rider"]["id"] == user.id
    assert data["created"].endswith("Z") and len(data["created"]) == 27


# --- sign-up rules -------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"username": ""}, "username", "This field is required."),
    ({"username": "a b"}, "username", "Enter a valid username."),
    ({"username": "x" * 151}, "username", "no more than 150 characters"),
    ({"password1": "short1!", "password2": "short1!"}, "password1", "too short"),
    ({"password1": "12345678901", "password2": "12345678901"}, "password1",
     "entirely numeric"),
    ({"password2": "different!"}, "password2", "Passwords must match."),
    ({"group": "pilot"}, "group", '"pilot" is not a valid choice.'),
    ({"group": ""}, "group", "This field is required."),
    ({"first_name": "x" * 151}, "first_name", "no more than 150 characters"),
    ({"last_name": "x" * 151}, "last_name", "no more than 150 characters"),
])
async def test_sign_up_validation(server: RunningServer, changes: dict[str, str], field: str,
                                  message: str) -> None:
    status, data, _ = await server.fetch("/api/sign_up/", "POST", body={**SIGN_UP, **changes})
    assert status == 400
    assert any(message in text for text in data[field]), data
    assert await server.store.get_user_by_username(SIGN_UP["username"]) is None


async def test_sign_up_missing_fields_all_reported(server: RunningServer) -> None:
    status, data, _ = await server.fetch("/api/sign_up/", "POST", body={})
    assert status == 400
    for field in ("username", "password1", "password2", "group"):
        assert data[field] == ["This field is required."]


async def test_username_unique_ignoring_case(server: RunningServer) -> None:
    assert (await server.fetch("/api/sign_up/", "POST", body=SIGN_UP))[0] == 201
    status, data, _ = await server.fetch("/api/sign_up/", "POST",
                                         body={**SIGN_UP, "username": "USER@example.com"})
    assert status == 400
    assert data == {"username": ["A user with that username already exists."]}


async def test_sign_up_urlencoded(server: RunningServer) -> None:
    from urllib.parse import urlencode
    status, data, _ = await server.fetch(
        "/api/sign_up/", "POST", raw_body=urlencode({**SIGN_UP, "group": "driver"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201 and data["group"] == "driver" and data["photo"] is None


async def test_photo_judged_by_bytes_not_name(server: RunningServer) -> None:
    status, data = await sign_up_multipart(server, SIGN_UP,
                                           ("photo.png", b"<html>not an image</html>",
                                            "image/png"))
    assert status == 400 and "photo" in data


async def test_photo_over_limit_is_refused(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    running = await start(make_settings(tmp_path, media={"max_photo_bytes": 100}))
    status, data = await sign_up_multipart(running, SIGN_UP,
                                           ("p.png", PNG + b"\0" * 200, "image/png"))
    assert status == 400 and "photo" in data


async def test_photo_served_with_type_and_nosniff(server: RunningServer) -> None:
    gif = b"GIF89a" + b"\0" * 20
    status, data = await sign_up_multipart(server, SIGN_UP, ("evil.html", gif, "text/html"))
    assert status == 201
    path = data["photo"].removeprefix(server.url)
    assert path.endswith(".gif")
    status, _, response = await server.fetch(path)
    assert status == 200
    assert response.headers["Content-Type"] == "image/gif"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.body == gif


async def test_missing_photo_and_traversal_are_404_json(server: RunningServer) -> None:
    for path in ("/media/photos/nope.png", "/media/photos/..%2Fsecret_key"):
        status, data, _ = await server.fetch(path)
        assert status == 404 and data == {"detail": "Not found."}


async def test_photo_url_honours_forwarded_proto_with_xheaders(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    running = await start(make_settings(tmp_path, server={
        "port": 0, "xheaders": True, "allowed_hosts": ("taxi.example.com",)}))
    body, content_type = multipart(SIGN_UP, {"photo": ("p.png", PNG, "image/png")})
    status, data, _ = await running.fetch(
        "/api/sign_up/", "POST", raw_body=body,
        headers={"Content-Type": content_type, "X-Forwarded-Proto": "https",
                 "Host": "taxi.example.com"})
    assert status == 201
    assert data["photo"].startswith("https://taxi.example.com/media/photos/")


async def test_unsupported_media_type_is_415(server: RunningServer) -> None:
    status, data, _ = await server.fetch("/api/sign_up/", "POST", raw_body=b"hello",
                                         headers={"Content-Type": "text/plain"})
    assert status == 415 and "text/plain" in data["detail"]


async def test_malformed_json_body_is_400(server: RunningServer) -> None:
    status, data, _ = await server.fetch("/api/log_in/", "POST", raw_body=b"{nope",
                                         headers={"Content-Type": "application/json"})
    assert status == 400 and "detail" in data


# --- log-in and tokens ---------------------------------------------------------------------

async def test_log_in_wrong_password_or_user_is_401(server: RunningServer) -> None:
    await server.user("user@example.com")
    for body in ({"username": "user@example.com", "password": "wrong-password"},
                 {"username": "nobody", "password": PASSWORD}):
        status, data, _ = await server.fetch("/api/log_in/", "POST", body=body)
        assert status == 401
        assert data == {"detail": "No active account found with the given credentials"}


async def test_log_in_is_case_insensitive_and_urlencoded(server: RunningServer) -> None:
    await server.user("User@Example.com")
    status, data, _ = await server.fetch(
        "/api/log_in/", "POST", raw_body=f"username=user%40example.com&password={PASSWORD}"
        .replace("!", "%21").encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and data["access"]


async def test_log_in_missing_fields_is_400(server: RunningServer) -> None:
    status, data, _ = await server.fetch("/api/log_in/", "POST", body={"username": "x"})
    assert status == 400 and data == {"password": ["This field is required."]}


async def test_refresh_gives_new_access_token(server: RunningServer) -> None:
    user, _ = await server.user("user@example.com")
    refresh = server.tokens.issue_refresh(user.id)
    status, data, _ = await server.fetch("/api/token/refresh/", "POST", body={"refresh": refresh})
    assert status == 200
    access = data["access"]
    assert jwt_payload(access)["token_type"] == "access"
    status, _, _ = await server.fetch("/api/trip/", token=access)
    assert status == 200


async def test_refresh_refuses_access_token_and_garbage(server: RunningServer) -> None:
    _, access = await server.user("user@example.com")
    for token in (access, "garbage"):
        status, data, _ = await server.fetch("/api/token/refresh/", "POST",
                                             body={"refresh": token})
        assert status == 401
        assert data == {"detail": "Token is invalid or expired", "code": "token_not_valid"}


async def test_refresh_token_cannot_call_api(server: RunningServer) -> None:
    user, _ = await server.user("user@example.com")
    status, data, _ = await server.fetch("/api/trip/",
                                         token=server.tokens.issue_refresh(user.id))
    assert status == 401 and data["code"] == "token_not_valid"


async def test_trips_without_token_is_401(server: RunningServer) -> None:
    status, data, _ = await server.fetch("/api/trip/")
    assert status == 401 and data["code"] == "token_not_valid"


# --- trip visibility -------------------------------------------------------------------------

async def test_driver_sees_requested_and_own_trips_only(server: RunningServer) -> None:
    rider, rider_token = await server.user("rider")
    driver, driver_token = await server.user("driver", "driver")
    other, _ = await server.user("other-driver", "driver")
    requested = await server.store.create_trip(rider.id, "A", "B")
    mine = await server.store.create_trip(rider.id, "C", "D")
    theirs = await server.store.create_trip(rider.id, "E", "F")
    await server.assign(mine.id, "STARTED", driver.id)
    await server.assign(theirs.id, "STARTED", other.id)
    _, data, _ = await server.fetch("/api/trip/", token=driver_token)
    assert {trip["id"] for trip in data} == {requested.id, mine.id}
    status, _, _ = await server.fetch(f"/api/trip/{theirs.id}/", token=driver_token)
    assert status == 404
    status, data, _ = await server.fetch(f"/api/trip/{mine.id}/", token=driver_token)
    assert status == 200 and data["driver"]["id"] == driver.id
    _, data, _ = await server.fetch("/api/trip/", token=rider_token)
    assert len(data) == 3


async def test_other_riders_trip_is_404(server: RunningServer) -> None:
    rider, _ = await server.user("rider")
    _, other_token = await server.user("other")
    trip = await server.store.create_trip(rider.id, "A", "B")
    for path in (f"/api/trip/{trip.id}/", "/api/trip/not-a-uuid/"):
        status, data, _ = await server.fetch(path, token=other_token)
        assert status == 404 and data == {"detail": "Not found."}


# --- errors are JSON, CORS -------------------------------------------------------------------

async def test_unknown_path_and_wrong_method_are_json(server: RunningServer) -> None:
    status, data, response = await server.fetch("/no/such/path")
    assert status == 404 and data == {"detail": "Not found."}
    status, data, response = await server.fetch("/api/log_in/", "GET")
    assert status == 405 and "detail" in data
    assert b"<html" not in response.body.lower()


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/api/log_in/", "POST"),
    ("DELETE", "/api/trip/", "GET"),
    ("PUT", "/api/trip/0b9c8a52-6f0e-4c2a-9d0e-1f2a3b4c5d6e/", "GET"),
    ("POST", "/healthz", "GET"),
    ("PATCH", "/api/hub/publish/", "POST"),
    ("BREW", "/api/token/refresh/", "POST"),  # a method Tornado does not know at all
])
async def test_wrong_method_on_a_core_path_is_405_naming_it_with_allow(
    server: RunningServer, method: str, path: str, allowed: str,
) -> None:
    status, data, response = await server.fetch(path, method)
    assert (status, data) == (405, {"detail": f'Method "{method}" not allowed.'})
    assert response.headers["Allow"] == allowed
    assert response.headers["Content-Type"] == "application/json"


async def test_cors_preflight_for_allowed_origin(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    origin = "http://localhost:3000"
    running = await start(make_settings(tmp_path, server={"port": 0,
                                                          "allowed_origins": (origin,)}))
    status, _, response = await running.fetch("/api/log_in/", "OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 204
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    status, _, response = await running.fetch("/api/trip/", headers={"Origin": origin})
    assert status == 401
    assert response.headers["Access-Control-Allow-Origin"] == origin
    status, _, response = await running.fetch("/api/trip/",
                                              headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    status, data, response = await running.fetch("/api/log_in/", "OPTIONS", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert (status, data) == (403, {"detail": "Origin not allowed."})
    assert "Access-Control-Allow-Origin" not in response.headers


# --- hub publish API and health ------------------------------------------------------------

async def test_hub_publish_reaches_group_verbatim(tmp_path, start) -> None:  # type: ignore[no-untyped-def]
    running = await start(make_settings(tmp_path, hub={"api_key": "k3y"}))
    _, token = await running.user("driver", "driver")
    client = await running.connect(token)
    message = {"type": "promo.notice", "data": {"text": "surge ends"}, "extra": [1]}
    status, data, _ = await running.fetch("/api/hub/publish/", "POST",
                                          body={"group": "drivers", "message": message},
                                          headers={"Authorization": "Apikey k3y"})
    assert status == 202 and data == {}
    assert await client.receive() == message


async def test_hub_publish_wrong_key_403_and_unset_key_404(tmp_path, start, server) -> None:  # type: ignore[no-untyped-def]
    body = {"group": "drivers", "message": {"type": "x"}}
    status, _, _ = await server.fetch("/api/hub/publish/", "POST", body=body,
                                      headers={"Authorization": "Apikey anything"})
    assert status == 404
    running = await start(make_settings(tmp_path, hub={"api_key": "k3y"}))
    status, data, _ = await running.fetch("/api/hub/publish/", "POST", body=body,
                                          headers={"Authorization": "Apikey wrong"})
    assert status == 403 and "detail" in data
    status, data, _ = await running.fetch("/api/hub/publish/", "POST",
                                          body={"group": "", "message": "x"},
                                          headers={"Authorization": "Apikey k3y"})
    assert status == 400 and set(data) == {"group", "message"}


async def test_health_and_ready(server: RunningServer) -> None:
    assert (await server.fetch("/healthz"))[:2] == (200, {"status": "ok"})
    assert (await server.fetch("/readyz"))[:2] == (200, {"status": "ok"})
    await server.store.close()
    status, data, _ = await server.fetch("/readyz")
    assert status == 503 and "store" in data["failures"]
    await server.store.open()
