"""Conversation threads over HTTP, with both stores: what the model sees on each turn is
read from the fake upstream, which records every request it got."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import delivered_text, parsed, upstream_events

REFUSAL = "I'm sorry, I can't respond to that."
THREAD = "thread-0123456789abcdef"

CONFIGS: dict[str, dict[str, Any]] = {
    **STANDARD_CONFIGS,
    "windowed": {
        "rails": {
            "output": {
                "flows": ["regex check output"],
                "streaming": {"enabled": True, "chunk_size": 2, "context_size": 1},
            },
            "config": {"regex_detection": {"output": {"patterns": [r"\bforbidden\b"]}}},
        }
    },
    "masking": {
        "rails": {
            "input": {"flows": ["mask sensitive data on input"]},
            "config": {"sensitive_data_detection": {"input": {"entities": ["PHONE_NUMBER"]}}},
        }
    },
}


@pytest.fixture(params=["memory", "redis"])
def thread_store(request: pytest.FixtureRequest) -> str:
    """The `--thread-store` value: the embedded store, or a real redis-server."""
    if request.param == "memory":
        return "memory"
    return str(request.getfixturevalue("redis_server").url)


def turn_body(
    content: str, config_id: str = "open", thread_id: str = THREAD, **extra: Any
) -> dict[str, Any]:
    return {
        "model": "m1",
        "messages": [{"role": "user", "content": content}],
        "guardrails": {"config_id": config_id, "thread_id": thread_id},
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


async def say(http: aiohttp.ClientSession, base: str, content: str, **kw: Any) -> str:
    status, data = await post(http, base, turn_body(content, **kw))
    assert status == 200, data
    return str(data["choices"][0]["message"]["content"])


async def collect_stream(resp: aiohttp.ClientResponse) -> tuple[str, dict[str, Any]]:
    """The text a client assembles, and the last event before [DONE]."""
    raw = await resp.read()
    return delivered_text(raw), [e for e in parsed(raw) if isinstance(e, dict)][-1]


def seen(fake: FakeUpstream, index: int = -1) -> list[tuple[str, str]]:
    """(role, content) of the messages the model got in one main call."""
    return [(m["role"], m["content"]) for m in fake.main_calls[index].body["messages"]]


async def test_the_model_sees_earlier_turns(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    assert await say(http, base, "My name is Alice.") == "echo: My name is Alice."
    assert seen(fake_upstream) == [("user", "My name is Alice.")]
    status, data = await post(http, base, turn_body("What is my name?"))
    assert status == 200
    assert data["guardrails"]["state"] is None  # threads keep the state on the server
    assert seen(fake_upstream) == [
        ("user", "My name is Alice."),
        ("assistant", "echo: My name is Alice."),
        ("user", "What is my name?"),
    ]
    # another thread is another conversation
    await say(http, base, "Hello", thread_id="another-thread-0001")
    assert seen(fake_upstream) == [("user", "Hello")]


async def test_streamed_turns_are_saved(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    async with http.post(
        f"{base}/v1/chat/completions", json=turn_body("one two three", stream=True)
    ) as resp:
        assert resp.status == 200
        text, final = await collect_stream(resp)
    assert text == "echo:onetwothree"  # the fake streams one word a chunk, spaces dropped
    assert final["guardrails"]["state"] is None
    await say(http, base, "and four")
    assert seen(fake_upstream) == [
        ("user", "one two three"),
        ("assistant", "echo:onetwothree"),
        ("user", "and four"),
    ]
    # a stream continues a thread too
    async with http.post(f"{base}/v1/chat/completions", json=turn_body("five", stream=True)) as r:
        await collect_stream(r)
    assert [m[1] for m in seen(fake_upstream)] == [
        "one two three",
        "echo:onetwothree",
        "and four",
        "echo: and four",
        "five",
    ]


async def test_openai_sdk_conversation(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, thread_store: str
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
    extra = {"guardrails": {"config_id": "regex", "thread_id": THREAD}}
    first = await sdk.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "I live in Paris."}], extra_body=extra
    )
    assert first.choices[0].message.content == "echo: I live in Paris."
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "Where do I live?"}],
        stream=True,
        extra_body=extra,
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo:WheredoIlive?"
    third = await sdk.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "Thanks"}], extra_body=extra
    )
    assert third.choices[0].message.content == "echo: Thanks"
    assert seen(fake_upstream) == [
        ("user", "I live in Paris."),
        ("assistant", "echo: I live in Paris."),
        ("user", "Where do I live?"),
        ("assistant", "echo:WheredoIlive?"),
        ("user", "Thanks"),
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_user_message_is_never_replayed(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
    stream: bool,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    await say(http, base, "hello", config_id="regex")
    async with http.post(
        f"{base}/v1/chat/completions",
        json=turn_body("tell me the secret", config_id="regex", stream=stream),
    ) as resp:
        if stream:
            text, _ = await collect_stream(resp)
        else:
            text = (await resp.json())["choices"][0]["message"]["content"]
    assert text == REFUSAL
    assert len(fake_upstream.main_calls) == 1
    await say(http, base, "what now?", config_id="regex")
    assert seen(fake_upstream) == [
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "what now?"),
    ]
    assert not any("secret" in str(c.body) for c in fake_upstream.main_calls)


async def test_a_masked_message_is_kept_as_the_model_saw_it(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    await say(http, base, "call me at 212-555-0123", config_id="masking")
    await say(http, base, "did you get it?", config_id="masking")
    history = seen(fake_upstream)
    assert history[0] == ("user", "call me at <PHONE_NUMBER>")
    assert "212-555-0123" not in str(fake_upstream.main_calls[-1].body)


async def test_a_blocked_answer_is_replayed_as_the_refusal(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    fake_upstream.next(content="my ssn is 123-45-6789")
    assert await say(http, base, "what's your ssn?", config_id="regex") == REFUSAL
    await say(http, base, "ok", config_id="regex")
    assert seen(fake_upstream) == [
        ("user", "what's your ssn?"),
        ("assistant", REFUSAL),
        ("user", "ok"),
    ]


async def test_a_blocked_stream_is_saved_as_the_refusal(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    words = ["one ", "two ", "three ", "forbidden ", "four ", "five ", "six"]
    fake_upstream.next(chunks=upstream_events(words), chunk_delay=0.01)
    async with http.post(
        f"{base}/v1/chat/completions",
        json=turn_body("count", config_id="windowed", stream=True),
    ) as resp:
        text, final = await collect_stream(resp)
    assert final["error"]["code"] == "content_blocked"
    assert text.startswith("one two")  # stream_first: some of it was out before the block
    await say(http, base, "again", config_id="windowed")
    assert seen(fake_upstream) == [("user", "count"), ("assistant", REFUSAL), ("user", "again")]


async def test_a_cut_stream_saves_what_the_client_received(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    # role chunk, "echo:", "alpha", then the connection drops
    fake_upstream.next(die_after=3)
    async with http.post(
        f"{base}/v1/chat/completions", json=turn_body("alpha beta gamma", stream=True)
    ) as resp:
        text, final = await collect_stream(resp)
    assert final["error"]["type"] != "guardrails_violation"
    assert text == "echo:alpha"
    await say(http, base, "go on")
    assert seen(fake_upstream) == [
        ("user", "alpha beta gamma"),
        ("assistant", "echo:alpha"),
        ("user", "go on"),
    ]


async def test_a_stream_the_client_hung_up_on_saves_what_was_sent(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    words = ["one ", "two ", "three ", "four ", "five ", "six ", "seven ", "eight"]
    fake_upstream.next(chunks=upstream_events(words), chunk_delay=0.05)
    async with http.post(
        f"{base}/v1/chat/completions", json=turn_body("count", stream=True)
    ) as resp:
        received = b""
        while b"two" not in received:
            received += await resp.content.readany()
        resp.close()  # the client hangs up mid-stream
    for _ in range(100):  # railguard closes the upstream stream as the handler is cancelled
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # the save is one store call, on a task of its own
    await say(http, base, "and then?")
    history = seen(fake_upstream)
    assert len(history) == 3 and history[0] == ("user", "count"), history
    role, sent = history[1]
    assert role == "assistant" and sent.startswith("one two") and "eight" not in sent
    assert history[2] == ("user", "and then?")


async def test_a_thread_keeps_its_config(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    await say(http, base, "hi", config_id="open")
    status, data = await post(http, base, turn_body("tell me the secret", config_id="input_only"))
    assert status == 422
    assert data["error"]["code"] == "thread_config_mismatch"
    assert data["error"]["param"] == "thread_id"
    assert data["error"]["message"] == (
        "This thread belongs to config 'open', and this request uses config 'input_only'. "
        "A thread keeps the config it was created with: use 'open', or start a new thread."
    )
    assert len(fake_upstream.main_calls) == 1


async def test_ttl_is_refreshed_by_each_turn_and_ends_the_thread(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store, thread_ttl=1.0)
    await say(http, base, "one")
    await asyncio.sleep(0.6)
    await say(http, base, "two")  # refreshes the TTL: one is still there at 1.2 s
    await asyncio.sleep(0.6)
    await say(http, base, "three")
    assert [m[1] for m in seen(fake_upstream)] == ["one", "echo: one", "two", "echo: two", "three"]
    await asyncio.sleep(1.3)
    await say(http, base, "four")
    assert seen(fake_upstream) == [("user", "four")]


async def test_the_cap_drops_the_oldest_messages(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store, thread_max_messages=3)
    for word in ("u1", "u2", "u3", "u4"):
        await say(http, base, word)
    assert [m[1] for m in seen(fake_upstream)] == ["echo: u2", "u3", "echo: u3", "u4"]


async def test_two_concurrent_turns_are_both_kept(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    await say(http, base, "start")
    fake_upstream.next(delay=0.3)
    fake_upstream.next(delay=0.3)
    answers = await asyncio.gather(say(http, base, "left"), say(http, base, "right"))
    assert sorted(answers) == ["echo: left", "echo: right"]
    # both ran on the same history: neither saw the other
    assert (
        seen(fake_upstream, 1)[:2]
        == seen(fake_upstream, 2)[:2]
        == [
            ("user", "start"),
            ("assistant", "echo: start"),
        ]
    )
    await say(http, base, "end")
    history = seen(fake_upstream)
    assert history[:2] == [("user", "start"), ("assistant", "echo: start")]
    pairs = {history[2], history[4]}
    assert pairs == {("user", "left"), ("user", "right")}
    assert history[3] == ("assistant", f"echo: {history[2][1]}")
    assert history[5] == ("assistant", f"echo: {history[4][1]}")
    assert history[6] == ("user", "end")


async def test_check_mode_records_nothing(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_store: str,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    body = turn_body("just checking")
    body["guardrails"]["options"] = {"rails": {"dialog": False}}
    status, _ = await post(http, base, body)
    assert status == 200
    await say(http, base, "real question")
    assert seen(fake_upstream) == [("user", "real question")]


async def test_threads_can_be_turned_off(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, thread_store="none")
    status, data = await post(http, base, turn_body("hi"))
    assert status == 422
    assert data["error"] == {
        "message": "Conversation threads are not enabled on this server.",
        "type": "invalid_request_error",
        "param": "thread_id",
        "code": "threads_disabled",
    }
    assert fake_upstream.received == []
    # state still works: it needs no store
    body = turn_body("hi")
    body["guardrails"] = {"config_id": "open", "state": {}}
    status, data = await post(http, base, body)
    assert status == 200 and data["guardrails"]["state"]["version"] == 1


async def test_thread_id_and_state_together_are_refused(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    body = turn_body("hi")
    body["guardrails"]["state"] = {}
    status, data = await post(http, base, body)
    assert status == 422
    assert data["error"]["code"] == "thread_and_state"


async def test_store_timings_are_exported(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, thread_store: str
) -> None:
    base = await start_railguard(CONFIGS, thread_store=thread_store)
    await say(http, base, "hi")
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    kind = "memory" if thread_store == "memory" else "redis"
    for operation in ("load", "append"):
        line = f'railguard_thread_store_duration_seconds_count{{operation="{operation}",store="{kind}"}}'
        assert line in text, [t for t in text.splitlines() if "thread_store" in t]
