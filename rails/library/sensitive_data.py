"""`detect sensitive data on input|output` and `mask sensitive data on input|output`.

NeMo runs these with Presidio and spaCy; railguard runs the native recognizers of
`rails.recognizers`, compiled at start-up. Settings are NeMo's, under
`rails.config.sensitive_data_detection`:

- `input` / `output`: `entities`, the entity names to look for; `mask_token`;
  `score_threshold` (accepted for compatibility: these recognizers don't score).
- `recognizers`: Presidio's no-code custom recognizers, each a `supported_entity` with
  `patterns` (`regex`, in RE2 syntax) and/or a `deny_list`. Their entity names may then
  be listed in `entities`. Scores and context words are not used: every match counts.

Detect blocks when any listed entity occurs; the reason names the types, never the values.
Mask rewrites each span to `<ENTITY_TYPE>`, which is what NeMo produces (Presidio's
`replace`; NeMo leaves `mask_token` unused), or to `mask_token` when the config sets one,
with `{entity}` in it standing for the type. No entities listed: as in NeMo, the rail finds
nothing, and a start-up warning says so.

In the log, the actions are NeMo's `detect_sensitive_data(source=..., text=$user_message)`,
returning whether anything was found, and `mask_sensitive_data(...)`, returning the text
after masking (as NeMo's do).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import re2

from rails.base import RETURNS_TEXT, Action, CheckContext, Stage, Verdict, text_params
from rails.config import ConfigError, RailsConfig
from rails.library.regex_check import re2_error_message
from rails.recognizers import (
    BUILTIN,
    Recognizer,
    Scanner,
    deny_list_recognizer,
    mask,
    pattern_recognizer,
    resolve,
)

log = logging.getLogger("railguard.rails")

SECTION = "rails.config.sensitive_data_detection"
_SECTION_KEYS = ("input", "output", "retrieval", "recognizers")
_STAGE_KEYS = ("entities", "mask_token", "score_threshold")


_NOTHING_FOUND = Verdict(Action.ALLOW, value=False)
_NOTHING_MASKED = Verdict(Action.ALLOW, value=RETURNS_TEXT)


class DetectSensitiveData:
    uses_model = False
    rewrites = False
    action_name = "detect_sensitive_data"

    def __init__(self, name: str, stage: Stage, scanner: Scanner) -> None:
        self.name = name
        self.stage = stage
        self.action_params = text_params(stage)
        self._scanner = scanner

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        findings = self._scanner.find(text)
        if not findings:
            return _NOTHING_FOUND
        # as masking sees them: the phone-like digit groups inside an IBAN are the IBAN
        found = {finding.entity for finding in resolve(findings)}
        reason = f"sensitive data: {', '.join(sorted(found))}"
        return Verdict(Action.BLOCK, reason=reason, value=True)


class MaskSensitiveData:
    uses_model = False
    rewrites = True
    action_name = "mask_sensitive_data"

    def __init__(self, name: str, stage: Stage, scanner: Scanner, mask_token: str | None) -> None:
        self.name = name
        self.stage = stage
        self.action_params = text_params(stage)
        self._scanner = scanner
        self._mask_token = mask_token

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        findings = self._scanner.find(text)
        if not findings:
            return _NOTHING_MASKED
        masked = mask(text, findings, self._replacement)
        types = ", ".join(sorted({finding.entity for finding in findings}))
        return Verdict(Action.REWRITE, text=masked, reason=f"masked: {types}", value=RETURNS_TEXT)

    def _replacement(self, entity: str) -> str:
        if self._mask_token is None:
            return f"<{entity}>"
        return self._mask_token.replace("{entity}", entity)


def _mapping(value: Any, file: str | None, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping", file=file, key=key)
    return value


def _strings(value: Any, file: str | None, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError("must be a list of strings", file=file, key=key)
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(
                f"must be a non-empty string, not {item!r}", file=file, key=f"{key}[{index}]"
            )
    return value


def _unknown_keys(
    section: Mapping[str, Any], known: Sequence[str], file: str | None, key: str
) -> None:
    for name in section:
        if name not in known:
            raise ConfigError(
                f"unknown setting (known: {', '.join(known)})", file=file, key=f"{key}.{name}"
            )


def read_custom(raw: Any, file: str | None) -> list[Recognizer]:
    """`recognizers`: Presidio's no-code format, the parts railguard runs."""
    key = f"{SECTION}.recognizers"
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("must be a list of recognizers", file=file, key=key)
    recognizers: list[Recognizer] = []
    for index, entry in enumerate(raw):
        entry_key = f"{key}[{index}]"
        entry = _mapping(entry, file, entry_key)
        entity = entry.get("supported_entity")
        if not isinstance(entity, str) or not entity:
            raise ConfigError("needs a supported_entity name", file=file, key=entry_key)
        patterns = entry.get("patterns") or []
        if not isinstance(patterns, list):
            raise ConfigError("must be a list of patterns", file=file, key=f"{entry_key}.patterns")
        deny_list = _strings(entry.get("deny_list"), file, f"{entry_key}.deny_list")
        if not patterns and not deny_list:
            raise ConfigError("needs patterns or a deny_list", file=file, key=entry_key)
        for number, pattern in enumerate(patterns):
            pattern_key = f"{entry_key}.patterns[{number}]"
            regex = _mapping(pattern, file, pattern_key).get("regex")
            if not isinstance(regex, str) or not regex:
                raise ConfigError("needs a regex", file=file, key=pattern_key)
            try:
                recognizers.append(pattern_recognizer(entity, regex))
            except re2.error as exc:
                raise ConfigError(
                    re2_error_message(exc), file=file, key=f"{pattern_key}.regex"
                ) from exc
        if deny_list:
            recognizers.append(deny_list_recognizer(entity, deny_list))
    return recognizers


