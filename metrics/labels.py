"""Bounded label values for model names a client controls."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metrics.registry import batched

OTHER = "other"


class ModelLabels:
    """Maps a requested model name to a label value.

    Names from the configs and the upstreams table are always their own label; up to
    `dynamic_limit` other names are admitted first come, then everything is `other`,
    so a client can't blow up the metric series count.
    """

    def __init__(self, known: Iterable[str] = (), dynamic_limit: int = 20) -> None:
        self._known = {name for name in known if name}
        self._dynamic: set[str] = set()
        self._dynamic_limit = dynamic_limit

    def __call__(self, model: str) -> str:
        if model in self._known or model in self._dynamic:
            return model
        if len(self._dynamic) < self._dynamic_limit and len(model) <= 100:
            self._dynamic.add(model)
            return model
        return OTHER


class Children:
    """A metric's labelled children, each looked up once: `labels()` costs microseconds
    per call on the hot path, a dict hit costs nanoseconds. Label values are bounded, so
    the cache is too. Counters and histograms come back batched (`metrics.batch`)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            child = self._cache[values] = batched(self._metric.labels(*values))
        return child
