"""`self check input` / `self check output`: ask a model whether to block.

The task prompt comes from the config's `prompts` (Jinja: `user_input`, `bot_response`);
the model answers in words: `no`/`safe` allow; `yes`/`unsafe` and anything else block,
since an answer we can't read is not a pass. In the log, the action is NeMo's
`self_check_input` / `self_check_output` (no parameters), returning whether to allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import RailsConfig
from rails.prompts import CompiledPrompt, compile_prompt

_ALLOW_WORDS = frozenset({"no", "safe"})
_ALLOWED = Verdict(Action.ALLOW, value=True)


def parse_verdict(answer: str) -> bool:
    """True when the model's answer means allow."""
    words = answer.strip().split(None, 1)
    first = words[0].strip(".,:;!\"'`*").lower() if words else ""
    return first in _ALLOW_WORDS


class SelfCheck:
    uses_model = True
    rewrites = False

    def __init__(self, name: str, stage: Stage, prompt: CompiledPrompt, temperature: float) -> None:
        self.name = name
        self.stage = stage
        self.action_name = f"self_check_{stage.value}"
        self.action_params: Mapping[str, Any] = {}
        self._prompt = prompt
        self._temperature = temperature
        # A model of `type: self_check_input` (or _output) wins; otherwise the main model.
        self._model_type = prompt.task

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        if ctx.caller is None:
            raise RuntimeError("self check needs a model caller")
        variables = {
            "user_input": ctx.user_text if self.stage is Stage.OUTPUT else text,
            "bot_response": text if self.stage is Stage.OUTPUT else "",
            "context": ctx.context,
        }
        reply = await ctx.caller.complete(
            self._prompt.task,
            self._prompt.render(variables),
            model_type=self._model_type,
            temperature=self._temperature,
            max_tokens=self._prompt.max_tokens,
        )
        if parse_verdict(reply.text):
            return _ALLOWED
        reason = f"model answered {reply.text.strip()[:40]!r}"
        return Verdict(Action.BLOCK, reason=reason, value=False)


def build(config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]) -> SelfCheck:
    task = f"self_check_{stage.value}"
    prompt = compile_prompt(config, task, name, f"rails.{stage.value}.flows")
    return SelfCheck(name, stage, prompt, config.lowest_temperature)


FLOWS = {
    "self check input": (Stage.INPUT, build),
    "self check output": (Stage.OUTPUT, build),
}
