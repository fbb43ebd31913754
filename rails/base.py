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
    """What a rail decided. `text` is the new text of a rewrite; `reason` is for logs only;
    `value` is what NeMo's action for the rail returns (`executed_actions[].return_value`
    in the log), in NeMo's shape, so a client reading NeMo's log reads ours."""

    action: Action
    text: str | None = None
    reason: str | None = None
    failed: bool = False  # the rail errored or timed out: its on_error policy decided
    value: Any = field(default=None, compare=False)  # a detail for the log, not the decision


ALLOW = Verdict(Action.ALLOW)

# A verdict's `value` meaning "the text as the rail leaves it" (its rewrite, else the text
# it checked): what NeMo's rewriting actions return. The engine fills it in, so such a
# rail can answer with a constant verdict instead of building one per check.
RETURNS_TEXT: Any = object()

# How NeMo's flows pass the checked text to their actions: a reference to the context
# variable holding it, which NeMo's log shows unevaluated.
_TEXT_REFS = {Stage.INPUT: "$user_message", Stage.OUTPUT: "$bot_message"}


def text_params(stage: Stage) -> dict[str, str]:
    """`{"source": "input", "text": "$user_message"}`: the parameters of NeMo's actions
    called on a stage's text (`detect_sensitive_data(source="input", text=$user_message)`)."""
    return {"source": stage.value, "text": _TEXT_REFS.get(stage, f"${stage.value}")}


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
    never sends text they could still change.

    `action_name` and `action_params` are the NeMo action the rail's flow executes and
    the parameters NeMo's flow passes it, as written there (`$user_message` stays a
    reference): the log's `executed_actions` entry of each check.
    """

    name: str
    stage: Stage
    uses_model: bool
    rewrites: bool
    action_name: str
    action_params: Mapping[str, Any]

    async def check(self, text: str, ctx: CheckContext) -> Verdict: ...
