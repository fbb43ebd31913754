"""The embedded thread store: per process, bounded, least-recently-used threads go first.

All of it runs on the event loop without awaiting, so an append is atomic by
construction: two requests on one thread can't interleave inside it. An append can't
land after its request gave up either, so the only duplicate to recognise is a turn
sent twice (its turn id), as in Redis.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import orjson

from proxy.threads.store import (
    RECENT_TURNS,
    ThreadBoundElsewhere,
    ThreadLimits,
    ThreadRecord,
    ThreadStore,
)


class _Thread:
    __slots__ = ("config_id", "expires", "messages", "size", "turns")

    def __init__(self, config_id: str) -> None:
        self.config_id = config_id
        self.messages: deque[bytes] = deque()
        self.turns: deque[str] = deque(maxlen=RECENT_TURNS)
        self.size = 0
        self.expires = 0.0


class MemoryStore(ThreadStore):
    """Threads in a dict ordered by last use; past `max_bytes` of messages in all, the
    least recently used threads are dropped whole."""

    kind = "memory"

    def __init__(
        self,
        limits: ThreadLimits,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(limits)
        self.max_bytes = max_bytes
        self.clock = clock
        self._threads: OrderedDict[str, _Thread] = OrderedDict()
        self.size = 0

    def _live(self, thread_id: str) -> _Thread | None:
        thread = self._threads.get(thread_id)
        if thread is not None and thread.expires <= self.clock():
            self._drop(thread_id)
            return None
        return thread

    def _drop(self, thread_id: str) -> None:
        thread = self._threads.pop(thread_id)
        self.size -= thread.size

    async def load(self, thread_id: str) -> ThreadRecord | None:
        thread = self._live(thread_id)
        if thread is None:
            return None
        self._threads.move_to_end(thread_id)
        messages: list[dict[str, Any]] = [orjson.loads(m) for m in thread.messages]
        return ThreadRecord(thread.config_id, messages, thread.turns[-1] if thread.turns else "")

    async def append(
        self, thread_id: str, config_id: str, messages: list[bytes], turn_id: str = ""
    ) -> None:
        thread = self._live(thread_id)
        if thread is None:
            thread = self._threads[thread_id] = _Thread(config_id)
        elif thread.config_id != config_id:
            raise ThreadBoundElsewhere(thread.config_id)
        self._threads.move_to_end(thread_id)
        if turn_id:
            if turn_id in thread.turns:
                return
            thread.turns.append(turn_id)
        added = sum(len(m) for m in messages)
        thread.messages.extend(messages)
        thread.size += added
        self.size += added
        while len(thread.messages) > self.limits.max_messages:
            dropped = len(thread.messages.popleft())
            thread.size -= dropped
            self.size -= dropped
        thread.expires = self.clock() + self.limits.ttl
        while self.size > self.max_bytes and len(self._threads) > 1:
            self._drop(next(iter(self._threads)))

    def __len__(self) -> int:
        return len(self._threads)
