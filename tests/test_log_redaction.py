"""`options.log.llm_calls` never hands the client the text an output rail blocked or
rewrote: the main call's completion is the answer as delivered, the output side's rail
calls lose their prompt and completion, each marked `redacted`; only the server flag
`--log-raw-completions` shows the raw text."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from proxy.cli import _parser, settings_from_args
from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import delivered_text, parsed, post_stream, upstream_events

EMAIL = "jane.doe@example.com"
REFUSAL = "I'm sorry, I can't respond to that."
LOG = {"log": {"llm_calls": True}}


def streaming(stream_first: bool) -> dict[str, Any]:
    return {"enabled": True, "chunk_size": 3, "context_size": 2, "stream_first": stream_first}


CONFIGS = {
    "judge": {
        "rails": {"output": {"flows": ["self check output"], "streaming": streaming(False)}},
        "prompts": SELF_CHECK_PROMPTS,
    },
    "judge_first": {
        "rails": {"output": {"flows": ["self check output"], "streaming": streaming(True)}},
        "prompts": SELF_CHECK_PROMPTS,
    },
    "mask": {
        "rails": {
            "output": {"flows": ["mask sensitive data on output"], "streaming": {"enabled": True}},
            "config": {"sensitive_data_detection": {"output": {"entities": ["EMAIL_ADDRESS"]}}},
        }
    },
}


async def post(
    http: aiohttp.ClientSession, base: str, config_id: str
) -> tuple[dict[str, Any], bytes]:
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "guardrails": {"config_id": config_id, "options": LOG},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        raw = await response.read()
        assert response.status == 200, raw
        return orjson.loads(raw), raw


def calls_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["task"]: c for c in data["guardrails"]["log"]["llm_calls"]}


async def test_a_blocked_answer_is_logged_as_delivered(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(content="a forbidden recipe")
    data, raw = await post(http, base, "judge")
    assert b"forbidden" not in raw
    calls = calls_of(data)
    assert calls["general"]["completion"] == REFUSAL and calls["general"]["redacted"] is True
    check = calls["self_check_output"]
    assert check["prompt"] is None and check["completion"] is None and check["redacted"]
    assert check["total_tokens"] is not None  # what it cost is still there


async def test_a_rewritten_answer_is_logged_rewritten(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(content=f"write to {EMAIL}")
    data, raw = await post(http, base, "mask")
    assert EMAIL.encode() not in raw
    main = calls_of(data)["general"]
    assert main["completion"] == "write to <EMAIL_ADDRESS>" and main["redacted"] is True


async def test_a_passing_answer_is_logged_whole(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(content="a fine recipe")
    data, _ = await post(http, base, "judge")
    calls = calls_of(data)
    assert calls["general"]["completion"] == "a fine recipe"
    assert "redacted" not in calls["general"] and "redacted" not in calls["self_check_output"]
    assert "a fine recipe" in calls["self_check_output"]["prompt"]


@pytest.mark.parametrize("config_id", ["judge", "judge_first"])
async def test_a_blocked_stream_is_logged_as_delivered(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
) -> None:
    """Held, nothing of the answer went out and the log shows nothing of it; with
    stream_first it shows exactly what the client had received before the block."""
    fake_upstream.judge_delay = 0.1
    base = await start_railguard(CONFIGS)
    fake_upstream.next(chunks=upstream_events(["a ", "forbidden ", "recipe"]))
    _, _, raw = await post_stream(http, base, config_id, options=LOG)
    last = parsed(raw)[-2]
    assert last["error"]["code"] == "content_blocked"
    calls = calls_of(last)
    main = calls["general"]
    assert main["redacted"] is True and main["completion"] == delivered_text(raw)
    if config_id == "judge":
        assert b"forbidden" not in raw
    assert calls["self_check_output"]["prompt"] is None


async def test_a_rewritten_stream_is_logged_rewritten(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    fake_upstream.next(chunks=upstream_events(["write ", "to ", EMAIL]))
    _, _, raw = await post_stream(http, base, "mask", options=LOG)
    assert EMAIL.encode() not in raw
    main = calls_of(parsed(raw)[-2])["general"]
    assert main["completion"] == "write to <EMAIL_ADDRESS>" and main["redacted"] is True


async def test_the_server_flag_logs_raw_completions(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, log_raw_completions=True)
    fake_upstream.next(content="a forbidden recipe")
    data, _ = await post(http, base, "judge")
    assert data["choices"][0]["message"]["content"] == REFUSAL
    calls = calls_of(data)
    assert calls["general"]["completion"] == "a forbidden recipe"
    assert "a forbidden recipe" in calls["self_check_output"]["prompt"]
    assert "redacted" not in calls["general"]
    fake_upstream.next(chunks=upstream_events(["write ", "to ", EMAIL]))
    _, _, raw = await post_stream(http, base, "mask", options=LOG)
    assert calls_of(parsed(raw)[-2])["general"]["completion"] == f"write to {EMAIL}"


def test_the_flag_is_off_unless_given() -> None:
    assert not settings_from_args(_parser().parse_args(["serve"])).log_raw_completions
    flagged = _parser().parse_args(["serve", "--log-raw-completions"])
    assert settings_from_args(flagged).log_raw_completions
