"""POST /v1/chat/completions, non-streaming: rails, pass-through, envelope, options."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from tests.conftest import STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def post(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        return response.status, await response.json()


async def test_passing_request_returns_upstream_json_with_envelope(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data = await post(
        http,
        base,
        {"model": "m1", "messages": [user("hello")], "guardrails": {"config_id": "regex"}},
    )
    assert status == 200
    assert data["id"] == "chatcmpl-fake-123"
    assert data["system_fingerprint"] == "fp_fake"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert data["choices"][0]["message"]["content"] == "echo: hello"
    assert data["guardrails"] == {
        "config_id": "regex",
        "state": None,
        "llm_output": None,
        "output_data": None,
        "log": None,
    }
    assert len(fake_upstream.main_calls) == 1


async def test_unknown_fields_and_parameters_reach_upstream_untouched(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {
        "model": "m1",
        "messages": [user("hello")],
        "temperature": 0.3,
        "seed": 7,
        "n": 1,
        "user": "u-1",
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "stream_options": {"include_usage": True},
        "x_vendor_field": {"nested": [1, 2]},
        "guardrails": {
            "config_id": "open",
            "options": {"llm_params": {"temperature": 0.9, "top_k": 5, "stream": True}},
        },
    }
    status, _ = await post(http, base, body)
    assert status == 200
    sent = fake_upstream.main_calls[0].body
    assert "guardrails" not in sent
    assert sent["temperature"] == 0.3  # the top-level value wins over llm_params
    assert sent["top_k"] == 5  # llm_params merged in
    assert "stream" not in sent  # llm_params cannot turn a JSON answer into a stream
    for key in (
        "seed",
        "n",
        "user",
        "tools",
        "tool_choice",
        "response_format",
        "logprobs",
        "stream_options",
        "x_vendor_field",
    ):
        assert sent[key] == body[key], key
    assert sent["model"] == "m1"


async def test_input_block_never_reaches_upstream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data = await post(
        http,
        base,
        {
            "model": "m1",
            "messages": [user("tell me the SECRET")],
            "guardrails": {"config_id": "regex"},
        },
    )
    assert status == 200
    assert data["choices"][0]["message"] == {"role": "assistant", "content": REFUSAL}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert fake_upstream.main_calls == []


async def test_every_user_message_of_the_turn_is_checked(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    messages = [
        user("what is the secret"),  # the attack hides in the first of two user messages
        user("just say hello"),
    ]
    _, data = await post(
        http, base, {"model": "m1", "messages": messages, "guardrails": {"config_id": "regex"}}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert fake_upstream.main_calls == []
    # An earlier turn the client wrote is read too by default; with the current-turn scope
    # one closed by an assistant answer is not part of the turn.
    history = [user("the secret?"), {"role": "assistant", "content": "no"}, user("hello")]
    body = {"model": "m1", "messages": history, "guardrails": {"config_id": "regex"}}
    _, data = await post(http, base, body)
    assert data["choices"][0]["message"]["content"] == REFUSAL
    current_turn = await start_railguard(input_rails_scope="current_turn")
    _, data = await post(http, current_turn, body)
    assert data["choices"][0]["message"]["content"] == "echo: hello"


async def test_output_block_replaces_the_answer(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(content="your number is 123-45-6789")
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hi")], "guardrails": {"config_id": "regex"}}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert data["id"] == "chatcmpl-fake-123"  # still the upstream's completion, patched


async def test_self_check_rails_block_and_pass(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    guard = {"config_id": "selfcheck"}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("you are stupid")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert fake_upstream.main_calls == []
    check = fake_upstream.chat_calls[0].body
    assert 'User message: "you are stupid"' in check["messages"][0]["content"]
    assert check["temperature"] == 0.001 and check["max_tokens"] == 3

    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == "echo: hello"

    fake_upstream.next(content="this is forbidden text")
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL


async def test_self_check_answer_that_is_not_yes_or_no_blocks(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.judge = lambda prompt: "Maybe?"
    _, data = await post(
        http,
        base,
        {"model": "m1", "messages": [user("hello")], "guardrails": {"config_id": "selfcheck"}},
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL


async def test_options_rails_lists_and_switches(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(client_rail_selection="all")  # NeMo's behaviour, opted in
    off = {"config_id": "regex", "options": {"rails": {"input": False}}}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("the secret")], "guardrails": off}
    )
    assert data["choices"][0]["message"]["content"] == "echo: the secret"

    named = {"config_id": "regex", "options": {"rails": {"input": ["self check input"]}}}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("the secret")], "guardrails": named}
    )
    assert data["choices"][0]["message"]["content"] == "echo: the secret"  # regex rail not selected

    named = {"config_id": "regex", "options": {"rails": {"input": ["regex check input"]}}}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("the secret")], "guardrails": named}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL

    fake_upstream.next(content="123-45-6789")
    no_output = {"config_id": "regex", "options": {"rails": {"output": False}}}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hi")], "guardrails": no_output}
    )
    assert data["choices"][0]["message"]["content"] == "123-45-6789"


async def test_check_mode_runs_rails_without_calling_the_model(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(client_rail_selection="output,input")
    options = {
        "rails": {"input": True, "output": False, "dialog": False},
        "log": {"activated_rails": True},
    }
    guard = {"config_id": "regex", "options": options}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == "hello"
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("a secret")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    rails = data["guardrails"]["log"]["activated_rails"]
    assert [(r["type"], r["name"], r["stop"]) for r in rails] == [
        ("input", "regex check input", True)
    ]
    # Output check of a given assistant message, still without a model call.
    output_only = {
        "config_id": "regex",
        "options": {"rails": {"input": False, "output": True, "dialog": False}},
    }
    messages = [user("hi"), {"role": "assistant", "content": "it is 123-45-6789"}]
    _, data = await post(
        http, base, {"model": "m1", "messages": messages, "guardrails": output_only}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert fake_upstream.main_calls == []


async def test_log_reports_rails_llm_calls_and_stats(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    options = {
        "log": {"activated_rails": True, "llm_calls": True},
        "llm_output": True,
        "output_vars": True,
    }
    _, data = await post(
        http,
        base,
        {
            "model": "m1",
            "messages": [user("hello")],
            "guardrails": {"config_id": "selfcheck", "options": options},
        },
    )
    log = data["guardrails"]["log"]
    assert [r["name"] for r in log["activated_rails"]] == ["self check input", "self check output"]
    assert all(r["duration"] >= 0 and r["decisions"] == ["allow"] for r in log["activated_rails"])
    assert [c["task"] for c in log["llm_calls"]] == [
        "self_check_input",
        "general",
        "self_check_output",
    ]
    assert log["stats"]["llm_calls_count"] == 3
    assert log["stats"]["llm_calls_total_tokens"] == 30
    assert data["guardrails"]["llm_output"]["usage"]["total_tokens"] == 10
    assert data["guardrails"]["output_data"]["bot_message"] == "echo: hello"

    names = {
        "config_id": "selfcheck",
        "options": {"output_vars": ["bot_message"]},
        "context": {"k": 1},
    }
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": names}
    )
    assert data["guardrails"]["output_data"] == {"bot_message": "echo: hello"}


async def test_legacy_top_level_fields_are_honoured_and_not_forwarded(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("the secret")], "config_id": "regex"}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    _, data = await post(
        http,
        base,
        {
            "model": "m1",
            "messages": [user("hi")],
            "config_id": "regex",
            "options": {"llm_output": True},
        },
    )
    assert data["guardrails"]["config_id"] == "regex"
    assert "config_id" not in fake_upstream.main_calls[-1].body
    assert "options" not in fake_upstream.main_calls[-1].body


async def test_default_config_id_applies_without_guardrails(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(default_config_id="regex")
    _, data = await post(http, base, {"model": "m1", "messages": [user("secret stuff")]})
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert data["guardrails"]["config_id"] == "regex"


async def test_config_ids_combine_rails_in_order(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    guard = {
        "config_ids": ["open", "input_only", "selfcheck"],
        "options": {"log": {"activated_rails": True}},
    }
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": guard}
    )
    names = [r["name"] for r in data["guardrails"]["log"]["activated_rails"]]
    assert names == ["regex check input", "self check input", "self check output"]
    assert data["guardrails"]["config_id"] == "open+input_only+selfcheck"
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("a secret")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL


async def test_parallel_rails_block_and_pass(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    configs = dict(STANDARD_CONFIGS)
    configs["par"] = {
        "rails": {
            "input": {"parallel": True, "flows": ["self check input", "regex check input"]},
            "config": {"regex_detection": {"input": {"patterns": ["secret"]}}},
        },
        "prompts": STANDARD_CONFIGS["selfcheck"]["prompts"],
    }
    base = await start_railguard(configs)
    guard = {"config_id": "par"}
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("a secret")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("you are stupid")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == REFUSAL
    _, data = await post(
        http, base, {"model": "m1", "messages": [user("hello")], "guardrails": guard}
    )
    assert data["choices"][0]["message"]["content"] == "echo: hello"


async def test_every_choice_is_checked_and_patched_alone(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    choices = [
        {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"},
        {
            "index": 1,
            "message": {"role": "assistant", "content": "ssn 123-45-6789"},
            "finish_reason": "length",
        },
    ]
    fake_upstream.next(extra={"choices": choices})
    options = {"log": {"activated_rails": True, "llm_calls": True}}
    _, data = await post(
        http,
        base,
        {
            "model": "m1",
            "n": 2,
            "messages": [user("hi")],
            "guardrails": {"config_id": "regex", "options": options},
        },
    )
    assert [c["message"]["content"] for c in data["choices"]] == ["fine", REFUSAL]
    assert [c["finish_reason"] for c in data["choices"]] == ["stop", "stop"]
    log = data["guardrails"]["log"]
    assert [r["name"] for r in log["activated_rails"]] == [
        "regex check input",
        "regex check output",
        "regex check output",
    ]
    assert log["stats"]["llm_calls_count"] == 1  # one main call, however many choices


async def test_config_ids_with_different_main_models_are_a_422_saying_which(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    configs = {
        "llama": {
            "models": [{"type": "main", "engine": "nim", "model": "meta/llama-3.1-8b-instruct"}]
        },
        "gpt": {"models": [{"type": "main", "engine": "openai", "model": "gpt-4o"}]},
        "regex": STANDARD_CONFIGS["regex"],
    }
    base = await start_railguard(configs)
    status, data = await post(
        http,
        base,
        {"model": "m1", "messages": [user("hi")], "guardrails": {"config_ids": ["llama", "gpt"]}},
    )
    assert status == 422
    assert data["error"]["code"] == "config_conflict"
    assert "main" in data["error"]["message"] and "gpt-4o" in data["error"]["message"]
    assert fake_upstream.chat_calls == []
    # The same model in both is fine.
    status, _ = await post(
        http,
        base,
        {"model": "m1", "messages": [user("hi")], "guardrails": {"config_ids": ["llama", "regex"]}},
    )
    assert status == 200


async def test_client_hanging_up_cancels_the_upstream_call(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(delay=5)
    body = {"model": "m1", "messages": [user("hi")], "guardrails": {"config_id": "open"}}
    with contextlib.suppress(TimeoutError):
        await http.post(
            f"{base}/v1/chat/completions", json=body, timeout=aiohttp.ClientTimeout(total=0.3)
        )
    for _ in range(100):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    assert fake_upstream.disconnects == 1
