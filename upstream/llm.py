"""Ask a model for a plain-text answer: what rails need for self-check prompts and the like."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from upstream import wire
from upstream.client import UpstreamPool
from upstream.errors import UpstreamBadResponse
from upstream.routing import Upstream


@dataclass(slots=True)
class LLMReply:
    text: str
    usage: dict[str, Any] | None
    model: str
    duration: float


async def chat_text(
    pool: UpstreamPool,
    upstream: Upstream,
    model: str,
    messages: list[dict[str, Any]],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    client_headers: Mapping[str, str] | None = None,
) -> LLMReply:
    """One non-streaming completion's text. The caller bounds its time (a rail's deadline)."""
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if temperature is not None:
        payload["temperature"] = temperature
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    result = await pool.chat(upstream, orjson.dumps(payload), client_headers)
    message = wire.first_message(result.data)
    if message is None or message.get("content") is None:
        raise UpstreamBadResponse(f"Upstream {upstream.name} sent a completion without content")
    usage = result.data.get("usage")
    answered_by = result.data.get("model")
    return LLMReply(
        text=wire.content_text(message["content"]),
        usage=usage if isinstance(usage, dict) else None,
        model=answered_by if isinstance(answered_by, str) else model,
        duration=result.elapsed,
    )
