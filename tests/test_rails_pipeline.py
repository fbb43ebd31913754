"""How a stage runs its rails: local first, one deadline, parallel model checks, and
rewrites reaching every part of the turn that goes upstream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from rails import registry
from rails.base import Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails
from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream

SECRET = "secret-123"


class Redact:
    """A rewriting input rail for these tests: masks SECRET."""

    uses_model = False
    rewrites = True
    action_name = "redact"
    action_params: dict[str, str] = {}

    def __init__(self, name: str, stage: Stage) -> None:
        self.name = name
        self.stage = stage

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        if SECRET in text:
            return Verdict(Action.REWRITE, text=text.replace(SECRET, "[masked]"))
        return Verdict(Action.ALLOW)


@pytest.fixture
def redact_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    flows = {**registry.FLOWS, "redact input": (Stage.INPUT, lambda c, n, s, p: Redact(n, s))}
    monkeypatch.setattr(registry, "FLOWS", flows)


async def chat(
    http: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]], **guardrails: Any
) -> dict[str, Any]:
    body = {"model": "m1", "messages": messages, "guardrails": guardrails}
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


def self_checks(*flows: str, **railguard: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "rails": {
            "input": {"flows": list(flows)},
            "config": {"regex_detection": {"input": {"patterns": ["blocked-word"]}}},
        },
        "prompts": SELF_CHECK_PROMPTS,
    }
    if railguard:
        config["railguard"] = railguard
    return config


@pytest.mark.parametrize("scope", ["client_messages", "current_turn"])
async def test_rewrite_reaches_every_message_of_the_scope_and_keeps_image_parts(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redact_flow: None,
    scope: str,
) -> None:
    rails = {"input": {"flows": ["redact input"]}}
    base = await start_railguard({"c": {"rails": rails, "railguard": {"input_scope": scope}}})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [
        {"role": "system", "content": f"system keeps {SECRET}"},
        {"role": "user", "content": f"first {SECRET}", "name": SECRET},
        {"role": "user", "content": [{"type": "text", "text": f"second {SECRET}"}, image]},
    ]
    data = await chat(http, base, messages, config_id="c", options={"output_vars": True})
    sent = fake_upstream.main_calls[-1].body["messages"]
    # The system message is read (and so masked) only by the client-messages scope.
    system = "system keeps [masked]" if scope == "client_messages" else f"system keeps {SECRET}"
    assert sent[0]["content"] == system
    assert sent[1] == {"role": "user", "content": "first [masked]", "name": "[masked]"}
    assert sent[2]["content"] == [{"type": "text", "text": "second [masked]"}, image]
    # The user's turn as rails and the envelope see it: masked.
    assert data["guardrails"]["output_data"]["user_message"] == "first [masked]\nsecond [masked]"


async def test_rewrite_of_a_single_message(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redact_flow: None,
) -> None:
    base = await start_railguard({"c": {"rails": {"input": {"flows": ["redact input"]}}}})
    data = await chat(
        http,
        base,
        [{"role": "user", "content": f"my {SECRET}"}],
        config_id="c",
        options={"output_vars": ["user_message"]},
    )
    assert fake_upstream.main_calls[-1].body["messages"][-1]["content"] == "my [masked]"
    assert data["guardrails"]["output_data"] == {"user_message": "my [masked]"}


async def test_local_rails_run_first_and_spare_the_model_calls(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = self_checks("self check input", "regex check input")
    base = await start_railguard({"c": config})
    data = await chat(
        http,
        base,
        [{"role": "user", "content": "a blocked-word here"}],
        config_id="c",
        options={"log": {"activated_rails": True}},
    )
    assert [r["name"] for r in data["guardrails"]["log"]["activated_rails"]] == [
        "regex check input"
    ]
    assert fake_upstream.chat_calls == []  # neither the check model nor the main model
    # a passing message still runs the model-backed rail
    await chat(http, base, [{"role": "user", "content": "fine"}], config_id="c")
    assert len(fake_upstream.chat_calls) == 2


async def test_one_deadline_for_the_model_rails_of_a_stage(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Each check takes 0.3 s, within its own 1 s timeout; the stage has 0.45 s in all."""
    fake_upstream.judge_delay = 0.3
    config = self_checks("self check input", "self check input", rail_timeout=1, stage_timeout=0.45)
    base = await start_railguard({"c": config})
    started = time.perf_counter()
    data = await chat(
        http,
        base,
        [{"role": "user", "content": "fine"}],
        config_id="c",
        options={"log": {"activated_rails": True}},
    )
    assert time.perf_counter() - started < 0.8
    decisions = [r["decisions"] for r in data["guardrails"]["log"]["activated_rails"]]
    assert decisions == [["allow"], ["timeout: block"]]


async def test_parallel_model_rails_take_as_long_as_the_slowest(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    fake_upstream.judge_delay = 0.4
    config = self_checks("self check input", "self check input")
    config["rails"]["input"]["parallel"] = True
    base = await start_railguard({"c": config})
    started = time.perf_counter()
    data = await chat(
        http,
        base,
        [{"role": "user", "content": "fine"}],
        config_id="c",
        options={"log": {"activated_rails": True}},
    )
    elapsed = time.perf_counter() - started
    assert 0.4 <= elapsed < 0.75
    assert len(data["guardrails"]["log"]["activated_rails"]) == 2


def test_stage_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"railguard\.stage_timeout"):
        Guardrails(RailsConfig.parse_object({"railguard": {"stage_timeout": 0}}))


