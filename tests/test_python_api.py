"""The Python API (`from rails import LLMRails, RailsConfig`) against the fake upstream.

Async methods run in the test's loop against `fake_upstream`; the synchronous ones must
not run inside a loop, so their tests are plain functions and the fake upstream serves
from a thread (`threaded_upstream`). Streams are compared with the server's own output
for the same upstream stream: one engine, the same windows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from aiohttp import web

from rails import (
    ConfigError,
    GenerationOptions,
    GenerationResponse,
    LLMRails,
    RailsConfig,
    RailStatus,
    SelectionForbidden,
)
from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import BAD, delivered_text, stream_config, upstream_events

ROOT = Path(__file__).resolve().parent.parent
REFUSAL = "I'm sorry, I can't respond to that."
HELLO = [{"role": "user", "content": "Hello! How are you?"}]
REGEX: dict[str, Any] = {
    "rails": {
        "input": {"flows": ["regex check input"]},
        "output": {"flows": ["regex check output"]},
        "config": {
            "regex_detection": {
                "input": {"patterns": [r"\bsecret\b"]},
                "output": {"patterns": [r"\d{3}-\d{2}-\d{4}"]},
            }
        },
    }
}
MASK: dict[str, Any] = {
    "rails": {
        "input": {"flows": ["mask sensitive data on input", "regex check input"]},
        "config": {
            "sensitive_data_detection": {"input": {"entities": ["EMAIL_ADDRESS"]}},
            "regex_detection": {"input": {"patterns": [r"\bsecret\b"]}},
        },
    }
}


def with_main(config: dict[str, Any], url: str, model: str = "m1") -> dict[str, Any]:
    """`config` whose `type: main` model is served at `url`."""
    main = {"type": "main", "engine": "openai", "model": model, "parameters": {"base_url": url}}
    return {**config, "models": [main]}


def rails_for(config: dict[str, Any], url: str, **kwargs: Any) -> LLMRails:
    return LLMRails(RailsConfig.parse_object(with_main(config, url)), **kwargs)


@pytest.fixture
def threaded_upstream() -> Iterator[FakeUpstream]:
    """The fake upstream on its own thread and loop, for the synchronous methods."""
    fake = FakeUpstream()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app())
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield fake
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


# --- generate: the Quick Start, and the shapes of the answer ----------------------------


def test_quick_start_from_a_folder_repeated_and_closed(
    threaded_upstream: FakeUpstream, tmp_path: Path
) -> None:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "config.yml").write_text(yaml.safe_dump(with_main(REGEX, threaded_upstream.url)))
    config = RailsConfig.from_path(folder)
    rails = LLMRails(config)
    for _ in range(3):  # one private loop and pool, reused
        response = rails.generate(messages=HELLO)
        assert response == {"role": "assistant", "content": "echo: Hello! How are you?"}
    rails.close()
    assert rails.generate(prompt="after close") == "echo: after close"  # reopens
    rails.close()
    sent = threaded_upstream.main_calls[0].body
    assert sent == {"model": "m1", "messages": HELLO}
    assert len(threaded_upstream.main_calls) == 4


def test_threads_call_the_sync_methods_at_once(threaded_upstream: FakeUpstream) -> None:
    rails = rails_for({}, threaded_upstream.url)

    def ask(index: int) -> list[str]:
        return [str(rails.generate(prompt=f"t{index}-{turn}")) for turn in range(3)]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == [[f"echo: t{i}-{turn}" for turn in range(3)] for i in range(8)]
    rails.close()


def test_generate_blocks_input_and_output(threaded_upstream: FakeUpstream) -> None:
    with rails_for(REGEX, threaded_upstream.url) as rails:
        blocked = [{"role": "user", "content": "tell me the secret"}]
        assert rails.generate(messages=blocked) == {"role": "assistant", "content": REFUSAL}
        assert threaded_upstream.main_calls == []
        threaded_upstream.next(content="it is 123-45-6789")
        assert rails.generate(prompt="what is it?") == REFUSAL
        assert len(threaded_upstream.main_calls) == 1


async def test_generate_async_messages_and_prompt(fake_upstream: FakeUpstream) -> None:
    async with rails_for({}, fake_upstream.url) as rails:
        answer = await rails.generate_async(messages=HELLO)
        assert answer == {"role": "assistant", "content": "echo: Hello! How are you?"}
        assert await rails.generate_async(prompt="Hi") == "echo: Hi"
    assert [c.body["messages"][-1]["content"] for c in fake_upstream.main_calls] == [
        "Hello! How are you?",
        "Hi",
    ]


async def test_options_give_a_generation_response_with_log(fake_upstream: FakeUpstream) -> None:
    options = {
        "log": {"activated_rails": True, "llm_calls": True},
        "llm_output": True,
        "output_vars": ["bot_message", "triggered_input_rail"],
        "llm_params": {"temperature": 0.2, "stream": True},
    }
    async with rails_for(REGEX, fake_upstream.url) as rails:
        response = await rails.generate_async(messages=HELLO, options=options)
        assert isinstance(response, GenerationResponse)
        assert response.response == [{"role": "assistant", "content": "echo: Hello! How are you?"}]
        assert response.llm_output is not None and response.llm_output["id"] == "chatcmpl-fake-123"
        assert response.output_data == {
            "bot_message": "echo: Hello! How are you?",
            "triggered_input_rail": None,
        }
        assert response.log is not None
        assert [(r.type, r.name, r.stop) for r in response.log.activated_rails] == [
            ("input", "regex check input", False),
            ("output", "regex check output", False),
        ]
        assert [c.task for c in response.log.llm_calls] == ["general"]
        assert response.log.llm_calls[0].total_tokens == 10
        assert response.log.stats.llm_calls_count == 1
        assert response.state is None
        # The same options as an object; a prompt answers with a string.
        typed = GenerationOptions.model_validate({"log": {"activated_rails": True}})
        by_prompt = await rails.generate_async(prompt="tell me the secret", options=typed)
        assert isinstance(by_prompt, GenerationResponse)
        assert by_prompt.response == REFUSAL
        assert by_prompt.log is not None and by_prompt.log.activated_rails[0].stop
        assert by_prompt.log.llm_calls == []  # not asked for
        no_rails = {"rails": {"input": False, "output": False}}
        with pytest.raises(SelectionForbidden, match="input rails"):  # the config's policy
            await rails.generate_async(prompt="the secret", options=no_rails)
    permissive = {**REGEX, "railguard": {"client_rail_selection": "all"}}
    async with rails_for(permissive, fake_upstream.url) as rails:
        unguarded = await rails.generate_async(prompt="the secret", options=no_rails)
        assert isinstance(unguarded, GenerationResponse)
        assert unguarded.response == "echo: the secret" and unguarded.log is None
    body = fake_upstream.main_calls[0].body
    assert body["temperature"] == 0.2 and "stream" not in body


async def test_state_carries_the_conversation(fake_upstream: FakeUpstream) -> None:
    async with rails_for(REGEX, fake_upstream.url) as rails:
        first = await rails.generate_async(prompt="Hi", state={})
        assert isinstance(first, GenerationResponse) and first.state is not None
        blocked = await rails.generate_async(prompt="the secret", state=first.state)
        assert isinstance(blocked, GenerationResponse) and blocked.response == REFUSAL
        assert blocked.state == first.state  # a blocked message is not kept
        second = await rails.generate_async(prompt="Again", state=blocked.state)
        assert isinstance(second, GenerationResponse)
        other = rails_for({}, fake_upstream.url)
        with pytest.raises(ValueError, match="belongs to config"):
            await other.generate_async(prompt="x", state={**first.state, "config_id": "other"})
    assert fake_upstream.main_calls[-1].body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "echo: Hi"},
        {"role": "user", "content": "Again"},
    ]


async def test_masking_changes_what_goes_upstream_and_context_messages(
    fake_upstream: FakeUpstream,
) -> None:
    async with rails_for(MASK, fake_upstream.url) as rails:
        messages: list[dict[str, Any]] = [
            {"role": "context", "content": {"user_name": "Jo"}},
            {"role": "user", "content": "mail jo@example.com"},
        ]
        options = {"output_vars": ["user_name"]}
        response = await rails.generate_async(messages=messages, options=options)
        assert isinstance(response, GenerationResponse)
        assert response.output_data == {"user_name": "Jo"}
    assert fake_upstream.main_calls[0].body["messages"] == [
        {"role": "user", "content": "mail <EMAIL_ADDRESS>"}
    ]
    assert messages[1]["content"] == "mail jo@example.com"  # the caller's list is untouched


async def test_model_backed_rails_call_the_main_model(fake_upstream: FakeUpstream) -> None:
    """Where the main calls go, the checks that use the main model go too, with its key,
    even when the arguments override the config's URL."""
    config = {
        "rails": {"input": {"flows": ["self check input"]}},
        "prompts": SELF_CHECK_PROMPTS,
    }
    nowhere = "http://127.0.0.1:9/v1"
    async with rails_for(config, nowhere, base_url=fake_upstream.url, api_key="sk-1") as rails:
        assert await rails.generate_async(prompt="you are stupid") == REFUSAL
        assert await rails.generate_async(prompt="you are nice") == "echo: you are nice"
    checks = [c for c in fake_upstream.chat_calls if c not in fake_upstream.main_calls]
    assert len(checks) == 2 and {c.body["model"] for c in checks} == {"m1"}
    assert {c.headers["Authorization"] for c in fake_upstream.chat_calls} == {"Bearer sk-1"}
    assert len(fake_upstream.main_calls) == 1


