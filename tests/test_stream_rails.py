"""Output rails on streams: windows, hold-back, blocks, and every way a stream can fail."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest

from rails import registry
from rails.base import Action, CheckContext, Stage, Verdict
from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import (
    BAD,
    DONE,
    delivered_text,
    parsed,
    post_stream,
    relayed,
    split_events,
    stream_config,
    upstream_events,
)

WINDOWS = [(1, 0), (2, 1), (3, 1), (5, 2), (200, 50)]
HARMLESS = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog."]


def guardrails_of(raw: bytes) -> dict[str, Any]:
    last = parsed(raw)[-2]
    assert isinstance(last, dict)
    return dict(last["guardrails"])


@pytest.mark.parametrize("stream_first", [True, False])
@pytest.mark.parametrize(("chunk_size", "context_size"), WINDOWS)
async def test_harmless_answer_arrives_complete_and_byte_identical(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream_first: bool,
    chunk_size: int,
    context_size: int,
) -> None:
    base = await start_railguard({"c": stream_config(chunk_size, context_size, stream_first)})
    sent = upstream_events(HARMLESS)
    fake_upstream.next(chunks=sent)
    status, headers, raw = await post_stream(http, base, "c")
    assert status == 200
    assert headers["Cache-Control"] == "no-cache" and headers["X-Accel-Buffering"] == "no"
    # every upstream event byte for byte, `guardrails` added to the last one, then [DONE]
    assert relayed(raw) == sent[:-1]
    assert split_events(raw)[-1] == DONE
    final = parsed(raw)[-2]
    assert final["id"] == "c-up" and final["choices"] == [] and final["usage"]
    assert final["guardrails"]["config_id"] == "c"
    assert delivered_text(raw) == "".join(HARMLESS)
    assert fake_upstream.main_calls[-1].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("stream_first", [True, False])
@pytest.mark.parametrize(("chunk_size", "context_size"), [(3, 2), (4, 2), (5, 3), (200, 50)])
async def test_bad_phrase_split_across_deltas_and_windows_is_caught(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream_first: bool,
    chunk_size: int,
    context_size: int,
) -> None:
    """The phrase spans 3 tokens, so windows overlap by 2 to see it across any cut."""
    base = await start_railguard({"c": stream_config(chunk_size, context_size, stream_first)})
    deltas = ["one ", "two ", "three ", "ba", "d phr", "ase ", "four ", "five ", "six"]
    fake_upstream.next(chunks=upstream_events(deltas))
    status, _, raw = await post_stream(http, base, "c")
    assert status == 200
    events = parsed(raw)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"] == {
        "message": "Blocked by regex check output rails.",
        "type": "guardrails_violation",
        "param": "regex check output",
        "code": "content_blocked",
    }
    assert "guardrails" in events[-2]
    text = delivered_text(raw)
    assert "".join(deltas).startswith(text)
    if not stream_first:
        assert BAD not in text
    if chunk_size < len(deltas):
        assert "six" not in text  # nothing after the blocked window


async def test_hold_back_sends_nothing_of_the_blocked_window(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Windows of 4 tokens overlapping by 1: tokens 0-3 pass; 3-6 holds the phrase."""
    base = await start_railguard({"c": stream_config(4, 1, stream_first=False)})
    deltas = ["a ", "b ", "c ", "d ", "bad ", "phrase ", "e ", "f "]
    sent = upstream_events(deltas)
    fake_upstream.next(chunks=sent)
    _, _, raw = await post_stream(http, base, "c")
    got = split_events(raw)
    # the role chunk and the first window's events, unchanged; then the block and [DONE]
    assert got[:-2] == sent[:5]
    assert delivered_text(raw) == "a b c d "
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"