def build_scanner(config: RailsConfig, name: str, stage: Stage) -> tuple[Scanner, str | None]:
    """The stage's scanner and mask token, from the settings; ConfigError if they're wrong."""
    file = config.file_for("rails")
    settings = _mapping(config.rail_settings.get("sensitive_data_detection"), file, SECTION)
    _unknown_keys(settings, _SECTION_KEYS, file, SECTION)
    custom = read_custom(settings.get("recognizers"), file)
    key = f"{SECTION}.{stage.value}"
    section = _mapping(settings.get(stage.value), file, key)
    _unknown_keys(section, _STAGE_KEYS, file, key)
    entities = _strings(section.get("entities"), file, f"{key}.entities")
    known = set(BUILTIN) | {recognizer.entity for recognizer in custom}
    for index, entity in enumerate(entities):
        if entity not in known:
            raise ConfigError(
                f"unknown entity {entity!r}; railguard detects {', '.join(sorted(BUILTIN))}, "
                "and the supported_entity of any custom recognizer",
                file=file,
                key=f"{key}.entities[{index}]",
            )
    mask_token = section.get("mask_token")
    if mask_token is not None and not isinstance(mask_token, str):
        raise ConfigError("must be a string", file=file, key=f"{key}.mask_token")
    threshold = section.get("score_threshold", 0.0)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise ConfigError("must be a number from 0 to 1", file=file, key=f"{key}.score_threshold")
    if not entities:
        log.warning(
            "config %r: %r has no %s.entities, so it finds nothing (as in NeMo)",
            config.id,
            name,
            key,
        )
    wanted = set(entities)
    recognizers = [r for entity in dict.fromkeys(entities) for r in BUILTIN.get(entity, ())]
    recognizers += [r for r in custom if r.entity in wanted]
    return Scanner(recognizers), mask_token


def build_detect(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> DetectSensitiveData:
    scanner, _ = build_scanner(config, name, stage)
    return DetectSensitiveData(name, stage, scanner)


def build_mask(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> MaskSensitiveData:
    scanner, mask_token = build_scanner(config, name, stage)
    return MaskSensitiveData(name, stage, scanner, mask_token)


FLOWS = {
    "detect sensitive data on input": (Stage.INPUT, build_detect),
    "detect sensitive data on output": (Stage.OUTPUT, build_detect),
    "mask sensitive data on input": (Stage.INPUT, build_mask),
    "mask sensitive data on output": (Stage.OUTPUT, build_mask),
}
