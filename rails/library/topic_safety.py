"""`topic safety check input $model=TYPE`: a topic-control model keeps the user on topic.

As in NeMo: the model is the config's `type: TYPE`; the task `topic_safety_check_input
$model=TYPE` is the system prompt, and the conversation follows it as chat messages;
railguard appends the answer format (`on-topic` / `off-topic`) unless the prompt already
asks for it. `on-topic` allows and `off-topic` blocks.

Where NeMo differs: any other answer blocks (NeMo allows anything but `off-topic`), and
the conversation sent is the request's user and assistant messages, without its system
messages, with the checked text as the current user turn.

In the log, the action is NeMo's `topic_safety_check_input`, returning `{"on_topic": bool}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rails.base import CheckContext, Stage
from rails.config import RailsConfig
from rails.library import safety_parsers
from rails.library.content_safety import SafetyModelCheck, flow_key, model_type_param
from rails.prompts import compile_prompt
from upstream.wire import content_text

ANSWER_FORMAT = (
    'If the last user message breaks any of these rules, answer "off-topic"; otherwise '
    'answer "on-topic". Answer with exactly one of the two.'
)
_CONVERSATION_ROLES = ("user", "assistant")


def conversation(messages: list[dict[str, Any]], text: str) -> list[dict[str, str]]:
    """The turns before the current user turn, then `text` as that turn."""
    history = [
        {"role": str(m["role"]), "content": content_text(m.get("content"))}
        for m in messages
        if m.get("role") in _CONVERSATION_ROLES
    ]
    if history and history[-1]["role"] == "assistant":  # an answer given to check
        history.pop()
    while history and history[-1]["role"] == "user":
        history.pop()
    return [*history, {"role": "user", "content": text}]


class TopicSafetyCheck(SafetyModelCheck):
    def messages(self, text: str, ctx: CheckContext) -> list[dict[str, str]]:
        rendered = super().messages(text, ctx)
        system = "\n\n".join(m["content"] for m in rendered).strip()
        if "on-topic" not in system or "off-topic" not in system:
            system = f"{system}\n\n{ANSWER_FORMAT}"
        return [{"role": "system", "content": system}, *conversation(ctx.messages, text)]

    def returned(self, safe: bool, categories: tuple[str, ...]) -> Any:
        return {"on_topic": safe}


def build(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> TopicSafetyCheck:
    model_type = model_type_param(config, name, stage, params)
    task = f"topic_safety_check_input $model={model_type}"
    prompt = compile_prompt(config, task, name, flow_key(config, name, stage), model_type)
    return TopicSafetyCheck(
        name, stage, prompt, safety_parsers.topic, model_type, config.lowest_temperature
    )


FLOWS = {"topic safety check input": (Stage.INPUT, build)}
