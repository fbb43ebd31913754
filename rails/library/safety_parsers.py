"""Reading safety models' answers: NeMo's output parsers, hardened for what models really say.

A parser turns an answer into a `SafetyVerdict` or raises `UnreadableAnswer`; an answer
we can't read is never a pass. Every parser first drops a reasoning trace (`<think>...`
blocks, or everything before a lone `</think>`); an unterminated `<think>` means the
trace was cut off by `max_tokens`, so the verdict never came.

Two answer shapes exist:
- fields, `User Safety: unsafe` (Nemotron lines) or `"User Safety": "unsafe"` (NemoGuard
  JSON, possibly fenced or followed by text): both read the same way, anywhere in the text;
- a verdict word at the start of a line (`safe`, `unsafe`, `yes`, `no`, `on-topic`, ...),
  optionally after a label (`Answer: safe`) and markdown, with categories after it on the
  same or the next line (`unsafe` / `S1,S10`). Preamble prose ("Let me think...") is skipped.
When an answer states its verdict more than once, every statement must agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


class UnreadableAnswer(ValueError):
    """The answer holds no verdict we can trust; the message says why."""


@dataclass(frozen=True, slots=True)
class SafetyVerdict:
    safe: bool
    categories: tuple[str, ...] = ()


Parser = Callable[[str], SafetyVerdict]

_THINK_BLOCK = re.compile(r"<(think(?:ing)?)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_THINK_END = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_THINK_START = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_DECORATION = "*_`#>\"'-. \t"  # markdown emphasis, headings, quotes and bullets around a word
_LABEL = re.compile(r"^[A-Za-z][\w /-]{0,30}:")  # "Answer:", "Final verdict:"
_CODES = re.compile(r"^[A-Za-z]{0,2}\d{1,3}$")  # category codes: S1, O3, 10
_MAX_CATEGORY_WORDS = 5  # "High Risk Gov Decision Making"; longer pieces are explanations


def strip_reasoning(answer: str) -> str:
    """The answer without its reasoning trace."""
    text = _THINK_BLOCK.sub("", answer)
    ends = list(_THINK_END.finditer(text))
    if ends:  # some servers drop the opening tag
        text = text[ends[-1].end() :]
    if _THINK_START.search(text):
        raise UnreadableAnswer("the reasoning trace never ended (is max_tokens too low?)")
    return text.strip()


def split_categories(text: str) -> tuple[str, ...]:
    """`S1, S10` / `S1 S10` / `Violence, Criminal Planning/Confessions` -> the names."""
    text = text.strip().strip(_DECORATION + ":")
    if not text:
        return ()
    pieces = re.split(r"[,;]", text)
    if len(pieces) == 1 and all(_CODES.match(word) for word in text.split()):
        pieces = text.split()
    return tuple(name for p in pieces if (name := p.strip().strip(_DECORATION).strip()))


def _lists_categories(text: str) -> bool:
    return all(len(name.split()) <= _MAX_CATEGORY_WORDS for name in split_categories(text))


# --- fields: "User Safety: unsafe", {"User Safety": "unsafe"} ------------------------


def _field_name(name: str) -> str:
    """A field's name and its colon, in JSON or line form, with any quotes or markdown."""
    words = r"[ _]+".join(map(re.escape, name.split()))
    return rf"(?<![\w-])[\"'*]*{words}[\"'*]*\s*[:=]"


def _field_parser(field: str, safe: str, unsafe: str) -> Parser:
    values = re.compile(rf"{_field_name(field)}[\s\"'*]*({safe}|{unsafe})(?![\w-])", re.IGNORECASE)

    def parse(answer: str) -> SafetyVerdict:
        text = strip_reasoning(answer)
        found = {match.lower() for match in values.findall(text)}
        if not found:
            raise UnreadableAnswer(f"no '{field}: {safe}|{unsafe}' in the answer")
        if len(found) > 1:
            raise UnreadableAnswer(f"'{field}' is both {safe} and {unsafe}")
        if found == {safe}:
            return SafetyVerdict(True)
        return SafetyVerdict(False, _listed_categories(text))

    return parse


_CATEGORIES_FIELD = re.compile(
    _field_name("Safety Categories") + r"""\s*(?:"([^"]*)"|'([^']*)'|\[([^\]]*)\]|([^\n}]*))""",
    re.IGNORECASE,
)