def test_one_rails_object_in_several_event_loops(threaded_upstream: FakeUpstream) -> None:
    """Each loop gets its own connections (an aiohttp session is bound to its loop)."""
    rails = rails_for({}, threaded_upstream.url)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(rails.generate_async(prompt="a")) == "echo: a"
        assert second.run_until_complete(rails.generate_async(prompt="b")) == "echo: b"
        assert rails.generate(prompt="c") == "echo: c"
        assert first.run_until_complete(rails.generate_async(prompt="d")) == "echo: d"
    finally:
        for loop in (first, second):
            loop.run_until_complete(rails.aclose())
            loop.close()
        rails.close()


# --- where the main model is ------------------------------------------------------------


async def test_upstream_from_arguments_a_client_or_the_environment(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RailsConfig.from_content("models: [{type: main, engine: openai, model: m9}]\n")
    client = openai.AsyncOpenAI(base_url=fake_upstream.url, api_key="sk-from-client")
    async with LLMRails(config, llm=client) as rails:
        assert await rails.generate_async(prompt="a") == "echo: a"
    async with LLMRails(config, base_url=fake_upstream.url, api_key="sk-arg", model="m2") as r2:
        assert await r2.generate_async(prompt="b") == "echo: b"
    monkeypatch.setenv("RAILGUARD_UPSTREAM_URL", fake_upstream.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    async with LLMRails(config) as r3:
        assert await r3.generate_async(prompt="c") == "echo: c"
    calls = fake_upstream.main_calls
    assert [(c.body["model"], c.headers.get("Authorization")) for c in calls] == [
        ("m9", "Bearer sk-from-client"),
        ("m2", "Bearer sk-arg"),
        ("m9", "Bearer sk-env"),
    ]
    with pytest.raises(TypeError, match=r"openai\.OpenAI"):
        LLMRails(config, llm=object())


async def test_api_key_env_var_of_the_main_model(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "sk-mine")
    config = with_main({}, fake_upstream.url)
    config["models"][0]["api_key_env_var"] = "MY_KEY"
    async with LLMRails(RailsConfig.parse_object(config)) as rails:
        await rails.generate_async(prompt="x")
    assert fake_upstream.main_calls[0].headers["Authorization"] == "Bearer sk-mine"


async def test_no_main_model_is_a_clear_error_but_checks_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RAILGUARD_UPSTREAM_URL", "MAIN_MODEL_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    async with LLMRails(RailsConfig.parse_object(REGEX)) as rails:
        with pytest.raises(ValueError, match="No server for the main model"):
            await rails.generate_async(prompt="hi")
        result = await rails.check_async([{"role": "user", "content": "hi"}])
        assert result.status is RailStatus.PASSED


# --- streams: the server's windows ------------------------------------------------------


async def collect(rails: LLMRails, **kwargs: Any) -> list[str]:
    return [chunk async for chunk in rails.stream_async(**kwargs)]


async def server_stream(
    base: str, http: aiohttp.ClientSession, messages: list[dict[str, Any]]
) -> bytes:
    body = {"model": "m1", "stream": True, "messages": messages, "guardrails": {"config_id": "c"}}
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        return await response.read()


BLOCKED_CHUNK = {
    "error": {
        "message": "Blocked by regex check output rails.",
        "type": "guardrails_violation",
        "param": "regex check output",
        "code": "content_blocked",
    }
}
DELTAS = ["one ", "two ", "three ", "four ", "ba", "d phr", "ase ", "five ", "six ", "seven"]


@pytest.mark.parametrize("stream_first", [True, False])
async def test_stream_blocked_mid_stream_as_the_server_is(
    fake_upstream: FakeUpstream,
    start_railguard: StartRailguard,
    http: aiohttp.ClientSession,
    stream_first: bool,
) -> None:
    config = stream_config(chunk_size=4, context_size=2, stream_first=stream_first)
    base = await start_railguard({"c": config})
    fake_upstream.next(chunks=upstream_events(DELTAS))
    through_server = delivered_text(await server_stream(base, http, HELLO))
    async with rails_for(config, fake_upstream.url) as rails:
        fake_upstream.next(chunks=upstream_events(DELTAS))
        chunks = await collect(rails, messages=HELLO)
    assert json.loads(chunks[-1]) == BLOCKED_CHUNK
    text = "".join(chunks[:-1])
    assert text == through_server
    assert text.startswith("one two three ") and not text.endswith("seven")
    if not stream_first:  # what passed went out before the block, nothing of the window
        assert BAD not in text and "six" not in text and len(chunks) > 2
    assert fake_upstream.main_calls[-1].body["stream"] is True


async def test_a_block_closes_the_upstream_stream(fake_upstream: FakeUpstream) -> None:
    config = stream_config(chunk_size=4, context_size=2, stream_first=False)
    many = [*DELTAS, *(f"w{i} " for i in range(200))]
    fake_upstream.next(chunks=upstream_events(many), chunk_delay=0.005)
    async with rails_for(config, fake_upstream.url) as rails:
        chunks = await collect(rails, prompt="hi")
        assert json.loads(chunks[-1]) == BLOCKED_CHUNK
        for _ in range(100):
            if fake_upstream.disconnects:
                break
            await asyncio.sleep(0.01)
    assert fake_upstream.disconnects == 1


@pytest.mark.parametrize("enabled", [True, False])
async def test_a_harmless_stream_is_delivered_whole(
    fake_upstream: FakeUpstream, enabled: bool
) -> None:
    config = stream_config(chunk_size=3, context_size=1, enabled=enabled)
    fake_upstream.next(chunks=upstream_events(["Nothing ", "to ", "see ", "here ", "at ", "all."]))
    async with rails_for(config, fake_upstream.url) as rails:
        chunks = await collect(rails, prompt="hi")
    assert "".join(chunks) == "Nothing to see here at all."
    assert len(chunks) == 6  # the upstream's chunks, whether checked in windows or whole


async def test_stream_input_block_and_rewrites(fake_upstream: FakeUpstream) -> None:
    async with rails_for(REGEX, fake_upstream.url) as rails:
        assert await collect(rails, prompt="the secret") == [REFUSAL]
        assert fake_upstream.main_calls == []
    mask = {
        "rails": {
            "output": {"flows": ["mask sensitive data on output"]},
            "config": {"sensitive_data_detection": {"output": {"entities": ["EMAIL_ADDRESS"]}}},
        }
    }
    fake_upstream.next(chunks=upstream_events(["write ", "to jo@", "example.com ", "now"]))
    async with rails_for(mask, fake_upstream.url) as rails:
        assert await collect(rails, prompt="who?") == ["write to <EMAIL_ADDRESS> now"]


async def test_stream_upstream_failure_raises_after_what_arrived(
    fake_upstream: FakeUpstream,
) -> None:
    from upstream import UpstreamError

    fake_upstream.next(chunks=upstream_events(["one ", "two ", "three"]), die_after=3)
    got: list[str] = []
    async with rails_for(REGEX, fake_upstream.url) as rails:
        with pytest.raises(UpstreamError):
            async for chunk in rails.stream_async(prompt="hi"):
                got.append(chunk)
    assert "".join(got) == "one two "


# --- events and checks ------------------------------------------------------------------


def test_generate_events_round_trip(threaded_upstream: FakeUpstream) -> None:
    with rails_for(REGEX, threaded_upstream.url) as rails:
        events = [{"type": "UtteranceUserActionFinished", "final_transcript": "Hello!"}]
        new = rails.generate_events(events)
        assert [(e["type"], e["script"]) for e in new] == [
            ("StartUtteranceBotAction", "echo: Hello!")
        ]
        history = [
            *events,
            *new,
            {"type": "ContextUpdate", "data": {"lang": "en"}},
            {"type": "UtteranceUserActionFinished", "final_transcript": "And you?"},
        ]
        assert [e["script"] for e in rails.generate_events(history)] == ["echo: And you?"]
        blocked = [{"type": "UtteranceUserActionFinished", "final_transcript": "the secret?"}]
        assert [e["script"] for e in rails.generate_events(blocked)] == [REFUSAL]
        assert rails.generate_events([*events, *new]) == []  # the bot spoke last
    assert [c.body["messages"] for c in threaded_upstream.main_calls] == [
        [{"role": "user", "content": "Hello!"}],
        [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "echo: Hello!"},
            {"role": "user", "content": "And you?"},
        ],
    ]


def test_check_passed_modified_blocked(threaded_upstream: FakeUpstream) -> None:
    checks = {
        "rails": {
            "input": MASK["rails"]["input"],
            "output": {"flows": ["regex check output"]},
            "config": {
                "sensitive_data_detection": {"input": {"entities": ["EMAIL_ADDRESS"]}},
                "regex_detection": REGEX["rails"]["config"]["regex_detection"],
            },
        }
    }
    with LLMRails(RailsConfig.parse_object(checks)) as rails:
        passed = rails.check([{"role": "user", "content": "hello"}])
        assert (passed.status, passed.content, passed.rail) == ("passed", "hello", None)
        modified = rails.check([{"role": "user", "content": "mail jo@example.com"}])
        assert modified.status is RailStatus.MODIFIED
        assert modified.content == "mail <EMAIL_ADDRESS>"
        blocked = rails.check([{"role": "user", "content": "the secret"}])
        assert (blocked.status, blocked.rail) == ("blocked", "regex check input")
        answer = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "123-45-6789"},
        ]
        assert rails.check(answer).status is RailStatus.BLOCKED
        with pytest.raises(SelectionForbidden, match="output rails"):  # the config's policy
            rails.check(answer, rail_types=["input"])
        with pytest.raises(ValueError, match="unknown rail types"):
            rails.check(answer, rail_types=["dialog"])
    permissive = {**checks, "railguard": {"client_rail_selection": ["output"]}}
    with LLMRails(RailsConfig.parse_object(permissive)) as rails:
        assert rails.check(answer, rail_types=["input"]).status is RailStatus.PASSED
    assert threaded_upstream.received == []  # checks call no model


