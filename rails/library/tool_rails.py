"""`tool call validation` (tool output) and `tool result validation` (tool input).

NeMo runs tool rails as flows under `rails.tool_output.flows` (on the tool calls the
model makes) and `rails.tool_input.flows` (on the tool results the app sends back);
`options.rails.tool_output` / `tool_input` select them per request. These two are
railguard's own, local rails, with their settings under `rails.config.tool_validation`:

- `allowed_tools` (none): a list of tool names. When set, a call to any other tool is
  blocked even if the request declares it: the app can't widen the config's list.
- `validate_arguments` (true): a function call's `arguments` must be a JSON object that
  validates against the declared function's `parameters` JSON schema.
- `max_result_chars` (none): the largest text, in characters, one tool result may carry.

`tool call validation` checks each call of one answer (a stream's calls assembled the
way the `openai` SDK assembles them): it must name a tool the request declares in
`tools` (with its type: a `function` call needs a `function` tool of that name), one
`tool_choice` allows (`none` allows none; a named function or an `allowed_tools` list
allows those), and one in `allowed_tools`. Its arguments must parse as JSON, be an
object, and validate against the tool's schema (a tool without `parameters` takes any
object). A schema that is not valid JSON Schema blocks: the rail fails closed.

Schemas come from the request, so they are never trusted to be cheap or harmless:
`$ref` resolves only inside the schema (a remote URL is never fetched), `pattern`,
`patternProperties` and `additionalProperties` match with RE2 (linear time, so no
pattern can hang the server on a crafted argument; a pattern RE2 can't compile blocks),
and a schema mixing `unevaluatedProperties` with `patternProperties` is refused. Compiled
validators are kept in a small cache keyed by the schema, since apps resend the same
tools with every request.

`tool result validation` checks every `tool` message of the request: it must answer,
by `tool_call_id`, a call an earlier assistant message made and no earlier tool message
answered (an assistant message that reuses an id opens it again), its content must be a
string or a list of text parts, and no longer than `max_result_chars`.

NeMo has no action for these; in the log, their actions are railguard's
`validate_tool_calls` and `validate_tool_results` (no parameters: they read the request's
tools and messages), returning `{"is_blocked": bool, "reason": ...}` like NeMo's
`check_tool_call`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson
import re2
from jsonschema import Draft202012Validator, exceptions, validators
from referencing import Registry
from referencing.exceptions import Unresolvable

from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig

SECTION = "rails.config.tool_validation"
_KEYS = ("allowed_tools", "validate_arguments", "max_result_chars")
_REASON_CHARS = 300  # a reason quotes the model's output at most this much
_CACHE_SIZE = 256
_NO_REFERENCES: Registry[Any] = Registry()  # no retrieval: `$ref` stays inside the schema


@dataclass(frozen=True, slots=True)
class ToolSettings:
    allowed_tools: frozenset[str] | None = None
    validate_arguments: bool = True
    max_result_chars: int | None = None


_VALID = Verdict(Action.ALLOW, value={"is_blocked": False, "reason": None})


def _verdict(problem: str | None) -> Verdict:
    if problem is None:
        return _VALID
    reason = _short(problem)
    return Verdict(Action.BLOCK, reason=reason, value={"is_blocked": True, "reason": reason})


class ToolCallValidation:
    uses_model = False
    rewrites = False
    action_name = "validate_tool_calls"
    action_params: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, name: str, stage: Stage, settings: ToolSettings) -> None:
        self.name = name
        self.stage = stage
        self.settings = settings

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        problem = tool_call_problem(ctx.tool_calls, ctx.tools, ctx.tool_choice, self.settings)
        return _verdict(problem)


class ToolResultValidation:
    uses_model = False
    rewrites = False
    action_name = "validate_tool_results"
    action_params: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, name: str, stage: Stage, settings: ToolSettings) -> None:
        self.name = name
        self.stage = stage
        self.settings = settings

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        return _verdict(tool_result_problem(ctx.messages, self.settings))


# --- tool calls -------------------------------------------------------------------------


def declared_tools(tools: Sequence[Any]) -> dict[tuple[str, str], Any]:
    """(type, name) -> the tool's definition (a function's is its `function` object)."""
    declared: dict[tuple[str, str], Any] = {}
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        kind = tool.get("type", "function")
        body = tool.get(kind) if isinstance(kind, str) else None
        if isinstance(body, Mapping) and isinstance(body.get("name"), str):
            declared[(kind, body["name"])] = body
    return declared


def _choice_names(tool_choice: Any) -> frozenset[str] | None:
    """The tool names `tool_choice` allows; None when it doesn't narrow the declared tools."""
    if tool_choice == "none":
        return frozenset()
    if not isinstance(tool_choice, Mapping):
        return None  # "auto", "required", absent
    kind = tool_choice.get("type")
    if kind == "allowed_tools":
        allowed = tool_choice.get("allowed_tools")
        listed = allowed.get("tools") if isinstance(allowed, Mapping) else None
        if isinstance(listed, list):
            return frozenset(name for tool in listed if (name := _tool_name(tool)) is not None)
        return None
    name = _tool_name(tool_choice)
    return frozenset({name}) if name is not None else None


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, Mapping):
        return None
    kind = tool.get("type", "function")
    body = tool.get(kind) if isinstance(kind, str) else None
    name = body.get("name") if isinstance(body, Mapping) else tool.get("name")
    return name if isinstance(name, str) else None


