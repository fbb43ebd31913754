"""`context bloat detection on input`: stop user turns padded or stuffed to push the
system prompt out of the context, bury an instruction, or burn the token budget.

NeMo's rail (`nemoguardrails.library.context_bloat_detection`), with its settings under
`rails.config.context_bloat_detection` and its defaults:

- `max_chars` (5000): the size cap, in characters.
- `min_chars` (50): the three shape checks below skip shorter texts, where they mean nothing.
- `min_entropy` (3.5): the floor of Shannon entropy, in bits per character (English prose
  is about 4.0-4.5; padding falls below). Texts over 10,000 characters are measured on
  NeMo's sample: the first, middle and last 2,666 characters.
- `max_run_ratio` (0.1): the largest share of the text one run of a single character may
  take ("AAAA...", whitespace filler).
- `max_repetition_ratio` (0.4) with `ngram_size` (3): the largest share of the
  whitespace-separated word n-grams that may repeat an earlier one.
- `action` (reject): `reject` blocks at the first check crossed, in NeMo's order: size,
  entropy, run, repetition. `truncate` cuts a text over the size cap to `max_chars` (a
  rewrite) and blocks on the other checks, as NeMo documents it (NeMo's flow lets those
  through). `warn` lets everything through and logs what crossed.

This rail sees every request, so each measure runs in C rather than in a Python loop per
character: the entropy on a numpy histogram (of at most 10,000 characters, NeMo's sample),
runs by string searches over blocks, repetition on a set of word n-grams.

In the log, the action is NeMo's `context_bloat_detection(source="input",
text=$user_message)`, returning `{"is_bloat": bool, "action": ..., "reason": ...}`
(NeMo's result without the text and metrics).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rails.base import Action, CheckContext, Stage, Verdict, text_params
from rails.config import ConfigError, RailsConfig

log = logging.getLogger("railguard.rails")

SECTION = "rails.config.context_bloat_detection"
ACTIONS = ("reject", "truncate", "warn")
_ENTROPY_SAMPLE_THRESHOLD = 10_000  # NeMo's: longer texts are measured on a sample
_ENTROPY_SAMPLE_THIRD = 8_000 // 3
_RUN = re.compile(r"(.)\1*", re.DOTALL)  # one character and its repeats: no backtracking


@dataclass(frozen=True, slots=True)
class BloatSettings:
    max_chars: int = 5000
    min_chars: int = 50
    min_entropy: float = 3.5
    max_repetition_ratio: float = 0.4
    ngram_size: int = 3
    max_run_ratio: float = 0.1
    action: str = "reject"


# setting -> (type, lowest, highest), NeMo's bounds (max_chars > 0, the others inclusive)
_BOUNDS: dict[str, tuple[type, float, float]] = {
    "max_chars": (int, 1, math.inf),
    "min_chars": (int, 0, math.inf),
    "min_entropy": (float, 0.0, 8.0),
    "max_repetition_ratio": (float, 0.0, 1.0),
    "ngram_size": (int, 1, math.inf),
    "max_run_ratio": (float, 0.0, 1.0),
}


def shannon_entropy(text: str) -> float:
    """Bits per character, on NeMo's sample of long texts. The characters are counted by
    numpy (a histogram of the bytes, or of the code points when the text isn't ASCII):
    ten times faster than a Counter, and this rail sees every request."""
    if not text:
        return 0.0
    if len(text) > _ENTROPY_SAMPLE_THRESHOLD:
        third, middle = _ENTROPY_SAMPLE_THIRD, len(text) // 2
        text = text[:third] + text[middle - third // 2 : middle + third // 2] + text[-third:]
    if text.isascii():
        counts = np.bincount(np.frombuffer(text.encode("ascii"), dtype=np.uint8))
        counts = counts[counts > 0]
    else:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        counts = np.unique(codes, return_counts=True)[1]
    shares = counts / len(text)
    return float(-(shares * np.log2(shares)).sum())


def smallest_over(ratio: float, total: int) -> int:
    """The smallest count whose share of `total` is over `ratio`, exactly as NeMo's
    `count / total > ratio` decides it (no float rounding surprises)."""
    count = max(1, math.floor(ratio * total))
    while count > 1 and (count - 1) / total > ratio:
        count -= 1
    while count / total <= ratio:
        count += 1
    return count


def find_run(text: str, length: int) -> tuple[str, int] | None:
    """The first run of one character at least `length` long, as (character, its length).

    Such a run holds a whole aligned block of `length // 2` characters, so only blocks are
    tested and only uniform ones measured: linear time, without a step per character."""
    block = max(1, length // 2)
    measured_to = 0
    for start in range(0, len(text) - block + 1, block):
        char = text[start]
        if start < measured_to or text.count(char, start, start + block) != block:
            continue
        left = start  # the block before is not all `char`, so this takes < `block` steps
        while left > 0 and text[left - 1] == char:
            left -= 1
        run = _RUN.match(text, start)
        right = run.end() if run else start + block
        if right - left >= length:
            return char, right - left
        measured_to = right
    return None


def repetition_ratio(text: str, size: int) -> float:
    """NeMo's share of word n-grams that repeat an earlier one."""
    words = text.split()
    total = len(words) - size + 1
    if total < 1:
        return 0.0
    grams = set(zip(*(words[i:] for i in range(size)), strict=False))
    return (total - len(grams)) / total


class ContextBloat:
    uses_model = False
    action_name = "context_bloat_detection"

    def __init__(self, name: str, stage: Stage, settings: BloatSettings) -> None:
        self.name = name
        self.stage = stage
        self.action_params = text_params(stage)
        self.settings = settings
        self._clean = Verdict(Action.ALLOW, value=self._returned(None))
        self.rewrites = settings.action == "truncate"
        self._shape_checks: tuple[Callable[[str], str | None], ...] = (
            self._entropy,
            self._run,
            self._repetition,
        )

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        settings = self.settings
        size = len(text)
        findings: list[str] = []
        truncated = False
        if size > settings.max_chars:
            finding = f"size_cap_exceeded: {size} chars > max_chars {settings.max_chars}"
            if settings.action == "reject":
                return Verdict(Action.BLOCK, reason=finding, value=self._returned(finding))
            if settings.action == "truncate":
                text, truncated = text[: settings.max_chars], True
            findings.append(finding)
        if size >= settings.min_chars:  # NeMo compares the size before truncation
            for shape_check in self._shape_checks:
                crossed = shape_check(text)
                if crossed is None:
                    continue
                if settings.action != "warn":
                    return Verdict(Action.BLOCK, reason=crossed, value=self._returned(crossed))
                findings.append(crossed)
        if truncated:
            reason = f"{findings[0]}; truncated"
            return Verdict(Action.REWRITE, text=text, reason=reason, value=self._returned(reason))
        if findings:
            found = "; ".join(findings)
            log.warning("%s (action: warn): %s", self.name, found)
            return Verdict(Action.ALLOW, reason="warn: " + found, value=self._returned(found))
        return self._clean

    def _returned(self, reason: str | None) -> dict[str, Any]:
        return {"is_bloat": reason is not None, "action": self.settings.action, "reason": reason}

    def _entropy(self, text: str) -> str | None:
        entropy = shannon_entropy(text)
        if entropy >= self.settings.min_entropy:
            return None
        return f"low_entropy: {entropy:.3f} bits/char < min_entropy {self.settings.min_entropy}"

    def _run(self, text: str) -> str | None:
        if not text:
            return None
        limit = self.settings.max_run_ratio
        run = find_run(text, smallest_over(limit, len(text)))
        if run is None:
            return None
        char, length = run
        share = length / len(text)
        return f"long_run: {length} x {char!r} is {share:.3f} of the text > max_run_ratio {limit}"

    def _repetition(self, text: str) -> str | None:
        size, limit = self.settings.ngram_size, self.settings.max_repetition_ratio
        ratio = repetition_ratio(text, size)
        if ratio <= limit:
            return None
        return (
            f"high_repetition: {ratio:.3f} of {size}-grams repeated > max_repetition_ratio {limit}"
        )


def read_settings(config: RailsConfig) -> BloatSettings:
    """`rails.config.context_bloat_detection`, NeMo's defaults for what it leaves out."""
    file = config.file_for("rails")
    raw: Any = config.rail_settings.get("context_bloat_detection") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping of settings", file=file, key=SECTION)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "action":
            if value not in ACTIONS:
                raise ConfigError(
                    f"must be one of {', '.join(ACTIONS)}, not {value!r}",
                    file=file,
                    key=f"{SECTION}.action",
                )
            values[key] = value
        elif key in _BOUNDS:
            values[key] = _number(value, *_BOUNDS[key], file=file, key=f"{SECTION}.{key}")
        else:
            known = ", ".join(["action", *_BOUNDS])
            raise ConfigError(
                f"unknown setting (known: {known})", file=file, key=f"{SECTION}.{key}"
            )
    return BloatSettings(**values)


def _number(
    value: Any, kind: type, lowest: float, highest: float, *, file: str | None, key: str
) -> int | float:
    accepted = (int,) if kind is int else (int, float)
    what = "a whole number" if kind is int else "a number"
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise ConfigError(f"must be {what}, not {value!r}", file=file, key=key)
    if not lowest <= value <= highest:
        bounds = f">= {lowest:g}" if highest == math.inf else f"from {lowest:g} to {highest:g}"
        raise ConfigError(f"must be {what} {bounds}, not {value!r}", file=file, key=key)
    return kind(value)


def build(config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]) -> ContextBloat:
    return ContextBloat(name, stage, read_settings(config))


FLOWS = {"context bloat detection on input": (Stage.INPUT, build)}
