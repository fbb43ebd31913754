"""Every field a model writes text into goes through the output rails, streamed or not:
reasoning (`reasoning_content`, `reasoning`), `refusal`, tool-call arguments and the
`logprobs` tokens. A block removes them all; a rewrite rewrites each of them. The bypass
is tried over HTTP: the fake upstream hides the phrase in one field at a time."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import DONE, parsed, post_stream, relayed
from upstream.wire import chunk, sse_event

PHRASE = "bad phrase"
PATTERN = r"b[a]d\s+phrase"  # so the rail's reason (it names the pattern) never spells it
EMAIL = "jane.doe@example.com"
REFUSAL = "I'm sorry, I can't respond to that."


def block_config(stream_first: bool, reasoning: bool = True) -> dict[str, Any]:
    output: dict[str, Any] = {
        "flows": ["regex check output"],
        "streaming": {
            "enabled": True,
            "chunk_size": 3,
            "context_size": 2,
            "stream_first": stream_first,
        },
    }
    if not reasoning:
        output["apply_to_reasoning_traces"] = False
    return {
        "rails": {
            "output": output,
            "config": {"regex_detection": {"output": {"patterns": [PATTERN]}}},
        }
    }


CONFIGS = {
    "first": block_config(True),
    "hold": block_config(False),
    "noreason": block_config(False, reasoning=False),
    "mask": {
        "rails": {
            "output": {"flows": ["mask sensitive data on output"], "streaming": {"enabled": True}},
            "config": {"sensitive_data_detection": {"output": {"entities": ["EMAIL_ADDRESS"]}}},
        }
    },
}
LOG = {"log": {"activated_rails": True, "llm_calls": True}}


def logprobs(*tokens: str) -> dict[str, Any]:
    return {
        "content": [
            {"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []}
            for t in tokens
        ],
        "refusal": None,
    }


def call(arguments: str) -> dict[str, Any]:
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": "search", "arguments": arguments},
    }


def answer(message: dict[str, Any], **choice: Any) -> dict[str, Any]:
    """`extra` for the fake upstream: one choice with this message."""
    full = {"role": "assistant", "content": None, **message}
    return {"choices": [{"index": 0, "message": full, "finish_reason": "stop", **choice}]}


async def post(
    http: aiohttp.ClientSession, base: str, config_id: str, **guardrails: Any
) -> tuple[dict[str, Any], bytes]:
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": config_id, **guardrails},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        raw = await response.read()
        assert response.status == 200, raw
        return orjson.loads(raw), raw


# --- not streamed ------------------------------------------------------------------------

HIDDEN = {
    "reasoning_content": (answer({"content": "Fine.", "reasoning_content": f"Hm: {PHRASE}"})),
    "reasoning": answer({"content": "Fine.", "reasoning": f"Hm: {PHRASE}"}),
    "refusal": answer({"refusal": f"No: {PHRASE}"}),
    "tool_call_arguments": answer(
        {"tool_calls": [call(orjson.dumps({"q": PHRASE}).decode())]}, finish_reason="tool_calls"
    ),
    "logprobs_tokens": answer({"content": "Fine."}, logprobs=logprobs("bad", " phrase")),
    "split_reasoning_content": answer({"reasoning_content": "it is bad", "content": " phrase"}),
    "function_call": answer({"function_call": {"name": "search", "arguments": PHRASE}}),
}


@pytest.mark.parametrize("field", sorted(HIDDEN))
async def test_a_blocked_phrase_in_any_field_never_reaches_the_client(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    field: str,
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(extra=copy.deepcopy(HIDDEN[field]))
    data, raw = await post(http, base, "hold", options=LOG)
    [choice] = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": REFUSAL}
    assert choice["finish_reason"] == "stop"
    assert choice.get("logprobs") is None
    assert PHRASE.encode() not in raw and b"bad" not in raw
    [rail] = data["guardrails"]["log"]["activated_rails"]
    assert rail["name"] == "regex check output" and rail["stop"] is True


async def test_a_harmless_answer_keeps_every_field(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    extra = answer(
        {
            "content": "Fine.",
            "reasoning_content": "All good. ",
            "tool_calls": [call('{"q": "weather"}')],
        },
        logprobs=logprobs("All good. ", "Fine."),
    )
    fake_upstream.next(extra=copy.deepcopy(extra))
    data, _ = await post(http, base, "hold")
    assert data["choices"] == extra["choices"]


async def test_reasoning_checks_can_be_turned_off(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`rails.output.apply_to_reasoning_traces: false`: the reasoning (and the logprobs,
    which spell it) pass unchecked; the content is still checked."""
    base = await start_railguard(CONFIGS)
    extra = answer(
        {"content": "Fine.", "reasoning_content": f"Hm: {PHRASE}"},
        logprobs=logprobs("Hm: ", PHRASE, "</think>", "Fine."),
    )
    fake_upstream.next(extra=copy.deepcopy(extra))
    data, _ = await post(http, base, "noreason")
    assert data["choices"] == extra["choices"]
    fake_upstream.next(extra=answer({"content": PHRASE, "reasoning_content": "Hm."}))
    data, _ = await post(http, base, "noreason")
    assert data["choices"][0]["message"] == {"role": "assistant", "content": REFUSAL}