def tool_call_problem(
    calls: Sequence[Any], tools: Sequence[Any], tool_choice: Any, settings: ToolSettings
) -> str | None:
    """Why these tool calls of one answer must not reach the client, or None."""
    declared = declared_tools(tools)
    chosen = _choice_names(tool_choice)
    for position, call in enumerate(calls):
        where = f"tool call {position}"
        if not isinstance(call, Mapping):
            return f"{where} is not an object"
        kind = call.get("type") or "function"
        body = call.get(kind) if isinstance(kind, str) else None
        name = body.get("name") if isinstance(body, Mapping) else None
        if not isinstance(kind, str) or not isinstance(body, Mapping) or not isinstance(name, str):
            return f"{where} names no tool"
        where = f"tool call {position} ({name!r})"
        definition = declared.get((kind, name))
        if definition is None:
            return f"{where} calls a {kind} the request does not declare in `tools`"
        if chosen is not None and name not in chosen:
            return f"{where} calls a tool the request's `tool_choice` does not allow"
        if settings.allowed_tools is not None and name not in settings.allowed_tools:
            return f"{where} calls a tool not in {SECTION}.allowed_tools"
        if kind == "function" and settings.validate_arguments:
            problem = arguments_problem(body.get("arguments"), definition.get("parameters"))
            if problem is not None:
                return f"{where}: {problem}"
    return None


def arguments_problem(arguments: Any, parameters: Any) -> str | None:
    """Why a function call's `arguments` don't fit the function's `parameters`, or None."""
    if isinstance(arguments, str):
        try:
            value = orjson.loads(arguments)
        except orjson.JSONDecodeError as exc:
            return f"the arguments are not valid JSON ({exc})"
    elif isinstance(arguments, Mapping):  # a server that sends them parsed
        value = arguments
    else:
        return "the call has no arguments"
    if not isinstance(value, Mapping):
        return "the arguments are not a JSON object"
    if parameters is None:
        return None
    try:
        validator = compiled_schema(parameters)
    except exceptions.SchemaError as exc:
        return f"the declared parameters are not a valid JSON schema ({exc.message})"
    except UnsafeSchema as exc:
        return f"the declared parameters can't be checked safely ({exc})"
    try:
        error = exceptions.best_match(validator.iter_errors(value))
    except UnsafeSchema as exc:
        return f"the declared parameters can't be checked safely ({exc})"
    except (Unresolvable, RecursionError) as exc:
        return f"the declared parameters can't be evaluated ({type(exc).__name__}: {exc})"
    if error is None:
        return None
    path = "".join(f"[{part!r}]" for part in error.absolute_path) or "the arguments"
    return f"{path} does not match the parameters schema: {error.message}"


# --- schemas ----------------------------------------------------------------------------


class UnsafeSchema(Exception):
    """A schema railguard won't evaluate: a regex RE2 can't run, or a feature that would
    match with a backtracking engine."""


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        raise UnsafeSchema(f"pattern {pattern!r} is not supported by RE2") from exc


