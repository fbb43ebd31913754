"""The main call to the upstream, started at once or while the input rails still run.

With `rails.input.speculative_generation: true` the call starts alongside the input
rails: its answer (or a stream's first events) waits until they pass, and a block
cancels it, so the model's time overlaps the rails' instead of following it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from proxy.streaming import StreamLimits
from rails.base import Stage
from rails.turn import Turn
from upstream import ChatResult, Upstream, UpstreamPool, UpstreamStream


def speculates(turn: Turn) -> bool:
    """Only when the config asks, there are input rails to overlap, and none of them can
    rewrite the request (a masked message must never be sent unmasked)."""
    guardrails = turn.guardrails
    if not guardrails.config.speculative_generation:
        return False
    runners = guardrails.selected(Stage.INPUT, turn.options.rails.input)
    return bool(runners) and not any(r.rail.rewrites for r in runners)


class EarlyCall:
    """A started main call: a chat completion, or an upstream stream being opened."""

    def __init__(
        self,
        pool: UpstreamPool,
        upstream: Upstream,
        body: bytes,
        request: web.Request,
        stream: bool,
        limits: StreamLimits,
    ) -> None:
        self.started = time.perf_counter()
        self._stream: UpstreamStream | None = None
        self._task: asyncio.Future[Any]
        if stream:
            self._stream = pool.stream(upstream, body, request.headers, limits.max_event_bytes)
            self._task = asyncio.ensure_future(self._stream.__aenter__())
        else:
            self._task = asyncio.ensure_future(pool.chat(upstream, body, request.headers))

    async def chat(self) -> ChatResult:
        result: ChatResult = await self._task
        return result

    async def stream(self) -> UpstreamStream:
        """The opened stream; the caller must `__aexit__` it."""
        stream: UpstreamStream = await self._task
        return stream

    async def cancel(self) -> None:
        """Stop the call (the input rails blocked): the upstream sees the connection close."""
        task = self._task
        task.cancel()
        await asyncio.wait({task})  # our own cancellation still propagates
        if not task.cancelled():
            task.exception()  # retrieved: it failed or finished before the cancel; either way moot
        if self._stream is not None:
            await self._stream.__aexit__(None, None, None)
