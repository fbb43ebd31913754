"""Server settings: command-line flags first, then environment (NeMo's names kept)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Engines whose servers speak the OpenAI API, as NeMo names them.
OPENAI_COMPATIBLE_ENGINES = frozenset(
    {
        "openai",
        "nim",
        "nvidia_ai_endpoints",
        "vllm_openai",
        "azure",
        "ollama",
        "trt_llm",
        "self_hosted",
    }
)


@dataclass(slots=True)
class Settings:
    config_path: Path = Path("config")
    host: str = "127.0.0.1"
    port: int = 8000
    default_config_id: str | None = None
    disable_chat_ui: bool = False
    prefix: str = ""
    upstream_url: str | None = None
    upstreams_file: Path | None = None
    workers: int = 1
    cors_enabled: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout: float = 10.0  # seconds a client has to send a request's head
    body_timeout: float = 60.0  # seconds a client has to send a request's body
    max_connections: int = 1024  # open client connections, across all workers
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    stream_max_event_bytes: int = 1024 * 1024
    stream_max_holdback_bytes: int = 10 * 1024 * 1024
    max_answer_bytes: int = 10 * 1024 * 1024  # one upstream answer: a body, or a stream's text
    check_cache_size: int = 1024
    check_cache_ttl: float = 60.0
    combined_config_cache: int = 64
    thread_store: str = "memory"  # memory | none | redis://... (RAILGUARD_THREAD_STORE)
    thread_ttl: float = 7 * 24 * 3600.0
    thread_max_messages: int = 1000
    thread_store_timeout: float = 1.0
    thread_memory_max_bytes: int = 256 * 1024 * 1024
    redis_password: str | None = field(default=None, repr=False)  # RAILGUARD_REDIS_PASSWORD
    redis_ca_file: str | None = None  # CA certificates for rediss:// (RAILGUARD_REDIS_CA_FILE)
    state_secret: str | None = field(default=None, repr=False)  # RAILGUARD_STATE_SECRET
    metrics_port: int | None = None  # serve /metrics there instead of on the main port
    metrics_token: str | None = field(default=None, repr=False)  # RAILGUARD_METRICS_TOKEN
    metrics_models: tuple[str, ...] = ()  # model names that are always their own label
    metrics_dynamic_models: int = 20  # other model names admitted first come, then `other`
    log_content: bool = False  # the access log carries the user text and the answer
    log_raw_completions: bool = False  # log.llm_calls shows text a rail blocked or rewrote
    # Defaults for configs that don't set railguard.client_rail_selection / input_scope
    # (rails/policy.py reads them; nothing of rails/ is imported before `serve` starts).
    client_rail_selection: str = "none"  # none | all | input,output,tool_input,tool_output
    input_rails_scope: str = "client_messages"  # current_turn | user_messages | client_messages
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def normalized_prefix(self) -> str:
        prefix = self.prefix.strip()
        if not prefix or prefix == "/":
            return ""
        return "/" + prefix.strip("/")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def default_upstream_from_env() -> str | None:
    """RAILGUARD_UPSTREAM_URL, else NeMo's MAIN_MODEL_BASE_URL."""
    return os.environ.get("RAILGUARD_UPSTREAM_URL") or os.environ.get("MAIN_MODEL_BASE_URL") or None


def check_engine_env() -> None:
    """NeMo's MAIN_MODEL_ENGINE must name an OpenAI-compatible engine: that's all we proxy."""
    engine = os.environ.get("MAIN_MODEL_ENGINE")
    if engine and engine not in OPENAI_COMPATIBLE_ENGINES:
        raise ValueError(
            f"MAIN_MODEL_ENGINE={engine!r} is not an OpenAI-compatible engine; railguard "
            f"proxies: {', '.join(sorted(OPENAI_COMPATIBLE_ENGINES))}"
        )


def cors_origins_from_env() -> tuple[str, ...]:
    raw = os.environ.get("NEMO_GUARDRAILS_SERVER_ALLOWED_ORIGINS", "*")
    return tuple(o.strip() for o in raw.split(",") if o.strip()) or ("*",)
