"""The uniform interface every rail implements: text in, verdict out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rails.model_caller import ModelCaller


class Stage(StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    TOOL_INPUT = "tool_input"  # the `tool` messages (tool results) of a request
    TOOL_OUTPUT = "tool_output"  # the tool calls of an answer


class Action(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    REWRITE = "rewrite"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rail decided. `text` is the new text of a rewrite; `reason` is for logs only."""

    action: Action
    text: str | None = None
    reason: str | None = None
    failed: bool = False  # the rail errored or timed out: its on_error policy decided


ALLOW = Verdict(Action.ALLOW)


@dataclass(slots=True)
class CheckContext:
    """What a rail may look at besides the text it checks.

    `tools` and `tool_choice` are the request's own fields (the functions the client
    declared); `tool_calls` are the calls of the answer a tool-output rail checks.
    """

    user_text: str
    bot_text: str | None
    messages: list[dict[str, Any]]
    context: Mapping[str, Any]
    model: str
    caller: ModelCaller | None = None
    llm_calls: list[dict[str, Any]] = field(default_factory=list)
    tools: Sequence[Any] = ()
    tool_choice: Any = None
    tool_calls: Sequence[Any] = ()


class Rail(Protocol):
    """One check. Local rails return fast; model-backed ones set `uses_model` so the
    engine gives them a deadline; rails that may rewrite set `rewrites`, so a stream
    never sends text they could still change."""

    name: str
    stage: Stage
    uses_model: bool
    rewrites: bool

    async def check(self, text: str, ctx: CheckContext) -> Verdict: ...
