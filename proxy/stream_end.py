"""Where a relayed stream's `guardrails` envelope goes: on the upstream's own last chunk.

Clients read how a stream ended from its last chunks. The openai SDKs' stream helpers
take `usage` and `system_fingerprint` from the very last chunk (a later chunk without
them wipes them out); LangChain takes the finish_reason and fingerprint from the chunk
with the finish_reason and adds up every `usage` it sees. No extra chunk of railguard's
own suits them all, so the envelope is added to the upstream's last chunk: the finish
chunk, or with `stream_options.include_usage` the `choices: []` chunk with the usage.

Which chunk is last is known only at the end, so an event that may be it (one with a
finish_reason or a usage) is held until the next event arrives; content never waits.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from upstream.wire import event_json, sse_event

# A finish_reason or usage that is not null: a bytes search, so the pass-through path
# still parses no event.
_MAY_END = re.compile(rb'"(?:finish_reason|usage)"\s*:\s*["{]')


class LastChunk:
    """Holds back the event that may be the stream's last chunk (and any comment behind it)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: list[bytes] = []

    def pass_on(self, event: bytes) -> bytes:
        """What goes out now that `event` arrived: nothing, `event`, or what was held first."""
        if _MAY_END.search(event):
            out = b"".join(self.held)
            self.held = [event]
            return out
        if not self.held:
            return event
        if b"data:" not in event:  # a comment or ping: it stays behind the held chunk
            self.held.append(event)
            return b""
        out = b"".join(self.held) + event
        self.held.clear()
        return out

    def release(self) -> bytes:
        """The held events as they came (the stream ends with an error event of its own)."""
        out = b"".join(self.held)
        self.held.clear()
        return out

    def carry(self, guardrails: dict[str, Any]) -> bytes | None:
        """The held events with `guardrails` added to the chunk among them; None (and
        nothing released) when no chunk is held or it isn't a JSON object."""
        if not self.held:
            return None
        event = _with_guardrails(self.held[0], guardrails)
        if event is None:
            return None
        out = b"".join([event, *self.held[1:]])
        self.held.clear()
        return out


def _with_guardrails(event: bytes, guardrails: dict[str, Any]) -> bytes | None:
    """The event with a `guardrails` key; the upstream's bytes kept when the event is the
    usual one-line `data: {...}`."""
    try:
        data = event_json(event)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    if (
        event.startswith(b"data: ")
        and event.endswith(b"}\n\n")
        and event.find(b"\n") == len(event) - 2
        and b'"guardrails"' not in event
    ):
        return event[:-3] + b',"guardrails":' + orjson.dumps(guardrails) + b"}\n\n"
    data["guardrails"] = guardrails  # an upstream's own `guardrails` (a railguard) is replaced
    return sse_event(data)
