"""POST /v1/chat/completions: validate, resolve config, input rails, upstream, output rails.

The upstream's own JSON and SSE events are passed through; railguard only patches the
answer a rail blocked or rewrote and adds the `guardrails` envelope.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from metrics import (
    IN_FLIGHT,
    REQUEST_DURATION,
    REQUESTS,
    UPSTREAM_DURATION,
    Children,
    ModelLabels,
)
from proxy.configs import ConfigStore
from proxy.early_call import EarlyCall, speculates
from proxy.envelope import envelope
from proxy.errors import JSON, ApiError, invalid
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
    content_text,
    new_completion_id,
    sse_event,
)


def start_turn(
    request: web.Request,
    chat: ParsedChat,
    guardrails: Guardrails,
    pool: UpstreamPool,
    router: Router,
    cache: CheckCache | None,
) -> Turn:
    """A Turn for this request; model-backed rails get a caller that routes like requests do."""
    caller = None
    if guardrails.uses_model:
        caller = ModelCaller(pool, router, guardrails.targets, chat.model, request.headers, cache)
    return Turn(
        guardrails,
        chat.messages,
        model=chat.model,
        options=chat.options,
        context=chat.guardrails.context,
        caller=caller,
        tools=chat.body.get("tools"),
        tool_choice=chat.body.get("tool_choice"),
    )


_STREAM_OUTCOMES = {
    "blocked": "blocked_output",
    "upstream_error": "upstream_error",
    "limit": "upstream_error",
}


def outcome(turn: Turn) -> str:
    if turn.input and turn.input.blocked_by:
        return "blocked_input"
    if turn.output and turn.output.blocked_by:
        return "blocked_output"
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
    ) -> None:
        self.store = store
        self.conversations = conversations or Conversations(None, StateCodec(None))
        self.limits = limits
        self.cache = cache
        self.router = router
        self.pool = pool
        self.model_labels = model_labels
        self._duration = Children(REQUEST_DURATION)
        self._requests = Children(REQUESTS)
        self._upstream_duration = Children(UPSTREAM_DURATION)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        IN_FLIGHT.inc()
        labels = {
            "config_id": "none",
            "model": "none",
            "stream": "false",
            "outcome": "client_error",
        }
        try:
            return await self._handle(request, labels)
        except ThreadStoreUnavailable:
            labels["outcome"] = "thread_store_error"
            raise
        finally:
            IN_FLIGHT.dec()
            self._requests(
                "chat", labels["config_id"], labels["model"], labels["stream"], labels["outcome"]
            ).inc()
            self._duration("chat", labels["stream"]).observe(time.perf_counter() - t0)

    async def _handle(self, request: web.Request, labels: dict[str, str]) -> web.StreamResponse:
        raw = await request.read()
        chat = parse_chat(raw)
        labels["stream"] = "true" if chat.stream else "false"
        guardrails = self.store.resolve(chat.guardrails.config_id, chat.guardrails.config_ids)
        labels["config_id"] = guardrails.id
        labels["model"] = self.model_labels(chat.model)
        # A thread or state puts its history in front of the request's messages.
        conversation = await self.conversations.open(chat, guardrails.id)
        turn = start_turn(request, chat, guardrails, self.pool, self.router, self.cache)

        upstream: Upstream | None = None
        if turn.calls_model:
            upstream = self._route(chat.model, guardrails)
        early = None
        if upstream is not None and speculates(turn):
            body = orjson.dumps(chat.body) if chat.body_changed else raw
            early = EarlyCall(self.pool, upstream, body, request, chat.stream, self.limits)

        try:
            await turn.check_input()
        except BaseException:
            if early is not None:
                await early.cancel()
            raise
        if turn.blocked_by:
            if early is not None:
                await early.cancel()
            labels["outcome"] = "blocked_input"
            state = conversation.unchanged() if conversation else None
            return await self._answer(request, chat, turn, guardrails, guardrails.refusal, state)
        if upstream is None:
            answer = await turn.answer_without_model()
            labels["outcome"] = outcome(turn)
            state = conversation.unchanged() if conversation else None
            return await self._answer(request, chat, turn, guardrails, answer, state)

        labels["outcome"] = "upstream_error"
        if early is None:
            body = orjson.dumps(chat.body) if chat.body_changed or turn.modified else raw
            early = EarlyCall(self.pool, upstream, body, request, chat.stream, self.limits)
        if chat.stream:
            return await self._stream(request, turn, upstream, early, labels, conversation)
        try:
            result = await early.chat()
        except UpstreamError as exc:
            raise ApiError.from_upstream(exc) from exc
        self._upstream_duration(upstream.name, labels["model"], "false").observe(
            time.perf_counter() - early.started
        )
        data = result.data
        await self._check_choices(turn, data, result.elapsed)
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

    async def _check_choices(self, turn: Turn, data: dict[str, Any], elapsed: float) -> None:
        """Tool-output rails on every choice's tool calls, output rails on its text; a block
        or rewrite patches that choice."""
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        messages = [c.get("message") if isinstance(c, dict) else None for c in choices]
        texts = [content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        turn.record_main_call(str(data.get("model", "")), elapsed, texts[0] if texts else "", usage)
        turn.bot_text = texts[0] if texts else None
        tools = turn.tool_output_rails_selected()
        output = turn.output_rails_selected()
        if not output and not tools:
            return
        for choice, message, text in zip(choices, messages, texts, strict=True):
            if not isinstance(message, dict):
                continue
            calls = message.get("tool_calls") if tools else None
            if calls:
                result = await turn.check_tool_calls(calls if isinstance(calls, list) else [calls])
                if result.blocked_by:
                    message["content"] = turn.guardrails.refusal
                    message.pop("tool_calls", None)
                    choice["finish_reason"] = "stop"
                    continue
            if not output or not text:
                continue
            result = await turn.check_output(text)
            if result.blocked_by:
                message["content"] = turn.guardrails.refusal
                message.pop("tool_calls", None)
                choice["finish_reason"] = "stop"
            elif result.modified:
                message["content"] = result.text

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
        completion_id = new_completion_id()
        created = int(time.time())
        final = chunk(chat.model, completion_id, {}, "stop", created)
        final["guardrails"] = envelope(turn, guardrails, None, state)
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(
            sse_event(
                chunk(
                    chat.model, completion_id, {"role": "assistant", "content": text}, None, created
                )
            )
            + sse_event(final)
            + DONE_EVENT
        )
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
        error response), then relay it through the output rails."""
        stream = await _opened(early)
        response = web.StreamResponse(headers=SSE_HEADERS)
        relay = StreamRelay(
            turn, turn.guardrails, stream, self.limits.max_holdback_bytes, conversation
        )
        try:
            await response.prepare(request)
            end = await relay.run(response)
            labels["outcome"] = _STREAM_OUTCOMES.get(end.reason) or outcome(turn)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            labels["outcome"] = "client_error"
        finally:
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
