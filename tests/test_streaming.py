"""`stream: true`: upstream events pass through byte for byte; blocks and failures end cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import relayed, split_events
from upstream.wire import chunk, sse_event

REFUSAL = "I'm sorry, I can't respond to that."


async def stream(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any]
) -> tuple[int, str, bytes]:
    async with http.post(f"{base}/v1/chat/completions", json={**body, "stream": True}) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: "):
            payload = event[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


async def test_stream_passes_upstream_events_through_unchanged(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    upstream_events = [
        sse_event(chunk("m1", "c1", {"role": "assistant", "content": ""}, None, 5)),
        sse_event(chunk("m1", "c1", {"content": "Hel"}, None, 5)),
        b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"lo"},"logprobs":{"x":1}}],"vendor":7}\n\n',
        b": keep-alive comment\n\n",
        sse_event(chunk("m1", "c1", {}, "stop", 5)),
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
        b"data: [DONE]\n\n",
    ]
    fake_upstream.next(chunks=upstream_events)
    status, content_type, raw = await stream(
        http,
        base,
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "hi"}],
            "guardrails": {"config_id": "input_only"},
        },
    )
    assert status == 200
    assert content_type.startswith("text/event-stream")
    # the upstream's events unchanged, `guardrails` added to its last chunk, then [DONE]
    assert relayed(raw) == upstream_events[:-1]
    assert raw.endswith(b"}}\n\ndata: [DONE]\n\n")
    final = events(raw)[-2]
    assert final["choices"] == [] and final["usage"]["total_tokens"] == 3
    assert final["guardrails"]["config_id"] == "input_only"


async def test_stream_envelope_rides_on_the_finish_chunk_or_a_chunk_of_its_own(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """No usage chunk: the finish chunk carries `guardrails` (a comment after it stays
    after it). No finish at all: a `choices: []` chunk like the upstream's carries it."""
    base = await start_railguard()
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": "input_only"},
    }
    finish = b'data: {"id":"c1","object":"chat.completion.chunk","created":5,"model":"m1","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    sent = [sse_event(chunk("m1", "c1", {"content": "Hi"}, None, 5)), finish, b": ping\n\n"]
    fake_upstream.next(chunks=[*sent, b"data: [DONE]\n\n"])
    _, _, raw = await stream(http, base, body)
    got = split_events(raw)
    assert got[0] == sent[0] and got[2:] == [b": ping\n\n", b"data: [DONE]\n\n"]
    assert got[1].startswith(finish[:-3] + b',"guardrails":{')  # the upstream's bytes kept
    last = events(raw)[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and last["system_fingerprint"] == "fp_1"
    assert last["guardrails"]["config_id"] == "input_only"

    cut = [
        b'data: {"id":"c2","object":"chat.completion.chunk","created":6,"model":"m1","system_fingerprint":"fp_2","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    ]
    fake_upstream.next(chunks=cut)
    _, _, raw = await stream(http, base, body)
    assert raw.startswith(cut[0])
    own = events(raw)[-2]
    assert {k: own[k] for k in ("id", "object", "created", "model", "system_fingerprint")} == {
        "id": "c2",
        "object": "chat.completion.chunk",
        "created": 6,
        "model": "m1",
        "system_fingerprint": "fp_2",
    }
    assert own["choices"] == [] and "usage" not in own
    assert own["guardrails"]["config_id"] == "input_only"


async def test_stream_without_done_gets_one(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(chunks=[sse_event(chunk("m1", "c1", {"content": "x"}, "stop", 5))])
    _, _, raw = await stream(
        http,
        base,
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "hi"}],
            "guardrails": {"config_id": "open"},
        },
    )
    assert events(raw)[-1] == "[DONE]"
    assert raw.count(b"[DONE]") == 1


async def test_stream_input_block_sends_refusal_chunk_finish_and_done(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    _, _, raw = await stream(
        http,
        base,
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "the secret"}],
            "guardrails": {"config_id": "input_only"},
        },
    )
    parsed = events(raw)
    assert len(parsed) == 3
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": REFUSAL}
    assert parsed[0]["object"] == "chat.completion.chunk"
    assert parsed[1]["choices"][0]["finish_reason"] == "stop"
    assert parsed[1]["guardrails"]["config_id"] == "input_only"
    assert parsed[2] == "[DONE]"
    assert fake_upstream.main_calls == []


async def test_upstream_dying_mid_stream_ends_with_error_event_and_done(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(content="one two three four", die_after=2)
    status, _, raw = await stream(
        http,
        base,
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "hi"}],
            "guardrails": {"config_id": "open"},
        },
    )
    assert status == 200
    parsed = events(raw)
    assert parsed[-1] == "[DONE]"
    error = parsed[-2]["error"]
    assert error["type"] == "upstream_error" and error["message"]
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_check_mode_stream_answers_without_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(client_rail_selection="output")
    options = {"rails": {"input": True, "output": False, "dialog": False}}
    _, _, raw = await stream(
        http,
        base,
        {
            "model": "m1",
            "messages": [{"role": "user", "content": "fine"}],
            "guardrails": {"config_id": "regex", "options": options},
        },
    )
    parsed = events(raw)
    assert parsed[0]["choices"][0]["delta"]["content"] == "fine"
    assert fake_upstream.chat_calls == []


async def test_client_disconnect_mid_stream_stops_the_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    words = " ".join(f"w{i}" for i in range(200))
    fake_upstream.next(content=words, chunk_delay=0.02)  # ~4 s if read to the end
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "guardrails": {"config_id": "open"},
    }
    response = await http.post(f"{base}/v1/chat/completions", json=body)
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"data: ")
    response.close()  # the client goes away
    for _ in range(100):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects == 1
    # railguard is still healthy afterwards
    async with http.get(f"{base}/health") as health:
        assert health.status == 200


async def test_upstream_answering_json_to_a_stream_request_is_streamed(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Some servers ignore `stream: true`; the client asked for a stream and gets one."""
    base = await start_railguard()
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    completion = {
        "id": "chatcmpl-json",
        "object": "chat.completion",
        "created": 9,
        "model": "m1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "whole answer",
                    "tool_calls": [tool_call],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    fake_upstream.next(body=orjson.dumps(completion))
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": "open"},
    }
    status, content_type, raw = await stream(http, base, body)
    assert status == 200 and content_type.startswith("text/event-stream")
    parsed = events(raw)
    assert parsed[-1] == "[DONE]"
    assert parsed[0]["id"] == "chatcmpl-json" and parsed[0]["object"] == "chat.completion.chunk"
    delta = parsed[0]["choices"][0]["delta"]
    assert delta["content"] == "whole answer" and delta["tool_calls"][0]["index"] == 0
    assert parsed[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert parsed[2]["usage"]["total_tokens"] == 3


async def test_upstream_answering_garbage_json_to_a_stream_request_is_a_502(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(body=b"{not json")
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "guardrails": {"config_id": "open"},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_bad_response"
