"""Which upstream serves which model, what headers it gets, and the merged model list."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream, Received

UPSTREAM_KEY = "sk-upstream-KEY-abcdef123456"
CLIENT_KEY = "sk-client-KEY-654321fedcba"


class ListingUpstream(FakeUpstream):
    """A fake upstream whose GET /models lists the models it is given."""

    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.models = models or []

    async def _models(self, request: web.Request) -> web.Response:
        self.received.append(Received(request.path, dict(request.headers), {}))
        return web.json_response({"object": "list", "data": self.models})


@pytest.fixture
def new_upstream(aiohttp_server: Any) -> Any:
    async def start(models: list[dict[str, Any]] | None = None) -> ListingUpstream:
        fake = ListingUpstream(models)
        server = await aiohttp_server(fake.app())
        fake.url = str(server.make_url("/v1"))
        return fake

    return start


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_table(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"upstreams": entries}))
    return path


def body(model: str, config_id: str = "open", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"hi {model}"}],
        "guardrails": {"config_id": config_id},
        **extra,
    }


async def chat(
    http: aiohttp.ClientSession,
    base: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    async with http.post(f"{base}/v1/chat/completions", json=payload, headers=headers) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        return data


async def test_table_routes_by_exact_name_and_glob_first_match_wins(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    alpha = await new_upstream()
    beta = await new_upstream()
    table = write_table(
        tmp_path / "upstreams.yml",
        [
            {"name": "alpha", "base_url": alpha.url, "models": ["exact-a", "family-*"]},
            {"name": "beta", "base_url": beta.url, "models": ["family-*", "exact-b", "b-?"]},
        ],
    )
    base = await start_railguard(upstreams_file=table)
    expected = {
        "exact-a": alpha,
        "family-7b": alpha,  # both match the glob: the first entry wins
        "exact-b": beta,
        "b-1": beta,
        "b-12": fake_upstream,  # '?' is one character
        "exact-a-v2": fake_upstream,  # exact names are exact
        "EXACT-A": fake_upstream,  # and case-sensitive
        "something-else": fake_upstream,  # the default catches the rest
    }
    for model in expected:
        data = await chat(http, base, body(model))
        assert data["choices"][0]["message"]["content"] == f"echo: hi {model}"
    for fake in (alpha, beta, fake_upstream):
        served = [call.body["model"] for call in fake.main_calls]
        assert served == [m for m, target in expected.items() if target is fake]


async def test_without_default_an_unmatched_model_is_422(
    start_railguard: StartRailguard,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    alpha = await new_upstream()
    table = write_table(
        tmp_path / "upstreams.yml", [{"name": "alpha", "base_url": alpha.url, "models": ["a-*"]}]
    )
    base = await start_railguard(upstreams_file=table, upstream_url=None)
    await chat(http, base, body("a-1"))
    async with http.post(f"{base}/v1/chat/completions", json=body("b-1")) as resp:
        assert resp.status == 422
        assert "'b-1'" in (await resp.json())["error"]["message"]
    assert [c.body["model"] for c in alpha.main_calls] == ["a-1"]


async def test_config_main_model_base_url_routes_that_configs_requests(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    alpha = await new_upstream()
    config_host = await new_upstream()
    table = write_table(
        tmp_path / "upstreams.yml",
        [{"name": "alpha", "base_url": alpha.url, "models": ["tabled-*"]}],
    )
    configs = {
        "hosted": {
            "models": [
                {
                    "type": "main",
                    "engine": "openai",
                    "model": "config-model",
                    "parameters": {"base_url": config_host.url},
                }
            ]
        },
        "open": {"models": []},
    }
    base = await start_railguard(configs, upstreams_file=table)
    await chat(http, base, body("client-model", "hosted"))  # config's upstream
    await chat(http, base, body("tabled-1", "hosted"))  # the table still comes first
    await chat(http, base, body("client-model", "open"))  # other configs: the default
    # the request's model goes upstream unchanged, even where the config names another
    assert [c.body["model"] for c in config_host.main_calls] == ["client-model"]
    assert [c.body["model"] for c in alpha.main_calls] == ["tabled-1"]
    assert [c.body["model"] for c in fake_upstream.main_calls] == ["client-model"]


async def test_model_name_reaches_upstream_byte_for_byte(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    names = ["meta/llama-3.1-8b-instruct", "org/Model:Q4_K_M", "../../v1/models", "ünïcode model"]
    for name in names:
        data = await chat(http, base, body(name))
        assert data["model"] == name
    assert [c.body["model"] for c in fake_upstream.main_calls] == names
    assert {c.path for c in fake_upstream.main_calls} == {"/v1/chat/completions"}


async def test_upstream_api_key_replaces_the_clients_authorization(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RG_ROUTING_TEST_KEY", UPSTREAM_KEY)
    keyed = await new_upstream()
    table = write_table(
        tmp_path / "upstreams.yml",
        [
            {
                "name": "keyed",
                "base_url": keyed.url,
                "models": ["keyed-*"],
                "api_key_env": "RG_ROUTING_TEST_KEY",
                "headers": {"X-Tenant": "blue"},
            }
        ],
    )
    base = await start_railguard(upstreams_file=table)
    client_auth = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Tenant": "red"}
    await chat(http, base, body("keyed-1"), headers=client_auth)
    await chat(http, base, body("plain"), headers=client_auth)
    await chat(http, base, body("plain"))

    sent = keyed.main_calls[0].headers
    assert sent["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in str(sent)
    assert sent["X-Tenant"] == "blue"  # the upstream's own header wins
    # without a key, the client's Authorization is passed through as it is
    with_auth, without_auth = fake_upstream.main_calls
    assert with_auth.headers["Authorization"] == f"Bearer {CLIENT_KEY}"
    assert with_auth.headers["X-Tenant"] == "red"
    assert "Authorization" not in without_auth.headers
    # an env var that is set later (key rotation) is read per request
    monkeypatch.setenv("RG_ROUTING_TEST_KEY", "sk-rotated-0000000000")
    await chat(http, base, body("keyed-2"), headers=client_auth)
    assert keyed.main_calls[1].headers["Authorization"] == "Bearer sk-rotated-0000000000"


async def test_hop_by_hop_headers_are_not_forwarded(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    headers = {
        "Connection": "keep-alive, X-Custom",
        "Keep-Alive": "timeout=5",
        "X-Custom": "per-connection",
        "TE": "trailers",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Upgrade": "websocket",
        "OpenAI-Organization": "org-123",
        "OpenAI-Project": "proj-9",
        "X-Request-Id": "req-42",
    }
    await chat(http, base, body("m1"), headers=headers)
    sent = {name.lower(): value for name, value in fake_upstream.main_calls[0].headers.items()}
    for dropped in ("x-custom", "te", "proxy-authorization", "keep-alive", "upgrade"):
        assert dropped not in sent, dropped
    assert "x-custom" not in sent.get("connection", "").lower()
    assert sent["openai-organization"] == "org-123"
    assert sent["openai-project"] == "proj-9"
    assert sent["x-request-id"] == "req-42"
    assert sent["content-type"] == "application/json"


async def test_models_lists_every_upstream_merged_by_id(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    alpha = await new_upstream(
        [
            {"id": "alpha-1", "object": "model", "owned_by": "alpha"},
            {"id": "shared", "object": "model", "owned_by": "alpha"},
        ]
    )
    beta = await new_upstream(
        [
            {"id": "shared", "object": "model", "owned_by": "beta"},
            {"id": "beta-1", "object": "model", "owned_by": "beta"},
            {"object": "model"},  # no id: skipped
        ]
    )
    table = write_table(
        tmp_path / "upstreams.yml",
        [
            {"name": "alpha", "base_url": alpha.url, "models": ["alpha-*", "shared"]},
            {"name": "beta", "base_url": beta.url, "models": ["beta-*"]},
            {"name": "alpha-again", "base_url": alpha.url, "models": ["more-*"]},
        ],
    )
    base = await start_railguard(upstreams_file=table)
    async with http.get(f"{base}/v1/models") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["object"] == "list"
    assert [(m["id"], m["owned_by"]) for m in data["data"]] == [
        ("alpha-1", "alpha"),
        ("shared", "alpha"),
        ("beta-1", "beta"),
        ("fake-model", "test"),
    ]
    # each server is asked once, even when two table entries share it
    assert len([r for r in alpha.received if r.path == "/v1/models"]) == 1
    assert len([r for r in beta.received if r.path == "/v1/models"]) == 1


async def test_models_still_answers_when_one_upstream_is_down(
    start_railguard: StartRailguard,
    new_upstream: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    alpha = await new_upstream([{"id": "alpha-1", "object": "model", "owned_by": "alpha"}])
    down = f"http://127.0.0.1:{closed_port()}/v1"
    table = write_table(
        tmp_path / "upstreams.yml",
        [
            {"name": "down", "base_url": down, "models": ["down-*"]},
            {"name": "alpha", "base_url": alpha.url, "models": ["alpha-*"]},
        ],
    )
    base = await start_railguard(upstreams_file=table, upstream_url=None)
    async with http.get(f"{base}/v1/models") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert [m["id"] for m in data["data"]] == ["alpha-1"]


async def test_models_fails_when_every_upstream_is_down(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(upstream_url=f"http://127.0.0.1:{closed_port()}/v1")
    async with http.get(f"{base}/v1/models") as resp:
        assert resp.status == 502
        data = await resp.json()
    assert data["error"]["code"] == "upstream_unreachable"
    assert data["detail"] == data["error"]["message"]


async def test_models_include_a_configs_own_main_model_server(
    start_railguard: StartRailguard, new_upstream: Any, http: aiohttp.ClientSession
) -> None:
    own = await new_upstream([{"id": "own-1", "object": "model", "owned_by": "own"}])
    configs = {
        "own": {
            "models": [
                {
                    "type": "main",
                    "engine": "openai",
                    "model": "own-1",
                    "parameters": {"base_url": own.url},
                }
            ]
        }
    }
    base = await start_railguard(configs, upstream_url=None)
    async with http.get(f"{base}/v1/models") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert [m["id"] for m in data["data"]] == ["own-1"]
