"""The text of a request the input rails read, and where their rewrites go back.

`railguard.input_scope` (rails/policy.py) picks the messages: the current user turn, every
user message, or every message the client sent. Every message counts whatever its role,
because a `system`, `developer` or `tool` message, a client-written earlier turn or a
prefilled assistant message reaches the model just as a user message does. Messages
railguard itself checked before (a thread's history, a signed state) are not read again.

From each message the rails read its `name` and its text (a string, or each text part of a
content array); the pieces are joined with a single space into the one text a stage checks,
so a phrase split across two messages or two parts is still one phrase to a literal
pattern ("ignore all" + "previous instructions"), and a model-backed rail gets one text,
one call. A rewrite (masking) is applied to each piece in place, so every message keeps its
shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rails.policy import InputScope


def current_user_turn(messages: list[dict[str, Any]]) -> tuple[list[int], int | None]:
    """Indexes of every user message since the last assistant message before them, and
    the index of a trailing assistant message (a bot answer to check) if there is one.

    All of them are checked, not only the last: two consecutive user messages can't
    smuggle an attack past the input rails.
    """
    end = len(messages)
    answer = None
    if end and messages[-1].get("role") == "assistant":
        answer = end - 1
        end -= 1
    users: list[int] = []
    for index in range(end - 1, -1, -1):
        role = messages[index].get("role")
        if role == "assistant":
            break
        if role == "user":
            users.append(index)
    users.reverse()
    return users, answer


def scoped_indexes(
    messages: list[dict[str, Any]], scope: InputScope, *, checked: int, answer: int | None
) -> list[int]:
    """The messages `scope` reads. The first `checked` were checked by railguard before;
    `answer` is a trailing assistant message the output rails check (check mode)."""
    if scope is InputScope.CURRENT_TURN:
        return current_user_turn(messages)[0]
    end = answer if answer is not None else len(messages)
    indexes = range(min(checked, end), end)
    if scope is InputScope.USER_MESSAGES:
        return [i for i in indexes if messages[i].get("role") == "user"]
    return list(indexes)


@dataclass(frozen=True, slots=True)
class Piece:
    """One text of one message: its `name`, its string content, or one text part."""

    index: int
    key: str  # "name" or "content"
    part: int | None  # the part's index in a content array
    text: str


def pieces(messages: list[dict[str, Any]], indexes: Sequence[int]) -> list[Piece]:
    found: list[Piece] = []
    for index in indexes:
        message = messages[index]
        name = message.get("name")
        if isinstance(name, str) and name:
            found.append(Piece(index, "name", None, name))
        content = message.get("content")
        if isinstance(content, str):
            if content:
                found.append(Piece(index, "content", None, content))
        elif isinstance(content, list):
            found.extend(
                Piece(index, "content", number, part["text"])
                for number, part in enumerate(content)
                if isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
                and part["text"]
            )
    return found


def joined(found: Sequence[Piece]) -> str:
    return " ".join(piece.text for piece in found)


def write_back(messages: list[dict[str, Any]], piece: Piece, text: str) -> None:
    """Put a rewritten piece in its message (a new dict: the request's own is not changed)."""
    message = messages[piece.index]
    if piece.part is None:
        messages[piece.index] = {**message, piece.key: text}
        return
    content = list(message["content"])
    content[piece.part] = {**content[piece.part], "text": text}
    messages[piece.index] = {**message, "content": content}
