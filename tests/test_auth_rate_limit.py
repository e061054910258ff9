"""The auth budget per address (taxi_tornado/rate_limit.py) on a clock the test moves:
the bucket refills evenly and never holds more than a minute's worth. Over HTTP, the
budget is in test_abuse.py."""

from __future__ import annotations

from taxi_tornado.rate_limit import AddressRateLimit

ADDRESS = "198.51.100.7"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_hour_refills_a_minutes_burst_and_no_more() -> None:
    clock = FakeClock()
    limit = AddressRateLimit(3, clock=clock)
    assert [limit.take(ADDRESS) for _ in range(3)] == [0, 0, 0]
    assert limit.take(ADDRESS) == 20  # one request each 20 s
    clock.now += 3600
    assert [limit.take(ADDRESS) for _ in range(3)] == [0, 0, 0]
    assert limit.take(ADDRESS) > 0  # an hour idle is still a burst of 3, not of 180


def test_budget_refills_evenly() -> None:
    clock = FakeClock()
    limit = AddressRateLimit(3, clock=clock)
    assert [limit.take(ADDRESS) for _ in range(4)] == [0, 0, 0, 20]
    clock.now += 19.9
    assert limit.take(ADDRESS) > 0
    clock.now += 0.2  # 20.1 s after the last token was spent
    assert limit.take(ADDRESS) == 0
    assert limit.take(ADDRESS) > 0
