"""Tool rails: `tool call validation` on the answer's tool calls (JSON and streams) and
`tool result validation` on the request's tool messages, through the HTTP API against the
fake upstream, selected by `options.rails.tool_output` / `tool_input`."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from rails.base import CheckContext
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails
from rails.library.tool_rails import (
    ToolSettings,
    arguments_problem,
    tool_call_problem,
    tool_result_problem,
)
from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import DONE, parsed, relayed, split_events
from upstream.wire import ToolCallAssembler, chunk, sse_event

REFUSAL = "I'm sorry, I can't respond to that."
CALL = "tool call validation"
RESULT = "tool result validation"
LOG = {"log": {"activated_rails": True}}

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMS,
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters
TOOLS = [WEATHER, CLOCK]
GOOD_ARGS = '{"city": "Paris", "unit": "c"}'

TOOL_RAILS = {
    "tool_input": {"flows": [RESULT]},
    "tool_output": {"flows": [CALL]},
}
CONFIGS: dict[str, dict[str, Any]] = {
    "tools": {"rails": TOOL_RAILS},
    "strict": {
        "rails": {
            **TOOL_RAILS,
            "config": {
                "tool_validation": {"allowed_tools": ["get_weather"], "max_result_chars": 20}
            },
        }
    },
    # tool rails next to text output rails that hold every event until checked
    "held": {
        "rails": {
            **TOOL_RAILS,
            "output": {
                "flows": ["regex check output"],
                "streaming": {
                    "enabled": True,
                    "chunk_size": 2,
                    "context_size": 1,
                    "stream_first": False,
                },
            },
            "config": {"regex_detection": {"output": {"patterns": ["bad phrase"]}}},
        }
    },
    # ... checked behind the events they send (stream_first), or the whole answer at the end
    "first": {
        "rails": {
            **TOOL_RAILS,
            "output": {
                "flows": ["regex check output"],
                "streaming": {"enabled": True, "chunk_size": 2, "context_size": 1},
            },
            "config": {"regex_detection": {"output": {"patterns": ["bad phrase"]}}},
        }
    },
    "whole": {
        "rails": {
            **TOOL_RAILS,
            "output": {"flows": ["regex check output"]},
            "config": {"regex_detection": {"output": {"patterns": ["bad phrase"]}}},
        }
    },
}
STREAM_CONFIGS = ["tools", "held", "first", "whole"]


def call(
    name: str = "get_weather", arguments: Any = GOOD_ARGS, call_id: str = "call_1"
) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_choices(*calls: dict[str, Any], content: str | None = None) -> list[dict[str, Any]]:
    """The `choices` of an upstream completion whose message makes these calls."""
    message = {"role": "assistant", "content": content, "tool_calls": list(calls)}
    return [{"index": 0, "message": message, "finish_reason": "tool_calls"}]


def tool_events(
    calls: list[tuple[str, str, str]],
    pieces: int = 1,
    content: list[str] | None = None,
    finish: bool = True,
) -> list[bytes]:
    """A stream of content deltas, then each call's first delta (id, name) and its arguments
    in `pieces` deltas, the finish, usage and [DONE], as OpenAI streams tool calls."""
    events = [sse_event(chunk("m1", "c-up", {"role": "assistant", "content": ""}, None, 7))]
    events += [sse_event(chunk("m1", "c-up", {"content": text}, None, 7)) for text in content or []]
    for index, (call_id, name, arguments) in enumerate(calls):
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(sse_event(chunk("m1", "c-up", {"tool_calls": [first]}, None, 7)))
        size = -(-len(arguments) // pieces) if arguments else 1
        for start in range(0, len(arguments), size):
            piece = {"index": index, "function": {"arguments": arguments[start : start + size]}}
            events.append(sse_event(chunk("m1", "c-up", {"tool_calls": [piece]}, None, 7)))
    if finish:
        events.append(sse_event(chunk("m1", "c-up", {}, "tool_calls", 7)))
        usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
        events.append(
            sse_event(
                {"id": "c-up", "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        )
        events.append(DONE)
    return events


async def post(
    http: aiohttp.ClientSession,
    base: str,
    config_id: str,
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = TOOLS,
    stream: bool = False,
    options: dict[str, Any] | None = None,
    **extra: Any,
) -> tuple[int, bytes]:
    body: dict[str, Any] = {
        "model": "m1",
        "messages": messages or [{"role": "user", "content": "Weather in Paris?"}],
        "stream": stream,
        "guardrails": {"config_id": config_id, "options": options or LOG},
        **extra,
    }
    if tools is not None:
        body["tools"] = tools
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        return response.status, await response.read()


def activated(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["guardrails"]["log"]["activated_rails"])


def stream_end(raw: bytes) -> dict[str, Any]:
    last = parsed(raw)[-2]
    assert isinstance(last, dict)
    return last


def tool_bytes(raw: bytes) -> list[bytes]:
    """The events carrying tool-call deltas."""
    return [e for e in split_events(raw) if b'"tool_calls":[' in e]


# --- tool calls, non-streaming --------------------------------------------------------


async def test_valid_call_passes_unchanged_and_is_logged(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    choices = tool_choices(call(), call("get_time", "{}", "call_2"))
    fake_upstream.next(extra={"choices": copy.deepcopy(choices)})
    status, raw = await post(http, base, "tools")
    assert status == 200
    data = orjson.loads(raw)
    assert data["choices"] == choices
    assert data["id"] == "chatcmpl-fake-123" and data["system_fingerprint"] == "fp_fake"
    [entry] = activated(data)
    assert entry["type"] == "tool_output" and entry["name"] == CALL
    assert entry["decisions"] == ["allow"] and entry["stop"] is False
    assert fake_upstream.main_calls[0].body["tools"] == TOOLS  # forwarded untouched


@pytest.mark.parametrize(
    ("bad_call", "reason"),
    [
        (call("delete_everything", "{}"), "does not declare"),
        (call(arguments='{"city": "Paris"'), "not valid JSON"),
        (call(arguments="city=Paris"), "not valid JSON"),
        (call(arguments=""), "not valid JSON"),
        (call(arguments='["Paris"]'), "not a JSON object"),
        (call(arguments='{"unit": "c"}'), "'city' is a required property"),
        (call(arguments='{"city": "Paris", "unit": "kelvin"}'), "['unit']"),
        (call(arguments='{"city": ""}'), "['city']"),
        (call(arguments='{"city": "Paris", "rm": "-rf"}'), "additional properties"),
        (call("get_time", "null"), "not a JSON object"),
        ({"id": "x", "type": "function", "function": {"arguments": "{}"}}, "names no tool"),
    ],
)
async def test_bad_call_is_replaced_by_the_refusal(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    bad_call: dict[str, Any],
    reason: str,
) -> None:
    base = await start_railguard(CONFIGS)
    # a valid call next to the bad one: the whole answer is blocked, not one call
    fake_upstream.next(extra={"choices": tool_choices(call(call_id="ok"), bad_call)})
    status, raw = await post(http, base, "tools", options={**LOG, "output_vars": True})
    assert status == 200
    data = orjson.loads(raw)
    [choice] = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": REFUSAL}
    assert choice["finish_reason"] == "stop"
    [entry] = activated(data)
    assert entry["type"] == "tool_output" and entry["stop"] is True
    assert entry["decisions"] == ["block"]
    assert reason in entry["additional_info"]["reason"]
    assert "tool call 1" in entry["additional_info"]["reason"]
    output = data["guardrails"]["output_data"]
    assert output["triggered_output_rail"] == CALL and output["bot_message"] == REFUSAL


async def test_calls_need_declared_tools_and_respect_tool_choice(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"tools": None}, False),  # nothing declared: no call is allowed
        ({"tool_choice": "none"}, False),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, False),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, True),
        ({"tool_choice": "required"}, True),
        (
            {
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {
                        "mode": "auto",
                        "tools": [{"type": "function", "function": {"name": "get_time"}}],
                    },
                }
            },
            False,
        ),
        (
            {"tools": [{"type": "custom", "custom": {"name": "get_weather"}}]},
            False,
        ),  # type must match
    ]
    for extra, passes in cases:
        fake_upstream.next(extra={"choices": tool_choices(call())})
        _, raw = await post(http, base, "tools", **{"tools": TOOLS, **extra})
        message = orjson.loads(raw)["choices"][0]["message"]
        assert ("tool_calls" in message) is passes, extra


async def test_allowed_tools_setting_narrows_what_the_request_declares(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(extra={"choices": tool_choices(call())})
    _, raw = await post(http, base, "strict")
    assert orjson.loads(raw)["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    fake_upstream.next(
        extra={"choices": tool_choices(call("get_time", "{}"))}
    )  # declared, not allowed
    _, raw = await post(http, base, "strict")
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert "allowed_tools" in activated(data)[0]["additional_info"]["reason"]


async def test_option_tool_output_false_or_other_names_skip_the_check(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, client_rail_selection="tool_output,output")
    undeclared = tool_choices(call("delete_everything", "not json"))
    for selection in (False, ["some other rail"]):
        fake_upstream.next(extra={"choices": copy.deepcopy(undeclared)})
        options = {**LOG, "rails": {"tool_output": selection}}
        _, raw = await post(http, base, "tools", options=options)
        data = orjson.loads(raw)
        assert data["choices"] == undeclared
        assert activated(data) == []
    fake_upstream.next(extra={"choices": copy.deepcopy(undeclared)})
    options = {**LOG, "rails": {"tool_output": [CALL], "output": False}}
    _, raw = await post(http, base, "tools", options=options)
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == REFUSAL


async def test_answers_without_tool_calls_are_not_checked(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    _, raw = await post(http, base, "tools")
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == "echo: Weather in Paris?"
    assert activated(data) == []


async def test_remote_ref_in_a_schema_is_never_fetched(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fetched: list[dict[str, Any]] = []

    async def serve(body: dict[str, Any]) -> tuple[int, Any]:
        fetched.append(body)
        return 200, {"type": "string"}

    fake_upstream.route("/schema.json", serve)
    base = await start_railguard(CONFIGS)
    remote = fake_upstream.url.removesuffix("/v1") + "/schema.json"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"$ref": remote}}},
            },
        }
    ]
    fake_upstream.next(extra={"choices": tool_choices(call())})
    _, raw = await post(http, base, "tools", tools=tools)
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert "can't be evaluated" in activated(data)[0]["additional_info"]["reason"]
    assert fetched == []
    assert [r.path for r in fake_upstream.received] == ["/v1/chat/completions"]


async def test_schema_pattern_runs_in_linear_time(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`^(a+)+$` against 'aaa...ab' takes exponential time with a backtracking engine."""
    base = await start_railguard(CONFIGS)
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "pattern": "^(a+)+$"}},
        "patternProperties": {"^(x+)+$": {"type": "integer"}},
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    evil = orjson.dumps({"city": "a" * 5000 + "!", "x" * 5000 + "!": 1}).decode()
    fake_upstream.next(extra={"choices": tool_choices(call(arguments=evil))})
    t0 = time.perf_counter()
    _, raw = await post(http, base, "tools", tools=tools)
    assert time.perf_counter() - t0 < 2
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == REFUSAL
    reason = activated(data)[0]["additional_info"]["reason"]
    assert "does not match" in reason or "additional properties" in reason
    fine = orjson.dumps({"city": "aaaa", "xx": 3}).decode()
    fake_upstream.next(extra={"choices": tool_choices(call(arguments=fine))})
    _, raw = await post(http, base, "tools", tools=tools)
    assert "tool_calls" in orjson.loads(raw)["choices"][0]["message"]


