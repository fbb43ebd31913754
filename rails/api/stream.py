"""`stream_async`: an upstream stream as text chunks, through the same `StreamGuard` (the
same windows, modes and checks) the server's streams go through.

Each upstream event becomes one item: the text it carries for the first choice (other
choices are checked too, but only the first is yielded). The guard decides when an item
may go out, exactly as it decides for the server's event bytes.

A block ends the stream with one last chunk, the JSON of the error the server sends,
`{"error": {"message": "Blocked by <rail> rails.", "type": "guardrails_violation",
"param": "<rail>", "code": "content_blocked"}}`: the shape NeMo's `stream_async` yields.
An upstream failure mid-stream raises its `UpstreamError` after what had arrived was
checked and yielded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson

from rails.config import StreamingSettings
from rails.streaming import Rewritten, StreamGuard, blocked_error
from rails.turn import Turn
from upstream import UpstreamBadResponse, UpstreamError, UpstreamStream
from upstream.wire import delta_contents, event_json, is_done


def blocked_chunk(rail: str) -> str:
    return orjson.dumps({"error": blocked_error(rail)}).decode()


async def guarded_text(
    turn: Turn, stream: UpstreamStream, settings: StreamingSettings
) -> AsyncIterator[str]:
    """The first choice's text as it is released; the upstream request is closed when
    the generator ends, however it ends (a block, the consumer stopping, an error)."""
    guard: StreamGuard[str] = StreamGuard(turn, settings, on_block=stream.abort)
    started = time.perf_counter()
    model = ""
    async with stream:
        try:
            try:
                async for event in stream:
                    if is_done(event):
                        break
                    try:
                        data = event_json(event)
                    except ValueError:
                        raise UpstreamBadResponse(
                            "The upstream sent a stream event that is not JSON, so output "
                            "rails can't check it; the stream was stopped."
                        ) from None
                    if not model and isinstance(data, dict):
                        model = str(data.get("model") or "")
                    text = "".join(t for choice, t in delta_contents(data) if choice == 0)
                    for item in await guard.push_chunk(text, data, len(text)):
                        if item:
                            yield item
                    if guard.blocked_by:
                        break
            except UpstreamError:
                # After a block, the closed upstream is no failure; else what arrived
                # is checked and delivered first.
                if not guard.blocked_by:
                    for text in _texts(await guard.finish()):
                        yield text
                    if not guard.blocked_by:
                        raise
            else:
                if not guard.blocked_by:
                    for text in _texts(await guard.finish()):
                        yield text
            if guard.blocked_by:
                yield blocked_chunk(guard.blocked_by)
        finally:
            guard.cancel()
            guard.record(model, time.perf_counter() - started)


def _texts(items: list[str | Rewritten]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, Rewritten):
            if item.choice == 0:
                out.append(item.text)
        elif item:
            out.append(item)
    return out
