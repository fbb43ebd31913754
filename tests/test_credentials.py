"""The client's credentials go only to the upstream that serves the request's `model`.

Two real upstreams: the main one, and a second server a self-check model lives on
(named by its own `base_url`, or routed there by the upstreams table). Both record the
headers they receive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import SELF_CHECK_PROMPTS, StartRailguard
from tests.fake_upstream import FakeUpstream

CLIENT_HEADERS = {
    "Authorization": "Bearer sk-client-0123456789abcdef",
    "api-key": "azure-key-0123456789",
    "x-api-key": "anthropic-key-0123456789",
    "Cookie": "session=cookie-value-0123456789",
    "OpenAI-Organization": "org-client",
    "X-Tenant": "blue",
}
JUDGE_KEY = "judge-key-0123456789"


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def judged(judge_model: dict[str, Any] | None) -> dict[str, Any]:
    """Self check on input and output, its model as given (None: the request's model)."""
    config: dict[str, Any] = {
        "models": [],
        "rails": {
            "input": {"flows": ["self check input"]},
            "output": {"flows": ["self check output"]},
        },
        "prompts": SELF_CHECK_PROMPTS,
    }
    if judge_model is not None:
        config["models"] = [
            {"type": kind, "engine": "openai", **judge_model}
            for kind in ("self_check_input", "self_check_output")
        ]
    return config


@pytest.fixture
async def judge(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/v1"))
    return fake


async def ask(
    http: aiohttp.ClientSession, base: str, config_id: str, *, stream: bool = False
) -> None:
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": stream,
        "guardrails": {"config_id": config_id},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=CLIENT_HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    assert "hello" in text and "error" not in text


def assert_main_got_the_client_headers(main: FakeUpstream) -> None:
    assert main.main_calls
    for call in main.main_calls:
        received = lower(call.headers)
        for name, value in CLIENT_HEADERS.items():
            assert received[name.lower()] == value


def assert_no_client_header(received: dict[str, str], authorization: str | None) -> None:
    got = lower(received)
    assert got.get("authorization") == authorization
    for name in CLIENT_HEADERS:
        if name != "Authorization":
            assert name.lower() not in got, name


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_check_model_on_its_own_base_url_gets_its_own_key_not_the_clients(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    judge: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    monkeypatch.setenv("RG_TEST_JUDGE_KEY", JUDGE_KEY)
    keyed = {
        "model": "judge-model",
        "api_key_env_var": "RG_TEST_JUDGE_KEY",
        "parameters": {"base_url": judge.url},
    }
    keyless = {"model": "judge-model", "parameters": {"base_url": judge.url}}
    base = await start_railguard({"keyed": judged(keyed), "keyless": judged(keyless)})

    await ask(http, base, "keyed", stream=stream)
    assert len(judge.chat_calls) == 2  # the input and the output check
    for call in judge.chat_calls:
        assert_no_client_header(call.headers, f"Bearer {JUDGE_KEY}")
    judge.received.clear()

    await ask(http, base, "keyless", stream=stream)
    assert len(judge.chat_calls) == 2
    for call in judge.chat_calls:
        assert_no_client_header(call.headers, None)

    assert_main_got_the_client_headers(fake_upstream)
    assert all(not c.body["model"].startswith("judge") for c in fake_upstream.chat_calls)


async def test_check_model_on_the_requests_own_upstream_is_called_as_the_client(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    judge: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """No base_url: the check runs on the server that serves the request's model, which
    is where the client's key belongs (without it a pass-through deployment can't check)."""
    base = await start_railguard({"same": judged(None)})
    await ask(http, base, "same")
    checks = [c for c in fake_upstream.chat_calls if c not in fake_upstream.main_calls]
    assert len(checks) == 2
    for call in checks:
        assert lower(call.headers)["authorization"] == CLIENT_HEADERS["Authorization"]
    assert judge.received == []


async def test_check_model_routed_to_another_upstream_by_the_table_gets_no_client_key(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    judge: FakeUpstream,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RG_TEST_JUDGE_KEY", JUDGE_KEY)
    table = {
        "upstreams": [
            {"name": "main", "base_url": fake_upstream.url, "models": ["m1"]},
            {"name": "judges", "base_url": judge.url, "models": ["judge-*"]},
            {
                "name": "keyed-judges",
                "base_url": judge.url + "/",  # the same server, another entry
                "models": ["keyed-judge-*"],
                "api_key_env": "RG_TEST_JUDGE_KEY",
            },
        ]
    }
    upstreams = tmp_path / "upstreams.yaml"
    upstreams.write_text(yaml.safe_dump(table))
    base = await start_railguard(
        {"routed": judged({"model": "judge-a"}), "keyed": judged({"model": "keyed-judge-a"})},
        upstreams_file=upstreams,
    )
    await ask(http, base, "routed")
    assert [c.body["model"] for c in judge.chat_calls] == ["judge-a", "judge-a"]
    for call in judge.chat_calls:
        assert_no_client_header(call.headers, None)
    judge.received.clear()
    await ask(http, base, "keyed")
    for call in judge.chat_calls:
        assert_no_client_header(call.headers, f"Bearer {JUDGE_KEY}")
    assert_main_got_the_client_headers(fake_upstream)


async def test_checks_endpoint_keeps_the_client_key_off_the_check_server(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    judge: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    config = judged({"model": "judge-model", "parameters": {"base_url": judge.url}})
    base = await start_railguard({"judged": config})
    body = {
        "messages": [{"role": "user", "content": "hello"}],
        "guardrails": {"config_id": "judged"},
    }
    async with http.post(f"{base}/v1/checks", json=body, headers=CLIENT_HEADERS) as resp:
        assert resp.status == 200, await resp.text()
    assert len(judge.chat_calls) == 1
    assert_no_client_header(judge.chat_calls[0].headers, None)
    assert fake_upstream.received == []
