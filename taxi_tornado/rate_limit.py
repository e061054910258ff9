"""A budget of requests per minute for each client address, in bounded memory.

Log-in, sign-up and token refresh share one (`limits.auth_rate`): each request takes one
token from its address's bucket, which holds at most a minute's worth and refills
evenly. The table of addresses is bounded: past MAX_ADDRESSES the address seen least
recently is forgotten, so an attacker with many addresses cannot grow it without end
(forgetting gives that address a fresh budget, which an attacker with that many
addresses has anyway). An IPv6 client counts by its /64 network, the block one
subscriber is usually given: one host can use any address in it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_ADDRESSES = 10_000


class AddressRateLimit:
    """`per_minute` requests a minute per address, with a burst of as many; 0 = off.
    `clock` (seconds, monotonic) is there for tests that let an hour pass at once."""

    def __init__(self, per_minute: int, max_addresses: int = MAX_ADDRESSES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._clock = clock
        self._per_second = per_minute / 60
        # address -> (tokens, when they were counted); oldest use first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> int:
        """Spend one request of `address`: 0 when allowed, else the seconds to wait."""
        if self.per_minute <= 0:
            return 0
        address = client_key(address)
        now = self._clock()
        tokens, stamp = self._buckets.pop(address, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - stamp) * self._per_second)
        wait = 0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = max(1, math.ceil((1 - tokens) / self._per_second))
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return wait


def client_key(address: str) -> str:
    """The budget an address spends from: itself, or for IPv6 its /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one token a frame."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
