"""`content safety check input $model=TYPE` / `content safety check output $model=TYPE`.

As in NeMo: the model is the config's `type: TYPE`; the prompt is the task
`content_safety_check_{input,output} $model=TYPE` (Jinja: `user_input`, `bot_response`,
`reasoning_enabled` from `rails.config.content_safety.reasoning.enabled`); its
`output_parser` reads the answer (see `safety_parsers.CONTENT_SAFETY_PARSERS`). Without a
prompt in the config, railguard's default asks for NemoGuard's JSON.

Where NeMo differs: a prompt without a known `output_parser` is a start-up error (NeMo
would then read any answer as a pass), and an answer no parser can read blocks.

`SafetyModelCheck` here is the shared engine of the model-backed safety rails. In the
log, the action is NeMo's (`content_safety_check_input`, ...: no parameters, since NeMo's
flows pass none), returning `{"allowed": bool, "policy_violations": [categories]}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig
from rails.library.safety_parsers import CONTENT_SAFETY_PARSERS, Parser, UnreadableAnswer
from rails.prompts import CompiledPrompt, compile_prompt

_QUOTED_ANSWER = 80  # characters of an unreadable answer quoted in the reason


class SafetyModelCheck:
    """Asks a safety model about the text with a task prompt and reads its verdict."""

    uses_model = True
    rewrites = False

    def __init__(
        self,
        name: str,
        stage: Stage,
        prompt: CompiledPrompt,
        parser: Parser,
        model_type: str,
        temperature: float,
        variables: Mapping[str, Any] | None = None,
        action_name: str | None = None,
    ) -> None:
        self.name = name
        self.stage = stage
        # NeMo's action is the task without its `$model=` part
        self.action_name = action_name or prompt.task.partition(" ")[0]
        self.action_params: Mapping[str, Any] = {}
        self._prompt = prompt
        self._parser = parser
        self._model_type = model_type
        self._temperature = temperature
        self._variables = dict(variables or {})

    def messages(self, text: str, ctx: CheckContext) -> list[dict[str, str]]:
        """The chat messages sent to the model: the rendered task prompt."""
        output = self.stage is Stage.OUTPUT
        return self._prompt.render(
            {
                **self._variables,
                "user_input": ctx.user_text if output else text,
                "bot_response": text if output else "",
                "context": ctx.context,
            }
        )

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        if ctx.caller is None:
            raise RuntimeError(f"{self.name} needs a model caller")
        reply = await ctx.caller.complete(
            self._prompt.task,
            self.messages(text, ctx),
            model_type=self._model_type,
            temperature=self._temperature,
            max_tokens=self._prompt.max_tokens,
        )
        try:
            verdict = self._parser(reply.text)
        except UnreadableAnswer as exc:
            quoted = reply.text.strip()[:_QUOTED_ANSWER]
            reason = f"unreadable answer, {exc}: {quoted!r}"
            return Verdict(Action.BLOCK, reason=reason, value=self.returned(False, ()))
        categories = tuple(verdict.categories)
        if verdict.safe:
            return Verdict(Action.ALLOW, value=self.returned(True, categories))
        value = self.returned(False, categories)
        if not categories:
            return Verdict(Action.BLOCK, reason="unsafe (no categories given)", value=value)
        return Verdict(Action.BLOCK, reason=f"unsafe: {', '.join(categories)}", value=value)

    def returned(self, safe: bool, categories: tuple[str, ...]) -> Any:
        """What NeMo's action returns for this verdict (the log's `return_value`)."""
        return {"allowed": safe, "policy_violations": list(categories)}


def flow_key(config: RailsConfig, name: str, stage: Stage) -> str:
    """The dotted key of a flow in the config, for errors: `rails.input.flows[2]`."""
    flows = config.input_flows if stage is Stage.INPUT else config.output_flows
    where = f"[{flows.index(name)}]" if name in flows else ""
    return f"rails.{stage.value}.flows{where}"


def model_type_param(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> str:
    """The flow's `$model=TYPE`, which must name a model of the config (as NeMo checks)."""
    model_type = params.get("model", "")
    if not model_type:
        raise ConfigError(
            f"'{name}' needs the type of its model: '{name} $model=TYPE'",
            file=config.file_for("rails"),
            key=flow_key(config, name, stage),
        )
    return require_model(config, name, stage, model_type)


def require_model(config: RailsConfig, name: str, stage: Stage, model_type: str) -> str:
    """`model_type`, if the config has a model of that type; never the main model instead."""
    if config.model_of_type(model_type) is None:
        types = ", ".join(sorted(f"'{m.type}'" for m in config.models)) or "none"
        raise ConfigError(
            f"'{name}' needs a model of type '{model_type}' in `models` (types there: {types})",
            file=config.file_for("rails"),
            key=flow_key(config, name, stage),
        )
    return model_type


def _parser(prompt: CompiledPrompt, name: str) -> Parser:
    parser = CONTENT_SAFETY_PARSERS.get(prompt.output_parser or "")
    if parser is None:
        given = f"'{prompt.output_parser}' is not" if prompt.output_parser else "none is"
        raise ConfigError(
            f"'{name}' reads its model's answer with the prompt's output_parser, and {given} "
            f"one railguard knows: {', '.join(CONTENT_SAFETY_PARSERS)}",
            file=prompt.source,
            key=f"{prompt.key}.output_parser",
        )
    return parser


def _reasoning_enabled(config: RailsConfig) -> bool:
    """`rails.config.content_safety.reasoning.enabled` (default false), for the prompt."""
    enabled: Any = False
    section = config.rail_settings.get("content_safety")
    if isinstance(section, Mapping) and isinstance(section.get("reasoning"), Mapping):
        enabled = section["reasoning"].get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(
            "must be true or false",
            file=config.file_for("rails"),
            key="rails.config.content_safety.reasoning.enabled",
        )
    return enabled


def build(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> SafetyModelCheck:
    model_type = model_type_param(config, name, stage, params)
    task = f"content_safety_check_{stage.value} $model={model_type}"
    prompt = compile_prompt(config, task, name, flow_key(config, name, stage), model_type)
    return SafetyModelCheck(
        name,
        stage,
        prompt,
        _parser(prompt, name),
        model_type,
        config.lowest_temperature,
        {"reasoning_enabled": _reasoning_enabled(config)},
    )


FLOWS = {
    "content safety check input": (Stage.INPUT, build),
    "content safety check output": (Stage.OUTPUT, build),
}
