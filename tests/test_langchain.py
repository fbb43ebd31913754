"""LangChain's `ChatOpenAI` as the client: its streams end with the upstream's finish
reason, usage and fingerprint (railguard's envelope rides on the upstream's last chunk)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream

PATHS = ["input_only", "regex"]  # without output rails (passed through) and with them


def chat_model(base: str, config_id: str, stream_usage: bool) -> ChatOpenAI:
    return ChatOpenAI(
        model="m1",
        base_url=f"{base}/v1",
        api_key="sk-client-key",
        max_retries=0,
        stream_usage=stream_usage,  # asks for `stream_options.include_usage`
        extra_body={"guardrails": {"config_id": config_id}},
    )


def check_answer(chunks: list[AIMessageChunk], stream_usage: bool) -> None:
    whole = chunks[0]
    for piece in chunks[1:]:
        whole += piece
    assert whole.content == "echo:onetwothree"  # the fake streams words without spaces
    assert whole.response_metadata["finish_reason"] == "stop"
    assert whole.response_metadata["system_fingerprint"] == "fp_stream"
    if stream_usage:
        assert whole.usage_metadata is not None
        assert whole.usage_metadata["input_tokens"] == 7
        assert whole.usage_metadata["output_tokens"] == 4
        assert whole.usage_metadata["total_tokens"] == 11
    else:
        assert whole.usage_metadata is None


@pytest.mark.parametrize("stream_usage", [False, True])
@pytest.mark.parametrize("config_id", PATHS)
async def test_langchain_astream(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    config_id: str,
    stream_usage: bool,
) -> None:
    base = await start_railguard()
    fake_upstream.next(fingerprint="fp_stream")
    llm = chat_model(base, config_id, stream_usage)
    chunks = [c async for c in llm.astream("one two three")]
    check_answer(chunks, stream_usage)
    sent = fake_upstream.main_calls[0].body
    assert ("stream_options" in sent) is stream_usage


@pytest.mark.parametrize("stream_usage", [False, True])
async def test_langchain_stream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, stream_usage: bool
) -> None:
    """The synchronous `stream`, in a thread: railguard runs on this test's event loop."""
    base = await start_railguard()
    fake_upstream.next(fingerprint="fp_stream")
    llm = chat_model(base, "regex", stream_usage)
    chunks = await asyncio.to_thread(lambda: list(llm.stream("one two three")))
    check_answer(chunks, stream_usage)
