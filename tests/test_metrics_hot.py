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
            if name in line and "_created" not in line]


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


def test_an_unlabelled_hot_histogram_reads_zero_before_any_observation() -> None:
    reference = Histogram("fanout", "d", buckets=BUCKETS, registry=None)
    hot = metrics.HotHistogram("fanout", "d", (), BUCKETS, register=False)
    assert exposition(hot, "fanout") == exposition(reference, "fanout")


def test_a_label_that_is_no_string_is_counted_under_its_text() -> None:
    """A plugin's reply may carry `"type": 5`; /metrics must still render."""
    reference = Counter("odd", "d", ["type"], registry=None)
    hot = metrics.HotCounter("odd", "d", "type", register=False)
    for label in (5, "5", None):
        reference.labels(label).inc()
        hot.labels(label).inc()  # type: ignore[arg-type]
    assert exposition(hot, "odd") == exposition(reference, "odd")
