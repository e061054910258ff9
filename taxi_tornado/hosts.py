"""Which Host headers the server answers: server.allowed_hosts, compared by name.

A URL the server writes (a user's photo) may be built from the request's Host and then
broadcast to other users, so a Host the operator did not allow is refused before any
handler runs (see handlers/base.py, HostRefused). Names compare in one form: lower
case, no port, no trailing dot, IPv6 addresses without brackets and compressed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Protocol

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
# A Host header: a name or IPv4 address, or a bracketed IPv6 address; then maybe a port.
HOST_HEADER = re.compile(
    r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?"
)


class HostSettings(Protocol):
    """What allowed_hosts reads of the server settings (settings.py imports this module,
    so it names the fields instead of the class)."""

    @property
    def allowed_hosts(self) -> Sequence[str]: ...

    @property
    def host(self) -> str: ...


def allowed_hosts(server: HostSettings) -> frozenset[str] | None:
    """The host names requests may carry; None when server.allowed_hosts has `*`."""
    entries = server.allowed_hosts or (*DEFAULT_HOSTS, server.host)
    if "*" in entries:
        return None
    names = (allowed_entry(entry) for entry in entries)
    return frozenset(name for name in names if name)


def host_name(host: str) -> str | None:
    """The name a Host header carries, in the compared form; None when it is malformed."""
    match = HOST_HEADER.fullmatch(host.lower())
    if match is None:
        return None
    if match["ipv6"] is not None:
        return _ipv6(match["ipv6"])
    return match["name"].removesuffix(".") or None


def allowed_entry(entry: str) -> str | None:
    """An allowed_hosts entry in the compared form; None when it is not a bare host name
    or address (a scheme, a port or a path in it)."""
    address = _ipv6(entry.removeprefix("[").removesuffix("]"))
    if address:
        return address
    if ":" in entry:
        return None
    return host_name(entry)


def _ipv6(text: str) -> str | None:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return None
