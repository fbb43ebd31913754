"""What the Python API returns: NeMo's `GenerationResponse` and `RailsResult` shapes.

The log holds exactly what the server's `guardrails.log` holds (`Turn.log()`), typed so
NeMo code reading `response.log.activated_rails[0].name` keeps working; unknown fields
are kept, so the two never drift apart.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class LLMCallInfo(_Shape):
    task: str | None = None
    llm_model_name: str | None = None
    prompt: str | None = None
    completion: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class ExecutedAction(_Shape):
    """The NeMo action a rail's check ran: its parameters, what it returned, its calls."""

    action_name: str
    action_params: dict[str, Any] = {}
    return_value: Any = None
    llm_calls: list[LLMCallInfo] = []
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None


class ActivatedRail(_Shape):
    type: str
    name: str
    decisions: list[str] = []
    executed_actions: list[ExecutedAction] = []
    stop: bool = False
    additional_info: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None


class GenerationStats(_Shape):
    input_rails_duration: float | None = None
    dialog_rails_duration: float | None = None
    generation_rails_duration: float | None = None
    output_rails_duration: float | None = None
    total_duration: float | None = None
    llm_calls_duration: float | None = None
    llm_calls_count: int | None = None
    llm_calls_total_prompt_tokens: int | None = None
    llm_calls_total_completion_tokens: int | None = None
    llm_calls_total_tokens: int | None = None


class GenerationLog(_Shape):
    activated_rails: list[ActivatedRail] = []
    llm_calls: list[LLMCallInfo] = []
    internal_events: list[dict[str, Any]] | None = None
    colang_history: str | None = None
    stats: GenerationStats = GenerationStats()


class GenerationResponse(_Shape):
    """The answer of `generate` with `options` (or `state`): a list with the assistant
    message when called with `messages`, a string when called with `prompt`."""

    response: str | list[dict[str, Any]]
    llm_output: dict[str, Any] | None = None
    output_data: dict[str, Any] | None = None
    log: GenerationLog | None = None
    state: dict[str, Any] | None = None


class RailStatus(StrEnum):
    PASSED = "passed"
    MODIFIED = "modified"
    BLOCKED = "blocked"


class RailsResult(_Shape):
    """The answer of `check`: as the server's `/v1/checks`. `content` is the checked text
    (rewritten when `modified`, the refusal when `blocked`); `rail` the one that blocked."""

    status: RailStatus
    content: str
    rail: str | None = None
