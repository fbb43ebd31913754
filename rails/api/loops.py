"""Event loops for the Python API: the private loop behind the synchronous methods, and
one upstream pool per loop.

An aiohttp session belongs to the loop it was created in, so `LLMRails` keeps a pool for
each loop that calls it (the caller's loop for `await generate_async`, its own loop for
`generate`). A thread's private loop lives as long as the `LLMRails`, so repeated
synchronous calls reuse their connections; it is closed by `close()`, or when the
`LLMRails` is collected or the interpreter exits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine
from typing import Any, TypeVar

from upstream import UpstreamPool

T = TypeVar("T")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def no_running_loop(method: str, instead: str) -> None:
    """Raise the spec's error for a synchronous method called from async code."""
    if _loop_running():
        raise RuntimeError(
            f"LLMRails.{method}() can't be called inside a running event loop (it would "
            f"block it); use `await rails.{instead}(...)` there."
        )


class Pools:
    """One UpstreamPool per event loop, created on first use in that loop.

    Each pool is closed with its loop: an async generator started in the loop holds it,
    and `asyncio.run` (like every orderly loop shutdown) closes the loop's async
    generators before the loop, so code that never calls `aclose()` leaves no open
    connections (nor aiohttp's warnings) behind.
    """

    def __init__(self) -> None:
        self._pools: dict[
            asyncio.AbstractEventLoop, tuple[UpstreamPool, AsyncGenerator[None, None]]
        ] = {}

    async def current(self) -> UpstreamPool:
        loop = asyncio.get_running_loop()
        found = self._pools.get(loop)
        if found is not None:
            return found[0]
        # Pools of loops that have ended can't be used or closed any more: drop them.
        for ended in [other for other in list(self._pools) if other.is_closed()]:
            self._pools.pop(ended, None)  # (another thread's call may drop it too)
        pool = UpstreamPool()
        closer = _closed_with_the_loop(pool)
        self._pools[loop] = (pool, closer)
        await anext(closer)  # now the loop knows it, and closes it at shutdown
        return pool

    async def close_current(self) -> None:
        found = self._pools.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[1].aclose()


async def _closed_with_the_loop(pool: UpstreamPool) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await pool.close()


class SyncRunner:
    """Runs coroutines to completion on a private loop per calling thread (so threads
    can call the synchronous methods at once), created on first use. The loops of
    threads that have ended are closed when another thread opens one."""

    def __init__(self, pools: Pools) -> None:
        self._pools = pools
        self._loops: dict[threading.Thread, asyncio.AbstractEventLoop] = {}
        self._lock = threading.Lock()

    def run(self, method: str, coro: Coroutine[Any, Any, T]) -> T:
        """`coro`'s result; `method` names the synchronous method for the error raised
        inside a running loop (its async twin is `method_async`)."""
        try:
            no_running_loop(method, f"{method}_async")
        except RuntimeError:
            coro.close()  # never awaited: closed so Python doesn't warn about it
            raise
        return self._loop().run_until_complete(coro)

    def _loop(self) -> asyncio.AbstractEventLoop:
        me = threading.current_thread()
        with self._lock:
            loop = self._loops.get(me)
            if loop is not None:
                return loop
            ended = [self._loops.pop(t) for t in list(self._loops) if not t.is_alive()]
            loop = self._loops[me] = asyncio.new_event_loop()
        for old in ended:
            self._shut(old)
        return loop

    def close(self) -> None:
        """Close every private loop not running a call now, with its pool. Collected
        inside async code, a loop can't run to close its pool: the loops alone are closed."""
        with self._lock:
            idle = {t: loop for t, loop in self._loops.items() if not loop.is_running()}
            for thread in idle:
                del self._loops[thread]
        for loop in idle.values():
            if _loop_running():
                loop.close()
            else:
                self._shut(loop)

    def _shut(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(self._pools.close_current())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
