"""Parse and validate a chat-completions request: only the parts railguard reads.

Every other field stays in the raw dict and reaches the upstream untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from proxy.errors import ApiError, invalid
from rails.options import DEFAULT_OPTIONS, GenerationOptions

LEGACY_KEYS = ("config_id", "config_ids", "thread_id", "context", "options", "state")
_Number = StrictFloat | StrictInt
Role = Literal["system", "user", "assistant", "tool", "developer", "function"]
ROLES: tuple[str, ...] = get_args(Role)

# Levels of arrays and objects a body may nest: real requests stay under 20 (tool schemas
# are the deepest part), and orjson writes 254 at most. The room between is for what
# railguard wraps around parts of a request when it writes them again (a state's payload,
# the response envelope), so anything accepted here can always be written.
MAX_DEPTH = 128
_HEADROOM = 254 - MAX_DEPTH


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role
    content: StrictStr | list[dict[str, Any]] | None = None


class GuardrailsRequest(BaseModel):
    """The spec's GuardrailsRequestOptions."""

    model_config = ConfigDict(extra="ignore")
    config_id: StrictStr | None = None
    config_ids: list[StrictStr] | None = Field(default=None, min_length=1)
    thread_id: StrictStr | None = Field(default=None, min_length=16, max_length=255)
    context: dict[str, Any] | None = None
    options: GenerationOptions | None = None
    state: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_config_selector(self) -> GuardrailsRequest:
        if self.config_id is not None and self.config_ids is not None:
            raise ValueError("`config_id` and `config_ids` are mutually exclusive: send only one.")
        return self


class ChatRequest(BaseModel):
    """The OpenAI fields railguard reads or the spec types; extra fields are not checked here."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    max_tokens: StrictInt | None = None
    temperature: _Number | None = None
    top_p: _Number | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: _Number | None = None
    frequency_penalty: _Number | None = None
    function_call: dict[str, Any] | StrictStr | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    guardrails: GuardrailsRequest | None = None


class _History(BaseModel):
    messages: list[Message]


@dataclass(slots=True)
class ParsedChat:
    body: dict[str, Any]  # the raw request, guardrails fields removed
    model: str
    stream: bool
    messages: list[dict[str, Any]]
    guardrails: GuardrailsRequest
    options: GenerationOptions
    body_changed: bool  # False when `body` equals the bytes received (forward them as-is)


# Pydantic puts the label of each member of a union into `loc` ('float', 'list[str]',
# 'Message'...); they are not fields, so they are kept out of the names clients see.
# Field names here are lower-case identifiers, never a type name.
_UNION_LABEL = re.compile(r"^(?:str|int|float|bool|bytes|none|list|dict|[A-Z]\w*)$|[\[\-]")


def _describe(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    parts = [p for p in first["loc"] if not (isinstance(p, str) and _UNION_LABEL.search(p))]
    loc = ".".join(str(p) for p in parts)
    msg = first["msg"]
    if first["type"] == "literal_error" and parts and parts[-1] == "role":
        return _role_problem(loc, first["input"]), loc
    if first["type"] == "missing":
        return f"Missing required field `{loc}`.", loc
    if first["type"] == "value_error":
        return msg.removeprefix("Value error, "), loc or None
    if loc == "guardrails.thread_id" and first["type"] in ("string_too_short", "string_too_long"):
        return "The `thread_id` must be between 16 and 255 characters long.", loc
    return f"Invalid field `{loc}`: {msg}.", loc


def _role_problem(loc: str, role: Any) -> str:
    roles = ", ".join(ROLES)
    if not isinstance(role, str):
        return f"Invalid field `{loc}`: a role is a string, one of {roles}."
    hint = " Context variables go in `guardrails.context`." if role == "context" else ""
    shown = role if len(role) <= 40 else role[:40] + "..."
    return f"Invalid field `{loc}`: {shown!r} is not a chat role; use one of {roles}.{hint}"


def too_deep(value: Any) -> bool:
    """True when `value` nests more than MAX_DEPTH levels. orjson is the cheap way to
    measure it: it refuses to write past its own limit, and the value is written inside
    the levels it must leave to spare (a walk in Python would cost more than the parse)."""
    for _ in range(_HEADROOM):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return True
    return False


def _too_deep_error(body: Any) -> ApiError:
    where = None
    if isinstance(body, dict):  # name the field when one field is too deep
        where = next((k for k, value in body.items() if too_deep([value]) and len(k) <= 64), None)
    field = f" (in `{where}`)" if where is not None else ""
    return invalid(
        f"Request body is nested too deeply{field}: at most {MAX_DEPTH} levels of arrays "
        "and objects are accepted.",
        param=where,
        code="too_deep",
    )


def messages_problem(messages: list[Any]) -> str | None:
    """What is wrong with messages not read from the request itself (a state's history),
    checked as the request's own are; None when they are fine."""
    try:
        _History.model_validate({"messages": messages})
    except ValidationError as exc:
        return _describe(exc)[0]
    return None


def parse_chat(raw: bytes, *, model_required: bool = True) -> ParsedChat:
    """The request, validated; raises a 422 ApiError that says what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # valid JSON, past orjson's 1024 levels
            raise _too_deep_error(None) from None
        raise invalid(f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object.", code="invalid_json")
    # A body with no more brackets than MAX_DEPTH can't nest deeper: counting bytes spares
    # almost every request the exact check (brackets inside strings only overcount).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(body):
        raise _too_deep_error(body)
    if not model_required:
        body.setdefault("model", "railguard-check")
    changed = False
    if "guardrails" not in body:
        legacy = {key: body.pop(key) for key in LEGACY_KEYS if key in body}
        if legacy:
            body["guardrails"] = legacy
            changed = True
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as exc:
        message, param = _describe(exc)
        raise invalid(message, param=param) from exc
    if "guardrails" in body:
        del body["guardrails"]
        changed = True
    for key in LEGACY_KEYS:
        if key in body:
            del body[key]
            changed = True
    guardrails = request.guardrails or GuardrailsRequest()
    options = guardrails.options or DEFAULT_OPTIONS
    if options.llm_params:
        # `stream` is the client's choice of answer shape, never an LLM parameter.
        params = {k: v for k, v in options.llm_params.items() if k != "stream"}
        body = {**params, **body}
        changed = True
    return ParsedChat(
        body=body,
        model=request.model,
        stream=request.stream,
        messages=body["messages"],
        guardrails=guardrails,
        options=options,
        body_changed=changed,
    )
