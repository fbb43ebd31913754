"""What a request may change about a config's rails, and which messages its input rails read.

NeMo lets every request turn any stage off (`options.rails.output: false`, `[]`, a list
naming no real rail). In front of a model that must be the operator's choice, so here a
client may narrow or disable only the stages its config (or the server, by default) lists
in `railguard.client_rail_selection`; by default none. A request asking to skip a rail of
another stage is refused (SelectionForbidden: a 403 on the server), never silently run with
fewer rails, and never silently "corrected" either, so the client learns what it can't do.

`railguard.input_scope` says which of the request's messages the input rails read (see
rails/input_scope.py). Both settings are read here, at compile time, from the config's
`railguard` section; a combination of configs (`config_ids`, chosen by the client) gets the
strictest of its parts, so combining can't loosen a config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rails.base import Stage
from rails.config import ConfigError, RailsConfig

CLIENT_STAGES = (Stage.INPUT, Stage.OUTPUT, Stage.TOOL_INPUT, Stage.TOOL_OUTPUT)


class InputScope(StrEnum):
    """Which messages the input rails read; later members read more."""

    CURRENT_TURN = "current_turn"  # the user messages after the last assistant message
    USER_MESSAGES = "user_messages"  # every user message the client sent
    CLIENT_MESSAGES = "client_messages"  # every message the client sent, whatever its role


_SCOPE_ORDER = list(InputScope)


class SelectionForbidden(ValueError):
    """`options.rails.<stage>` would skip rails the config keeps out of the client's hands."""

    def __init__(self, stage: Stage, skipped: Sequence[str]) -> None:
        self.stage = stage
        self.skipped = tuple(skipped)
        super().__init__(
            f"This guardrails configuration does not let a request narrow or turn off its "
            f"{stage.value} rails, and `options.rails.{stage.value}` would skip: "
            f"{', '.join(self.skipped)}. Leave it out (or send true) to run them all."
        )


def parse_selectable(value: Any) -> frozenset[Stage]:
    """`none`, `all`, or a list (or comma-separated string) of stage names; ValueError if not."""
    if value == "none":
        return frozenset()
    if value == "all":
        return frozenset(CLIENT_STAGES)
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    names = {s.value: s for s in CLIENT_STAGES}
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be none, all, or a list of stages ({', '.join(names)})")
    unknown = [v for v in value if v not in names]
    if unknown:
        raise ValueError(
            f"unknown stage {unknown[0]!r}: the stages a client may narrow are "
            f"{', '.join(names)} (or none, or all)"
        )
    return frozenset(names[v] for v in value)


def parse_scope(value: Any) -> InputScope:
    try:
        return InputScope(value)
    except ValueError:
        raise ValueError(
            f"must be one of {', '.join(s.value for s in InputScope)}, not {value!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """The defaults are the safe ones: no stage in the client's hands, every client message
    read by the input rails."""

    selectable: frozenset[Stage] = frozenset()
    input_scope: InputScope = InputScope.CLIENT_MESSAGES

    def for_config(self, config: RailsConfig) -> ClientPolicy:
        """This policy (the server's default) with the config's own settings over it."""
        section: Mapping[str, Any] = config.railguard or {}
        selectable, scope = self.selectable, self.input_scope
        for key in ("client_rail_selection", "input_scope"):
            if key not in section:
                continue
            try:
                if key == "input_scope":
                    scope = parse_scope(section[key])
                else:
                    selectable = parse_selectable(section[key])
            except ValueError as exc:
                raise ConfigError(
                    str(exc), file=config.file_for("railguard"), key=f"railguard.{key}"
                ) from None
        return ClientPolicy(selectable, scope)

    @staticmethod
    def strictest(policies: Iterable[ClientPolicy]) -> ClientPolicy:
        """One policy for combined configs: only the stages every part lets clients narrow,
        and the widest input scope of any part."""
        parts = list(policies)
        selectable = frozenset(CLIENT_STAGES).intersection(*(p.selectable for p in parts))
        scope = max(
            (p.input_scope for p in parts), key=_SCOPE_ORDER.index, default=InputScope.CURRENT_TURN
        )
        return ClientPolicy(selectable, scope)
