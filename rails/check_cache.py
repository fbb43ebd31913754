"""Answers of identical model checks, kept for a short while.

A client retrying a request, or the same message checked again a moment later, would
otherwise pay the check model's latency (and cost) again for the same verdict. Bounded
(least recently used out first) and short-lived; off when its size is 0.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class CheckCache:
    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[bytes, tuple[float, Any]] = OrderedDict()

    def get(self, key: bytes) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, value: Any) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
