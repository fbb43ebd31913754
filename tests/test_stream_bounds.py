"""What an output-railed stream may let out or keep, whatever the upstream does: a slow
check model does not let `stream_first` run ahead of it, on any choice; an answer larger
than `--max-answer-bytes` ends the stream (or the request) instead of filling memory."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import delivered_text, parsed, post_stream, stream_config, upstream_events
from upstream.wire import chunk, sse_event

CHUNK, CONTEXT = 5, 1  # windows [0, 5), [4, 9), ...: the word at token 6 is in the second
TOKENS = 300


def slow_self_check(fake_upstream: FakeUpstream) -> dict[str, Any]:
    fake_upstream.judge_delay = 0.3  # each window's check takes 0.3 s; the upstream is fast
    return stream_config(
        CHUNK, CONTEXT, True, flows=("self check output",), prompts=SELF_CHECK_PROMPTS
    )


def tokens_with_trigger() -> list[str]:
    return [("forbidden " if i == 6 else f"w{i} ") for i in range(TOKENS)]


def content_tokens(raw: bytes) -> dict[int, int]:
    """choice -> content deltas the client received."""
    counts: dict[int, int] = {}
    for event in parsed(raw):
        if isinstance(event, dict):
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    counts[choice["index"]] = counts.get(choice["index"], 0) + 1
    return counts


async def test_stream_first_lets_at_most_a_window_past_the_last_passed_one(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Before the bound, all 300 tokens were out when the second window's check blocked."""
    base = await start_railguard({"c": slow_self_check(fake_upstream)})
    fake_upstream.next(chunks=upstream_events(tokens_with_trigger()))
    _, _, raw = await post_stream(http, base, "c")
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    got = content_tokens(raw).get(0, 0)
    # the first window [0, 5) passed: at most CHUNK tokens past it may have gone out
    assert CHUNK <= got <= CHUNK + CHUNK, got
    assert delivered_text(raw) == "".join(tokens_with_trigger()[:got])


async def test_stream_first_holds_until_the_check_catches_up(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """No block: everything arrives, but never more than a window ahead of the checks,
    so the stream takes about one check per window after the first."""
    base = await start_railguard({"c": slow_self_check(fake_upstream)})
    fake_upstream.judge_delay = 0.05
    deltas = [f"w{i} " for i in range(21)]  # windows end at 5, 9, 13, 17, 21
    fake_upstream.next(chunks=upstream_events(deltas))
    options = {"log": {"activated_rails": True}}
    _, _, raw = await post_stream(http, base, "c", options=options)
    assert delivered_text(raw) == "".join(deltas)
    checks = parsed(raw)[-2]["guardrails"]["log"]["activated_rails"]
    assert [c["additional_info"]["window"]["end"] for c in checks] == [5, 9, 13, 17, 21]


async def test_every_choice_has_its_own_bound(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """n=2: the second choice's text is blocked; it leaked past the block before."""
    base = await start_railguard({"c": slow_self_check(fake_upstream)})
    events = [sse_event(chunk("m1", "c-up", {"role": "assistant", "content": ""}, None, 7))]
    for token in tokens_with_trigger():
        for index, text in enumerate((token.replace("forbidden", "fine"), token)):
            data = chunk("m1", "c-up", {"content": text}, None, 7)
            data["choices"][0]["index"] = index
            events.append(sse_event(data))
    fake_upstream.next(chunks=[*events, b"data: [DONE]\n\n"])
    _, _, raw = await post_stream(http, base, "c")
    assert parsed(raw)[-2]["error"]["code"] == "content_blocked"
    got = content_tokens(raw)
    assert CHUNK <= got.get(1, 0) <= CHUNK + CHUNK, got
    assert got.get(0, 0) <= CHUNK + CHUNK + CHUNK, got  # its second window at most passed


async def test_stream_answer_over_the_limit_ends_with_the_limit_error(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """An upstream that never stops, through a windowed rail: the stream ends at the limit
    (memory held: one window, and the first choice's text up to the limit)."""
    base = await start_railguard({"c": stream_config(10, 2, True)}, max_answer_bytes=3000)
    deltas = [f"word{i} " for i in range(2000)]
    fake_upstream.next(chunks=upstream_events(deltas))
    options = {"log": {"llm_calls": True}}
    _, _, raw = await post_stream(http, base, "c", options=options)
    last = parsed(raw)[-2]
    assert last["error"]["code"] == "answer_too_large"
    assert (
        "3000 bytes" in last["error"]["message"]
        and "--max-answer-bytes" in last["error"]["message"]
    )
    text = delivered_text(raw)
    assert "".join(deltas).startswith(text) and 2000 < len(text.encode()) <= 3000
    assert last["guardrails"]["log"]["llm_calls"][0]["completion"].startswith(text)


async def test_long_stream_within_the_limit_is_checked_and_kept_whole(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Windows keep only their own tokens; the log still gets the whole answer."""
    base = await start_railguard({"c": stream_config(7, 3, False)})
    deltas = [f"t{i} " for i in range(1500)]
    fake_upstream.next(chunks=upstream_events(deltas))
    options = {"log": {"llm_calls": True, "activated_rails": True}, "output_vars": True}
    _, _, raw = await post_stream(http, base, "c", options=options)
    envelope = parsed(raw)[-2]["guardrails"]
    assert delivered_text(raw) == "".join(deltas)
    assert envelope["log"]["llm_calls"][0]["completion"] == "".join(deltas)
    assert envelope["output_data"]["bot_message"] == "".join(deltas)
    windows = [c["additional_info"]["window"] for c in envelope["log"]["activated_rails"]]
    assert windows[1] == {"choice": 0, "start": 4, "end": 11}
    assert windows[-1]["end"] == 1500


async def test_non_streamed_answer_over_the_limit_is_refused(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(max_answer_bytes=5000)
    fake_upstream.next(content="x" * 6000)
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": "open"},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 502
        error = orjson.loads(await response.read())["error"]
    assert error["code"] == "answer_too_large"
    assert "5000 bytes" in error["message"] and "--max-answer-bytes" in error["message"]
    fake_upstream.next(content="y" * 4000)
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
