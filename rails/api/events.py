"""The event-based API's events (NeMo's Colang 1.0 names) as chat messages, and back.

railguard runs no dialog flows, so it reads only the events that carry the conversation:
`UtteranceUserActionFinished` (a user message), `StartUtteranceBotAction` (an earlier bot
message) and `ContextUpdate` (context variables). Other events are skipped. An answer is
one `StartUtteranceBotAction`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def events_to_messages(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The conversation the events describe; context updates as NeMo's `context` messages."""
    messages: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise TypeError(f"events[{index}] must be a dict, not {type(event).__name__}")
        kind = event.get("type")
        if kind == "UtteranceUserActionFinished":
            messages.append({"role": "user", "content": _text(event, "final_transcript", index)})
        elif kind == "StartUtteranceBotAction":
            messages.append({"role": "assistant", "content": _text(event, "script", index)})
        elif kind == "ContextUpdate" and isinstance(event.get("data"), Mapping):
            messages.append({"role": "context", "content": dict(event["data"])})
    return messages


def needs_answer(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the last utterance is the user's: only then does the bot say something."""
    said = [m for m in messages if m["role"] != "context"]
    return bool(said) and said[-1]["role"] == "user"


def bot_utterance(text: str) -> dict[str, Any]:
    """The event that makes the bot say `text`, with the fields NeMo's events carry."""
    return {
        "type": "StartUtteranceBotAction",
        "uid": str(uuid.uuid4()),
        "event_created_at": datetime.now(UTC).isoformat(),
        "source_uid": "railguard",
        "script": text,
        "action_uid": str(uuid.uuid4()),
        "action_info_modality": "bot_speech",
        "action_info_modality_policy": "replace",
    }


def _text(event: Mapping[str, Any], key: str, index: int) -> str:
    value = event.get(key)
    if not isinstance(value, str):
        raise ValueError(f"events[{index}] ({event.get('type')}) needs a string `{key}`")
    return value
