"""A fake OpenAI-compatible upstream: a real aiohttp server that records what it got.

Tests steer it per call with `FakeUpstream.next(...)`; by default it echoes the last user
message, answers self-check prompts with a verdict from `judge`, and streams word by word.
Check models other than self check are played with `answer_checks(...)`, and other APIs
(a classifier's `POST /classify`, ...) with `route(...)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from upstream.wire import chunk, content_text, sse_event

BLOCK_WORDS = ("stupid", "forbidden")
JSON = "application/json"


def default_judge(prompt: str) -> str:
    """Answer a self-check prompt: 'Yes' (block) when a test's trigger word is in it."""
    return "Yes" if any(w in prompt.lower() for w in BLOCK_WORDS) else "No"


@dataclass
class Plan:
    """How to answer one request."""

    status: int = 200
    body: bytes | None = None  # raw body to send instead of a completion
    content: str | None = None  # answer text instead of the echo
    chunks: list[bytes] | None = None  # raw SSE bytes to stream
    delay: float = 0.0
    die_after: int | None = None  # streams: close the connection after this many chunks
    chunk_delay: float = 0.0  # streams: pause between chunks
    stall: float = 0.0  # streams: stay silent this long after the last chunk, then end
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the completion JSON
    headers: dict[str, str] = field(default_factory=dict)  # response headers (Retry-After...)
    echo_headers: bool = False  # an error whose text quotes the request headers, not JSON
    fingerprint: str | None = None  # streams: `system_fingerprint` on every chunk, as OpenAI's


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeUpstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.plans: list[Plan] = []
        self.judge: Callable[[str], str] = default_judge
        self.judge_delay = 0.0  # seconds before answering a self-check prompt
        self._checkers: list[tuple[Callable[[dict[str, Any]], bool], Callable[..., str]]] = []
        self.disconnects = 0  # requests whose reader went away before the end
        self._extra_routes: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = {}
        self.url = ""

    def next(self, **plan: Any) -> None:
        self.plans.append(Plan(**plan))

    def answer_checks(
        self, matches: Callable[[dict[str, Any]], bool], answer: Callable[[dict[str, Any]], str]
    ) -> None:
        """Play a check model: chat bodies `matches` accepts are answered `answer(body)`
        (after `judge_delay`), are not main calls, and don't consume `next` plans."""
        self._checkers.append((matches, answer))

    def route(
        self,
        path: str,
        handler: Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]],
    ) -> None:
        """Serve `POST {path}` (under /v1 or not, as given): `handler(json body)` returns
        (status, JSON-able answer). Add routes before railguard starts calling them."""

        async def serve(request: web.Request) -> web.Response:
            body = orjson.loads(await request.read() or b"{}")
            self.received.append(Received(request.path, dict(request.headers), body))
            status, answer = await handler(body)
            return web.Response(status=status, body=orjson.dumps(answer), content_type=JSON)

        self._extra_routes[path] = serve

    @property
    def chat_calls(self) -> list[Received]:
        return [r for r in self.received if r.path.endswith("/chat/completions")]

    @property
    def main_calls(self) -> list[Received]:
        """Chat calls that are not self-check prompts."""
        return [r for r in self.chat_calls if self._checker(r.body) is None]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/{path:.*}", self._extra)
        return app

    async def _extra(self, request: web.Request) -> web.Response:
        handler = self._extra_routes.get(request.path)
        if handler is None:
            return web.Response(status=404, body=b'{"error": "no such route"}', content_type=JSON)
        return await handler(request)

    def _checker(self, body: dict[str, Any]) -> Callable[[dict[str, Any]], str] | None:
        """Who answers this chat body when it is a check-model call, else None."""
        for matches, answer in self._checkers:
            if matches(body):
                return answer
        if _is_self_check(body):
            return self._judge_body
        return None

    def _judge_body(self, body: dict[str, Any]) -> str:
        messages = body.get("messages") or []
        return self.judge(content_text(messages[-1].get("content")) if messages else "")

    async def _models(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, dict(request.headers), {}))
        data = {
            "object": "list",
            "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}],
        }
        return web.json_response(data)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(Received(request.path, dict(request.headers), body))
        checker = self._checker(body)
        checking = checker is not None
        plan = self.plans.pop(0) if self.plans and not checking else Plan()
        delay = self.judge_delay if checking else plan.delay
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # railguard hung up on us
                self.disconnects += 1
                raise
        if plan.echo_headers:
            text = f"rejected request with headers {dict(request.headers)!r}"
            return web.Response(status=plan.status, text=text, headers=plan.headers)
        if plan.body is not None or plan.status != 200:
            return web.Response(
                status=plan.status,
                body=plan.body or b"",
                content_type="application/json",
                headers=plan.headers,
            )
        messages = body.get("messages") or []
        last = content_text(messages[-1].get("content")) if messages else ""
        if checker is not None:
            text = checker(body)
        else:
            text = plan.content if plan.content is not None else f"echo: {last}"
        if body.get("stream"):
            return await self._stream(request, body, text, plan)
        data: dict[str, Any] = {
            "id": "chatcmpl-fake-123",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            **plan.extra,
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _stream(
        self, request: web.Request, body: dict[str, Any], text: str, plan: Plan
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **plan.headers})
        await response.prepare(request)
        events = plan.chunks
        if events is None:
            events = _default_events(str(body.get("model")), text, plan.fingerprint, body)
        try:
            for index, event in enumerate(events):
                if plan.die_after is not None and index >= plan.die_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(event)
                await asyncio.sleep(plan.chunk_delay)
            await asyncio.sleep(plan.stall)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        return response


def _default_events(
    model: str, text: str, fingerprint: str | None, body: dict[str, Any]
) -> list[bytes]:
    """The answer word by word as OpenAI streams it: a role chunk, content, the finish
    chunk; with `stream_options.include_usage`, `usage: null` on those and a last
    `choices: []` chunk with the usage."""
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    words = text.split(" ")
    deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": w}, None) for w in words]
    deltas.append(({}, "stop"))
    chunks = [chunk(model, "chatcmpl-fake-s", delta, finish, 1) for delta, finish in deltas]
    if with_usage:
        last = chunk(model, "chatcmpl-fake-s", {}, None, 1)
        last["choices"] = []
        last["usage"] = {
            "prompt_tokens": 7,
            "completion_tokens": len(words),
            "total_tokens": 7 + len(words),
        }
        chunks = [{**c, "usage": None} for c in chunks] + [last]
    if fingerprint is not None:
        chunks = [{**c, "system_fingerprint": fingerprint} for c in chunks]
    return [*map(sse_event, chunks), b"data: [DONE]\n\n"]


def _is_self_check(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and "(Yes or No)?" in content_text(messages[-1].get("content"))
