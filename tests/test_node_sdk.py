"""The openai Node SDK as the client: `finalChatCompletion()` of a stream through railguard
has the upstream's finish reason, usage and fingerprint, and `guardrails` (the envelope on
the stream's last chunk). tests/node holds the script and its locked dependency
(`make node-packages` installs it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream

SCRIPT = Path(__file__).parent / "node" / "final_completion.mjs"
USAGE = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


async def node_final(base: str, config_id: str, include_usage: bool, message: str) -> Any:
    """Runs the script as a subprocess (railguard serves on this test's event loop)."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(SCRIPT),
        base,
        config_id,
        "1" if include_usage else "0",
        message,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return orjson.loads(out)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("config_id", ["input_only", "regex"])
async def test_node_final_chat_completion_is_the_upstreams(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    config_id: str,
    include_usage: bool,
) -> None:
    base = await start_railguard()
    fake_upstream.next(fingerprint="fp_stream")
    result = await node_final(base, config_id, include_usage, "one two three")
    final = result["final"]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["message"]["content"] == "echo:onetwothree"
    assert final["system_fingerprint"] == "fp_stream"
    assert final.get("usage") == (USAGE if include_usage else None)
    assert final["guardrails"]["config_id"] == config_id  # the last chunk's fields are kept
    assert result["last"]["guardrails"]["config_id"] == config_id


@pytest.mark.parametrize("include_usage", [False, True])
async def test_node_refused_stream(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, include_usage: bool
) -> None:
    base = await start_railguard()
    result = await node_final(base, "input_only", include_usage, "the secret")
    final = result["final"]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["choices"][0]["message"]["content"] == "I'm sorry, I can't respond to that."
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert final.get("usage") == (zero if include_usage else None)
    assert final["guardrails"]["config_id"] == "input_only"
    assert fake_upstream.main_calls == []