async def test_a_masking_rail_masks_every_field_and_drops_logprobs(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    arguments = orjson.dumps({"to": EMAIL, "body": "hello"}).decode()
    message = {
        "content": f"I wrote to {EMAIL}.",
        "reasoning_content": f"The user is {EMAIL}. ",
        "tool_calls": [call(arguments)],
    }
    fake_upstream.next(
        extra=answer(message, finish_reason="tool_calls", logprobs=logprobs("I wrote to ", EMAIL))
    )
    data, raw = await post(http, base, "mask", options=LOG)
    assert EMAIL.encode() not in raw
    [choice] = data["choices"]
    assert choice["logprobs"] is None
    got = choice["message"]
    assert got["content"] == "I wrote to <EMAIL_ADDRESS>."
    assert got["reasoning_content"] == "The user is <EMAIL_ADDRESS>. "
    [masked] = got["tool_calls"]
    assert masked["id"] == "call_1" and masked["function"]["name"] == "search"
    assert orjson.loads(masked["function"]["arguments"]) == {
        "to": "<EMAIL_ADDRESS>",
        "body": "hello",
    }
    assert choice["finish_reason"] == "tool_calls"


# --- streamed ------------------------------------------------------------------------------


def stream_of(
    deltas: list[dict[str, Any]],
    finish: str = "stop",
    probs: list[dict[str, Any] | None] | None = None,
) -> list[bytes]:
    """The events an upstream streams for these deltas (each with its logprobs)."""
    events = [sse_event(chunk("m1", "c-up", {"role": "assistant", "content": ""}, None, 7))]
    for index, delta in enumerate(deltas):
        event = chunk("m1", "c-up", delta, None, 7)
        if probs is not None:
            event["choices"][0]["logprobs"] = probs[index]
        events.append(sse_event(event))
    events.append(sse_event(chunk("m1", "c-up", {}, finish, 7)))
    return [*events, DONE]


def tool_deltas(*fragments: str) -> list[dict[str, Any]]:
    first = {"index": 0, "id": "call_1", "type": "function"}
    deltas = [{"tool_calls": [{**first, "function": {"name": "search", "arguments": ""}}]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": f}}]} for f in fragments]
    return deltas


STREAMS = {
    "reasoning_content": stream_of(
        [
            {"reasoning_content": "Let me "},
            {"reasoning_content": "think: bad "},
            {"reasoning_content": "phrase"},
            {"content": "Fine."},
        ]
    ),
    "reasoning": stream_of([{"reasoning": "Hm: bad "}, {"reasoning": "phrase"}, {"content": "Ok"}]),
    "refusal": stream_of([{"refusal": "No: bad"}, {"refusal": " phrase"}]),
    "tool_call_arguments": stream_of(tool_deltas('{"q": "bad', ' phrase"}'), "tool_calls"),
    "logprobs_tokens": stream_of(
        [{"content": "Fi"}, {"content": "ne."}],
        probs=[logprobs("bad"), logprobs(" phrase")],
    ),
    "split_reasoning_content": stream_of(
        [{"reasoning_content": "it is bad"}, {"content": " phrase"}]
    ),
}


def assembled(raw: bytes) -> dict[str, str]:
    """Each text field as a client assembles it from the deltas it got."""
    fields: dict[str, str] = {}
    for event in parsed(raw):
        for choice in event.get("choices") or [] if isinstance(event, dict) else []:
            delta = choice.get("delta") or {}
            for key in ("reasoning_content", "reasoning", "content", "refusal"):
                if isinstance(delta.get(key), str):
                    fields[key] = fields.get(key, "") + delta[key]
            for call_delta in delta.get("tool_calls") or []:
                arguments = call_delta.get("function", {}).get("arguments", "")
                fields["arguments"] = fields.get("arguments", "") + arguments
    return fields


@pytest.mark.parametrize("field", sorted(STREAMS))
async def test_held_streams_never_send_a_blocked_phrase_in_any_field(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    field: str,
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(chunks=STREAMS[field])
    _, _, raw = await post_stream(http, base, "hold")
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    assert PHRASE.encode() not in raw and b"bad" not in raw


@pytest.mark.parametrize("field", sorted(STREAMS))
async def test_stream_first_stops_at_a_blocked_phrase_in_any_field(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    field: str,
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(chunks=STREAMS[field])
    _, _, raw = await post_stream(http, base, "first")
    events = parsed(raw)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "content_blocked"


async def test_stream_first_counts_reasoning_as_tokens(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A window fills with reasoning deltas alone: the block comes while the model is
    still thinking (the upstream goes silent after them), not at the end."""
    base = await start_railguard(CONFIGS)
    events = stream_of([{"reasoning_content": t} for t in ("so ", "bad ", "phrase ", "hm")])
    fake_upstream.next(chunks=events[:4], stall=5.0)
    _, _, raw = await post_stream(http, base, "first")
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    assert assembled(raw).get("content", "") == ""


@pytest.mark.parametrize("config_id", ["first", "hold"])
async def test_harmless_streams_with_every_field_go_through_byte_for_byte(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
) -> None:
    base = await start_railguard(CONFIGS)
    deltas = [{"reasoning_content": "All "}, {"reasoning_content": "good. "}, {"content": "Fine."}]
    sent = stream_of(
        deltas + tool_deltas('{"q": ', '"weather"}'),
        "tool_calls",
        probs=[logprobs("All "), logprobs("good. "), logprobs("Fine."), None, None, None],
    )
    fake_upstream.next(chunks=sent)
    _, _, raw = await post_stream(http, base, config_id)
    assert relayed(raw) == sent[:-1]


async def test_unchecked_reasoning_streams_through(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    sent = stream_of(
        [{"reasoning_content": "Hm: bad "}, {"reasoning_content": "phrase"}, {"content": "Ok."}],
        probs=[logprobs("Hm: bad "), logprobs("phrase"), logprobs("Ok.")],
    )
    fake_upstream.next(chunks=sent)
    _, _, raw = await post_stream(http, base, "noreason")
    assert relayed(raw) == sent[:-1]


async def test_a_masking_rail_rewrites_every_streamed_field(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    half = len(EMAIL) // 2
    deltas = [
        {"reasoning_content": f"User {EMAIL[:half]}"},
        {"reasoning_content": f"{EMAIL[half:]}. "},
        {"content": f"Mailing {EMAIL}."},
        *tool_deltas('{"to": "', EMAIL[:half], EMAIL[half:] + '"}'),
    ]
    probs: list[dict[str, Any] | None] = [logprobs(EMAIL[:half]), logprobs(EMAIL[half:])]
    probs += [logprobs(f"Mailing {EMAIL}.")] + [None] * 4
    fake_upstream.next(chunks=stream_of(deltas, "tool_calls", probs))
    _, _, raw = await post_stream(http, base, "mask", options=LOG)
    assert EMAIL[:half].encode() not in raw and EMAIL[half:].encode() not in raw
    fields = assembled(raw)
    assert fields == {
        "reasoning_content": "User <EMAIL_ADDRESS>. ",
        "content": "Mailing <EMAIL_ADDRESS>.",
        "arguments": '{"to": "<EMAIL_ADDRESS>"}',
    }
    events = [e for e in parsed(raw) if isinstance(e, dict) and e.get("choices")]
    [rewritten] = [e for e in events if e["choices"][0]["delta"].get("tool_calls")]
    [tool_call] = rewritten["choices"][0]["delta"]["tool_calls"]
    assert tool_call["id"] == "call_1" and tool_call["function"]["name"] == "search"
    assert not any(e["choices"][0].get("logprobs") for e in events)
    assert [e["choices"][0]["finish_reason"] for e in events][-1] == "tool_calls"
