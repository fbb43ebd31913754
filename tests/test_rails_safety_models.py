"""Model-backed safety rails: content safety, Llama Guard and topic safety.

Over HTTP, the fake upstream plays each check model (picked by the model name railguard
sends); then the parsers over the answer shapes real models give, the default prompts,
which prompt wins, and the start-up errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rails.config import ConfigError, RailsConfig
from rails.default_prompts import DEFAULT_PROMPTS, default_prompt
from rails.guardrails import Guardrails
from rails.library import safety_parsers
from rails.library.safety_parsers import (
    CONTENT_SAFETY_PARSERS,
    SafetyVerdict,
    UnreadableAnswer,
)
from rails.library.topic_safety import ANSWER_FORMAT, conversation
from rails.prompts import CompiledPrompt, compile_prompt
from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream, Received
from tests.stream_helpers import delivered_text, parsed, post_stream, stream_config, upstream_events
from upstream.wire import content_text

REFUSAL = "I'm sorry, I can't respond to that."
TRIGGER = "bomb"
CS_MODEL = "nvidia/llama-3.1-nemoguard-8b-content-safety"
LG_MODEL = "meta-llama/Llama-Guard-3-8B"
TOPIC_MODEL = "nvidia/llama-3.1-nemoguard-8b-topic-control"
CS_INPUT = "content safety check input $model=content_safety"
CS_OUTPUT = "content safety check output $model=content_safety"
TOPIC_INPUT = "topic safety check input $model=topic_control"
LOG = {"log": {"activated_rails": True, "llm_calls": True}}

MODELS = [
    {"type": "main", "engine": "openai", "model": "main-model"},
    {"type": "content_safety", "engine": "nim", "model": CS_MODEL},
    {"type": "llama_guard", "engine": "vllm_openai", "model": LG_MODEL},
    {"type": "topic_control", "engine": "nim", "model": TOPIC_MODEL},
]
CS_PROMPTS = [
    {
        "task": "content_safety_check_input $model=content_safety",
        "content": "Check the user: {{ user_input }}",
        "output_parser": "nemoguard_parse_prompt_safety",
        "max_tokens": 50,
    },
    {
        "task": "content_safety_check_output $model=content_safety",
        "content": "Check user: {{ user_input }} / bot: {{ bot_response }}",
        "output_parser": "nemoguard_parse_response_safety",
        "max_tokens": 50,
    },
]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def prompt_of(call: Received) -> str:
    return body_text(call.body)


def play(fake: FakeUpstream, model: str, answer: Callable[[str], str]) -> None:
    """The fake upstream answers chat calls for `model` with `answer(prompt text)`."""
    fake.answer_checks(
        lambda body: body.get("model") == model, lambda body: answer(body_text(body))
    )


def body_text(body: dict[str, Any]) -> str:
    return "\n".join(content_text(m.get("content")) for m in body.get("messages") or [])


def checks_of(fake: FakeUpstream, model: str) -> list[Received]:
    return [call for call in fake.chat_calls if call.body.get("model") == model]


def nemoguard_judge(prompt: str) -> str:
    """NemoGuard's JSON: the user part and the bot part of the prompt judged apart."""
    user_part, _, bot_part = prompt.partition("bot:")
    answer = {"User Safety": "unsafe" if TRIGGER in user_part else "safe"}
    if "bot:" in prompt:
        answer["Response Safety"] = "unsafe" if TRIGGER in bot_part else "safe"
    if "unsafe" in answer.values():
        answer["Safety Categories"] = "Violence, Guns and Illegal Weapons"
    return json.dumps(answer)


def llama_guard_judge(prompt: str) -> str:
    return "unsafe\nS1,S9" if TRIGGER in prompt else "safe"


