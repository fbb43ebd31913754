"""The official `openai` SDK as the client, pointed at railguard by base URL only."""

from __future__ import annotations

import time

import openai
import orjson
import pytest

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."


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
