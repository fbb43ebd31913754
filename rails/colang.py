"""The sliver of Colang 1.0 railguard reads: the messages of `define bot` blocks.

Railguard runs no dialog flows, so everything else in a `.co` file is skipped;
`has_flows` only lets the loader report that flows were ignored.
"""

from __future__ import annotations

import re

_DEFINE_BOT = re.compile(r"define\s+bot\s+([^#]+?)\s*(?:#.*)?$")
_QUOTED = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(?:#.*)?$""")
_ESCAPE = re.compile(r"""\\(["'\\])""")
_FLOWS = re.compile(r"^(?:define\s+(?:flow|subflow|user)|flow)\b", re.MULTILINE)


def parse_bot_messages(text: str) -> dict[str, list[str]]:
    """Bot message name -> its quoted variants, in file order (repeated blocks add variants)."""
    messages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():  # a top-level line closes the previous block
            define = _DEFINE_BOT.match(stripped)
            current = messages.setdefault(define.group(1), []) if define else None
            continue
        quoted = _QUOTED.match(stripped)
        if current is not None and quoted:
            current.append(_ESCAPE.sub(r"\1", quoted.group(1)[1:-1]))
    return messages


def has_flows(text: str) -> bool:
    """Whether the text defines flows or user intents, which railguard does not run."""
    return _FLOWS.search(text) is not None