async def post(
    http: aiohttp.ClientSession, base: str, config_id: str, messages: list[dict[str, Any]]
) -> dict[str, Any]:
    body = {
        "model": "m1",
        "messages": messages,
        "guardrails": {"config_id": config_id, "options": LOG},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def post_input_stream(
    http: aiohttp.ClientSession, base: str, config_id: str, messages: list[dict[str, Any]]
) -> list[Any]:
    body = {
        "model": "m1",
        "stream": True,
        "messages": messages,
        "guardrails": {"config_id": config_id},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200
        return parsed(await response.read())


def answer_of(data: dict[str, Any]) -> str:
    return str(data["choices"][0]["message"]["content"])


def activated(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["guardrails"]["log"]["activated_rails"])


def stream_text(events: list[Any]) -> str:
    return "".join(
        (choice.get("delta") or {}).get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices") or []
    )


def blocked_event(flow: str) -> dict[str, str]:
    return {
        "message": f"Blocked by {flow} rails.",
        "type": "guardrails_violation",
        "param": flow,
        "code": "content_blocked",
    }


# --- content safety over HTTP --------------------------------------------------------


async def test_content_safety_input_blocks_and_passes(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {"models": MODELS, "rails": {"input": {"flows": [CS_INPUT]}}, "prompts": CS_PROMPTS}
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, nemoguard_judge)

    data = await post(http, base, "cs", [user("how do I build a bomb")])
    assert answer_of(data) == REFUSAL
    assert fake_upstream.main_calls == []
    [rail] = activated(data)
    assert rail["name"] == CS_INPUT and rail["decisions"] == ["block"]
    assert rail["additional_info"] == {"reason": "unsafe: Violence, Guns and Illegal Weapons"}
    [check] = checks_of(fake_upstream, CS_MODEL)
    assert check.body["messages"] == [
        {"role": "user", "content": "Check the user: how do I build a bomb"}
    ]
    assert check.body["max_tokens"] == 50 and check.body["temperature"] == 0.001
    [call] = data["guardrails"]["log"]["llm_calls"]
    assert call["task"] == "content_safety_check_input $model=content_safety"
    assert call["llm_model_name"] == CS_MODEL

    data = await post(http, base, "cs", [user("how do I bake bread")])
    assert answer_of(data) == "echo: how do I bake bread"
    assert activated(data)[0]["decisions"] == ["allow"]
    assert len(fake_upstream.main_calls) == 1


async def test_content_safety_input_on_streams(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {"models": MODELS, "rails": {"input": {"flows": [CS_INPUT]}}, "prompts": CS_PROMPTS}
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, nemoguard_judge)

    events = await post_input_stream(http, base, "cs", [user("a bomb, please")])
    assert stream_text(events) == REFUSAL and events[-1] == "[DONE]"
    assert fake_upstream.main_calls == []

    fake_upstream.next(chunks=upstream_events(["Fresh ", "bread."]))
    events = await post_input_stream(http, base, "cs", [user("some bread, please")])
    assert stream_text(events) == "Fresh bread."
    assert len(checks_of(fake_upstream, CS_MODEL)) == 2


async def test_content_safety_output_blocks_and_passes(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {"models": MODELS, "rails": {"output": {"flows": [CS_OUTPUT]}}, "prompts": CS_PROMPTS}
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, nemoguard_judge)

    fake_upstream.next(content="Mix these to make a bomb.")
    data = await post(http, base, "cs", [user("tell me a recipe")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[0]["additional_info"] == {
        "reason": "unsafe: Violence, Guns and Illegal Weapons"
    }
    [check] = checks_of(fake_upstream, CS_MODEL)
    assert prompt_of(check) == "Check user: tell me a recipe / bot: Mix these to make a bomb."

    fake_upstream.next(content="Mix flour and water.")
    data = await post(http, base, "cs", [user("tell me a recipe")])
    assert answer_of(data) == "Mix flour and water."


async def test_content_safety_output_on_streams(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = stream_config(
        4, 1, stream_first=False, flows=(CS_OUTPUT,), models=MODELS, prompts=CS_PROMPTS
    )
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, nemoguard_judge)

    fake_upstream.next(chunks=upstream_events(["Mix ", "flour ", "and ", "water ", "well."]))
    _, _, raw = await post_stream(http, base, "cs")
    assert delivered_text(raw) == "Mix flour and water well."
    assert "error" not in parsed(raw)[-2]

    fake_upstream.next(chunks=upstream_events(["Mix ", "these ", "for ", "a ", "bomb ", "now."]))
    _, _, raw = await post_stream(http, base, "cs")
    events = parsed(raw)
    assert events[-2]["error"] == blocked_event(CS_OUTPUT) and events[-1] == "[DONE]"
    assert TRIGGER not in delivered_text(raw)  # hold-back: the window with it never left
    windows = [prompt_of(c) for c in checks_of(fake_upstream, CS_MODEL)]
    assert any("bot: Mix these for a" in w for w in windows)


@pytest.mark.parametrize(
    ("parser", "unsafe", "safe", "reason"),
    [
        (
            "nemotron_content_safety_parse_prompt_safety",
            "User Safety: unsafe\nSafety Categories: Violence, Threat",
            "User Safety: safe",
            "unsafe: Violence, Threat",
        ),
        (
            "nemotron_reasoning_parse_prompt_safety",
            "<think>\nThe user wants a weapon.\n</think>\n\nPrompt harm: harmful\nResponse Harm: none",
            "<think>\nBaking is fine.\n</think>\n\nPrompt harm: unharmful\nResponse Harm: none",
            "unsafe (no categories given)",
        ),
        ("is_content_safe", "unsafe\nS1, S9", "safe", "unsafe: S1, S9"),
        (
            "nemoguard_parse_prompt_safety",
            '```json\n{"User Safety": "unsafe", "Safety Categories": "Violence"}\n```',
            '{"User Safety": "safe"} The request is harmless.',
            "unsafe: Violence",
        ),
    ],
)
async def test_content_safety_reads_answers_with_the_prompts_output_parser(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    parser: str,
    unsafe: str,
    safe: str,
    reason: str,
) -> None:
    prompt = {**CS_PROMPTS[0], "output_parser": parser}
    config = {"models": MODELS, "rails": {"input": {"flows": [CS_INPUT]}}, "prompts": [prompt]}
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, lambda p: unsafe if TRIGGER in p else safe)

    data = await post(http, base, "cs", [user("a bomb")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[0]["additional_info"] == {"reason": reason}
    data = await post(http, base, "cs", [user("bread")])
    assert answer_of(data) == "echo: bread"


async def test_an_answer_no_parser_can_read_blocks_and_says_why(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {"models": MODELS, "rails": {"input": {"flows": [CS_INPUT]}}, "prompts": CS_PROMPTS}
    base = await start_railguard(
        {"cs": config, "lenient": {**config, "railguard": {"on_error": "allow"}}}
    )
    play(fake_upstream, CS_MODEL, lambda p: "I'd rather not say.")
    for config_id in ("cs", "lenient"):  # not a failure of the rail, so on_error can't open it
        data = await post(http, base, config_id, [user("hello")])
        assert answer_of(data) == REFUSAL
        [rail] = activated(data)
        assert rail["decisions"] == ["block"]
        assert rail["additional_info"]["reason"] == (
            "unreadable answer, no 'User Safety: safe|unsafe' in the answer: \"I'd rather not say.\""
        )


async def test_reasoning_setting_reaches_the_prompt(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    prompt = {
        **CS_PROMPTS[0],
        "content": "{% if reasoning_enabled %}/think{% else %}/no_think{% endif %} {{ user_input }}",
    }
    rails = {
        "input": {"flows": [CS_INPUT]},
        "config": {"content_safety": {"reasoning": {"enabled": True}}},
    }
    configs = {
        "on": {"models": MODELS, "rails": rails, "prompts": [prompt]},
        "off": {"models": MODELS, "rails": {"input": rails["input"]}, "prompts": [prompt]},
    }
    base = await start_railguard(configs)
    play(fake_upstream, CS_MODEL, lambda p: '{"User Safety": "safe"}')
    await post(http, base, "on", [user("hi")])
    await post(http, base, "off", [user("hi")])
    assert [prompt_of(c) for c in checks_of(fake_upstream, CS_MODEL)] == [
        "/think hi",
        "/no_think hi",
    ]


# --- default prompts and which prompt wins -------------------------------------------


async def test_content_safety_without_prompts_uses_railguards_defaults(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {
        "models": MODELS,
        "rails": {"input": {"flows": [CS_INPUT]}, "output": {"flows": [CS_OUTPUT]}},
    }
    base = await start_railguard({"cs": config})

    def judge(prompt: str) -> str:  # the defaults ask for NemoGuard's JSON
        user_part, _, bot_part = prompt.partition("\nassistant: ")
        if "assistant: " in prompt:
            unsafe = TRIGGER in bot_part
            return (
                f'{{"User Safety": "safe", "Response Safety": "{"unsafe" if unsafe else "safe"}"}}'
            )
        return (
            '{"User Safety": "unsafe", "Safety Categories": "Violence"}'
            if TRIGGER in user_part
            else '{"User Safety": "safe"}'
        )

    play(fake_upstream, CS_MODEL, judge)
    data = await post(http, base, "cs", [user("a bomb")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[0]["additional_info"] == {"reason": "unsafe: Violence"}
    [check] = checks_of(fake_upstream, CS_MODEL)
    assert check.body["messages"][0]["content"].startswith("Judge whether the user message")
    assert "<CONVERSATION>\nuser: a bomb\n</CONVERSATION>" in prompt_of(check)
    assert check.body["max_tokens"] == DEFAULT_PROMPTS["content_safety_check_input"].max_tokens

    fake_upstream.next(content="here is a bomb recipe")
    data = await post(http, base, "cs", [user("a cake")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[1]["name"] == CS_OUTPUT
    assert activated(data)[1]["additional_info"] == {"reason": "unsafe (no categories given)"}
    assert "user: a cake\nassistant: here is a bomb recipe" in prompt_of(
        checks_of(fake_upstream, CS_MODEL)[-1]
    )

    data = await post(http, base, "cs", [user("a cake")])
    assert answer_of(data) == "echo: a cake"


async def test_self_check_without_prompts_uses_railguards_defaults(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    config = {
        "rails": {
            "input": {"flows": ["self check input"]},
            "output": {"flows": ["self check output"]},
        }
    }
    base = await start_railguard({"sc": config})
    data = await post(http, base, "sc", [user("you are stupid")])  # the fake judge says Yes
    assert answer_of(data) == REFUSAL
    check = fake_upstream.chat_calls[0]
    assert prompt_of(check).startswith("You screen messages sent to an AI assistant.")
    assert 'User message: "you are stupid"' in prompt_of(check)
    assert check.body["max_tokens"] == 3

    fake_upstream.next(content="that is forbidden")
    data = await post(http, base, "sc", [user("hello")])
    assert answer_of(data) == REFUSAL
    assert 'Bot message: "that is forbidden"' in prompt_of(fake_upstream.chat_calls[-1])


async def test_a_config_prompt_for_the_check_model_wins(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    generic = CS_PROMPTS[0]
    specific = {**generic, "content": "Specific: {{ user_input }}", "models": [f"nim/{CS_MODEL}"]}
    config = {
        "models": MODELS,
        "rails": {"input": {"flows": [CS_INPUT]}},
        "prompts": [specific, generic],
    }
    base = await start_railguard({"cs": config})
    play(fake_upstream, CS_MODEL, lambda p: '{"User Safety": "safe"}')
    await post(http, base, "cs", [user("hi")])
    assert prompt_of(checks_of(fake_upstream, CS_MODEL)[0]) == "Specific: hi"


def prompt_config(prompts: list[dict[str, Any]]) -> RailsConfig:
    return RailsConfig.parse_object({"models": MODELS, "prompts": prompts})


TASK = "content_safety_check_input $model=content_safety"


def listing(content: str, *models: str) -> dict[str, Any]:
    return {"task": TASK, "content": content, "models": list(models)}


@pytest.mark.parametrize(
    ("prompts", "chosen"),
    [
        ([], "default"),
        ([{"task": "content_safety_check_input $model=other", "content": "x"}], "default"),
        ([listing("generic")], "generic"),
        ([listing("check", CS_MODEL), listing("generic")], "check"),
        ([listing("generic"), listing("check", f"nim/{CS_MODEL}")], "check"),
        ([listing("main", "main-model"), listing("generic")], "main"),
        ([listing("main", "openai/main-model"), listing("check", CS_MODEL)], "check"),
        ([listing("elsewhere", "some/other-model")], "elsewhere"),  # the config's still wins
        ([listing("first"), listing("later")], "later"),
    ],
)
def test_which_prompt_a_task_gets(prompts: list[dict[str, Any]], chosen: str) -> None:
    prompt = compile_prompt(prompt_config(prompts), TASK, CS_INPUT, "k", "content_safety")
    content = prompt.render({"user_input": "hi"})[0]["content"]
    if chosen == "default":
        assert content.startswith("Judge whether the user message")
        assert prompt.output_parser == "nemoguard_parse_prompt_safety"
    else:
        assert content == chosen


RENDERED_TEXTS = {
    "self_check_input": ["U-TEXT"],
    "self_check_output": ["B-TEXT"],
    "content_safety_check_input": ["U-TEXT"],
    "content_safety_check_output": ["U-TEXT", "B-TEXT"],
    "llama_guard_check_input": ["U-TEXT"],
    "llama_guard_check_output": ["U-TEXT", "B-TEXT"],
    "topic_safety_check_input": [],  # the conversation follows it as messages
}


def test_there_is_a_default_prompt_for_every_rail_that_needs_one() -> None:
    assert set(DEFAULT_PROMPTS) == set(RENDERED_TEXTS)


@pytest.mark.parametrize(("task", "texts"), sorted(RENDERED_TEXTS.items()))
def test_every_default_prompt_renders_the_checked_texts(task: str, texts: list[str]) -> None:
    prompt = CompiledPrompt(DEFAULT_PROMPTS[task], None)
    rendered = prompt.render({"user_input": "U-TEXT", "bot_response": "B-TEXT"})
    found = [text for text in ("U-TEXT", "B-TEXT") if text in rendered[0]["content"]]
    assert len(rendered) == 1 and found == texts
    assert prompt.max_tokens
    if task.startswith("content_safety"):
        assert prompt.output_parser in CONTENT_SAFETY_PARSERS


def test_a_model_task_gets_its_base_tasks_default_under_its_own_name() -> None:
    prompt = default_prompt("content_safety_check_output $model=cs")
    assert prompt is not None and prompt.task == "content_safety_check_output $model=cs"
    assert prompt.content == DEFAULT_PROMPTS["content_safety_check_output"].content
    assert default_prompt("self_check_facts") is None


# --- Llama Guard ---------------------------------------------------------------------

LLAMA_GUARD = {
    "models": MODELS,
    "rails": {
        "input": {"flows": ["llama guard check input"]},
        "output": {"flows": ["llama guard check output"]},
    },
}


async def test_llama_guard_blocks_and_passes_with_default_prompts(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"lg": LLAMA_GUARD})
    play(fake_upstream, LG_MODEL, llama_guard_judge)

    data = await post(http, base, "lg", [user("build a bomb")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[0]["additional_info"] == {"reason": "unsafe: S1, S9"}
    [check] = checks_of(fake_upstream, LG_MODEL)
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>" in prompt_of(check)
    assert "<BEGIN CONVERSATION>\n\nUser: build a bomb\n\n<END CONVERSATION>" in prompt_of(check)
    assert check.body["temperature"] == 0.001 and check.body["max_tokens"] == 20
    assert data["guardrails"]["log"]["llm_calls"][0]["task"] == "llama_guard_check_input"

    fake_upstream.next(content="Sure: a bomb needs")
    data = await post(http, base, "lg", [user("hello")])
    assert answer_of(data) == REFUSAL
    assert [r["decisions"] for r in activated(data)] == [["allow"], ["block"]]
    assert "User: hello\n\nAgent: Sure: a bomb needs" in prompt_of(
        checks_of(fake_upstream, LG_MODEL)[-1]
    )

    data = await post(http, base, "lg", [user("hello")])
    assert answer_of(data) == "echo: hello"


async def test_llama_guard_uses_the_configs_prompt_and_reads_any_parser_the_same(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    prompts = [
        {
            "task": "llama_guard_check_input",
            "content": "[INST] {{ user_input }} [/INST]",
            "output_parser": "is_content_safe",
        }
    ]
    base = await start_railguard({"lg": {**LLAMA_GUARD, "prompts": prompts}})
    play(fake_upstream, LG_MODEL, lambda p: " Unsafe \n O3 " if TRIGGER in p else "safe")
    data = await post(http, base, "lg", [user("a bomb")])
    assert activated(data)[0]["additional_info"] == {"reason": "unsafe: O3"}
    assert prompt_of(checks_of(fake_upstream, LG_MODEL)[0]) == "[INST] a bomb [/INST]"
    assert "max_tokens" not in checks_of(fake_upstream, LG_MODEL)[0].body  # the prompt sets none


async def test_llama_guard_on_streams(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    output_only = stream_config(
        3, 1, stream_first=True, flows=("llama guard check output",), models=MODELS
    )
    base = await start_railguard({"lg": LLAMA_GUARD, "lgout": output_only})
    play(fake_upstream, LG_MODEL, llama_guard_judge)

    events = await post_input_stream(http, base, "lg", [user("a bomb")])
    assert stream_text(events) == REFUSAL and fake_upstream.main_calls == []

    fake_upstream.next(
        chunks=upstream_events(["Here ", "is ", "a ", "bomb ", "recipe ", "for ", "you."])
    )
    _, _, raw = await post_stream(http, base, "lgout")
    events = parsed(raw)
    assert events[-2]["error"] == blocked_event("llama guard check output")
    assert "Here is a bomb recipe for you.".startswith(delivered_text(raw))  # stream-first

    fake_upstream.next(chunks=upstream_events(["Here ", "is ", "a ", "cake ", "recipe."]))
    _, _, raw = await post_stream(http, base, "lgout")
    assert delivered_text(raw) == "Here is a cake recipe."


# --- topic safety --------------------------------------------------------------------

COOKING = "You are a cooking assistant. Users may only ask about cooking."


def topic_config(content: str = COOKING) -> dict[str, Any]:
    return {
        "models": MODELS,
        "rails": {"input": {"flows": [TOPIC_INPUT]}},
        "prompts": [{"task": "topic_safety_check_input $model=topic_control", "content": content}],
    }


def topic_judge(body: dict[str, Any]) -> str:
    last = content_text(body["messages"][-1]["content"])
    return "off-topic" if "tax" in last else "on-topic"


async def test_topic_safety_sends_the_prompt_as_system_then_the_conversation(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    # The rail sends the conversation itself: the current turn is the text it judges.
    config = {**topic_config(), "railguard": {"input_scope": "current_turn"}}
    base = await start_railguard({"topic": config})
    fake_upstream.answer_checks(lambda body: body.get("model") == TOPIC_MODEL, topic_judge)
    history = [
        {"role": "system", "content": "Be brief."},
        user("how long do I boil an egg?"),
        {"role": "assistant", "content": "About 8 minutes."},
    ]
    data = await post(http, base, "topic", [*history, user("and my taxes?")])
    assert answer_of(data) == REFUSAL
    assert activated(data)[0]["additional_info"] == {"reason": "unsafe (no categories given)"}
    [check] = checks_of(fake_upstream, TOPIC_MODEL)
    assert check.body["messages"] == [
        {"role": "system", "content": f"{COOKING}\n\n{ANSWER_FORMAT}"},
        user("how long do I boil an egg?"),
        {"role": "assistant", "content": "About 8 minutes."},
        user("and my taxes?"),
    ]
    assert check.body["temperature"] == 0.001

    data = await post(http, base, "topic", [*history, user("and a soft one?")])
    assert answer_of(data) == "echo: and a soft one?"
    events = await post_input_stream(http, base, "topic", [user("my taxes")])
    assert stream_text(events) == REFUSAL
    fake_upstream.next(chunks=upstream_events(["Boil ", "it."]))
    events = await post_input_stream(http, base, "topic", [user("pasta")])
    assert stream_text(events) == "Boil it."


async def test_topic_safety_default_prompt_and_one_that_already_asks_for_the_format(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    asks = 'Only cooking. Say "on-topic" or "off-topic".'
    default = {**topic_config(), "prompts": []}
    base = await start_railguard({"default": default, "asks": topic_config(asks)})
    fake_upstream.answer_checks(
        lambda body: body.get("model") == TOPIC_MODEL, lambda b: "Off-topic."
    )
    for config_id in ("default", "asks"):
        assert answer_of(await post(http, base, config_id, [user("taxes")])) == REFUSAL
    systems = [c.body["messages"][0]["content"] for c in checks_of(fake_upstream, TOPIC_MODEL)]
    assert systems[0].startswith("You check that a conversation") and systems[0].endswith(
        ANSWER_FORMAT
    )
    assert systems[1] == asks


@pytest.mark.parametrize(
    ("roles", "kept"),
    [
        (["user"], []),
        (["system", "user", "assistant", "user", "user"], [1, 2]),
        (["user", "assistant", "tool", "user", "assistant"], [0, 1]),  # check mode: an answer
    ],
)
def test_topic_conversation_ends_with_the_checked_text(roles: list[str], kept: list[int]) -> None:
    messages = [{"role": role, "content": f"m{i}"} for i, role in enumerate(roles)]
    assert conversation(messages, "checked") == [
        *({"role": roles[i], "content": f"m{i}"} for i in kept),
        {"role": "user", "content": "checked"},
    ]


# --- start-up errors -----------------------------------------------------------------


def build_folder(
    tmp_path: Path, config: dict[str, Any], prompts: list[dict[str, Any]] | None = None
) -> Guardrails:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    if prompts is not None:
        (folder / "prompts.yml").write_text(yaml.safe_dump({"prompts": prompts}))
    return Guardrails(RailsConfig.from_path(folder))


def flows(*input_flows: str, output: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"input": {"flows": list(input_flows)}, "output": {"flows": list(output)}}


@pytest.mark.parametrize(
    ("rails", "prompts", "file", "key", "message"),
    [
        (
            flows("self check input", "content safety check input $model=nope"),
            None,
            "config.yml",
            "rails.input.flows[1]",
            "needs a model of type 'nope' in `models` (types there: 'content_safety', "
            "'llama_guard', 'main', 'topic_control')",
        ),
        (
            flows(output=("self check output", "content safety check output")),
            None,
            "config.yml",
            "rails.output.flows[1]",
            "needs the type of its model: 'content safety check output $model=TYPE'",
        ),
        (
            flows("topic safety check input $model=topic"),
            None,
            "config.yml",
            "rails.input.flows[0]",
            "needs a model of type 'topic'",
        ),
        (
            flows(CS_INPUT),
            [CS_PROMPTS[1], {**CS_PROMPTS[0], "output_parser": "nemoguard_parse_safety"}],
            "prompts.yml",
            "prompts[1].output_parser",
            "'nemoguard_parse_safety' is not one railguard knows: is_content_safe, "
            "nemoguard_parse_prompt_safety",
        ),
        (
            flows(output=(CS_OUTPUT,)),
            [CS_PROMPTS[0], {k: v for k, v in CS_PROMPTS[1].items() if k != "output_parser"}],
            "prompts.yml",
            "prompts[1].output_parser",
            "and none is one railguard knows",
        ),
        (
            flows(CS_INPUT) | {"config": {"content_safety": {"reasoning": {"enabled": "yes"}}}},
            None,
            "config.yml",
            "rails.config.content_safety.reasoning.enabled",
            "must be true or false",
        ),
        (
            flows(CS_INPUT),
            [{**CS_PROMPTS[0], "content": "{{ user_input "}],
            "prompts.yml",
            "prompts[0]",
            "is not a valid template",
        ),
    ],
)
def test_config_errors_name_file_and_key(
    tmp_path: Path,
    rails: dict[str, Any],
    prompts: list[dict[str, Any]] | None,
    file: str,
    key: str,
    message: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_folder(tmp_path, {"models": MODELS, "rails": rails}, prompts)
    assert caught.value.file == str(tmp_path / "c" / file)
    assert caught.value.key == key
    assert message in caught.value.reason


def test_llama_guard_needs_a_llama_guard_model_not_the_main_one(tmp_path: Path) -> None:
    models = [m for m in MODELS if m["type"] != "llama_guard"]
    with pytest.raises(ConfigError) as caught:
        build_folder(
            tmp_path, {"models": models, "rails": flows(output=("llama guard check output",))}
        )
    assert caught.value.key == "rails.output.flows[0]"
    assert "'llama guard check output' needs a model of type 'llama_guard'" in caught.value.reason


# --- parsers over realistic answers --------------------------------------------------

UNSAFE = False
SAFE = True
Expected = bool | tuple[bool, tuple[str, ...]] | str  # safe?, (safe?, categories), or unreadable


def check_parser(parser: safety_parsers.Parser, answer: str, expected: Expected) -> None:
    if isinstance(expected, str):
        with pytest.raises(UnreadableAnswer, match=expected):
            parser(answer)
        return
    safe, categories = expected if isinstance(expected, tuple) else (expected, ())
    assert parser(answer) == SafetyVerdict(safe, categories)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"User Safety": "safe"}', SAFE),
        (
            '{"User Safety": "unsafe", "Safety Categories": "Violence, Criminal Planning/Confessions"}',
            (UNSAFE, ("Violence", "Criminal Planning/Confessions")),
        ),
        ('{"User Safety": "unsafe"}', UNSAFE),
        ('  {"User Safety":"Safe"}\n', SAFE),
        ('{"User Safety": "UNSAFE", "Safety Categories": "Threat"}', (UNSAFE, ("Threat",))),
        (
            '```json\n{"User Safety": "unsafe", "Safety Categories": "PII/Privacy"}\n```',
            (UNSAFE, ("PII/Privacy",)),
        ),
        ('{"User Safety": "safe"}\n\nThe message asks for a recipe, which is harmless.', SAFE),
        (
            "{'User Safety': 'unsafe', 'Safety Categories': ['Hate/Identity Hate', 'Harassment']}",
            (UNSAFE, ("Hate/Identity Hate", "Harassment")),
        ),
        (
            '{\n  "User Safety": "unsafe",\n  "Safety Categories": "Guns and Illegal Weapons"\n}',
            (UNSAFE, ("Guns and Illegal Weapons",)),
        ),
        (
            '<think>\nIs "User Safety" unsafe here? The user asks about bread.\n</think>\n{"User Safety": "safe"}',
            SAFE,
        ),
        (
            '</think>\n\n{"User Safety": "unsafe", "Safety Categories": "Violence"}',
            (UNSAFE, ("Violence",)),
        ),
        ("User Safety: unsafe\nSafety Categories: Violence", (UNSAFE, ("Violence",))),
        ('Let me think about it.\n{"User Safety": "safe"}', SAFE),
        ("<think>\nThe user asks about explosives, which", "reasoning trace never ended"),
        ('{"User Safety": "unknown"}', "no 'User Safety: safe|unsafe'"),
        ('{"Response Safety": "safe"}', "no 'User Safety"),
        ("I cannot help with that.", "no 'User Safety"),
        ("", "no 'User Safety"),
        ('{"User Safety": "safe"}\n{"User Safety": "unsafe"}', "both safe and unsafe"),
        ('{"User Safety": "safe", "note": "User Safety: unsafe"}', "both safe and unsafe"),
        ('{"User Safety": "sa', "no 'User Safety"),  # cut by max_tokens
    ],
)
def test_nemoguard_prompt_safety_parser(answer: str, expected: Expected) -> None:
    check_parser(CONTENT_SAFETY_PARSERS["nemoguard_parse_prompt_safety"], answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"User Safety": "unsafe", "Response Safety": "safe"}', SAFE),  # a refusal is safe
        (
            '{"User Safety": "safe", "Response Safety": "unsafe", "Safety Categories": "Malware"}',
            (UNSAFE, ("Malware",)),
        ),
        ('{"User Safety": "safe", "Response Safety": "Unsafe"} trailing words', UNSAFE),
        ('{"User Safety": "safe"}', "no 'Response Safety"),
        (
            "User Safety: safe\nResponse Safety: unsafe\nSafety Categories: Profanity",
            (UNSAFE, ("Profanity",)),
        ),
    ],
)
def test_nemoguard_response_safety_parser(answer: str, expected: Expected) -> None:
    check_parser(CONTENT_SAFETY_PARSERS["nemoguard_parse_response_safety"], answer, expected)


@pytest.mark.parametrize(
    ("name", "answer", "expected"),
    [
        ("nemotron_content_safety_parse_prompt_safety", "User Safety: safe", SAFE),
        (
            "nemotron_content_safety_parse_prompt_safety",
            "User Safety: unsafe\nSafety Categories: Criminal Planning/Confessions, Violence",
            (UNSAFE, ("Criminal Planning/Confessions", "Violence")),
        ),
        ("nemotron_content_safety_parse_prompt_safety", "  user safety :  UNSAFE  ", UNSAFE),
        ("nemotron_content_safety_parse_prompt_safety", "**User Safety:** safe", SAFE),
        (
            "nemotron_content_safety_parse_prompt_safety",
            "User Safety: unsafe\nResponse Safety: safe",
            UNSAFE,
        ),
        (
            "nemotron_content_safety_parse_prompt_safety",
            "<think>\nUser Safety: unsafe? no.\n</think>\nUser Safety: safe",
            SAFE,
        ),
        (
            "nemotron_content_safety_parse_prompt_safety",
            "User Safety: safe\nUser Safety: unsafe",
            "both",
        ),
        ("nemotron_content_safety_parse_prompt_safety", "User Safety: maybe", "no 'User Safety"),
        (
            "nemotron_content_safety_parse_response_safety",
            "User Safety: unsafe\nResponse Safety: safe",
            SAFE,
        ),
        (
            "nemotron_content_safety_parse_response_safety",
            "User Safety: safe\nResponse Safety: unsafe\nSafety Categories: Threat",
            (UNSAFE, ("Threat",)),
        ),
        (
            "nemotron_content_safety_parse_response_safety",
            "User Safety: unsafe",
            "no 'Response Safety",
        ),
        (
            "nemotron_reasoning_parse_prompt_safety",
            "Prompt harm: unharmful\nResponse Harm: none",
            SAFE,
        ),
        (
            "nemotron_reasoning_parse_prompt_safety",
            "<think>\nweapons...\n</think>\n\nPrompt harm: harmful\nResponse Harm: none",
            UNSAFE,
        ),
        ("nemotron_reasoning_parse_prompt_safety", "prompt harm: Harmful", UNSAFE),
        ("nemotron_reasoning_parse_prompt_safety", "Response Harm: unharmful", "no 'Prompt harm"),
        ("nemotron_reasoning_parse_prompt_safety", "<think>\nhmm, harmful or", "never ended"),
        (
            "nemotron_reasoning_parse_response_safety",
            "Prompt harm: harmful\nResponse Harm: unharmful",
            SAFE,
        ),
        (
            "nemotron_reasoning_parse_response_safety",
            "Prompt harm: unharmful\nResponse harm: harmful",
            UNSAFE,
        ),
    ],
)
def test_nemotron_parsers(name: str, answer: str, expected: Expected) -> None:
    check_parser(CONTENT_SAFETY_PARSERS[name], answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("safe", SAFE),
        ("  Safe\n", SAFE),
        ("No", SAFE),
        ("no.", SAFE),
        ("unsafe", UNSAFE),
        ("Yes", UNSAFE),
        ("UNSAFE S1 S10", (UNSAFE, ("S1", "S10"))),
        ("unsafe\nS1,S10", (UNSAFE, ("S1", "S10"))),
        (
            "unsafe: Violence, Suicide and Self Harm",
            (UNSAFE, ("Violence", "Suicide and Self Harm")),
        ),
        ("**unsafe**", UNSAFE),
        ("Answer: safe", SAFE),
        ("Let me think about this.\nThe user asks about pasta, which is harmless.\nsafe", SAFE),
        ("<think>Could this be unsafe? No, it is a recipe.</think>\nsafe", SAFE),
        ("unsafe\nThe user asks how to make a weapon, which falls under violent crimes.", UNSAFE),
        ("Safe. The user asks a yes/no question.", SAFE),
        ("No, this is unsafe.", "contradictory"),
        ("safe\nunsafe", "contradictory"),
        ("The content is fine.", "no safe/no/unsafe/yes verdict"),
        ("safely done", "no safe"),
        ("<think>the user", "never ended"),
    ],
)
def test_is_content_safe_parser(answer: str, expected: Expected) -> None:
    check_parser(CONTENT_SAFETY_PARSERS["is_content_safe"], answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("safe", SAFE),
        ("unsafe\nS1", (UNSAFE, ("S1",))),
        ("unsafe\nS1,S10", (UNSAFE, ("S1", "S10"))),
        ("unsafe\nS2, S14", (UNSAFE, ("S2", "S14"))),
        ("UNSAFE\nO3", (UNSAFE, ("O3",))),
        (" \nunsafe\n\nS9\n", (UNSAFE, ("S9",))),
        ("unsafe S5", (UNSAFE, ("S5",))),
        ("unsafe", UNSAFE),
        ("Safe.", SAFE),
        ("<think>\nThe user asks about a recipe.\n</think>\n\nsafe", SAFE),
        ("I think the answer is:\nunsafe\nS1", (UNSAFE, ("S1",))),
        ("safe\nunsafe\nS1", "contradictory"),
        ("yes", "no safe/unsafe verdict"),
        ("It is unsafe.", "no safe/unsafe verdict"),
    ],
)
def test_llama_guard_parser(answer: str, expected: Expected) -> None:
    check_parser(safety_parsers.llama_guard, answer, expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("on-topic", SAFE),
        ("off-topic", UNSAFE),
        ("Off-topic.", UNSAFE),
        ("  ON-TOPIC  ", SAFE),
        ('"off-topic"', UNSAFE),
        ("**on-topic**", SAFE),
        ("off topic", UNSAFE),
        ("<think>\nThe user asks about cooking, so on-topic.\n</think>\non-topic", SAFE),
        ("The question is about taxes.\noff-topic", UNSAFE),
        ("on-topic\noff-topic", "contradictory"),
        ("I can't tell.", "no on-topic/off-topic verdict"),
        ("topical", "no on-topic"),
    ],
)
def test_topic_parser(answer: str, expected: Expected) -> None:
    check_parser(safety_parsers.topic, answer, expected)
