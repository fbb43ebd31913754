"""`railguard serve` flags and environment, NeMo's names included."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import _parser, redact_url, settings_from_args
from proxy.settings import Settings

ENV = (
    "DEFAULT_CONFIG_ID",
    "NEMO_GUARDRAILS_SERVER_ENABLE_CORS",
    "NEMO_GUARDRAILS_SERVER_ALLOWED_ORIGINS",
    "MAIN_MODEL_BASE_URL",
    "MAIN_MODEL_ENGINE",
    "RAILGUARD_UPSTREAM_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def settings(*argv: str) -> Settings:
    return settings_from_args(_parser().parse_args(["serve", *argv]))


def test_defaults_match_nemo_server() -> None:
    s = settings()
    assert (s.config_path, s.port, s.host, s.default_config_id) == (
        Path("config"),
        8000,
        "127.0.0.1",
        None,
    )
    assert (s.upstream_url, s.workers, s.cors_enabled, s.normalized_prefix) == (None, 1, False, "")
    assert s.max_body_bytes == 10 * 1024 * 1024


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_CONFIG_ID", "demo")
    monkeypatch.setenv("NEMO_GUARDRAILS_SERVER_ENABLE_CORS", "true")
    monkeypatch.setenv(
        "NEMO_GUARDRAILS_SERVER_ALLOWED_ORIGINS", "https://a.example, https://b.example"
    )
    monkeypatch.setenv("MAIN_MODEL_BASE_URL", "http://nemo-style:8000/v1")
    s = settings()
    assert s.default_config_id == "demo"
    assert s.cors_enabled and s.cors_origins == ("https://a.example", "https://b.example")
    assert s.upstream_url == "http://nemo-style:8000/v1"
    monkeypatch.setenv("RAILGUARD_UPSTREAM_URL", "http://ours:8000/v1")
    assert settings().upstream_url == "http://ours:8000/v1"  # ours wins over NeMo's name
    assert (
        settings("--upstream", "http://flag/v1").upstream_url == "http://flag/v1"
    )  # the flag wins
    assert settings("--default-config-id", "x").default_config_id == "x"


def test_flags() -> None:
    s = settings(
        "--config",
        "cfg",
        "--port",
        "9",
        "--host",
        "0.0.0.0",
        "--prefix",
        "/guard/",
        "--workers",
        "3",
        "--disable-chat-ui",
    )
    assert (s.config_path, s.port, s.host, s.normalized_prefix, s.workers, s.disable_chat_ui) == (
        Path("cfg"),
        9,
        "0.0.0.0",
        "/guard",
        3,
        True,
    )


def test_logged_upstream_urls_lose_their_credentials() -> None:
    assert (
        redact_url("https://user:sk-secret@llm.example:8443/v1?key=abc")
        == "https://llm.example:8443/v1"
    )


def test_client_policy_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings()
    assert (s.client_rail_selection, s.input_rails_scope) == ("none", "client_messages")
    s = settings("--client-rail-selection=all", "--input-rails-scope=current_turn")
    assert (s.client_rail_selection, s.input_rails_scope) == ("all", "current_turn")
    monkeypatch.setenv("RAILGUARD_CLIENT_RAIL_SELECTION", "output")
    monkeypatch.setenv("RAILGUARD_INPUT_RAILS_SCOPE", "user_messages")
    s = settings()
    assert (s.client_rail_selection, s.input_rails_scope) == ("output", "user_messages")
    with pytest.raises(SystemExit):
        settings("--input-rails-scope=everything")
