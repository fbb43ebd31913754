"""Which upstream serves a model, and the file that says so.

The upstreams file (YAML)::

    upstreams:
      - name: vllm                       # unique
        base_url: http://vllm:8000/v1    # http(s), no query, fragment or credentials
        models: ["meta/llama-3.1-8b-instruct", "meta/*"]   # exact names or fnmatch globs
        api_key_env: VLLM_API_KEY        # optional: env var holding the upstream's key
        connect_timeout: 5               # optional, seconds
        read_timeout: 120                # optional, seconds without a byte before 504
        headers: {X-Tenant: blue}        # optional, sent on every request

Entries are tried in order; the first whose `models` matches wins.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from upstream.errors import NoUpstreamError, UpstreamConfigError

_CACHE_SIZE = 1024
_ENTRY_KEYS = frozenset(
    {"name", "base_url", "models", "api_key_env", "connect_timeout", "read_timeout", "headers"}
)


@dataclass(frozen=True, slots=True)
class Upstream:
    """One OpenAI-compatible server. Holds the name of its key's env var, never the key."""

    name: str
    base_url: str
    models: tuple[str, ...] = ()
    api_key_env: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # URLs are built as base_url + "/path", so one trailing slash would double.
        if self.base_url.endswith("/"):
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def serves(self, model: str) -> bool:
        """Exact or glob match; an upstream without a model list serves every model."""
        if not self.models:
            return True
        return any(model == pattern or fnmatchcase(model, pattern) for pattern in self.models)

    def api_key(self) -> str | None:
        """Read at request time so a rotated key takes effect without a restart."""
        if self.api_key_env is None:
            return None
        return os.environ.get(self.api_key_env) or None


class Router:
    """model name -> Upstream. A model name never becomes a URL."""

    def __init__(self, table: Sequence[Upstream] = (), default: Upstream | None = None) -> None:
        self._table = tuple(table)
        self._default = default
        # Table lookups by exact model name; None records "no table entry serves it".
        self._cache: dict[str, Upstream | None] = {}

    def resolve(self, model: str, config_upstream: Upstream | None = None) -> Upstream:
        """The table's first match, else the guardrails config's main model, else the default."""
        try:
            found = self._cache[model]
        except KeyError:
            found = next((u for u in self._table if u.serves(model)), None)
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]
            self._cache[model] = found
        found = found or config_upstream or self._default
        if found is None:
            raise NoUpstreamError(model)
        return found

    @property
    def upstreams(self) -> list[Upstream]:
        """Every distinct server once (by base_url), for listing models."""
        seen: dict[str, Upstream] = {}
        candidates = (*self._table, self._default) if self._default else self._table
        for upstream in candidates:
            seen.setdefault(upstream.base_url, upstream)
        return list(seen.values())


def load_upstreams_file(path: str | Path) -> list[Upstream]:
    """Read and validate an upstreams YAML file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UpstreamConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UpstreamConfigError(f"{source}: invalid YAML: {exc}") from exc
    return parse_upstreams(data, source)


def parse_upstreams(data: object, source: str) -> list[Upstream]:
    """Validate a loaded upstreams document; errors name `source` and the key path."""
    if not isinstance(data, dict):
        raise UpstreamConfigError(f"{source}: expected a mapping with an 'upstreams' list")
    for key in data:
        if key != "upstreams":
            raise UpstreamConfigError(f"{source}: {key}: unknown key")
    entries = data.get("upstreams")
    if not isinstance(entries, list) or not entries:
        raise UpstreamConfigError(f"{source}: upstreams: must be a non-empty list")
    result: list[Upstream] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        upstream = _parse_entry(entry, _Where(source, "upstreams").item(index))
        if upstream.name in names:
            raise UpstreamConfigError(
                f"{source}: upstreams[{index}].name: duplicate name '{upstream.name}'"
            )
        names.add(upstream.name)
        result.append(upstream)
    return result


@dataclass(frozen=True, slots=True)
class _Where:
    """A position in the file, for error messages."""

    source: str
    path: str

    def at(self, key: str) -> _Where:
        return _Where(self.source, f"{self.path}.{key}")

    def item(self, index: int) -> _Where:
        return _Where(self.source, f"{self.path}[{index}]")

    def error(self, problem: str) -> UpstreamConfigError:
        return UpstreamConfigError(f"{self.source}: {self.path}: {problem}")


def _parse_entry(entry: object, where: _Where) -> Upstream:
    if not isinstance(entry, dict):
        raise where.error("must be a mapping")
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise where.at(str(key)).error("unknown key")
    for key in ("name", "base_url", "models"):
        if key not in entry:
            raise where.at(key).error("is required")
    api_key_env = entry.get("api_key_env")
    return Upstream(
        name=_text(entry["name"], where.at("name")),
        base_url=_base_url(entry["base_url"], where.at("base_url")),
        models=_models(entry["models"], where.at("models")),
        api_key_env=None if api_key_env is None else _text(api_key_env, where.at("api_key_env")),
        connect_timeout=_seconds(entry.get("connect_timeout", 5.0), where.at("connect_timeout")),
        read_timeout=_seconds(entry.get("read_timeout", 120.0), where.at("read_timeout")),
        headers=_headers(entry.get("headers", {}), where.at("headers")),
    )


def _text(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error("must be a non-empty string")
    return value.strip()


def _base_url(value: Any, where: _Where) -> str:
    raw = _text(value, where)
    try:
        url = URL(raw)
    except (TypeError, ValueError) as exc:
        raise where.error("must be an http(s) URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise where.error("must be an http(s) URL")
    if "?" in raw or "#" in raw:
        raise where.error("must not have a query or fragment")
    if url.user is not None or url.password is not None:
        raise where.error("must not contain credentials; use api_key_env or headers")
    return raw.rstrip("/")


def _models(value: Any, where: _Where) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise where.error("must be a non-empty list of model names or globs")
    return tuple(_text(model, where.item(i)) for i, model in enumerate(value))


def _seconds(value: Any, where: _Where) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise where.error("must be a positive number of seconds")
    return float(value)


def _headers(value: Any, where: _Where) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise where.error("must be a mapping of header names to values")
    headers: list[tuple[str, str]] = []
    for name, raw in value.items():
        key = where.at(str(name))
        if not isinstance(name, str) or not name.strip():
            raise key.error("header name must be a non-empty string")
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise key.error("must be a string")
        text = str(raw)
        # A newline would let a value inject further headers into the request.
        if "\r" in text or "\n" in text or "\r" in name or "\n" in name:
            raise key.error("must not contain line breaks")
        headers.append((name.strip(), text))
    return tuple(headers)