def speculative(flows: tuple[str, ...] = ("self check input",)) -> dict[str, Any]:
    config = self_checks(*flows)
    config["rails"]["input"]["speculative_generation"] = True
    return config


@pytest.mark.parametrize("stream", [False, True])
async def test_speculative_generation_overlaps_the_main_call_with_input_rails(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    fake_upstream.judge_delay = 0.4
    base = await start_railguard({"on": speculative(), "off": self_checks("self check input")})
    timings = {}
    for config_id in ("on", "off"):
        fake_upstream.next(delay=0.4)
        body = {
            "model": "m1",
            "stream": stream,
            "messages": [{"role": "user", "content": "fine"}],
            "guardrails": {"config_id": config_id},
        }
        started = time.perf_counter()
        async with http.post(f"{base}/v1/chat/completions", json=body) as response:
            raw = await response.read()
        timings[config_id] = time.perf_counter() - started
        assert b"echo: fine" in raw or b"fine" in raw
    assert timings["on"] < 0.7 <= timings["off"], timings


@pytest.mark.parametrize("stream", [False, True])
async def test_speculative_call_is_cancelled_when_an_input_rail_blocks(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream: bool,
) -> None:
    fake_upstream.judge_delay = 0.2
    base = await start_railguard({"on": speculative()})
    fake_upstream.next(delay=2.0)
    body = {
        "model": "m1",
        "stream": stream,
        "messages": [{"role": "user", "content": "something forbidden"}],
        "guardrails": {"config_id": "on"},
    }
    started = time.perf_counter()
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        raw = await response.read()
    assert time.perf_counter() - started < 1.0
    assert b"I'm sorry, I can't respond to that." in raw
    assert len(fake_upstream.main_calls) == 1  # it had started...
    for _ in range(50):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects == 1  # ...and was cancelled


async def test_no_speculation_when_an_input_rail_can_rewrite(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redact_flow: None,
) -> None:
    base = await start_railguard({"on": speculative(("redact input", "self check input"))})
    await chat(http, base, [{"role": "user", "content": f"my {SECRET}"}], config_id="on")
    assert [c.body["messages"][-1]["content"] for c in fake_upstream.main_calls] == ["my [masked]"]


async def test_identical_model_checks_are_answered_from_the_cache(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(
        {"c": self_checks("self check input")}, check_cache_size=16, check_cache_ttl=0.5
    )
    log = {"log": {"llm_calls": True}}
    checks = lambda: len(fake_upstream.chat_calls) - len(fake_upstream.main_calls)  # noqa: E731
    first = await chat(
        http, base, [{"role": "user", "content": "hello"}], config_id="c", options=log
    )
    second = await chat(
        http, base, [{"role": "user", "content": "hello"}], config_id="c", options=log
    )
    assert checks() == 1
    calls = [c for c in second["guardrails"]["log"]["llm_calls"] if c["task"] != "general"]
    assert calls[0]["from_cache"] is True and calls[0]["completion"] == "No"
    assert first["guardrails"]["log"]["llm_calls"][0]["from_cache"] is False
    await chat(http, base, [{"role": "user", "content": "other"}], config_id="c")
    assert checks() == 2  # another message is another check
    await asyncio.sleep(0.6)
    await chat(http, base, [{"role": "user", "content": "hello"}], config_id="c")
    assert checks() == 3  # expired


async def test_check_model_connection_refused_is_retried(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    unused_tcp_port: int,
) -> None:
    port = unused_tcp_port
    config = self_checks("self check input")
    config["models"] = [
        {
            "type": "self_check_input",
            "engine": "openai",
            "model": "judge",
            "parameters": {"base_url": f"http://127.0.0.1:{port}/v1"},
        }
    ]
    base = await start_railguard({"c": config})
    judge = FakeUpstream()
    request = asyncio.ensure_future(
        chat(
            http,
            base,
            [{"role": "user", "content": "hello"}],
            config_id="c",
            options={"log": {"activated_rails": True}},
        )
    )
    await asyncio.sleep(0.01)  # the first attempt finds nothing listening
    runner = aiohttp.web.AppRunner(judge.app())
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        data = await request
    finally:
        await runner.cleanup()
    assert data["guardrails"]["log"]["activated_rails"][0]["decisions"] == ["allow"]
    assert len(judge.chat_calls) == 1


async def test_check_model_errors_are_not_retried(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("judge down")

    fake_upstream.judge = broken
    base = await start_railguard({"c": self_checks("self check input")})
    data = await chat(
        http,
        base,
        [{"role": "user", "content": "hello"}],
        config_id="c",
        options={"log": {"activated_rails": True}},
    )
    assert data["guardrails"]["log"]["activated_rails"][0]["decisions"] == ["error: block"]
    assert len(fake_upstream.chat_calls) == 1  # the 500 was not asked again
