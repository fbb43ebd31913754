"""Batched metric updates: after a flush, exactly what direct updates would have given."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from metrics.batch import flush, stand_in

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def pair(kind: type, **kwargs: Any) -> tuple[CollectorRegistry, CollectorRegistry, Any, Any]:
    """The same metric in two registries: one updated directly, one through a stand-in."""
    direct, batched = CollectorRegistry(), CollectorRegistry()
    a = kind("m", "help", ["l"], registry=direct, **kwargs)
    b = kind("m", "help", ["l"], registry=batched, **kwargs)
    return direct, batched, a.labels("x"), stand_in(b.labels("x"))


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, s.labels, s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def test_histogram_observations_land_in_the_same_buckets_with_the_same_sum() -> None:
    direct, batched, a, b = pair(Histogram, buckets=BUCKETS)
    rng = random.Random(5)
    values = [0.001, 0.01, 0.1, 1.0, 0.0, 2.5] + [rng.expovariate(20) for _ in range(500)]
    for value in values:
        a.observe(value)
        b.observe(value)
    assert samples(batched) != samples(direct)  # nothing reaches prometheus-client before
    flush()
    got, want = samples(batched), samples(direct)
    assert [(n, labels) for n, labels, _ in got] == [(n, labels) for n, labels, _ in want]
    assert [v for *_, v in got] == pytest.approx([v for *_, v in want])
    for value in values[:10]:  # a second round adds to the first
        a.observe(value)
        b.observe(value)
    flush()
    assert [v for *_, v in samples(batched)] == pytest.approx([v for *_, v in samples(direct)])


def test_counter_steps_add_up_and_refuse_to_go_down() -> None:
    direct, batched, a, b = pair(Counter)
    for amount in (1, 1, 2.5, 0, 40):
        a.inc(amount)
        b.inc(amount)
    flush()
    assert samples(batched) == samples(direct)
    with pytest.raises(ValueError):
        b.inc(-1)


def test_one_stand_in_per_child_and_gauges_are_left_alone() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "help", ["l"], registry=registry)
    assert stand_in(counter.labels("x")) is stand_in(counter.labels("x"))
    gauge = Gauge("g", "help", registry=registry)
    assert stand_in(gauge) is gauge


def test_the_served_metrics_include_what_was_batched() -> None:
    from metrics import REQUESTS, Children, exposition

    children = Children(REQUESTS)
    before = exposition().decode()
    children("chat", "batch-test", "m", "false", "passed").inc()
    children("chat", "batch-test", "m", "false", "passed").inc()
    line = (
        'railguard_requests_total{config_id="batch-test",model="m",outcome="passed",'
        'route="chat",stream="false"} 2.0'
    )
    assert line not in before
    assert line in exposition().decode()
