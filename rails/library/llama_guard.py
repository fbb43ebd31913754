"""`llama guard check input` / `llama guard check output`: Meta's Llama Guard as a safety model.

As in NeMo: the model is the config's `type: llama_guard` (required), the prompts are the
tasks `llama_guard_check_input` / `llama_guard_check_output` (Jinja: `user_input`,
`bot_response`; railguard's defaults use Llama Guard 3's categories), and the answer is
`safe`, or `unsafe` with the violated category codes on the next line. The prompt's
`output_parser` is not used: Llama Guard answers one way.
"""

from __future__ import annotations

from collections.abc import Mapping

from rails.base import Stage
from rails.config import RailsConfig
from rails.library import safety_parsers
from rails.library.content_safety import SafetyModelCheck, flow_key, require_model
from rails.prompts import compile_prompt

MODEL_TYPE = "llama_guard"


def build(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> SafetyModelCheck:
    require_model(config, name, stage, MODEL_TYPE)
    task = f"llama_guard_check_{stage.value}"
    prompt = compile_prompt(config, task, name, flow_key(config, name, stage), MODEL_TYPE)
    return SafetyModelCheck(
        name, stage, prompt, safety_parsers.llama_guard, MODEL_TYPE, config.lowest_temperature
    )


FLOWS = {
    "llama guard check input": (Stage.INPUT, build),
    "llama guard check output": (Stage.OUTPUT, build),
}
