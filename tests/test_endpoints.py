"""The small endpoints: configs, challenges, root, health, ready, checks, metrics, CORS."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import STANDARD_CONFIGS, StartRailguard, write_configs
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_configs_challenges_root_health_ready(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    challenges = '[{"id": "jb-1", "description": "try", "category": "jailbreak"}]'
    root = write_configs(tmp_path / "root", STANDARD_CONFIGS, challenges)
    (root / "_drafts").mkdir()
    (root / "_drafts" / "config.yml").write_text("models: []\n")
    base = await start_railguard(root)
    assert await get_json(http, f"{base}/v1/rails/configs") == (
        200,
        [{"id": "input_only"}, {"id": "open"}, {"id": "regex"}, {"id": "selfcheck"}],
    )
    assert await get_json(http, f"{base}/v1/challenges") == (
        200,
        [{"id": "jb-1", "description": "try", "category": "jailbreak"}],
    )
    assert await get_json(http, f"{base}/health") == (200, {"status": "ok"})
    status, ready = await get_json(http, f"{base}/ready")
    assert status == 200 and ready == {"status": "ready", "configs": 4}


async def test_challenges_default_to_empty_list(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    assert await get_json(http, f"{base}/v1/challenges") == (200, [])


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [{"role": "user", "content": "hello"}],
            {"status": "passed", "content": "hello", "rail": None},
        ),
        (
            [{"role": "user", "content": "ok"}, {"role": "user", "content": "my secret"}],
            {"status": "blocked", "content": REFUSAL, "rail": "regex check input"},
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ssn 123-45-6789"},
            ],
            {"status": "blocked", "content": REFUSAL, "rail": "regex check output"},
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "all fine"}],
            {"status": "passed", "content": "all fine", "rail": None},
        ),
    ],
)
async def test_checks_runs_rails_without_the_model(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    messages: list[dict[str, str]],
    expected: dict[str, object],
) -> None:
    base = await start_railguard()
    body = {"messages": messages, "guardrails": {"config_id": "regex"}}
    async with http.post(f"{base}/v1/checks", json=body) as response:
        assert response.status == 200
        assert await response.json() == expected
    assert fake_upstream.chat_calls == []


async def test_checks_validates_like_chat(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    async with http.post(
        f"{base}/v1/checks", json={"messages": "nope", "config_id": "regex"}
    ) as response:
        assert response.status == 422
        assert "messages" in (await response.json())["error"]["message"]


async def test_metrics_count_requests_by_outcome_and_rail_verdicts(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    for text in ("hello", "the secret"):
        body = {
            "model": "m1",
            "messages": [{"role": "user", "content": text}],
            "guardrails": {"config_id": "regex"},
        }
        async with http.post(f"{base}/v1/chat/completions", json=body) as response:
            assert response.status == 200
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert (
        'railguard_requests_total{config_id="regex",model="m1",outcome="passed",route="chat",stream="false"}'
        in text
    )
    assert 'outcome="blocked_input"' in text
    assert (
        'railguard_rail_checks_total{config_id="regex",rail="regex check input",stage="input",verdict="block"}'
        in text
    )
    assert "railguard_rail_duration_seconds_bucket" in text
    assert (
        'railguard_upstream_duration_seconds_count{model="m1",stream="false",upstream="default"}'
        in text
    )


async def test_cors_when_enabled(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(cors_enabled=True, cors_origins=("https://app.example",))
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{base}/v1/chat/completions", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    async with http.get(f"{base}/health", headers={"Origin": "https://evil.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_headers_by_default(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    async with http.get(f"{base}/health", headers={"Origin": "https://app.example"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
