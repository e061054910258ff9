"""The one exception a request raises, so that an app handles server and link failures
in one `except` and tells them apart by `code`."""

from __future__ import annotations

from collections.abc import Mapping

from taxi_tornado.client.redact import redact

FieldErrors = Mapping[str, list[str]]


class TaxiError(Exception):
    """Why a request failed.

    `code` is the server's error code (`invalid`, `forbidden`, `conflict`, ...: the
    error frame's `data.code`) or one of the client's own:

    - `timeout`: no reply within the request's timeout, counted from the `request()` call;
    - `closed`: the client was closed (`close()`) before the reply;
    - `disconnected`: the link dropped before the reply of a request that is not safe to
      send twice (not a keyed type): it may or may not have been handled;
    - `queue_full`: the client is not connected and already holds `queue_limit`
      (default 100) requests waiting for a socket;
    - `too_big`: the server closed the link with 1009 while the request was in flight
      (a frame larger than it takes); it is not sent again;
    - `bad_token`: get_token() gave a string that is not a JWT once the whitespace
      around it is stripped (quotes around it, a character no subprotocol can carry):
      `connect()` raises it, and it comes as an "error" event.

    `detail` never holds a token: anything shaped like one is replaced by `<redacted>`.

    `errors` holds the field errors of an `invalid` reply (top-level field of `data` to
    its messages), and is empty otherwise. `retry_after` is the seconds a `rate_limited`
    reply asks to wait, when the server knows it.
    """

    def __init__(self, code: str, detail: str = "", errors: FieldErrors | None = None,
                 *, retry_after: float | None = None) -> None:
        detail = redact(detail)
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.errors: dict[str, list[str]] = dict(errors or {})
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"TaxiError({self.code!r}, {self.detail!r}, {self.errors!r})"
