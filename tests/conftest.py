"""Shared fixtures: a fake upstream and railguard itself, both real servers on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.app import build_app
from proxy.settings import Settings
from rails.config import load_config_root
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer

SELF_CHECK_PROMPTS = [
    {
        "task": "self_check_input",
        "content": 'User message: "{{ user_input }}"\n'
        "Question: Should the user message be blocked (Yes or No)?",
        "max_tokens": 3,
    },
    {
        "task": "self_check_output",
        "content": 'Bot message: "{{ bot_response }}"\n'
        "Question: Should the message be blocked (Yes or No)?",
        "max_tokens": 3,
    },
]

STANDARD_CONFIGS: dict[str, dict[str, Any]] = {
    "open": {"models": []},
    "regex": {
        "rails": {
            "input": {"flows": ["regex check input"]},
            "output": {"flows": ["regex check output"]},
            "config": {
                "regex_detection": {
                    "input": {
                        "patterns": [r"\bsecret\b", r"ignore previous"],
                        "case_insensitive": True,
                    },
                    "output": {"patterns": [r"\d{3}-\d{2}-\d{4}"]},
                }
            },
        }
    },
    "input_only": {
        "rails": {
            "input": {"flows": ["regex check input"]},
            "config": {"regex_detection": {"input": {"patterns": [r"\bsecret\b"]}}},
        }
    },
    "selfcheck": {
        "rails": {
            "input": {"flows": ["self check input"]},
            "output": {"flows": ["self check output"]},
        },
        "prompts": SELF_CHECK_PROMPTS,
    },
}


def write_configs(
    root: Path, configs: dict[str, dict[str, Any]], challenges: str | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for config_id, content in configs.items():
        folder = root / config_id
        folder.mkdir(exist_ok=True)
        (folder / "config.yml").write_text(yaml.safe_dump(content))
    if challenges is not None:
        (root / "challenges.json").write_text(challenges)
    return root


@pytest.fixture
async def fake_upstream(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/v1"))
    return fake


StartRailguard = Callable[..., Awaitable[str]]


@pytest.fixture
def start_railguard(
    aiohttp_server: Any, fake_upstream: FakeUpstream, tmp_path: Path
) -> StartRailguard:
    """Start railguard on loopback; returns its base URL (no trailing slash)."""

    async def start(
        configs: dict[str, dict[str, Any]] | Path | None = None, **settings: Any
    ) -> str:
        if isinstance(configs, Path):
            root = configs
        else:
            root = write_configs(tmp_path / "configs", configs or STANDARD_CONFIGS)
        settings.setdefault("upstream_url", fake_upstream.url)
        settings.setdefault("check_cache_size", 0)  # tests count check calls; opt in per test
        app = build_app(Settings(config_path=root, **settings), load_config_root(root))
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
