"""`regex check input` / `regex check output`: block text matching configured patterns.

Settings are NeMo's: `rails.config.regex_detection.{input,output}` with `patterns` and
`case_insensitive`. Patterns run on RE2 (google-re2): linear time in the text, so no
pattern a config author writes can hang the server on a crafted input, and all of a
section's patterns are matched in one pass. RE2 has no look-around or back-references;
a pattern that uses them is a start-up error naming it.

In the log, the action is NeMo's `detect_regex_pattern(source=..., text=$user_message)`
returning `{"is_match": bool, "detections": [matched patterns]}` (NeMo's result without
the checked text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import re2

from rails.base import Action, CheckContext, Stage, Verdict, text_params
from rails.config import ConfigError, RailsConfig

_NO_MATCH = Verdict(Action.ALLOW, value={"is_match": False, "detections": []})


class RegexCheck:
    uses_model = False
    rewrites = False

    def __init__(self, name: str, stage: Stage, patterns: list[str], matcher: Any) -> None:
        self.name = name
        self.stage = stage
        self.action_name = "detect_regex_pattern"
        self.action_params = text_params(stage)
        self._patterns = patterns
        self._matcher = matcher  # an re2.Set holding every pattern

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        matched = self._matcher.Match(text)
        if not matched:
            return _NO_MATCH
        detections = [self._patterns[index] for index in sorted(matched)]
        return Verdict(
            Action.BLOCK,
            reason=f"matched pattern {detections[0]!r}",
            value={"is_match": True, "detections": detections},
        )


def re2_error_message(exc: Exception) -> str:
    """A config author's message for a pattern RE2 refused (its own detail, as text)."""
    detail = exc.args[0] if exc.args else exc
    text = detail.decode() if isinstance(detail, bytes) else str(detail)
    return f"invalid regular expression (RE2 syntax, no look-around or back-references): {text}"


def build(config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]) -> RegexCheck:
    key = f"rails.config.regex_detection.{stage.value}"
    file = config.file_for("rails")
    settings: Any = config.rail_settings.get("regex_detection", {}) or {}
    section = settings.get(stage.value) if isinstance(settings, Mapping) else None
    if not isinstance(section, Mapping) or not section.get("patterns"):
        raise ConfigError(f"'{name}' needs a non-empty list of patterns", file=file, key=key)
    patterns = section["patterns"]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError("patterns must be a list of strings", file=file, key=key)
    options = re2.Options()
    options.case_sensitive = not section.get("case_insensitive", False)
    matcher = re2.Set.SearchSet(options)
    for index, pattern in enumerate(patterns):
        try:
            re2.compile(pattern, options)
            matcher.Add(pattern)
        except re2.error as exc:
            raise ConfigError(
                re2_error_message(exc),
                file=file,
                key=f"{key}.patterns[{index}]",
            ) from exc
    matcher.Compile()
    return RegexCheck(name, stage, list(patterns), matcher)


FLOWS = {
    "regex check input": (Stage.INPUT, build),
    "regex check output": (Stage.OUTPUT, build),
}
