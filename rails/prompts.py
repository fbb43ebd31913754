"""Task prompts from `prompts` (else railguard's defaults), compiled once with Jinja and
rendered per check."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from rails.config import ConfigError, RailsConfig, TaskPrompt
from rails.default_prompts import default_prompt

_ENV = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "bot": "assistant"}


class CompiledPrompt:
    """A task's prompt ready to render into chat messages. `source` and `key` say where it
    was written, for errors about it: the config's file and `prompts[i]`, or railguard's
    defaults."""

    def __init__(self, prompt: TaskPrompt, source: str | None, key: str = "prompts") -> None:
        self.task = prompt.task
        self.max_tokens = prompt.max_tokens
        self.output_parser = prompt.output_parser
        self.source = source
        self.key = key
        try:
            if prompt.content is not None:
                self._parts = [("user", _ENV.from_string(prompt.content))]
            else:
                self._parts = [
                    (
                        _ROLES.get(str(m.get("type") or m.get("role") or "user"), "user"),
                        _ENV.from_string(str(m.get("content", ""))),
                    )
                    for m in prompt.messages
                ]
        except TemplateError as exc:
            raise ConfigError(
                f"prompt for task '{prompt.task}' is not a valid template: {exc}",
                file=source,
                key=key,
            ) from exc

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"role": role, "content": template.render(variables)} for role, template in self._parts
        ]


def compile_prompt(
    config: RailsConfig, task: str, flow: str, key: str, model_type: str | None = None
) -> CompiledPrompt:
    """The config's prompt for `task`, else railguard's default for it, else a start-up
    error naming the flow that needs it.

    Among the config's prompts for the task, one listing the task's model (`model_type`,
    default: the model of `type: <task>`) wins, then one listing the main model (NeMo
    matches prompts against it), then one listing no models, then any.
    """
    prompt = _config_prompt(config, task, model_type or task)
    if prompt is not None:
        index = config.prompts.index(prompt)
        return CompiledPrompt(prompt, config.file_for("prompts"), f"prompts[{index}]")
    default = default_prompt(task)
    if default is None:
        raise ConfigError(
            f"'{flow}' needs a prompt for the task '{task}' in `prompts`",
            file=config.file_for("rails"),
            key=key,
        )
    return CompiledPrompt(default, None, f"railguard's default prompt for '{task}'")


def _config_prompt(config: RailsConfig, task: str, model_type: str) -> TaskPrompt | None:
    for spec in (config.model_of_type(model_type), config.model_of_type("main")):
        listing = config.prompt_for(task, spec.model) if spec and spec.model else None
        if listing is not None and listing.models:
            return listing
    return config.prompt_for(task)
