"""The official `openai` SDK as the client, pointed at railguard by base URL only."""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."
# the fake upstream streams "echo: one two three" as 4 words (without their spaces): 4 tokens
ANSWER = "echo:onetwothree"
USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# without output rails (events passed through unparsed) and with them (each event checked)
PATHS = ["input_only", "regex"]


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-client-key", max_retries=0)


async def test_sdk_completion_with_guardrails_extra_body(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard()
    sdk = client(base)
    response = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.2,
        extra_body={"guardrails": {"config_id": "regex"}},
    )
    assert response.choices[0].message.content == "echo: hello"
    assert response.id == "chatcmpl-fake-123"
    assert response.usage is not None and response.usage.total_tokens == 10
    extra = response.model_extra or {}
    assert extra["guardrails"]["config_id"] == "regex"
    sent = fake_upstream.main_calls[0]
    assert (
        sent.headers["Authorization"] == "Bearer sk-client-key"
    )  # passed through, no key configured
    assert sent.body["temperature"] == 0.2

    blocked = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "tell me the secret"}],
        extra_body={"guardrails": {"config_id": "regex"}},
    )
    assert blocked.choices[0].message.content == REFUSAL
    assert blocked.choices[0].finish_reason == "stop"


async def test_sdk_streaming(start_railguard: StartRailguard, fake_upstream: FakeUpstream) -> None:
    base = await start_railguard()
    sdk = client(base)
    stream = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        extra_body={"guardrails": {"config_id": "input_only"}},
    )
    pieces = [
        c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3
    assert " ".join(pieces) == "echo: one two three"

    refused = await sdk.chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "secret"}],
        stream=True,
        extra_body={"guardrails": {"config_id": "input_only"}},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in refused if c.choices])
    assert text == REFUSAL


async def test_sdk_raises_status_error_on_422(start_railguard: StartRailguard) -> None:
    base = await start_railguard()
    sdk = client(base)
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"guardrails": {"config_id": "no-such-config"}},
        )
    assert caught.value.status_code == 422
    assert "no-such-config" in caught.value.message


async def test_sdk_lists_models(start_railguard: StartRailguard) -> None:
    base = await start_railguard()
    models = await client(base).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


