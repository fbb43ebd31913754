"""`regex check input` / `regex check output`: block text matching configured patterns.

Settings are NeMo's: `rails.config.regex_detection.{input,output}` with `patterns`
and `case_insensitive`. Patterns are compiled once, at load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rails.base import ALLOW, Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig


class RegexCheck:
    uses_model = False

    def __init__(self, name: str, stage: Stage, patterns: list[re.Pattern[str]]) -> None:
        self.name = name
        self.stage = stage
        self._patterns = patterns

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        for pattern in self._patterns:
            if pattern.search(text):
                return Verdict(Action.BLOCK, reason=f"matched pattern {pattern.pattern!r}")
        return ALLOW


def build(config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]) -> RegexCheck:
    key = f"rails.config.regex_detection.{stage.value}"
    settings: Any = config.rail_settings.get("regex_detection", {}) or {}
    section = settings.get(stage.value) if isinstance(settings, Mapping) else None
    if not isinstance(section, Mapping) or not section.get("patterns"):
        raise ConfigError(
            f"'{name}' needs a non-empty list of patterns", file=config.file_for("rails"), key=key
        )
    raw_patterns = section["patterns"]
    if not isinstance(raw_patterns, list) or not all(isinstance(p, str) for p in raw_patterns):
        raise ConfigError(
            "patterns must be a list of strings", file=config.file_for("rails"), key=key
        )
    flags = re.IGNORECASE if section.get("case_insensitive", False) else 0
    compiled = []
    for index, pattern in enumerate(raw_patterns):
        try:
            compiled.append(re.compile(pattern, flags))
        except re.error as exc:
            raise ConfigError(
                f"invalid regular expression: {exc}",
                file=config.file_for("rails"),
                key=f"{key}.patterns[{index}]",
            ) from exc
    return RegexCheck(name, stage, compiled)
