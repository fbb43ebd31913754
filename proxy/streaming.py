"""`stream: true`: the upstream's SSE events to the client, through the output rails.

Without output rails (and no envelope detail asked for) events are forwarded as they
arrive, unparsed. With them, each event is parsed for its content and handed to a
`StreamGuard`, which decides when the original bytes may go out. Every stream ends with
`data: [DONE]` after one event carrying `guardrails`: the upstream's last chunk (see
proxy/stream_end.py), a `choices: []` chunk when that can't carry it, or the error that
stopped the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from metrics import STREAM_TERMINATIONS, batched
from proxy.envelope import envelope
from proxy.errors import ApiError
from proxy.stream_end import LastChunk
from proxy.threads import Conversation, stream_answer
from rails.guardrails import Guardrails
from rails.streaming import Rewritten, StreamGuard, blocked_error
from rails.turn import Turn
from upstream import (
    UpstreamAnswerTooLarge,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamEventTooLarge,
    UpstreamStream,
)
from upstream.client import MAX_ANSWER_BYTES
from upstream.wire import (
    DONE_EVENT,
    SSE_CONTENT_TYPE,
    chunk,
    error_object,
    event_json,
    is_done,
    new_completion_id,
    sse_event,
)

SSE_HEADERS = {
    "Content-Type": SSE_CONTENT_TYPE,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_SAVING: set[asyncio.Task[None]] = set()  # turns of hung-up streams being saved
_TERMINATIONS = {
    reason: batched(STREAM_TERMINATIONS.labels(reason))
    for reason in ("completed", "blocked", "upstream_error", "client_disconnect", "limit")
}


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What one stream may make the server hold in memory."""

    max_event_bytes: int = 1024 * 1024
    max_holdback_bytes: int = 10 * 1024 * 1024
    max_answer_bytes: int = MAX_ANSWER_BYTES  # a parsed stream's text, all choices


class HoldbackLimit(Exception):
    """More of the answer is waiting for the output rails than the server allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The answer held back for output rails passed the limit of {limit} bytes "
            "(--stream-max-holdback-bytes); the stream was stopped."
        )


def needs_answer(turn: Turn) -> bool:
    """Whether the answer's text must be read: output rails, or envelope details asked for."""
    options = turn.options
    return (
        turn.output_rails_selected()
        or turn.tool_output_rails_selected()
        or options.log.wanted
        or bool(options.output_vars)
        or (options.llm_output)
    )


@dataclass(slots=True)
class StreamEnd:
    """How a relayed stream ended, for the caller's metrics."""

    reason: str  # completed | blocked | upstream_error | limit
    upstream_data: dict[str, Any] | None