def _listed_categories(text: str) -> tuple[str, ...]:
    match = _CATEGORIES_FIELD.search(text)
    if match is None:
        return ()
    listed = next(group for group in match.groups() if group is not None)
    return split_categories(listed.replace('"', ",").replace("'", ","))


# --- a verdict word starting a line ----------------------------------------------------


class _LineVerdict:
    """Reads answers whose verdict is a word starting a line; `words` maps each word's
    regex to whether it means safe."""

    def __init__(self, words: Mapping[str, bool]) -> None:
        self._safe = list(words.values())
        alternatives = "|".join(f"({word})" for word in words)
        self._leading = re.compile(rf"^(?:{alternatives})(?![\w-])", re.IGNORECASE)
        self._anywhere = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
        self._names = "/".join(word.replace("[- ]?", "-") for word in words)

    def _means_safe(self, match: re.Match[str]) -> bool:
        return self._safe[(match.lastindex or 1) - 1]

    def _statement(self, line: str) -> re.Match[str] | None:
        clean = line.strip(_DECORATION)
        match = self._leading.match(clean)
        if match is None and _LABEL.match(clean):
            match = self._leading.match(_LABEL.sub("", clean, count=1).strip(_DECORATION))
        return match

    def read(self, answer: str) -> tuple[bool, str]:
        """(safe?, what follows the verdict: the rest of its line, else the next line)."""
        lines = [line for line in strip_reasoning(answer).splitlines() if line.strip()]
        meanings: set[bool] = set()
        after = ""
        for index, line in enumerate(lines):
            match = self._statement(line)
            if match is None:
                continue
            rest = match.string[match.end() :]
            meanings.add(self._means_safe(match))
            # "No, this is unsafe." contradicts itself; "Safe. A yes/no question." doesn't
            clause = re.split(r"[.!?]", rest, maxsplit=1)[0]
            meanings.update(map(self._means_safe, self._anywhere.finditer(clause)))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if not rest.strip(_DECORATION + ":") and self._statement(following) is None:
                rest = following
            after = rest if _lists_categories(rest) else ""
        if not meanings:
            raise UnreadableAnswer(f"no {self._names} verdict in the answer")
        if len(meanings) > 1:
            raise UnreadableAnswer("the answer gives contradictory verdicts")
        return meanings.pop(), after


_SAFE_OR_UNSAFE = _LineVerdict({"safe": True, "unsafe": False})
_CONTENT_SAFE = _LineVerdict({"safe": True, "no": True, "unsafe": False, "yes": False})
_TOPIC = _LineVerdict({"on[- ]?topic": True, "off[- ]?topic": False})


def _categorised(reader: _LineVerdict) -> Parser:
    def parse(answer: str) -> SafetyVerdict:
        safe, after = reader.read(answer)
        return SafetyVerdict(True) if safe else SafetyVerdict(False, split_categories(after))

    return parse


llama_guard = _categorised(_SAFE_OR_UNSAFE)
"""Llama Guard: `safe`, or `unsafe` with category codes on the next line."""

is_content_safe = _categorised(_CONTENT_SAFE)
"""NeMo's generic parser: `safe`/`no` allow, `unsafe`/`yes` block, categories may follow."""


def topic(answer: str) -> SafetyVerdict:
    """Topic control: `on-topic` allows, `off-topic` blocks."""
    return SafetyVerdict(_TOPIC.read(answer)[0])


CONTENT_SAFETY_PARSERS: Mapping[str, Parser] = {
    "is_content_safe": is_content_safe,
    # NemoGuard answers JSON, Nemotron Safety Guard lines: the field reader takes both.
    "nemoguard_parse_prompt_safety": _field_parser("User Safety", "safe", "unsafe"),
    "nemoguard_parse_response_safety": _field_parser("Response Safety", "safe", "unsafe"),
    "nemotron_content_safety_parse_prompt_safety": _field_parser("User Safety", "safe", "unsafe"),
    "nemotron_content_safety_parse_response_safety": _field_parser(
        "Response Safety", "safe", "unsafe"
    ),
    "nemotron_reasoning_parse_prompt_safety": _field_parser("Prompt harm", "unharmful", "harmful"),
    "nemotron_reasoning_parse_response_safety": _field_parser(
        "Response Harm", "unharmful", "harmful"
    ),
}
"""The `output_parser` names a content-safety prompt may give, as in NeMo."""
