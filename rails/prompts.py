"""Task prompts from `prompts`, compiled once with Jinja and rendered per check."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from rails.config import ConfigError, RailsConfig, TaskPrompt

_ENV = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "bot": "assistant"}


class CompiledPrompt:
    """A task's prompt ready to render into chat messages."""

    def __init__(self, prompt: TaskPrompt, source: str | None) -> None:
        self.task = prompt.task
        self.max_tokens = prompt.max_tokens
        self.output_parser = prompt.output_parser
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
                key="prompts",
            ) from exc

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        return [
            {"role": role, "content": template.render(variables)} for role, template in self._parts
        ]


def compile_prompt(config: RailsConfig, task: str, flow: str, key: str) -> CompiledPrompt:
    """The prompt for `task`, or a start-up error naming the flow that needs it (as NeMo does)."""
    spec = config.model_of_type(task) or config.model_of_type("main")
    prompt = config.prompt_for(task, spec.model if spec else None)
    if prompt is None:
        raise ConfigError(
            f"'{flow}' needs a prompt for the task '{task}' in `prompts`",
            file=config.file_for("rails"),
            key=key,
        )
    return CompiledPrompt(prompt, config.file_for("prompts"))
