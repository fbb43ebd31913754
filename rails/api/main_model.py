"""Where `LLMRails` sends its main call: the server and model name, from arguments, the
config's `type: main` model, or the environment, in that order.

The server follows the same sources as the proxy's routing (the main model's
`parameters.base_url`, then RAILGUARD_UPSTREAM_URL / NeMo's MAIN_MODEL_BASE_URL), and a
config with `engine: openai` and no URL calls OpenAI itself, as NeMo does. The key is
never stored: an `Upstream` holds the name of its env var, and a key given as an argument
becomes the upstream's own Authorization header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from rails.config import RailsConfig
from upstream import Upstream

OPENAI_URL = "https://api.openai.com/v1"
_URL_ENV = ("RAILGUARD_UPSTREAM_URL", "MAIN_MODEL_BASE_URL")
_DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True, slots=True)
class MainModel:
    upstream: Upstream | None  # None: nothing says where the model is served
    model: str | None


def resolve_main_model(
    config: RailsConfig,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    connect_timeout: float = 5.0,
    read_timeout: float = 120.0,
) -> MainModel:
    spec = config.model_of_type("main")
    engine = spec.engine if spec else None
    url = base_url or (spec.base_url if spec else None)
    url = url or next((os.environ[name] for name in _URL_ENV if os.environ.get(name)), None)
    if url is None and engine == "openai":
        url = os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    name = model or (spec.model if spec else None)
    if url is None:
        return MainModel(None, name)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"The main model's base URL must be an http(s) URL, got {url!r}.")
    headers: tuple[tuple[str, str], ...] = ()
    key_env: str | None = (spec.api_key_env_var if spec else None) or _DEFAULT_KEY_ENV
    if api_key:
        headers, key_env = (("Authorization", f"Bearer {api_key}"),), None
    upstream = Upstream(
        name="main",
        base_url=url,
        api_key_env=key_env,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        headers=headers,
    )
    return MainModel(upstream, name)


def from_client(llm: object) -> tuple[str, str | None]:
    """The base URL and key of an `openai.OpenAI` / `AsyncOpenAI` client passed as `llm`
    (NeMo's argument takes a LangChain model; railguard only calls OpenAI-compatible
    servers, so it takes what a client of one knows)."""
    url = getattr(llm, "base_url", None)
    if url is None:
        raise TypeError(
            "railguard calls OpenAI-compatible servers itself: pass `llm` as an openai.OpenAI "
            "or AsyncOpenAI client, or give `base_url=` (and `api_key=`) instead; "
            f"got {type(llm).__name__}."
        )
    key = getattr(llm, "api_key", None)
    return str(url).rstrip("/"), key if isinstance(key, str) and key else None