# --- sync methods in a loop, config errors, arguments ------------------------------------


async def test_sync_methods_refuse_to_run_inside_a_loop(fake_upstream: FakeUpstream) -> None:
    rails = rails_for({}, fake_upstream.url)
    calls = [
        ("generate", lambda: rails.generate(prompt="x")),
        ("generate_events", lambda: rails.generate_events([])),
        ("check", lambda: rails.check(HELLO)),
        ("close", rails.close),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        for name, call in calls:
            with pytest.raises(RuntimeError, match=rf"LLMRails\.{name}\(\) can't be called inside"):
                call()
    assert fake_upstream.received == []
    await rails.aclose()


async def test_verbose_logs_each_call(
    fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="railguard.api")
    async with rails_for(REGEX, fake_upstream.url, verbose=True) as rails:
        await rails.generate_async(prompt="the secret")
    assert caplog.messages == [
        "default: blocked (rails run: ['regex check input'])",
    ]


def test_invalid_arguments() -> None:
    rails = LLMRails(RailsConfig.parse_object({}), base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(ValueError, match="either `prompt` or `messages`"):
        rails.generate()
    with pytest.raises(ValueError, match="either `prompt` or `messages`"):
        rails.generate(prompt="a", messages=HELLO)
    with pytest.raises(ValueError, match=r"messages\[0\] must be a dict"):
        rails.generate(messages=[{"content": "no role"}])
    with pytest.raises(ValueError, match="rails"):
        rails.generate(prompt="a", options={"rails": {"dialog": "maybe"}})
    with pytest.raises(ValueError, match="http"):
        LLMRails(RailsConfig.parse_object({}), base_url="ftp://x")
    rails.close()


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.yml").write_text("models: []\n")
    (folder / "rails.yml").write_text("rails:\n  input:\n    flows: [regex check input, 3]\n")
    with pytest.raises(ConfigError) as caught:
        RailsConfig.from_path(folder)
    assert str(caught.value) == (
        f"{folder / 'rails.yml'}: rails.input.flows[1]: must be a string, not int"
    )
    (folder / "rails.yml").write_text("rails:\n  input:\n    flows: [no such rail]\n")
    config = RailsConfig.from_path(folder)
    with pytest.raises(ConfigError) as caught:
        LLMRails(config)  # a rail railguard can't run fails here, not at the first call
    assert (caught.value.file, caught.value.key) == (
        str(folder / "rails.yml"),
        "rails.input.flows[0]",
    )
    with pytest.raises(ConfigError, match=r"^<yaml_content>: rails\.output\.streaming\.chunk_size"):
        RailsConfig.from_content("rails: {output: {streaming: {chunk_size: 0}}}")
    with pytest.raises(ConfigError, match=r"^rails\.input: must be a mapping"):
        RailsConfig.parse_object({"rails": {"input": ["x"]}})


def test_from_content_bot_messages_and_combination(threaded_upstream: FakeUpstream) -> None:
    colang = 'define bot refuse to respond\n  "Not with me, you don\'t."\n'
    base = RailsConfig.from_content(yaml.safe_dump(with_main({}, threaded_upstream.url)), colang)
    rails_yaml = yaml.safe_dump({k: v for k, v in REGEX.items()})
    combined = base + RailsConfig.from_content(rails_yaml)
    with LLMRails(combined) as rails:
        assert rails.generate(prompt="the secret") == "Not with me, you don't."
        assert rails.generate(prompt="hello") == "echo: hello"
    clash = RailsConfig.from_content("models: [{type: main, engine: openai, model: other}]")
    with pytest.raises(ConfigError, match="models of type 'main' differ"):
        _ = base + clash


# --- the example script ------------------------------------------------------------------


def test_the_quick_start_example_runs(threaded_upstream: FakeUpstream) -> None:
    script = ROOT / "examples" / "quick_start.py"
    result = subprocess.run(
        [sys.executable, str(script), threaded_upstream.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "echo: Hello! How are you?\n"
    assert threaded_upstream.main_calls[0].body == {"model": "demo-echo", "messages": HELLO}


ASYNC_WITHOUT_CLOSE = """
import asyncio, sys
from rails import LLMRails, RailsConfig
config = RailsConfig.parse_object({"models": [{"type": "main", "model": "m1"}]})
rails = LLMRails(config, base_url=sys.argv[1])
async def main():
    print(await rails.generate_async(prompt="a"))
    print("".join([chunk async for chunk in rails.stream_async(prompt="b c")]))
asyncio.run(main())
asyncio.run(main())
print(rails.generate(prompt="d"))
"""


def test_connections_close_with_their_loop_without_aclose(threaded_upstream: FakeUpstream) -> None:
    """NeMo-style code never closes the rails: each `asyncio.run` closes what it opened,
    and the exit closes the rest, with no aiohttp warning about unclosed sessions."""
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", ASYNC_WITHOUT_CLOSE, threaded_upstream.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.split("\n") == ["echo: a", "echo:bc", "echo: a", "echo:bc", "echo: d", ""]