class StreamRelay:
    """Relays one opened upstream stream to one client response."""

    def __init__(
        self,
        turn: Turn,
        guardrails: Guardrails,
        stream: UpstreamStream,
        limits: StreamLimits,
        conversation: Conversation | None = None,
    ) -> None:
        self.turn = turn
        self.guardrails = guardrails
        self.stream = stream
        self.max_holdback_bytes = limits.max_holdback_bytes
        self.conversation = conversation  # a thread or state records the answer at the end
        self.guard: StreamGuard[bytes] | None = None
        if needs_answer(turn) or conversation is not None:
            self.guard = StreamGuard(
                turn, guardrails.config.streaming, stream.abort, limits.max_answer_bytes
            )
        self.meta: dict[str, Any] | None = None  # id, model, created of the upstream's chunks
        self._meta_tried = False
        self.first_sent: float | None = None  # time.perf_counter() of the first event out
        self.rails_wait = 0.0  # seconds the stream waited for output rails
        self._usage_event: bytes | None = None  # pass-through: the last event with usage
        self._last = LastChunk()  # the upstream's chunk that may carry the envelope

    @property
    def usage(self) -> dict[str, Any] | None:
        """The upstream's `usage`, when its stream carried one (the last one sent)."""
        if self.guard is not None:
            return self.guard.usage
        if self._usage_event is None:
            return None
        try:
            data = event_json(self._usage_event)
        except ValueError:
            return None
        usage = data.get("usage") if isinstance(data, dict) else None
        return usage if isinstance(usage, dict) else None

    async def run(self, response: web.StreamResponse) -> StreamEnd:
        started = time.perf_counter()
        guard = self.guard
        reason = "completed"
        error: dict[str, Any] | None = None
        try:
            if guard is None:
                await self._pass_through(response)
            else:
                await self._guarded(response, guard)
        except UpstreamError as exc:
            if guard is None or not guard.blocked_by:
                limit = isinstance(exc, UpstreamEventTooLarge | UpstreamAnswerTooLarge)
                reason = "limit" if limit else "upstream_error"
                error = error_object(exc.message, exc.type, exc.code, exc.param)
                if guard is not None:  # what arrived before the failure is still delivered
                    await self._write(response, await guard.finish())
        except HoldbackLimit as exc:
            reason = "limit"
            error = error_object(str(exc), "server_error", "stream_holdback_limit")
        except (asyncio.CancelledError, ConnectionError):
            _TERMINATIONS["client_disconnect"].inc()
            if self.conversation is not None and guard is not None:
                self._save_in_background(guard)
            raise
        finally:
            if guard is not None:
                guard.cancel()
        if guard is not None and guard.blocked_by:
            reason = "blocked"
            error = blocked_error(guard.blocked_by)
        upstream_data = self._record(time.perf_counter() - started)
        state = None
        if self.conversation is not None and guard is not None:
            answer = stream_answer(
                reason, guard.sent_text(), guard.blocked_by, self.guardrails.refusal
            )
            try:
                state = await self.conversation.record(self.turn, answer)
            except ApiError as exc:  # the answer is out, but the thread could not keep it
                error = error_object(exc.message, exc.type, exc.code, exc.param)
        guardrails = envelope(self.turn, self.guardrails, upstream_data, state)
        await response.write(self._end(guardrails, error) + DONE_EVENT)
        if self.first_sent is None:
            self.first_sent = time.perf_counter()
        _TERMINATIONS[reason].inc()
        return StreamEnd(reason, upstream_data)

    def _end(self, guardrails: dict[str, Any], error: dict[str, Any] | None) -> bytes:
        """The stream's last events: the held chunk carrying `guardrails`; or, when it
        can't, the held events unchanged and an event of railguard's own carrying it (the
        error that stopped the stream, else a `choices: []` chunk like the upstream's)."""
        if error is None:
            carried = self._last.carry(guardrails)
            if carried is not None:
                return carried
            last = self._chunk({})
            last["choices"] = []
            fingerprint = (self.meta or {}).get("system_fingerprint")
            if fingerprint is not None:
                last["system_fingerprint"] = fingerprint
        else:
            last = {"error": error}
        last["guardrails"] = guardrails
        return self._last.release() + sse_event(last)

    def _save_in_background(self, guard: StreamGuard[bytes]) -> None:
        """A client that hung up cancelled this handler; its thread still keeps the turn:
        what was sent to it, marked as cut, saved by a task of its own."""
        assert self.conversation is not None
        answer = stream_answer(
            "client_disconnect", guard.sent_text(), guard.blocked_by, self.guardrails.refusal
        )
        task = asyncio.get_running_loop().create_task(self._save(self.conversation, answer))
        _SAVING.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_SAVING.discard)

    async def _save(self, conversation: Conversation, answer: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):  # the store is down: counted and logged there
            await conversation.record(self.turn, answer)

    async def _pass_through(self, response: web.StreamResponse) -> None:
        """The fast path: bytes out as they came in; only the first chunk is parsed."""
        write = response.write
        pass_on = self._last.pass_on
        async for event in self.stream:
            if is_done(event):
                return
            if not self._meta_tried:
                self._note_meta(event)
            if b'"usage"' in event:
                self._usage_event = event
            out = pass_on(event)
            if out:
                await write(out)
                if self.first_sent is None:
                    self.first_sent = time.perf_counter()

    async def _guarded(self, response: web.StreamResponse, guard: StreamGuard[bytes]) -> None:
        timed = guard.active  # output rails run: the time they hold the stream is theirs
        async for event in self.stream:
            if is_done(event):
                break
            try:
                data = event_json(event)
            except ValueError:
                raise UpstreamBadResponse(
                    "The upstream sent a stream event that is not JSON, so output rails can't "
                    "check it; the stream was stopped."
                ) from None
            if self.meta is None and isinstance(data, dict):
                self.meta = _meta(data)
            if timed:
                started = time.perf_counter()
                out = await guard.push_chunk(event, data, len(event))
                self.rails_wait += time.perf_counter() - started
            else:
                out = await guard.push_chunk(event, data, len(event))
            if guard.blocked_by:
                return
            if guard.held_bytes > self.max_holdback_bytes:
                raise HoldbackLimit(self.max_holdback_bytes)
            if out:
                await self._write(response, out)
        if not guard.blocked_by:
            started = time.perf_counter()
            rest = await guard.finish()
            if timed:
                self.rails_wait += time.perf_counter() - started
            await self._write(response, rest)

    async def _write(self, response: web.StreamResponse, out: Sequence[bytes | Rewritten]) -> None:
        pass_on = self._last.pass_on
        data = b"".join(
            pass_on(item if isinstance(item, bytes) else self._rewritten_event(item))
            for item in out
        )
        if data:
            await response.write(data)
            if self.first_sent is None:
                self.first_sent = time.perf_counter()

    def _rewritten_event(self, item: Rewritten) -> bytes:
        event = self._chunk({"role": "assistant", **(item.fields or {}), "content": item.text})
        event["choices"][0]["index"] = item.choice
        return sse_event(event)

    def _note_meta(self, event: bytes) -> None:
        try:
            data = event_json(event)
        except ValueError:
            data = None
        if isinstance(data, dict):
            self.meta = _meta(data)
            self._meta_tried = True
        elif data is not None:
            self._meta_tried = True

    def _chunk(self, delta: dict[str, Any]) -> dict[str, Any]:
        """A chunk like the upstream's own (same id, model, created)."""
        meta = self.meta or {}
        return chunk(
            str(meta.get("model") or self.turn.ctx.model),
            str(meta.get("id") or new_completion_id()),
            delta,
            None,
            meta.get("created") if isinstance(meta.get("created"), int) else None,
        )

    def _record(self, elapsed: float) -> dict[str, Any] | None:
        """Log the main call and set the bot message: what the client received."""
        guard = self.guard
        meta = self.meta
        if guard is None:
            return meta
        guard.record(str(meta.get("model", "")) if meta else "", elapsed)
        if meta is not None and guard.usage is not None:
            return {**meta, "usage": guard.usage}
        return meta


def _meta(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a chunk other than its choices (id, object, created, model, ...)."""
    return {k: v for k, v in data.items() if k not in ("choices", "usage")}
