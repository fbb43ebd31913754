"""A demo OpenAI-compatible upstream that ECHOES. It is not a model.

`make run` starts it when no RAILGUARD_UPSTREAM_URL is given, so a newcomer can watch a
request pass and a rail block within a minute, with nothing else installed. It answers
self-check prompts (they end in "(Yes or No)?") with "Yes" when the text holds one of a
few demo words, else "No", so the self-check example config does something visible.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from upstream.wire import DONE_EVENT, chunk, completion, content_text, sse_event

log = logging.getLogger("railguard.demo")

MODELS = ("demo-echo",)
DEMO_UNSAFE_WORDS = ("stupid", "hack", "bomb", "ignore previous instructions")


def _reply(messages: list[dict[str, Any]]) -> str:
    last = content_text(messages[-1].get("content")) if messages else ""
    if last.rstrip().endswith(("(Yes or No)?", "(Yes or No)?\nAnswer:", "Answer:")):
        lowered = last.lower()
        return "Yes" if any(word in lowered for word in DEMO_UNSAFE_WORDS) else "No"
    return f"[demo upstream, echoing] You said: {last}"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    model = str(body.get("model", MODELS[0]))
    text = _reply(body.get("messages") or [])
    if not body.get("stream"):
        data = completion(model, text)
        words = len(text.split())
        data["usage"] = {
            "prompt_tokens": words,
            "completion_tokens": words,
            "total_tokens": 2 * words,
        }
        return web.Response(body=orjson.dumps(data), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:12]}"
    created = int(time.time())
    await response.write(
        sse_event(chunk(model, completion_id, {"role": "assistant", "content": ""}, None, created))
    )
    for index, word in enumerate(text.split(" ")):
        piece = word if index == 0 else " " + word
        await response.write(
            sse_event(chunk(model, completion_id, {"content": piece}, None, created))
        )
        await asyncio.sleep(0.02)
    await response.write(sse_event(chunk(model, completion_id, {}, "stop", created)))
    await response.write(DONE_EVENT)
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    data = {
        "object": "list",
        "data": [{"id": m, "object": "model", "owned_by": "railguard-demo"} for m in MODELS],
    }
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def demo_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app


def run_demo_upstream(host: str, port: int) -> None:
    log.warning(
        "DEMO UPSTREAM on http://%s:%d/v1: it echoes your messages, it is not a model", host, port
    )
    web.run_app(demo_app(), host=host, port=port, access_log=None, print=None)
