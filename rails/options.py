"""`options` of a generation request (the spec's GenerationOptions), validated once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

RailSelection = bool | list[str]


class _Options(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RailsOptions(_Options):
    input: RailSelection = True
    output: RailSelection = True
    retrieval: RailSelection = True
    dialog: bool = True
    tool_input: RailSelection = True
    tool_output: RailSelection = True


class LogOptions(_Options):
    activated_rails: bool = False
    llm_calls: bool = False
    internal_events: bool = False
    colang_history: bool = False

    @property
    def wanted(self) -> bool:
        return self.activated_rails or self.llm_calls or self.internal_events or self.colang_history


class GenerationOptions(_Options):
    rails: RailsOptions = RailsOptions()
    llm_params: dict[str, Any] | None = None
    llm_output: bool = False
    output_vars: bool | list[str] | None = None
    log: LogOptions = LogOptions()


DEFAULT_OPTIONS = GenerationOptions()
