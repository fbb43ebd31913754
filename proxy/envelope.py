"""The `guardrails` object railguard adds to every answer (the spec's GuardrailsResponseData)."""

from __future__ import annotations

from typing import Any

from rails.guardrails import Guardrails
from rails.turn import Turn


def envelope(
    turn: Turn,
    guardrails: Guardrails,
    upstream_data: dict[str, Any] | None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spec's GuardrailsResponseData: all five keys, null when empty. `state` is set
    when the request continued one (proxy/threads/state.py)."""
    return {
        "config_id": guardrails.id,
        "state": state,
        "llm_output": turn.llm_output(upstream_data),
        "output_data": turn.output_data(),
        "log": turn.log(),
    }
