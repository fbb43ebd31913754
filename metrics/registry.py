"""Every Prometheus metric railguard exports, defined in one table.

Labels are bounded by construction: config ids and rail names come from the config
folder, models pass through `ModelLabels`, outcomes and verdicts are fixed sets.
Never put user text, keys, thread ids or request ids in a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
RAIL_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)

REQUESTS = Counter(
    "railguard_requests",
    "Requests answered, by route, config, model, streaming and outcome.",
    ["route", "config_id", "model", "stream", "outcome"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "railguard_request_duration_seconds",
    "Time from request received to response finished.",
    ["route", "stream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge("railguard_in_flight_requests", "Requests being handled now.", registry=REGISTRY)
RAIL_CHECKS = Counter(
    "railguard_rail_checks",
    "Rail checks run, by verdict (pass, block, modify, error, timeout).",
    ["config_id", "rail", "stage", "verdict"],
    registry=REGISTRY,
)
RAIL_DURATION = Histogram(
    "railguard_rail_duration_seconds",
    "Time one rail took for one check.",
    ["config_id", "rail", "stage"],
    buckets=RAIL_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "railguard_upstream_duration_seconds",
    "Time the upstream took to answer (streams: to the last event).",
    ["upstream", "model", "stream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STREAM_HOLDBACK = Histogram(
    "railguard_stream_holdback_seconds",
    "How long streamed events were held for output rails, per release (one window).",
    buckets=RAIL_BUCKETS,
    registry=REGISTRY,
)
STREAM_TERMINATIONS = Counter(
    "railguard_stream_terminations",
    "How streams ended: completed, blocked, upstream_error, client_disconnect, limit.",
    ["reason"],
    registry=REGISTRY,
)
THREAD_STORE_ERRORS = Counter(
    "railguard_thread_store_errors",
    "Thread store operations that failed, so the request got a 503: by store (memory, redis), "
    "operation (load, append) and reason (timeout, unavailable, error).",
    ["store", "operation", "reason"],
    registry=REGISTRY,
)
THREAD_STORE_DURATION = Histogram(
    "railguard_thread_store_duration_seconds",
    "Time one thread store operation took (load before the rails, append after the answer).",
    ["store", "operation"],
    buckets=RAIL_BUCKETS,
    registry=REGISTRY,
)
