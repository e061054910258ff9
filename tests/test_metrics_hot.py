"""The per-frame series (HotCounter, HotHistogram) read on /metrics exactly as
prometheus_client's own Counter and Histogram would with the same counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from taxi_tornado import metrics

BUCKETS = (0, 0.0005, 0.001, 0.25, 1, 2.5, 10000)
OBSERVED = [0, 0.0001, 0.0005, 0.0005001, 0.3, 1, 2.5, 2.6, 99999, -1]


def exposition(collector: object, name: str) -> list[str]:
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith(name) and "_created" not in line]


def test_hot_histogram_reads_like_a_prometheus_histogram() -> None:
    reference = Histogram("spread", "d", ["type"], buckets=BUCKETS, registry=None)
    hot = metrics.HotHistogram("spread", "d", ["type"], BUCKETS, register=False)
    for value in OBSERVED:
        for label in ("a", "b"):
            reference.labels(label).observe(value)
            hot.labels(label).observe(value)
    assert exposition(hot, "spread") == exposition(reference, "spread")


def test_hot_counter_reads_like_a_prometheus_counter() -> None:
    reference = Counter("seen", "d", ["type"], registry=None)
    hot = metrics.HotCounter("seen", "d", "type", register=False)
    for label, amount in [("x", 1), ("y", 2.5), ("x", 3)]:
        reference.labels(label).inc(amount)
        hot.labels(label).inc(amount)
    assert exposition(hot, "seen") == exposition(reference, "seen")
