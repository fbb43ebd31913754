"""Hypothesis strategies for request bodies: the whole chat-completions schema (OpenAI
fields, the `guardrails` object, the legacy top-level shape) and `/v1/checks`.

Bodies are mostly well typed, so requests get past validation and the rails, threads and
states run; a "chaos" level drawn per body swaps fields for anything at all (wrong types,
deep nesting, huge numbers, odd strings). `encode` writes JSON that Python's encoders
can't: numbers past 64 bits, lone surrogate escapes, invalid UTF-8, thousands of levels.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from proxy.request import MAX_DEPTH

ROLES = ["system", "user", "assistant", "tool", "developer", "function"]
ODD_ROLES = ["wizard", "context", "USER", "", "user ", "assistant\x00"]
TRIGGERS = [
    "secret",  # regex input rails
    "ignore previous",
    "stupid",  # the fake upstream's self check blocks it
    "forbidden",
    "my ssn is 123-45-6789",  # regex output rail (echoed back by the fake upstream)
    "call me at +1 415 555 0134",  # sensitive data masking
    "mail jo@example.com",
]
THREAD_IDS = ["thread-fuzz-0000000001", "thread-fuzz-0000000002", "thread-fuzz-0000000003"]
CALL_IDS = ["call_1", "call_2"]
TOOL_NAMES = ["get_weather", "get_time", "other"]
FLOW_NAMES = ["regex check input", "regex check output", "self check input", "nope"]


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: a number out of range, a broken escape, bad bytes."""

    text: bytes


@dataclass(frozen=True)
class Deep:
    """`leaf` inside `depth` arrays (or objects)."""

    depth: int
    leaf: Any
    objects: bool


def encode(value: Any) -> bytes:
    out: list[bytes] = []
    _write(value, out)
    return b"".join(out)


