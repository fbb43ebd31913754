"""POST /v1/chat/completions: validate, resolve config, input rails, upstream, output rails.

The upstream's own JSON and SSE events are passed through; railguard only patches the
answer a rail blocked or rewrote and adds the `guardrails` envelope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from metrics import (
    FIRST_CHUNK,
    IN_FLIGHT,
    PROXY_OVERHEAD,
    RAILS_ADDED,
    REQUEST_DURATION,
    REQUESTS,
    TOKENS,
    UPSTREAM_DURATION,
    UPSTREAM_FIRST_CHUNK,
    Children,
    ModelLabels,
)
from proxy.access import ACCESS_LOG, TRACE, Trace, log_request, request_id, usage_tokens
from proxy.configs import ConfigStore
from proxy.early_call import EarlyCall, speculates
from proxy.envelope import envelope
from proxy.errors import JSON, ApiError, api_error_response, invalid
from proxy.request import ParsedChat, parse_chat
from proxy.streaming import SSE_HEADERS, StreamLimits, StreamRelay
from proxy.threads import (
    Conversation,
    Conversations,
    StateCodec,
    ThreadStoreUnavailable,
    completion_answer,
)
from rails.check_cache import CheckCache
from rails.guardrails import Guardrails
from rails.model_caller import ModelCaller
from rails.policy import SelectionForbidden
from rails.turn import Turn
from upstream import (
    NoUpstreamError,
    Router,
    Upstream,
    UpstreamError,
    UpstreamPool,
    UpstreamStream,
)
from upstream.wire import (
    DONE_EVENT,
    chunk,
    completion,
    new_completion_id,
    no_usage,
    sse_event,
    usage_chunk,
    wants_usage,
)


def start_turn(
    request: web.Request,
    chat: ParsedChat,
    guardrails: Guardrails,
    pool: UpstreamPool,
    router: Router,
    cache: CheckCache | None,
    raw_completions: bool = False,
    checked: int = 0,
) -> Turn:
    """A Turn for this request; model-backed rails get a caller that routes like requests do.
    `checked`: the leading messages railguard checked before (Conversation.checked). A
    request asking to skip rails its config keeps is a 403."""
    caller = None
    if guardrails.uses_model:
        caller = ModelCaller(pool, router, guardrails.targets, chat.model, request.headers, cache)
    try:
        return Turn(
            guardrails,
            chat.messages,
            model=chat.model,
            options=chat.options,
            context=chat.guardrails.context,
            caller=caller,
            tools=chat.body.get("tools"),
            tool_choice=chat.body.get("tool_choice"),
            checked=checked,
            raw_completions=raw_completions,
        )
    except SelectionForbidden as exc:
        raise ApiError(
            403,
            str(exc),
            type_="permission_error",
            code="rails_selection_forbidden",
            param=f"guardrails.options.rails.{exc.stage.value}",
        ) from None


_STREAM_OUTCOMES = {
    "upstream_error": "upstream_error",
    "limit": "upstream_error",
}


def outcome(turn: Turn) -> str:
    """What the rails made of a request. `rail_error`: a rail errored or timed out and no
    rail blocked on its own verdict (a block by `on_error: block` is a rail_error too)."""
    for stage, blocked in ((turn.input, "blocked_input"), (turn.output, "blocked_output")):
        if stage is not None and stage.blocked_by:
            return "rail_error" if stage.error_block else blocked
    if turn.rail_errors:
        return "rail_error"
    return "modified" if turn.modified else "passed"


class ChatCompletions:
    """The handler, holding what it needs from the app (no globals)."""

    def __init__(
        self,
        store: ConfigStore,
        router: Router,
        pool: UpstreamPool,
        model_labels: ModelLabels,
        limits: StreamLimits,
        cache: CheckCache | None = None,
        conversations: Conversations | None = None,
        log_content: bool = False,
        log_raw_completions: bool = False,
    ) -> None:
        self.store = store
        self.log_content = log_content
        self.log_raw_completions = log_raw_completions
        self.conversations = conversations or Conversations(None, StateCodec(None))
        self.limits = limits
        self.cache = cache
        self.router = router
        self.pool = pool
        self.model_labels = model_labels
        self._duration = Children(REQUEST_DURATION)
        self._requests = Children(REQUESTS)
        self._upstream_duration = Children(UPSTREAM_DURATION)
        self._overhead = Children(PROXY_OVERHEAD)
        self._rails_added = Children(RAILS_ADDED)
        self._tokens = Children(TOKENS)
        self._first_chunk = Children(FIRST_CHUNK)
        self._upstream_first_chunk = Children(UPSTREAM_FIRST_CHUNK)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        IN_FLIGHT.inc()
        trace = request[TRACE] = Trace(request_id(request), t0)
        labels = {
            "config_id": "none",
            "model": "none",
            "stream": "false",
            "outcome": "client_error",
        }
        status = 500
        try:
            response = await self._handle(request, labels, trace)
            status = response.status
            if not response.prepared:  # streams are stamped before their headers go out
                trace.stamp(response)
            return response
        except ApiError as exc:
            if isinstance(exc, ThreadStoreUnavailable):
                labels["outcome"] = "thread_store_error"
            status, trace.error = exc.status, exc.label
            response = api_error_response(exc)
            response.headers["x-request-id"] = trace.request_id
            return response
        except asyncio.CancelledError:
            labels["outcome"], status = "client_error", 499
            raise
        finally:
            IN_FLIGHT.dec()
            self._record(trace, labels, status, time.perf_counter())

    def _record(self, trace: Trace, labels: dict[str, str], status: int, now: float) -> None:
        """The request's metrics and its access log line."""
        stream, model = labels["stream"], labels["model"]
        self._requests("chat", labels["config_id"], model, stream, labels["outcome"]).inc()
        self._duration("chat", stream).observe(now - trace.started)
        self._overhead("chat", stream).observe(trace.overhead(now))
        turn = trace.turn
        if turn is not None:
            if turn.input is not None and turn.input.activated:
                self._rails_added("input").observe(trace.input_rails)
            if turn.output is not None and turn.output.activated:
                self._rails_added("output").observe(trace.output_rails)
        if trace.tokens is not None:
            self._tokens(model, "prompt").inc(trace.tokens[0])
            self._tokens(model, "completion").inc(trace.tokens[1])
        if trace.first_chunk is not None:
            self._first_chunk(model).observe(trace.first_chunk - trace.started)
            if trace.upstream_first_chunk is not None and trace.upstream is not None:
                self._upstream_first_chunk(trace.upstream, model).observe(
                    trace.upstream_first_chunk
                )
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            log_request(
                trace,
                route="chat",
                config_id=labels["config_id"],
                outcome=labels["outcome"],
                status=status,
                ended=now,
                content=self.log_content,
            )

    async def _handle(
        self, request: web.Request, labels: dict[str, str], trace: Trace
    ) -> web.StreamResponse:
        raw = await request.read()
        chat = parse_chat(raw)
        trace.model, trace.stream = chat.model[:200], chat.stream
        labels["stream"] = "true" if chat.stream else "false"
        guardrails = self.store.resolve(chat.guardrails.config_id, chat.guardrails.config_ids)
        labels["config_id"] = guardrails.id
        labels["model"] = self.model_labels(chat.model)
        # A thread or state puts its history in front of the request's messages.
        conversation = await self.conversations.open(chat, guardrails.id)
        turn = trace.turn = start_turn(
            request,
            chat,
            guardrails,
            self.pool,
            self.router,
            self.cache,
            self.log_raw_completions,
            conversation.checked if conversation else 0,
        )

        upstream: Upstream | None = None
        if turn.calls_model:
            upstream = self._route(chat.model, guardrails)
        early = None
        if upstream is not None and speculates(turn):
            body = orjson.dumps(chat.body) if chat.body_changed else raw
            early = EarlyCall(self.pool, upstream, body, request, chat.stream, self.limits)

        started = time.perf_counter()
        try:
            await turn.check_input()
        except BaseException:
            if early is not None:
                await early.cancel()
            raise
        if turn.input is not None and turn.input.activated:
            trace.input_rails = time.perf_counter() - started
        if turn.blocked_by:
            if early is not None:
                await early.cancel()
            labels["outcome"] = outcome(turn)
            state = conversation.unchanged() if conversation else None
            return await self._answer(request, chat, turn, guardrails, guardrails.refusal, state)
        if upstream is None:
            answer = await turn.answer_without_model()
            labels["outcome"] = outcome(turn)
            state = conversation.unchanged() if conversation else None
            return await self._answer(request, chat, turn, guardrails, answer, state)

        labels["outcome"] = "upstream_error"
        trace.upstream = upstream.name
        if early is None:
            body = orjson.dumps(chat.body) if chat.body_changed or turn.modified else raw
            early = EarlyCall(self.pool, upstream, body, request, chat.stream, self.limits)
        if chat.stream:
            return await self._stream(request, turn, upstream, early, labels, conversation)
        started = time.perf_counter()
        try:
            result = await early.chat()
        except UpstreamError as exc:
            raise ApiError.from_upstream(exc) from exc
        finally:
            trace.upstream_wait = time.perf_counter() - started
        self._upstream_duration(upstream.name, labels["model"], "false").observe(
            time.perf_counter() - early.started
        )
        data = result.data
        trace.tokens = usage_tokens(data.get("usage"))
        await turn.check_completion(data, result.elapsed)
        if turn.output is not None:
            trace.output_rails = turn.output.duration
        labels["outcome"] = outcome(turn)
        state = None
        if conversation is not None:
            state = await conversation.record(turn, completion_answer(data, turn))
        data["guardrails"] = envelope(turn, guardrails, data, state)
        return web.Response(body=orjson.dumps(data), content_type=JSON)

    def _route(self, model: str, guardrails: Guardrails) -> Upstream:
        main = guardrails.targets.get("main")
        try:
            return self.router.resolve(model, main.upstream if main else None)
        except NoUpstreamError as exc:
            raise invalid(str(exc), param="model", code="model_not_routed") from exc

    async def _answer(
        self,
        request: web.Request,
        chat: ParsedChat,
        turn: Turn,
        guardrails: Guardrails,
        text: str,
        state: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        """An answer railguard gives itself (a refusal, or check mode), as JSON or a stream."""
        if not chat.stream:
            data = completion(chat.model, text)
            data["guardrails"] = envelope(turn, guardrails, None, state)
            return web.Response(body=orjson.dumps(data), content_type=JSON)
        # The answer, its finish, and with `include_usage` a usage chunk (no model was
        # called: zero tokens); the last of them carries `guardrails`.
        completion_id = new_completion_id()
        created = int(time.time())
        events = [
            chunk(chat.model, completion_id, {"role": "assistant", "content": text}, None, created),
            chunk(chat.model, completion_id, {}, "stop", created),
        ]
        if wants_usage(chat.body):
            events.append(usage_chunk(chat.model, completion_id, no_usage(), created))
        events[-1]["guardrails"] = envelope(turn, guardrails, None, state)
        response = web.StreamResponse(headers=SSE_HEADERS)
        request[TRACE].stamp(response)
        await response.prepare(request)
        await response.write(b"".join(map(sse_event, events)) + DONE_EVENT)
        await response.write_eof()
        return response

    async def _stream(
        self,
        request: web.Request,
        turn: Turn,
        upstream: Upstream,
        early: EarlyCall,
        labels: dict[str, str],
        conversation: Conversation | None = None,
    ) -> web.StreamResponse:
        """Wait for the upstream stream to open (a failure before its first byte is a plain
        error response), then relay it through the output rails. The headers carry the
        overhead and the rails known when they go out: the input rails."""
        trace = request[TRACE]
        started = time.perf_counter()
        try:
            stream = await _opened(early)
        finally:
            trace.upstream_wait = time.perf_counter() - started
        if stream.first_chunk_at is not None:
            trace.upstream_first_chunk = stream.first_chunk_at - stream.started
        response = web.StreamResponse(headers=SSE_HEADERS)
        relay = StreamRelay(turn, turn.guardrails, stream, self.limits, conversation)
        try:
            trace.stamp(response)
            await response.prepare(request)
            end = await relay.run(response)
            labels["outcome"] = _STREAM_OUTCOMES.get(end.reason) or outcome(turn)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            labels["outcome"] = "client_error"
        finally:
            trace.upstream_wait += stream.waited
            trace.output_rails = relay.rails_wait
            trace.first_chunk = relay.first_sent
            trace.tokens = usage_tokens(relay.usage)
            await stream.__aexit__(None, None, None)
            self._upstream_duration(upstream.name, labels["model"], "true").observe(
                time.perf_counter() - early.started
            )
        return response


async def _opened(early: EarlyCall) -> UpstreamStream:
    try:
        return await early.stream()
    except UpstreamError as exc:
        raise ApiError.from_upstream(exc) from exc