# --- tool calls, streaming ------------------------------------------------------------


@pytest.mark.parametrize("config_id", STREAM_CONFIGS)
@pytest.mark.parametrize("pieces", [1, 7, 40])
async def test_valid_streamed_call_arrives_byte_identical(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
    pieces: int,
) -> None:
    base = await start_railguard(CONFIGS)
    sent = tool_events(
        [("call_1", "get_weather", GOOD_ARGS), ("call_2", "get_time", "{}")],
        pieces,
        content=["Let ", "me ", "check."],
    )
    fake_upstream.next(chunks=sent)
    status, raw = await post(http, base, config_id, stream=True)
    assert status == 200
    assert relayed(raw) == sent[:-1]
    end = stream_end(raw)
    assert "error" not in end
    entries = [e for e in end["guardrails"]["log"]["activated_rails"] if e["type"] == "tool_output"]
    assert [(e["name"], e["decisions"], e["additional_info"]) for e in entries] == [
        (CALL, ["allow"], {"choice": 0})
    ]


@pytest.mark.parametrize("config_id", STREAM_CONFIGS)
@pytest.mark.parametrize(
    ("calls", "reason"),
    [
        ([("call_1", "delete_everything", "{}")], "does not declare"),
        ([("call_1", "get_weather", '{"city": "Par')], "not valid JSON"),
        (
            [("call_1", "get_weather", GOOD_ARGS), ("call_2", "get_weather", '{"unit": "c"}')],
            "required",
        ),
    ],
)
async def test_bad_streamed_call_is_blocked_and_never_sent(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
    calls: list[tuple[str, str, str]],
    reason: str,
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(chunks=tool_events(calls, pieces=12, content=["Sure."]))
    status, raw = await post(http, base, config_id, stream=True)
    assert status == 200
    assert tool_bytes(raw) == []
    assert split_events(raw)[-1] == DONE
    end = stream_end(raw)
    assert end["error"] == {
        "message": f"Blocked by {CALL} rails.",
        "type": "guardrails_violation",
        "param": CALL,
        "code": "content_blocked",
    }
    [entry] = [e for e in end["guardrails"]["log"]["activated_rails"] if e["type"] == "tool_output"]
    assert entry["stop"] is True and reason in entry["additional_info"]["reason"]


async def test_streamed_call_is_held_until_complete(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Text before the call goes out at once; the call's deltas only once the upstream
    finished it and it passed, however long that takes."""
    base = await start_railguard(CONFIGS)
    events = tool_events([("call_1", "get_weather", GOOD_ARGS)], pieces=10, content=["Checking."])
    # the stream stalls after the last argument delta, before the finish
    head, tail = events[:-3], events[-3:]
    fake_upstream.next(chunks=head, stall=0.6)
    arrivals: list[tuple[float, bytes]] = []
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": TOOLS,
        "guardrails": {"config_id": "tools"},
    }
    t0 = time.perf_counter()
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        async for data in response.content.iter_any():
            arrivals.append((time.perf_counter() - t0, data))
    raw = b"".join(data for _, data in arrivals)
    text_at = next(t for t, data in arrivals if b"Checking." in data)
    tool_at = next(t for t, data in arrivals if b'"tool_calls":[' in data)
    assert text_at < 0.4 <= 0.55 < tool_at  # held through the stall
    # ended without a finish: validated at the end of the stream, then released whole
    assert split_events(raw)[: len(head)] == head
    assert b"tool_calls" in tail[0] and tail[-1] == DONE


async def test_split_arguments_are_validated_assembled(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Each delta alone is not JSON; the assembled arguments are, and pass. A call whose
    arguments only turn bad in the last delta is blocked with nothing sent."""
    base = await start_railguard(CONFIGS)
    fake_upstream.next(
        chunks=tool_events([("call_1", "get_weather", GOOD_ARGS)], pieces=len(GOOD_ARGS))
    )
    _, raw = await post(http, base, "tools", stream=True)
    assert "error" not in stream_end(raw)
    assert len(tool_bytes(raw)) == len(GOOD_ARGS) + 1
    bad_end = GOOD_ARGS[:-1] + ', "extra": 1}'
    fake_upstream.next(
        chunks=tool_events([("call_1", "get_weather", bad_end)], pieces=len(bad_end))
    )
    _, raw = await post(http, base, "tools", stream=True)
    assert stream_end(raw)["error"]["param"] == CALL
    assert tool_bytes(raw) == []


async def test_stream_option_tool_output_false_passes_bad_call(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, client_rail_selection="tool_output")
    sent = tool_events([("call_1", "delete_everything", "nope")], pieces=3)
    fake_upstream.next(chunks=sent)
    status, raw = await post(
        http, base, "tools", stream=True, options={"rails": {"tool_output": False}}
    )
    assert status == 200
    assert relayed(raw) == sent[:-1]


async def test_upstream_dying_mid_call_never_sends_the_partial_call(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    events = tool_events([("call_1", "get_weather", GOOD_ARGS)], pieces=8, content=["One."])
    fake_upstream.next(chunks=events, die_after=6)
    _, raw = await post(http, base, "tools", stream=True)
    assert tool_bytes(raw) == []
    assert b"One." in raw
    assert stream_end(raw)["error"]["param"] == CALL


# --- tool results (tool input) --------------------------------------------------------


def conversation(
    *results: dict[str, Any], issued: tuple[str, ...] = ("call_1", "call_2")
) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call(call_id=i) for i in issued],
        },
        *results,
    ]