async def test_stream_first_sends_before_the_check_and_hold_back_after(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A slow model-backed rail: stream_first lets tokens out at once, hold-back waits."""
    fake_upstream.judge_delay = 0.6
    for stream_first, early in ((True, True), (False, False)):
        config = stream_config(
            50, 10, stream_first, flows=("self check output",), prompts=SELF_CHECK_PROMPTS
        )
        base = await start_railguard({"c": config})
        fake_upstream.next(chunks=upstream_events(["Hello ", "there"]))
        body = {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        body["guardrails"] = {"config_id": "c"}
        started = time.perf_counter()
        async with http.post(f"{base}/v1/chat/completions", json=body) as response:
            first_text_at = None
            raw = b""
            async for line in response.content:
                raw += line
                if b'"Hello "' in line and first_text_at is None:
                    first_text_at = time.perf_counter() - started
        assert first_text_at is not None
        assert (first_text_at < 0.4) is early, (stream_first, first_text_at)
        assert delivered_text(raw) == "Hello there"


async def test_openai_sdk_raises_api_error_on_a_block(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard({"c": stream_config(2, 1, stream_first=True)})
    fake_upstream.next(chunks=upstream_events(["fine ", "then ", "a bad ", "phrase ", "more"]))
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"guardrails": {"config_id": "c"}},
    )
    received = []
    with pytest.raises(openai.APIError, match=r"Blocked by regex check output rails\."):
        async for event in stream:
            if event.choices and event.choices[0].delta.content:
                received.append(event.choices[0].delta.content)
    assert "".join(received).startswith("fine ")
    await sdk.close()


async def test_openai_sdk_streams_a_checked_answer(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard({"c": stream_config(3, 1, stream_first=False)})
    fake_upstream.next(chunks=upstream_events(HARMLESS))
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"guardrails": {"config_id": "c"}},
    )
    text = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(text) == "".join(HARMLESS)
    await sdk.close()


async def test_block_cancels_the_upstream_at_once(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(2, 1, stream_first=True)})
    deltas = ["a ", BAD, *[f"w{i} " for i in range(200)]]
    fake_upstream.next(chunks=upstream_events(deltas), chunk_delay=0.02)  # ~4 s to the end
    started = time.perf_counter()
    _, _, raw = await post_stream(http, base, "c")
    assert time.perf_counter() - started < 1.5
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    for _ in range(50):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects == 1


@pytest.mark.parametrize("stream_first", [True, False])
async def test_each_window_is_checked_once_and_the_end_only_checks_new_text(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream_first: bool,
) -> None:
    """NeMo re-checks old text at the end; railguard checks only what no window covered."""
    base = await start_railguard({"c": stream_config(4, 2, stream_first)})
    log = {"log": {"activated_rails": True}}
    # 8 tokens: windows [0,4), [2,6), [4,8); nothing left for the end.
    fake_upstream.next(chunks=upstream_events([f"t{i} " for i in range(8)]))
    _, _, raw = await post_stream(http, base, "c", options=log)
    windows = [e["additional_info"]["window"] for e in guardrails_of(raw)["log"]["activated_rails"]]
    assert [(w["start"], w["end"]) for w in windows] == [(0, 4), (2, 6), (4, 8)]
    # 9 tokens: the end checks token 8 with its 2 tokens of context.
    fake_upstream.next(chunks=upstream_events([f"t{i} " for i in range(9)]))
    _, _, raw = await post_stream(http, base, "c", options=log)
    windows = [e["additional_info"]["window"] for e in guardrails_of(raw)["log"]["activated_rails"]]
    assert [(w["start"], w["end"]) for w in windows] == [(0, 4), (2, 6), (4, 8), (6, 9)]


async def test_short_answer_is_checked_once_at_the_end(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(200, 50, stream_first=False)})
    fake_upstream.next(chunks=upstream_events(["say ", BAD]))
    _, _, raw = await post_stream(http, base, "c")
    assert delivered_text(raw) == ""
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"


async def test_streaming_disabled_holds_the_whole_answer_and_checks_it_once(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = stream_config(2, 1, enabled=False)
    base = await start_railguard(
        {
            "c": config,
            "plain": {"rails": config["rails"] | {"output": {"flows": ["regex check output"]}}},
        }
    )
    log = {"log": {"activated_rails": True}}
    for config_id in ("c", "plain"):
        sent = upstream_events(HARMLESS)
        fake_upstream.next(chunks=sent)
        _, _, raw = await post_stream(http, base, config_id, options=log)
        assert relayed(raw) == sent[:-1]
        checks = guardrails_of(raw)["log"]["activated_rails"]
        assert len(checks) == 1
        assert checks[0]["additional_info"]["window"] == {"choice": 0, "start": 0, "end": 9}
        # a bad phrase at the very end: not a word of the answer goes out
        fake_upstream.next(chunks=upstream_events([*HARMLESS, " and a ", BAD]))
        _, _, raw = await post_stream(http, base, config_id)
        assert delivered_text(raw) == ""
        assert parsed(raw)[-2]["error"]["code"] == "content_blocked"


async def test_output_rails_switched_off_per_request_stream_unparsed(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(
        {"c": stream_config(2, 1, stream_first=False)}, client_rail_selection="output"
    )
    sent = upstream_events(["a ", BAD])
    fake_upstream.next(chunks=sent)
    _, _, raw = await post_stream(http, base, "c", options={"rails": {"output": False}})
    assert relayed(raw) == sent[:-1]
    assert parsed(raw)[-2]["guardrails"]["config_id"] == "c"


class Redact:
    """A rewriting output rail, for the test below: replaces the bad phrase."""

    uses_model = False
    rewrites = True
    action_name = "redact"
    action_params: dict[str, str] = {}

    def __init__(self, name: str, stage: Stage) -> None:
        self.name = name
        self.stage = stage

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        if BAD in text:
            return Verdict(Action.REWRITE, text=text.replace(BAD, "[redacted]"))
        return Verdict(Action.ALLOW)


async def test_rewriting_rail_never_lets_raw_text_out(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flows = {**registry.FLOWS, "redact output": (Stage.OUTPUT, lambda c, n, s, p: Redact(n, s))}
    monkeypatch.setattr(registry, "FLOWS", flows)
    base = await start_railguard(
        {"c": stream_config(2, 1, stream_first=True, flows=("redact output",))}
    )
    deltas = ["one ", "ba", "d phr", "ase ", "two"]
    fake_upstream.next(chunks=upstream_events(deltas))
    status, _, raw = await post_stream(http, base, "c")
    assert status == 200
    assert delivered_text(raw) == "one [redacted] two"
    events = parsed(raw)
    assert events[-1] == "[DONE]"
    finishes = [e["choices"][0]["finish_reason"] for e in events[1:-1] if e.get("choices")]
    assert finishes[-1] == "stop"
    # non-content events pass unchanged; the last one carries `guardrails`
    assert events[-2]["usage"]["completion_tokens"] == 5
    assert events[-2]["guardrails"]["config_id"] == "c"


# --- failure modes --------------------------------------------------------------------


@pytest.mark.parametrize("stream_first", [True, False])
async def test_upstream_dying_mid_checked_stream(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream_first: bool,
) -> None:
    base = await start_railguard({"c": stream_config(3, 1, stream_first)})
    deltas = ["a ", "b ", "c ", "d ", "e ", "f "]
    fake_upstream.next(chunks=upstream_events(deltas), die_after=5)
    status, _, raw = await post_stream(http, base, "c")
    assert status == 200
    events = parsed(raw)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "upstream_error"
    # what arrived before the failure was checked and delivered
    assert delivered_text(raw) == "a b c d "


async def test_upstream_stalling_past_the_read_timeout(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(3, 1, False)}, read_timeout=0.3)
    fake_upstream.next(chunks=upstream_events(["a ", "b "]), chunk_delay=1.0)
    started = time.perf_counter()
    _, _, raw = await post_stream(http, base, "c")
    assert time.perf_counter() - started < 2.5
    error = parsed(raw)[-2]["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_timeout"
    assert "sent nothing for 0.3s" in error["message"]
    assert parsed(raw)[-1] == "[DONE]"


@pytest.mark.parametrize(("policy", "blocked"), [(None, True), ("allow", False)])
async def test_rail_error_follows_its_policy(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    policy: str | None,
    blocked: bool,
) -> None:
    def broken_judge(prompt: str) -> str:
        raise RuntimeError("judge down")

    fake_upstream.judge = broken_judge
    extra: dict[str, Any] = {"prompts": SELF_CHECK_PROMPTS}
    if policy:
        extra["railguard"] = {"on_error": policy}
    config = stream_config(3, 1, False, flows=("self check output",), **extra)
    base = await start_railguard({"c": config})
    fake_upstream.next(chunks=upstream_events(HARMLESS))
    _, _, raw = await post_stream(http, base, "c")
    last = parsed(raw)[-2]
    if blocked:
        assert last["error"]["code"] == "content_blocked"
        assert delivered_text(raw) == ""
    else:
        assert "error" not in last
        assert delivered_text(raw) == "".join(HARMLESS)


async def test_rail_timeout_blocks_by_default(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.judge_delay = 2.0
    config = stream_config(
        3,
        1,
        False,
        flows=("self check output",),
        prompts=SELF_CHECK_PROMPTS,
        railguard={"rail_timeout": 0.2},
    )
    base = await start_railguard({"c": config})
    fake_upstream.next(chunks=upstream_events(HARMLESS))
    started = time.perf_counter()
    _, _, raw = await post_stream(http, base, "c", options={"log": {"activated_rails": True}})
    assert time.perf_counter() - started < 1.5
    last = parsed(raw)[-2]
    assert last["error"]["code"] == "content_blocked"
    assert last["guardrails"]["log"]["activated_rails"][0]["decisions"] == ["timeout: block"]


async def test_client_disconnect_cancels_upstream_and_pending_checks(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.judge_delay = 5.0  # a check is pending when the client leaves
    config = stream_config(2, 1, True, flows=("self check output",), prompts=SELF_CHECK_PROMPTS)
    base = await start_railguard({"c": config})
    deltas = [f"w{i} " for i in range(200)]
    fake_upstream.next(chunks=upstream_events(deltas), chunk_delay=0.02)
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": "c"},
    }
    response = await http.post(f"{base}/v1/chat/completions", json=body)
    for _ in range(3):  # the role chunk and the first window: no more until it passed
        await response.content.readuntil(b"\n\n")
    for _ in range(50):
        if len(fake_upstream.chat_calls) >= 2:
            break
        await asyncio.sleep(0.02)
    assert len(fake_upstream.chat_calls) >= 2  # the stream and at least one check
    response.close()
    for _ in range(50):
        if fake_upstream.disconnects >= 2:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects >= 2  # the main stream and the pending check


async def test_single_event_over_the_limit_ends_the_stream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(3, 1, False)}, stream_max_event_bytes=2000)
    fake_upstream.next(chunks=upstream_events(["ok ", "x" * 5000, "more"]))
    _, _, raw = await post_stream(http, base, "c")
    error = parsed(raw)[-2]["error"]
    assert error["code"] == "stream_event_too_large"
    assert "2000 bytes" in error["message"] and "--stream-max-event-bytes" in error["message"]
    assert "x" * 100 not in delivered_text(raw)


async def test_holding_back_more_than_the_limit_ends_the_stream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(
        {"c": stream_config(1000, 10, False)}, stream_max_holdback_bytes=4000
    )
    fake_upstream.next(chunks=upstream_events([f"word{i} " for i in range(100)]))
    _, _, raw = await post_stream(http, base, "c")
    error = parsed(raw)[-2]["error"]
    assert error["code"] == "stream_holdback_limit"
    assert "4000 bytes" in error["message"] and "--stream-max-holdback-bytes" in error["message"]
    assert delivered_text(raw) == ""  # nothing unchecked went out


async def test_final_chunk_carries_what_the_request_asked_for(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(3, 1, False)})
    fake_upstream.next(chunks=upstream_events(HARMLESS))
    options = {"log": {"activated_rails": True, "llm_calls": True}, "output_vars": True}
    _, _, raw = await post_stream(http, base, "c", options=options, context={"k": 1})
    envelope = guardrails_of(raw)
    assert envelope["output_data"]["bot_message"] == "".join(HARMLESS)
    assert envelope["output_data"]["k"] == 1
    calls = envelope["log"]["llm_calls"]
    assert calls[0]["completion"] == "".join(HARMLESS) and calls[0]["completion_tokens"] == 9
    reached = max(e["additional_info"]["window"]["end"] for e in envelope["log"]["activated_rails"])
    assert reached == len(HARMLESS)


async def test_stream_first_block_arrives_while_the_upstream_is_silent(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """The check behind the stream blocks; railguard must not wait for the next event."""
    fake_upstream.judge_delay = 0.2
    config = stream_config(2, 1, True, flows=("self check output",), prompts=SELF_CHECK_PROMPTS)
    base = await start_railguard({"c": config})
    events = upstream_events(["a forbidden ", "word ", "then ", "more"])
    fake_upstream.next(chunks=events[:3], stall=5.0)  # role + one window, then silence
    started = time.perf_counter()
    _, _, raw = await post_stream(http, base, "c")
    assert time.perf_counter() - started < 1.5
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    assert delivered_text(raw) == "a forbidden word "
    for _ in range(50):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects == 1


async def test_log_without_output_rails_records_the_answer_and_runs_no_checks(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"c": stream_config(2, 1)}, client_rail_selection="output")
    sent = upstream_events(HARMLESS)
    fake_upstream.next(chunks=sent)
    options = {"rails": {"output": False}, "log": {"activated_rails": True, "llm_calls": True}}
    _, _, raw = await post_stream(http, base, "c", options=options)
    assert relayed(raw) == sent[:-1]
    log = guardrails_of(raw)["log"]
    assert log["activated_rails"] == []
    assert log["stats"]["output_rails_duration"] is None
    assert log["llm_calls"][0]["completion"] == "".join(HARMLESS)