def _write(value: Any, out: list[bytes]) -> None:
    if isinstance(value, Raw):
        out.append(value.text)
    elif isinstance(value, Deep):
        out.append((b'{"k":' if value.objects else b"[") * value.depth)
        _write(value.leaf, out)
        out.append((b"}" if value.objects else b"]") * value.depth)
    elif isinstance(value, dict):
        out.append(b"{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(b",")
            _write(key, out)
            out.append(b":")
            _write(item, out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for index, item in enumerate(value):
            if index:
                out.append(b",")
            _write(item, out)
        out.append(b"]")
    elif isinstance(value, str):  # a lone surrogate becomes invalid UTF-8 bytes
        out.append(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    else:
        out.append(json.dumps(value).encode())


# JSON that Python's encoders don't write, but that is valid
ODD_TOKENS = [
    b"123456789012345678901234567890",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"-0",
    b"1E-400",
    b'"\\ud83d\\ude00"',
    b'"nul\\u0000byte"',
    b'"\\u2028\\u2029"',
]
# ... and what breaks the whole body: numbers out of range, lone surrogates, bad UTF-8
BROKEN_TOKENS = [
    b"1e999",
    b"NaN",
    b"Infinity",
    b'"\\ud800"',
    b'"a\\udfffb"',
    b'"\xff\xfe"',
    b'"\xc3"',
    b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"',
    b"[1,]",
    b"{",
    b"'single'",
]

# Strings from a pool cost one draw, where a generated one costs one per character.
ODD_TEXTS = [
    "",
    " ",
    "héllo wörld",
    "日本語のテキスト",
    "مرحبا بالعالم",
    "\u202eevil\u202c",
    "zero\u200bwidth",
    "e\u0301\u0301\u0301",
    "😀👍🏽👨‍👩‍👧",
    "\x00\x01\x1f\x7f",
    "line\nbreak\r\n\ttab",
    '"quoted" \\ back\\slash',
    "{{ user_input }}",
    "a" * 1000,
    "\U0010ffff\ufffe\uffff",
]
texts = st.one_of(
    st.sampled_from(TRIGGERS),
    st.sampled_from(ODD_TEXTS),
    st.text(st.characters(codec="utf-8"), max_size=6),
)
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 1e308, 5e-324]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
# depths around the limit, around orjson's own limits (254 to write, 1024 to read), and far
deeps = st.builds(
    Deep,
    depth=st.sampled_from(
        [*range(MAX_DEPTH - 4, MAX_DEPTH + 3), 250, 253, 254, 255, 1022, 1024, 1025, 5000]
    ),
    leaf=scalars,
    objects=st.booleans(),
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A value of one of the strategies, chosen in proportion to its weight (`one_of`
    treats its branches alike, and a branch given twice counts once)."""
    spots = st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)])
    return spots.flatmap(lambda strategy: strategy)


broken = st.one_of(st.sampled_from(BROKEN_TOKENS).map(Raw), surrogates)
anything = weighted(
    (4, json_values),
    (1, st.sampled_from([{}, [], "", 0])),
    (1, deeps),
    (1, st.sampled_from(ODD_TOKENS).map(Raw)),
    (1, broken),
)


CHAOS = range(4)
_TENTHS = st.integers(0, 9)
_COIN = st.booleans()
_TWENTIETHS = st.integers(0, 19)


def pick(draw: st.DrawFn, good: st.SearchStrategy[Any], chaos: int) -> Any:
    """A value of `good`, or, in a chaotic body, now and then anything at all."""
    if chaos and draw(_TENTHS) < chaos:
        return draw(anything)
    return draw(good)


def some_of(
    fields: dict[str, st.SearchStrategy[Any]], chaos: int, most: int = 3
) -> st.SearchStrategy[dict[str, Any]]:
    """Objects holding up to `most` of `fields`, each value picked. (Every draw costs
    hypothesis tens of microseconds: a few keys chosen cost less than one coin per key.)"""
    keys = st.lists(st.sampled_from(list(fields)), unique=True, max_size=most)

    @st.composite
    def objects(draw: st.DrawFn) -> dict[str, Any]:
        return {key: pick(draw, fields[key], chaos) for key in draw(keys)}

    return objects()


def per_chaos(build: Any) -> dict[int, st.SearchStrategy[Any]]:
    """One strategy per chaos level, built once (building them per draw costs more than
    drawing from them)."""
    return {chaos: build(chaos) for chaos in CHAOS}


text_part = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
image_part = st.fixed_dictionaries(
    {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": texts})}
)
content = st.one_of(
    texts, st.none(), st.lists(st.one_of(text_part, image_part, st.dictionaries(texts, scalars)))
)
arguments = st.sampled_from(
    [
        '{"city": "Paris", "unit": "c"}',
        '{"city": "Paris", "unit": "kelvin"}',
        '{"city": ""}',
        "{}",
        "[]",
        "null",
        '"text"',
        "{not json",
        "",
        '{"city": "Paris", "extra": 1}',
        '{"city": 5}',
        "[" * 300 + "]" * 300,
        '{"city": "\\ud800"}',
        '{"a": 1e999}',
    ]
)
tool_call = st.fixed_dictionaries(
    {
        "id": st.sampled_from(CALL_IDS),
        "type": st.sampled_from(["function", "function", "custom"]),
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(TOOL_NAMES), "arguments": arguments}
        ),
    }
)
schema_words = st.sampled_from(["object", "string", "integer", "array", "nonsense"])
schemas = st.recursive(
    st.one_of(
        st.just({"type": "object", "properties": {"city": {"type": "string"}}}),
        st.fixed_dictionaries({"type": schema_words}),
        st.fixed_dictionaries({"pattern": st.sampled_from(["^a+$", "(a+)+$", "[", "(?=x)", "é"])}),
        st.fixed_dictionaries(
            {"$ref": st.sampled_from(["#", "#/$defs/x", "http://example.com/s", "#/nope"])}
        ),
        st.fixed_dictionaries({"enum": st.lists(scalars, max_size=3)}),
        st.fixed_dictionaries({"minLength": numbers}),
        st.dictionaries(texts, scalars, max_size=2),
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.dictionaries(texts, inner, max_size=2)}
        ),
        st.fixed_dictionaries({"items": inner}),
        st.fixed_dictionaries({"additionalProperties": st.one_of(inner, st.booleans())}),
        st.fixed_dictionaries(
            {"patternProperties": st.dictionaries(st.sampled_from(["^a", "("]), inner, max_size=1)}
        ),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=2)}),
        st.fixed_dictionaries(
            {"$defs": st.fixed_dictionaries({"x": inner}), "$ref": st.just("#/$defs/x")}
        ),
    ),
    max_leaves=4,
)
tool_names = st.sampled_from(TOOL_NAMES)
_FUNCTION = st.just("function")
_COUNTS = {n: st.integers(0, n) for n in (1, 2, 3)}
_ONE_TO_THREE = st.integers(1, 3)
_TOOL_EXTRAS = per_chaos(
    lambda c: some_of({"description": texts, "parameters": schemas}, c, most=2)
)


@st.composite
def _tools(draw: st.DrawFn, chaos: int) -> list[Any]:
    def tool() -> dict[str, Any]:
        function = {"name": pick(draw, tool_names, chaos), **draw(_TOOL_EXTRAS[chaos])}
        return {"type": pick(draw, _FUNCTION, chaos), "function": function}

    return [tool() for _ in range(draw(_COUNTS[2]))]


TOOLS = per_chaos(_tools)
_ROLES = {0: st.sampled_from(ROLES), 1: st.sampled_from(ROLES + ODD_ROLES)}
_MESSAGE_EXTRAS = per_chaos(
    lambda c: some_of(
        {
            "content": content,
            "name": texts,
            "tool_calls": st.lists(tool_call, max_size=2),
            "tool_call_id": st.sampled_from(CALL_IDS),
        },
        c,
    )
)


@st.composite
def _messages(draw: st.DrawFn, chaos: int) -> list[Any]:
    def message() -> Any:
        if chaos and draw(_TWENTIETHS) < chaos:
            return draw(anything)
        fields: dict[str, Any] = {}
        if not (chaos and draw(_TWENTIETHS) == 0):  # now and then no role at all
            fields["role"] = pick(draw, _ROLES[min(chaos, 1)], chaos)
        fields.update(draw(_MESSAGE_EXTRAS[chaos]))
        if "content" not in fields and draw(_COIN):
            fields["content"] = draw(texts)
        return fields

    count = draw(_COUNTS[3] if chaos else _ONE_TO_THREE)
    result = [message() for _ in range(count)]
    if not chaos or draw(_COIN):  # most turns end on a user message
        result.append({"role": "user", "content": draw(texts)})
    return result


MESSAGES = per_chaos(_messages)
rail_selection = st.one_of(
    st.booleans(), st.lists(st.sampled_from([*FLOW_NAMES, "tool call validation"]), max_size=2)
)
_RAILS = {
    "input": rail_selection,
    "output": rail_selection,
    "retrieval": rail_selection,
    "dialog": st.booleans(),
    "tool_input": rail_selection,
    "tool_output": rail_selection,
}
_LOG = {
    "activated_rails": st.booleans(),
    "llm_calls": st.booleans(),
    "internal_events": st.booleans(),
    "colang_history": st.booleans(),
}
_LLM_PARAMS = st.dictionaries(
    st.sampled_from(["temperature", "max_tokens", "stream", "model", "messages", "n", "x"]),
    scalars,
    max_size=3,
)
OPTIONS = per_chaos(
    lambda c: some_of(
        {
            "rails": some_of(_RAILS, c, most=2),
            "llm_params": _LLM_PARAMS,
            "llm_output": st.booleans(),
            "output_vars": st.one_of(st.booleans(), st.lists(texts, max_size=2)),
            "log": some_of(_LOG, c, most=2),
        },
        c,
    )
)
_ONE = st.just(1)
_JUNK_PAYLOADS = st.one_of(texts, anything)
_SIGNATURES = st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64), texts)
_CONTEXTS = st.dictionaries(texts, json_values, max_size=3)


@st.composite
def _states(draw: st.DrawFn, ids: st.SearchStrategy[str], chaos: int) -> Any:
    """`{}`, a payload as railguard writes them (signed or not, with any messages), or junk."""
    kind = draw(_COUNTS[3])
    if kind == 0:
        return {}
    data: Any = {
        "config_id": pick(draw, ids, chaos),
        "messages": pick(draw, MESSAGES[chaos], chaos),
    }
    if chaos and draw(_TENTHS) == 0:
        data = draw(anything)
    payload = base64.urlsafe_b64encode(encode(data)).decode()
    state: dict[str, Any] = {
        "version": pick(draw, _ONE, chaos),
        "payload": draw(_JUNK_PAYLOADS) if chaos and draw(_TENTHS) < chaos else payload,
    }
    if kind >= 2:
        state["signature"] = pick(draw, _SIGNATURES, chaos)
    return state


_SELECTORS = {
    0: st.sampled_from([0, 1, 1, 1, 1, 2, 2]),
    1: st.sampled_from([0, 1, 1, 1, 1, 2, 2, 3]),
}
_THREAD_IDS = {
    0: st.sampled_from(THREAD_IDS),
    1: st.sampled_from([*THREAD_IDS, "short", "x" * 256, "é" * 16]),
}


@st.composite
def _guardrails(
    draw: st.DrawFn,
    ids: st.SearchStrategy[str],
    id_lists: st.SearchStrategy[list[str]],
    states: st.SearchStrategy[Any],
    chaos: int,
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    selector = draw(_SELECTORS[min(chaos, 1)])
    if selector in (1, 3):
        fields["config_id"] = pick(draw, ids, chaos)
    if selector in (2, 3):
        fields["config_ids"] = pick(draw, id_lists, chaos)
    memory = draw(_COUNTS[3] if chaos else _COUNTS[2])
    if memory in (1, 3):
        fields["thread_id"] = pick(draw, _THREAD_IDS[min(chaos, 1)], chaos)
    if memory in (2, 3):
        fields["state"] = pick(draw, states, chaos)
    if draw(_COIN):
        fields["context"] = pick(draw, _CONTEXTS, chaos)
    if draw(_COIN):
        fields["options"] = pick(draw, OPTIONS[chaos], chaos)
    return fields


_OPENAI_FIELDS = {
    "max_tokens": st.integers(1, 100),
    "temperature": numbers,
    "top_p": numbers,
    "stop": st.one_of(texts, st.lists(texts, max_size=2)),
    "presence_penalty": numbers,
    "frequency_penalty": numbers,
    "function_call": st.one_of(st.just("auto"), st.dictionaries(texts, scalars)),
    "logit_bias": st.dictionaries(texts, numbers, max_size=2),
    "logprobs": st.booleans(),
    "tool_choice": st.one_of(
        st.sampled_from(["none", "auto", "required"]),
        st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": tool_names})}
        ),
    ),
    "user": texts,
}
_OPENAI = per_chaos(lambda c: some_of({**_OPENAI_FIELDS, "tools": TOOLS[c]}, c, most=4))
_CHAOS_LEVELS = st.sampled_from([0, 0, 0, 1, 2, 3])
_MODELS = st.sampled_from(["m1", "gpt-4o"])


def chat_bodies(config_ids: list[str], model: bool = True) -> st.SearchStrategy[Any]:
    """JSON-able chat bodies (the Raw/Deep markers aside): nested `guardrails`, or legacy."""
    good_ids = st.sampled_from(config_ids)
    any_ids = st.sampled_from([*config_ids, "nope", "../open", ""])
    guardrails = {}
    for c in CHAOS:
        ids = any_ids if c else good_ids
        lists = st.lists(ids, min_size=1, max_size=3)
        guardrails[c] = _guardrails(ids, lists, _states(ids, c), c)

    @st.composite
    def bodies(draw: st.DrawFn) -> Any:
        chaos = draw(_CHAOS_LEVELS)
        body: dict[str, Any] = {}
        if model or draw(_COIN):
            body["model"] = pick(draw, _MODELS, chaos)
        body["messages"] = pick(draw, MESSAGES[chaos], chaos)
        if draw(_COIN):  # its own draw: streams take other paths than the rest together
            body["stream"] = pick(draw, _COIN, chaos)
        body.update(draw(_OPENAI[chaos]))
        fields = draw(guardrails[chaos])
        shape = draw(_COUNTS[3] if chaos else _COUNTS[2])
        if shape == 0:
            body["guardrails"] = fields
        elif shape == 1:
            body.update(fields)  # the legacy shape: the same fields at the top level
        elif shape == 2:
            body["guardrails"] = draw(anything) if chaos and draw(_TENTHS) < chaos else fields
        else:  # both shapes at once, or a `guardrails` that is not an object
            body.update(fields)
            body["guardrails"] = draw(anything)
        if chaos and draw(_TENTHS) == 0:
            body[draw(texts)] = draw(anything)  # an extra field nobody reads
        return body

    return bodies()


def _mangled(raw: bytes, cut: int, noise: bytes) -> bytes:
    return raw[: cut % (len(raw) + 1)] + noise


def http_bodies(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """The bytes on the wire: mostly an encoded body, else truncated, binary, not JSON,
    or JSON that is not an object."""
    encoded = bodies.map(encode)
    return weighted(
        (16, encoded),
        (1, st.builds(_mangled, encoded, st.integers(0, 10_000), st.binary(max_size=4))),
        (1, st.binary(max_size=64)),
        (
            1,
            st.sampled_from(
                [b"", b"null", b"[]", b"42", b'"text"', b"model=m1", b"\xef\xbb\xbf{}"]
            ),
        ),
        (1, anything.map(encode)),
    )


def _call(call_id: str, name: str, args: str, type_: str = "function") -> dict[str, Any]:
    return {"id": call_id, "type": type_, "function": {"name": name, "arguments": args}}


# What the healthy fake upstream answers (one draw from a pool: the answer only matters
# when a request gets that far): its echo, a text, or tool calls.
UPSTREAM_ANSWERS: list[dict[str, Any] | None] = [
    None,
    None,
    *({"content": text} for text in [*TRIGGERS, "héllo 日本語 😀", "", "a" * 1000]),
    *(
        {"tool_calls": [_call("call_1", name, args)]}
        for name in TOOL_NAMES
        for args in ('{"city": "Paris", "unit": "c"}', '{"city": 5}', "{not json", "[]")
    ),
    {"tool_calls": [_call("call_1", "get_weather", "{}"), _call("call_2", "get_time", "{}")]},
    {"tool_calls": [_call("call_1", "get_time", "{}", "custom")]},
]
upstream_answers = st.sampled_from(UPSTREAM_ANSWERS)
