"""Every Prometheus metric railguard exports, defined in one table.

Labels are bounded by construction: config ids and rail names come from the config
folder, models pass through `ModelLabels`, outcomes and verdicts are fixed sets.
Never put user text, keys, thread ids or request ids in a label.

With `--workers N` (N > 1) the CLI sets `PROMETHEUS_MULTIPROC_DIR` before this module is
imported, so every value lives in a per-process file and `exposition()` merges them
(prometheus-client's multiprocess mode). Gauges say how to merge (`multiprocess_mode`).
`RAILGUARD_METRICS=off` (`--no-metrics`) makes every metric a no-op, to measure what
recording costs.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from metrics.batch import flush, stand_in

ENABLED = os.environ.get("RAILGUARD_METRICS", "on").strip().lower() != "off"
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None

REGISTRY = CollectorRegistry(auto_describe=True)
BATCHED = ENABLED and MULTIPROCESS_DIR is None  # see metrics/batch.py

if MULTIPROCESS_DIR is not None:
    # prometheus-client asks os.getpid() (a system call) on every update to notice a fork;
    # the pid is kept here instead and renewed in each forked child.
    _pid = os.getpid()

    def _renew_pid() -> None:
        global _pid
        _pid = os.getpid()

    os.register_at_fork(after_in_child=_renew_pid)
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _pid)

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
# railguard's own time: fine around the 1 ms (p50) and 3 ms (p99) budgets
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.1,
    1,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _Null:
    """A metric that records nothing (`RAILGUARD_METRICS=off`)."""

    def labels(self, *values: Any, **kw: Any) -> _Null:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass


M = TypeVar("M", Counter, Gauge, Histogram)


def _metric(cls: type[M], *args: Any, **kwargs: Any) -> M:
    if not ENABLED:
        return cast(M, _Null())
    kwargs["registry"] = REGISTRY
    return cls(*args, **kwargs)


# --- traffic ----------------------------------------------------------------------------

REQUESTS = _metric(
    Counter,
    "railguard_requests",
    "Requests answered, by route, config, model, streaming and outcome (passed, "
    "blocked_input, blocked_output, modified, rail_error, upstream_error, "
    "thread_store_error, client_error).",
    ["route", "config_id", "model", "stream", "outcome"],
)
REQUEST_DURATION = _metric(
    Histogram,
    "railguard_request_duration_seconds",
    "Time from request received to response finished.",
    ["route", "stream"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = _metric(
    Gauge,
    "railguard_in_flight_requests",
    "Requests being handled now.",
    multiprocess_mode="livesum",
)

# --- the latency split ------------------------------------------------------------------

PROXY_OVERHEAD = _metric(
    Histogram,
    "railguard_proxy_overhead_seconds",
    "railguard's own time per request: the handler's time minus waiting for the upstream "
    "and for rails (streams: to the last event).",
    ["route", "stream"],
    buckets=OVERHEAD_BUCKETS,
)
RAILS_ADDED = _metric(
    Histogram,
    "railguard_rails_added_seconds",
    "Time a request waited for its rails, per stage (input, output), when rails ran.",
    ["stage"],
    buckets=RAIL_BUCKETS,
)
UPSTREAM_DURATION = _metric(
    Histogram,
    "railguard_upstream_duration_seconds",
    "Time the upstream took to answer (streams: to the last event).",
    ["upstream", "model", "stream"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_FIRST_CHUNK = _metric(
    Histogram,
    "railguard_upstream_time_to_first_chunk_seconds",
    "Streams: from the upstream request sent to its first bytes of answer.",
    ["upstream", "model"],
    buckets=LATENCY_BUCKETS,
)
FIRST_CHUNK = _metric(
    Histogram,
    "railguard_time_to_first_chunk_seconds",
    "Streams the upstream answered: from request received to the first event written to "
    "the client (what the client sees).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)

# --- rails ------------------------------------------------------------------------------

RAIL_CHECKS = _metric(
    Counter,
    "railguard_rail_checks",
    "Rail checks, by verdict (pass, block, modify, error, timeout; skipped: not run "
    "because an earlier rail of the stage blocked).",
    ["config_id", "rail", "stage", "verdict"],
)
RAIL_DURATION = _metric(
    Histogram,
    "railguard_rail_duration_seconds",
    "Time one rail took for one check.",
    ["config_id", "rail", "stage"],
    buckets=RAIL_BUCKETS,
)
RAIL_ERRORS = _metric(
    Counter,
    "railguard_rail_errors",
    "Rail checks that failed and were decided by the rail's on_error policy (allow: the "
    "request went on unchecked by that rail; block: it was refused), by error type "
    "(timeout, upstream_unreachable, upstream_timeout, upstream_status, "
    "upstream_bad_response, upstream_error, exception).",
    ["config_id", "rail", "stage", "error_type", "policy"],
)

# --- streaming --------------------------------------------------------------------------

STREAM_HOLDBACK = _metric(
    Histogram,
    "railguard_stream_holdback_seconds",
    "How long streamed events were held for output rails, per release (one window).",
    buckets=RAIL_BUCKETS,
)
STREAM_TERMINATIONS = _metric(
    Counter,
    "railguard_stream_terminations",
    "How streams ended: completed, blocked, upstream_error, client_disconnect, limit.",
    ["reason"],
)

# --- tokens, threads --------------------------------------------------------------------

TOKENS = _metric(
    Counter,
    "railguard_tokens",
    "Tokens the upstream reported in its `usage` for main calls, by model and type "
    "(prompt, completion); streams only when the upstream sends usage.",
    ["model", "type"],
)
THREAD_STORE_ERRORS = _metric(
    Counter,
    "railguard_thread_store_errors",
    "Thread store operations that failed, so the request got a 503: by store (memory, redis), "
    "operation (load, append) and reason (timeout, unavailable, error).",
    ["store", "operation", "reason"],
)
THREAD_STORE_DURATION = _metric(
    Histogram,
    "railguard_thread_store_duration_seconds",
    "Time one thread store operation took (load before the rails, append after the answer).",
    ["store", "operation"],
    buckets=RAIL_BUCKETS,
)

# --- runtime ----------------------------------------------------------------------------

CONFIG_INFO = _metric(
    Gauge,
    "railguard_config_info",
    "1 for each loaded config, with a digest of its content (changes when the config does).",
    ["config_id", "digest"],
    multiprocess_mode="max",
)
BUILD_INFO = _metric(
    Gauge,
    "railguard_build_info",
    "1, with railguard's version and the Python version it runs on.",
    ["version", "python"],
    multiprocess_mode="max",
)
EVENT_LOOP_LAG = _metric(
    Histogram,
    "railguard_event_loop_lag_seconds",
    "How late the event loop ran a timer (sampled every 0.25 s): time it spent busy on "
    "something that should not block it.",
    buckets=LAG_BUCKETS,
)

_merged: CollectorRegistry | None = None


def exposition() -> bytes:
    """The text `/metrics` serves: this process's metrics, or every worker's, merged."""
    global _merged
    if MULTIPROCESS_DIR is None:
        flush()
        return generate_latest(REGISTRY)
    if _merged is None:
        _merged = CollectorRegistry()
        MultiProcessCollector(_merged, MULTIPROCESS_DIR)
    return generate_latest(_merged)


def batched(child: Any) -> Any:
    """What the hot path records into: the child itself, or in a single process its
    batching stand-in, flushed by `exposition()`."""
    return stand_in(child) if BATCHED else child