def result(call_id: str, content: Any = "18 C, sunny") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


async def test_valid_tool_results_reach_the_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    messages = conversation(result("call_1"), result("call_2", [{"type": "text", "text": "12:00"}]))
    status, raw = await post(http, base, "tools", messages=messages)
    assert status == 200
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"].startswith("echo: ")
    assert fake_upstream.main_calls[0].body["messages"] == messages
    [entry] = activated(data)
    assert (entry["type"], entry["name"], entry["decisions"]) == ("tool_input", RESULT, ["allow"])


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (conversation(result("call_9")), "'call_9', which no earlier assistant message made"),
        (conversation(result("call_1"), result("call_1")), "'call_1' a second time"),
        (
            conversation(result("call_1"), {"role": "tool", "content": "x"}),
            "without a tool_call_id",
        ),
        (
            conversation(
                result("call_1", [{"type": "image_url", "image_url": {"url": "http://x"}}])
            ),
            "list of text parts",
        ),
        (conversation(result("call_1", [{"type": "text", "text": 5}])), "list of text parts"),
        (conversation(result("call_1", None)), "list of text parts"),
        # the id is issued only after the result that answers it
        ([{"role": "user", "content": "hi"}, result("call_1"), *conversation()[1:]], "no earlier"),
        # a later user turn does not reopen an answered call
        (
            [
                *conversation(result("call_1")),
                {"role": "user", "content": "and?"},
                result("call_1"),
            ],
            "second time",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_bad_tool_results_are_blocked_before_the_upstream(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    messages: list[dict[str, Any]],
    reason: str,
    stream: bool,
) -> None:
    base = await start_railguard(CONFIGS)
    status, raw = await post(http, base, "tools", messages=messages, stream=stream)
    assert status == 200
    assert fake_upstream.main_calls == []
    if stream:
        events = parsed(raw)
        assert events[0]["choices"][0]["delta"]["content"] == REFUSAL
        assert events[-1] == "[DONE]"
        log = events[-2]["guardrails"]["log"]
    else:
        data = orjson.loads(raw)
        assert data["choices"][0]["message"]["content"] == REFUSAL
        log = data["guardrails"]["log"]
    [entry] = log["activated_rails"]
    assert entry["type"] == "tool_input" and entry["stop"] is True
    assert reason in entry["additional_info"]["reason"]


async def test_reused_call_ids_open_again_with_each_assistant_message(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Some servers number calls per answer (`call_0` every time): each answer's calls can
    be answered once."""
    base = await start_railguard(CONFIGS)
    turn = conversation(result("call_0"), issued=("call_0",))
    messages = [*turn, {"role": "assistant", "content": "It is sunny."}, *turn]
    status, _ = await post(http, base, "tools", messages=messages)
    assert status == 200 and len(fake_upstream.main_calls) == 1


async def test_tool_result_size_cap_and_tool_input_selection(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, client_rail_selection="tool_input")
    long = conversation(result("call_1", "x" * 21))
    _, raw = await post(http, base, "strict", messages=long)
    data = orjson.loads(raw)
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert "max_result_chars (20)" in activated(data)[0]["additional_info"]["reason"]
    assert fake_upstream.main_calls == []
    _, raw = await post(http, base, "strict", messages=conversation(result("call_1", "x" * 20)))
    assert len(fake_upstream.main_calls) == 1
    # deselected: the bad results go through
    bad = conversation(result("call_9"))
    _, raw = await post(
        http, base, "tools", messages=bad, options={**LOG, "rails": {"tool_input": False}}
    )
    assert len(fake_upstream.main_calls) == 2 and activated(orjson.loads(raw)) == []


async def test_checks_endpoint_runs_tool_rails(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)

    async def check(messages: list[dict[str, Any]], tools: list[Any] = TOOLS) -> dict[str, Any]:
        body = {"messages": messages, "tools": tools, "guardrails": {"config_id": "tools"}}
        async with http.post(f"{base}/v1/checks", json=body) as response:
            return dict(await response.json())

    assert (await check(conversation(result("call_9"))))["rail"] == RESULT
    answer = {"role": "assistant", "content": None, "tool_calls": [call("rm", "{}")]}
    assert (await check([{"role": "user", "content": "hi"}, answer]))["rail"] == CALL
    answer["tool_calls"] = [call()]
    assert (await check([{"role": "user", "content": "hi"}, answer]))["status"] == "passed"


async def test_metrics_count_tool_rail_verdicts(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(extra={"choices": tool_choices(call("nope", "{}"))})
    await post(http, base, "tools")
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    assert (
        'railguard_rail_checks_total{config_id="tools",rail="tool call validation",'
        'stage="tool_output",verdict="block"}' in text
    )
    assert 'railguard_requests_total{config_id="tools",model="m1",outcome="blocked_output"' in text


# --- the openai SDK as the client -----------------------------------------------------


async def test_openai_sdk_tool_calls(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard(CONFIGS)
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
    guard = {"guardrails": {"config_id": "tools"}}
    fake_upstream.next(extra={"choices": tool_choices(call())})
    reply = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        extra_body=guard,
    )
    [made] = reply.choices[0].message.tool_calls or []
    assert made.function.name == "get_weather"
    assert orjson.loads(made.function.arguments) == {"city": "Paris", "unit": "c"}

    fake_upstream.next(chunks=tool_events([("call_1", "get_weather", GOOD_ARGS)], pieces=9))
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        stream=True,
        extra_body=guard,
    )
    arguments = ""
    async for part in stream:
        for choice in part.choices:
            for delta in choice.delta.tool_calls or []:
                arguments += (delta.function.arguments if delta.function else None) or ""
    assert orjson.loads(arguments) == {"city": "Paris", "unit": "c"}

    fake_upstream.next(chunks=tool_events([("call_1", "get_weather", '{"city": 3}')], pieces=4))
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS,
        stream=True,
        extra_body=guard,
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        async for part in stream:
            seen.append(part)
    assert caught.value.message == f"Blocked by {CALL} rails."
    assert all(not c.delta.tool_calls for part in seen for c in part.choices)

    refused = await sdk.chat.completions.create(
        model="m1",
        messages=conversation(result("call_7")),
        tools=TOOLS,
        extra_body=guard,
    )
    assert refused.choices[0].message.content == REFUSAL


# --- config ---------------------------------------------------------------------------


def test_config_reads_tool_flows_and_rejects_unknown_ones() -> None:
    config = RailsConfig.parse_object({"rails": TOOL_RAILS})
    assert config.tool_input_flows == (RESULT,) and config.tool_output_flows == (CALL,)
    assert config.ignored == ()
    guardrails = Guardrails(config)
    assert [r.rail.name for r in guardrails.tool_output] == [CALL]
    assert [r.rail.name for r in guardrails.tool_input] == [RESULT]
    with pytest.raises(
        ConfigError,
        match=r"rails\.tool_output\.flows\[0\]: unknown tool_output rail flow 'tool call check'; railguard implements: tool call validation",
    ):
        Guardrails(
            RailsConfig.parse_object({"rails": {"tool_output": {"flows": ["tool call check"]}}})
        )
    with pytest.raises(ConfigError, match="unknown tool_input rail flow 'tool call validation'"):
        Guardrails(RailsConfig.parse_object({"rails": {"tool_input": {"flows": [CALL]}}}))
    with pytest.raises(ConfigError, match=r"rails\.tool_output: must be a mapping"):
        RailsConfig.parse_object({"rails": {"tool_output": [CALL]}})


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"allowed_tools": "get_weather"}, "allowed_tools"),
        ({"allowed_tools": [""]}, "allowed_tools"),
        ({"validate_arguments": "yes"}, "validate_arguments"),
        ({"max_result_chars": 0}, "max_result_chars"),
        ({"max_result_chars": True}, "max_result_chars"),
        ({"allowed_tool": ["x"]}, "allowed_tool"),
    ],
)
def test_bad_settings_are_startup_errors(settings: dict[str, Any], key: str) -> None:
    raw = {"rails": {**TOOL_RAILS, "config": {"tool_validation": settings}}}
    with pytest.raises(ConfigError, match=rf"rails\.config\.tool_validation\.{key}"):
        Guardrails(RailsConfig.parse_object(raw))


# --- the checks themselves, without a server ------------------------------------------


def test_validate_arguments_false_checks_names_only() -> None:
    lax = ToolSettings(validate_arguments=False)
    assert tool_call_problem([call(arguments="not json")], TOOLS, None, lax) is None
    assert tool_call_problem([call("nope", "{}")], TOOLS, None, lax) is not None
    assert tool_call_problem([call(arguments="not json")], TOOLS, None, ToolSettings()) is not None


def test_arguments_problem_on_schemas() -> None:
    assert arguments_problem({"city": "Oslo"}, WEATHER_PARAMS) is None  # already parsed
    assert arguments_problem(None, WEATHER_PARAMS) == "the call has no arguments"
    assert arguments_problem('{"a": 1}', None) is None
    bad_schema = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    assert "not a valid JSON schema" in (arguments_problem('{"a": 1}', bad_schema) or "")
    lookahead = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}
    assert "not supported by RE2" in (arguments_problem('{"a": "x"}', lookahead) or "")
    local_ref = {
        "$defs": {"c": {"type": "string"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/c"}},
    }
    assert arguments_problem('{"a": "x"}', local_ref) is None
    assert "['a']" in (arguments_problem('{"a": 1}', local_ref) or "")
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "dependencies": {"a": ["b"]},
    }
    assert arguments_problem('{"a": 1, "b": 2}', draft7) is None
    assert arguments_problem('{"a": 1}', draft7) is not None
    mixed = {"type": "object", "patternProperties": {"^x": {}}, "unevaluatedProperties": False}
    assert "can't be checked safely" in (arguments_problem("{}", mixed) or "")


def test_tool_result_problem_without_a_server() -> None:
    assert (
        tool_result_problem(conversation(result("call_1"), result("call_2")), ToolSettings())
        is None
    )
    assert tool_result_problem([{"role": "user", "content": "hi"}], ToolSettings()) is None
    assert tool_result_problem(conversation(result("call_2", 5)), ToolSettings()) is not None


def test_assembler_joins_deltas_like_the_sdk() -> None:
    assembler = ToolCallAssembler()
    assembler.add(
        {
            "index": 0,
            "id": "call_",
            "type": "function",
            "function": {"name": "get_", "arguments": ""},
        }
    )
    assembler.add(
        {
            "index": 1,
            "id": "b",
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        }
    )
    assembler.add(
        {"index": 0, "id": "1", "function": {"name": "weather", "arguments": '{"city": '}}
    )
    assembler.add({"index": 0, "function": {"arguments": '"Rome"}'}})
    assert assembler.calls() == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        },
        {
            "index": 1,
            "id": "b",
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
    ]


async def test_rail_reads_the_context() -> None:
    guardrails = Guardrails(RailsConfig.parse_object({"rails": TOOL_RAILS}))
    [runner] = guardrails.tool_output
    ctx = CheckContext("", None, [], {}, "m1", tools=TOOLS, tool_calls=[call()])
    assert (await runner.rail.check("", ctx)).action.value == "allow"
    ctx.tool_calls = [call("nope", "{}")]
    assert (await runner.rail.check("", ctx)).action.value == "block"


async def test_concurrent_streams_do_not_mix_calls(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    good = tool_events([("call_1", "get_weather", GOOD_ARGS)], pieces=6)
    bad = tool_events([("call_1", "nope", GOOD_ARGS)], pieces=6)
    for events in (good, bad, good, bad):
        fake_upstream.next(chunks=events, chunk_delay=0.005)
    results = await asyncio.gather(*(post(http, base, "tools", stream=True) for _ in range(4)))
    blocked = sorted("error" in stream_end(raw) for _, raw in results)
    assert blocked == [False, False, True, True]
