"""Prometheus metric definitions: a leaf every layer may import."""

from metrics.labels import Children, ModelLabels
from metrics.registry import (
    IN_FLIGHT,
    RAIL_CHECKS,
    RAIL_DURATION,
    REGISTRY,
    REQUEST_DURATION,
    REQUESTS,
    STREAM_HOLDBACK,
    STREAM_TERMINATIONS,
    THREAD_STORE_DURATION,
    THREAD_STORE_ERRORS,
    UPSTREAM_DURATION,
)

__all__ = [
    "IN_FLIGHT",
    "RAIL_CHECKS",
    "RAIL_DURATION",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_DURATION",
    "STREAM_HOLDBACK",
    "STREAM_TERMINATIONS",
    "THREAD_STORE_DURATION",
    "THREAD_STORE_ERRORS",
    "UPSTREAM_DURATION",
    "Children",
    "ModelLabels",
]