RATE_LIMITED = orjson.dumps(
    {
        "error": {
            "message": "Rate limit reached for m1 on tokens per min.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_sdk_retries_a_429_after_the_upstreams_retry_after(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, stream: bool
) -> None:
    """The SDK's own backoff is at least 0.375 s; a retry sooner than that means it read
    the upstream's retry-after-ms (20 ms) through railguard."""
    base = await start_railguard()
    retry = {"retry-after-ms": "20", "Retry-After": "0", "x-ratelimit-remaining-tokens": "0"}
    fake_upstream.next(status=429, body=RATE_LIMITED, headers=retry)
    started = time.perf_counter()
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk", max_retries=1) as sdk:
        answer = await sdk.chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hello"}],
            stream=stream,
            extra_body={"guardrails": {"config_id": "open"}},
        )
        if stream:
            assert isinstance(answer, openai.AsyncStream)
            words = [c.choices[0].delta.content async for c in answer if c.choices]
            text = " ".join(word for word in words if word)
        else:
            assert isinstance(answer, openai.types.chat.ChatCompletion)
            text = answer.choices[0].message.content or ""
    elapsed = time.perf_counter() - started
    assert text == "echo: hello"
    assert len(fake_upstream.main_calls) == 2
    assert elapsed < 0.3


async def test_sdk_sees_the_upstreams_429_and_obeys_x_should_retry(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard()
    headers = {"x-should-retry": "false", "Retry-After": "1"}
    fake_upstream.next(status=429, body=RATE_LIMITED, headers=headers)
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk", max_retries=1) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="m1",
                messages=[{"role": "user", "content": "hello"}],
                extra_body={"guardrails": {"config_id": "open"}},
            )
    assert len(fake_upstream.main_calls) == 1  # told not to retry, it didn't
    error = caught.value
    assert error.code == "rate_limit_exceeded" and error.type == "tokens"
    assert error.response.headers["retry-after"] == "1"


def stream_args(config_id: str, include_usage: bool, content: str = "one two three") -> Any:
    args: dict[str, Any] = {
        "model": "m1",
        "messages": [{"role": "user", "content": content}],
        "extra_body": {"guardrails": {"config_id": config_id}},
    }
    if include_usage:
        args["stream_options"] = {"include_usage": True}
    return args


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("config_id", PATHS)
async def test_sdk_stream_helper_final_completion_is_the_upstreams(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    config_id: str,
    include_usage: bool,
) -> None:
    """`chat.completions.stream(...)`: the final completion has the upstream's finish
    reason, usage and fingerprint; the envelope is on the stream's last chunk."""
    base = await start_railguard()
    fake_upstream.next(fingerprint="fp_stream")
    async with client(base) as sdk:
        async with sdk.chat.completions.stream(**stream_args(config_id, include_usage)) as stream:
            chunks = [event.chunk async for event in stream if event.type == "chunk"]
            final = await stream.get_final_completion()
        assert final.choices[0].finish_reason == "stop"
        assert final.choices[0].message.content == ANSWER
        assert final.system_fingerprint == "fp_stream"
        assert final.id == "chatcmpl-fake-s"
        if include_usage:
            assert final.usage is not None and final.usage.model_dump(exclude_none=True) == USAGE
        else:
            assert final.usage is None
        assert (chunks[-1].model_extra or {})["guardrails"]["config_id"] == config_id
        assert sum("guardrails" in (c.model_extra or {}) for c in chunks) == 1


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("config_id", PATHS)
async def test_sdk_plain_stream_ends_as_the_upstreams(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    config_id: str,
    include_usage: bool,
) -> None:
    """`create(stream=True)`: the last chunk with choices is the upstream's finish chunk;
    the last chunk has its fingerprint (and usage) and carries `guardrails`."""
    base = await start_railguard()
    fake_upstream.next(fingerprint="fp_stream")
    async with client(base) as sdk:
        stream = await sdk.chat.completions.create(
            stream=True, **stream_args(config_id, include_usage)
        )
        chunks = [c async for c in stream]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert all(c.system_fingerprint == "fp_stream" for c in chunks)
        last = chunks[-1]
        if include_usage:
            assert last.choices == []
            assert last.usage is not None and last.usage.model_dump(exclude_none=True) == USAGE
        else:
            assert last.choices[0].finish_reason == "stop" and last.usage is None
        assert (last.model_extra or {})["guardrails"]["config_id"] == config_id


@pytest.mark.parametrize("include_usage", [False, True])
async def test_sdk_refused_stream_ends_with_zero_usage_when_asked(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, include_usage: bool
) -> None:
    """A stream railguard answers itself (an input block): with `include_usage` its last
    chunk is `choices: []` with zero tokens (no model was called), carrying `guardrails`."""
    base = await start_railguard()
    async with client(base) as sdk:
        args = stream_args("input_only", include_usage, content="the secret")
        async with sdk.chat.completions.stream(**args) as stream:
            chunks = [event.chunk async for event in stream if event.type == "chunk"]
            final = await stream.get_final_completion()
        assert final.choices[0].message.content == REFUSAL
        assert final.choices[0].finish_reason == "stop"
        last = chunks[-1]
        if include_usage:
            assert (
                final.usage is not None and final.usage.model_dump(exclude_none=True) == ZERO_USAGE
            )
            assert last.choices == [] and len(chunks) == 3
        else:
            assert final.usage is None
            assert last.choices[0].finish_reason == "stop" and len(chunks) == 2
        assert (last.model_extra or {})["guardrails"]["config_id"] == "input_only"
        assert fake_upstream.main_calls == []


@pytest.mark.parametrize("include_usage", [False, True])
async def test_sdk_blocked_stream_raises_api_error(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, include_usage: bool
) -> None:
    """An output block ends the stream with an error event: both ways of reading a stream
    raise `APIError` with railguard's error as its body (the envelope beside it is not
    kept by the SDK)."""
    base = await start_railguard()
    async with client(base) as sdk:
        args = stream_args("regex", include_usage, content="123-45-6789")
        fake_upstream.next(fingerprint="fp_stream")
        with pytest.raises(openai.APIError) as caught:
            async with sdk.chat.completions.stream(**args) as stream:
                async for _ in stream:
                    pass
        assert caught.value.message == "Blocked by regex check output rails."
        assert (
            isinstance(caught.value.body, dict) and caught.value.body["code"] == "content_blocked"
        )
        fake_upstream.next(fingerprint="fp_stream")
        plain = await sdk.chat.completions.create(stream=True, **args)
        with pytest.raises(openai.APIError) as again:
            async for _ in plain:
                pass
        assert (
            isinstance(again.value.body, dict)
            and again.value.body["type"] == "guardrails_violation"
        )
