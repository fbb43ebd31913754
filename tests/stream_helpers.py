"""Scripted upstream streams and readers for the streaming tests."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from upstream.wire import chunk, sse_event

BAD = "bad phrase"
DONE = b"data: [DONE]\n\n"


def upstream_events(deltas: list[str], model: str = "m1") -> list[bytes]:
    """What an OpenAI-compatible server streams for `deltas`: role, content, finish, usage."""
    events = [sse_event(chunk(model, "c-up", {"role": "assistant", "content": ""}, None, 7))]
    events += [sse_event(chunk(model, "c-up", {"content": d}, None, 7)) for d in deltas]
    events.append(sse_event(chunk(model, "c-up", {}, "stop", 7)))
    usage = {"prompt_tokens": 3, "completion_tokens": len(deltas), "total_tokens": 3 + len(deltas)}
    events.append(
        sse_event({"id": "c-up", "object": "chat.completion.chunk", "choices": [], "usage": usage})
    )
    return [*events, DONE]


def stream_config(
    chunk_size: int = 200,
    context_size: int = 50,
    stream_first: bool = True,
    enabled: bool = True,
    pattern: str = BAD,
    flows: tuple[str, ...] = ("regex check output",),
    **extra: Any,
) -> dict[str, Any]:
    """A config with output rails and `rails.output.streaming` as given."""
    return {
        "rails": {
            "output": {
                "flows": list(flows),
                "streaming": {
                    "enabled": enabled,
                    "chunk_size": chunk_size,
                    "context_size": context_size,
                    "stream_first": stream_first,
                },
            },
            "config": {"regex_detection": {"output": {"patterns": [pattern]}}},
        },
        **extra,
    }


def split_events(raw: bytes) -> list[bytes]:
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part]


def relayed(raw: bytes) -> list[bytes]:
    """A stream's events before `[DONE]`, with the `guardrails` key railguard added to the
    last chunk cut off again: the upstream's events, when they went through unchanged."""
    events = split_events(raw)
    assert events[-1] == DONE
    last = events[-2]
    cut = last.rfind(b',"guardrails":')
    assert cut > 0, last
    return [*events[:-2], last[:cut] + b"}\n\n"]


def parsed(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for event in split_events(raw):
        payload = event[len(b"data: ") : -2]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def delivered_text(raw: bytes) -> str:
    """The answer text a client assembles from the content deltas it got."""
    text = []
    for event in parsed(raw):
        if isinstance(event, dict):
            for choice in event.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def post_stream(
    http: aiohttp.ClientSession, base: str, config_id: str, **guardrails: Any
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": config_id, **guardrails},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        return response.status, response.headers, await response.read()