def _pattern(validator: Any, pattern: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield exceptions.ValidationError(f"{_short(repr(instance))} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = _regex(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, extra: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    regexes = [_regex(p) for p in schema.get("patternProperties", {})]
    extras = sorted(
        key for key in instance if key not in properties and not any(r.search(key) for r in regexes)
    )
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif extra is False and extras:
        listed = ", ".join(repr(key) for key in extras)
        yield exceptions.ValidationError(f"additional properties are not allowed ({listed})")


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


@lru_cache(maxsize=16)
def _safe_class(base: Any) -> Any:
    """A validator class of the schema's draft with the regex keywords on RE2."""
    return validators.extend(base, _RE2_KEYWORDS)


def _uses(schema: Any, *keys: str) -> set[str]:
    """Which of `keys` appear as keywords anywhere in the schema."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            found.update(k for k in keys if k in node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


_compiled: OrderedDict[bytes, Any] = OrderedDict()


def compiled_schema(schema: Any) -> Any:
    """A validator for a `parameters` schema, compiled once per distinct schema."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    validator = _compiled.get(key)
    if validator is not None:
        _compiled.move_to_end(key)
        return validator
    if not isinstance(schema, Mapping):
        raise exceptions.SchemaError("the parameters must be a JSON object")
    base = validators.validator_for(schema, default=Draft202012Validator)
    base.check_schema(schema)
    if len(_uses(schema, "unevaluatedProperties", "patternProperties")) == 2:
        raise UnsafeSchema("unevaluatedProperties together with patternProperties")
    validator = _safe_class(base)(schema, registry=_NO_REFERENCES)
    _compiled[key] = validator
    if len(_compiled) > _CACHE_SIZE:
        _compiled.popitem(last=False)
    return validator


# --- tool results -----------------------------------------------------------------------


def tool_result_problem(messages: Sequence[Any], settings: ToolSettings) -> str | None:
    """Why the request's tool results must not go to the model, or None."""
    answered: dict[str, bool] = {}  # tool call id -> whether a tool message answered it
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, Mapping) and isinstance(call.get("id"), str):
                    answered[call["id"]] = False
            continue
        if role != "tool":
            continue
        where = f"messages[{position}]"
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            return f"{where} is a tool result without a tool_call_id"
        done = answered.get(call_id)
        if done is None:
            return f"{where} answers tool call {call_id!r}, which no earlier assistant message made"
        if done:
            return f"{where} answers tool call {call_id!r} a second time"
        answered[call_id] = True
        size = _text_size(message.get("content"))
        if size is None:
            return f"{where}: a tool result's content must be a string or a list of text parts"
        limit = settings.max_result_chars
        if limit is not None and size > limit:
            return (
                f"{where}: the tool result has {size} characters, over "
                f"{SECTION}.max_result_chars ({limit})"
            )
    return None


def _text_size(content: Any) -> int | None:
    """The characters of a string or of a list of text parts; None for anything else."""
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        return None
    size = 0
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text":
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        size += len(text)
    return size


# --- settings ---------------------------------------------------------------------------


def _short(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def parse_settings(config: RailsConfig) -> ToolSettings:
    file = config.file_for("rails")
    section = config.rail_settings.get("tool_validation")
    if section is None:
        return ToolSettings()
    if not isinstance(section, Mapping):
        raise ConfigError("must be a mapping", file=file, key=SECTION)
    unknown = sorted(str(k) for k in section if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r}; the settings are: {', '.join(_KEYS)}",
            file=file,
            key=f"{SECTION}.{unknown[0]}",
        )
    allowed = section.get("allowed_tools")
    if allowed is not None and (
        not isinstance(allowed, list) or not all(isinstance(n, str) and n for n in allowed)
    ):
        raise ConfigError("must be a list of tool names", file=file, key=f"{SECTION}.allowed_tools")
    validate = section.get("validate_arguments", True)
    if not isinstance(validate, bool):
        raise ConfigError("must be true or false", file=file, key=f"{SECTION}.validate_arguments")
    limit = section.get("max_result_chars")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError("must be an integer >= 1", file=file, key=f"{SECTION}.max_result_chars")
    return ToolSettings(
        allowed_tools=frozenset(allowed) if allowed is not None else None,
        validate_arguments=validate,
        max_result_chars=limit,
    )


def build_call_validation(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> ToolCallValidation:
    return ToolCallValidation(name, stage, parse_settings(config))


def build_result_validation(
    config: RailsConfig, name: str, stage: Stage, params: Mapping[str, str]
) -> ToolResultValidation:
    return ToolResultValidation(name, stage, parse_settings(config))


FLOWS = {
    "tool call validation": (Stage.TOOL_OUTPUT, build_call_validation),
    "tool result validation": (Stage.TOOL_INPUT, build_result_validation),
}
