"""Calls the models a config names (self check, safety models) through `upstream/`.

A config's model of a given type either names its own `parameters.base_url` or is
routed like any request: upstreams table, then the default upstream. Its model name
defaults to the request's `model` when the config names none. Classifier APIs a rail
calls (a jailbreak detector) are fixed upstreams the rail built at load.

The client's headers, its credentials among them, go only to the server that serves the
request's `model`: a check model there is called as the client would be; one on any
other server gets none of them, only its own configured key (`api_key_env_var`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from rails.check_cache import CheckCache
from rails.config import RailsConfig
from upstream import (
    LLMReply,
    NoUpstreamError,
    Router,
    Upstream,
    UpstreamConnectFailed,
    UpstreamPool,
    chat_text,
)


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """Where a model type of a config is served, resolved once at load."""

    model: str | None
    upstream: Upstream | None


def model_targets(config: RailsConfig) -> dict[str, ModelTarget]:
    targets: dict[str, ModelTarget] = {}
    for spec in config.models:
        upstream = None
        if spec.base_url:
            upstream = Upstream(
                name=f"{config.id or 'config'}:{spec.type}",
                base_url=spec.base_url.rstrip("/"),
                api_key_env=spec.api_key_env_var,
            )
        targets[spec.type] = ModelTarget(spec.model, upstream)
    return targets


# The calls of the rail check running in this task (parallel rails run in their own
# tasks, so each sees its own list): its `executed_actions[].llm_calls`.
_ACTION_CALLS: ContextVar[list[dict[str, Any]] | None] = ContextVar(
    "railguard_action_calls", default=None
)


@contextmanager
def action_calls() -> Iterator[list[dict[str, Any]]]:
    """Collects the model calls made inside the block (the same records as
    `ModelCaller.calls`)."""
    calls: list[dict[str, Any]] = []
    token = _ACTION_CALLS.set(calls)
    try:
        yield calls
    finally:
        _ACTION_CALLS.reset(token)


CONNECT_RETRIES = 2  # only for connections that could not be made: nothing was sent
RETRY_PAUSE = 0.05  # seconds, doubled for each retry

T = TypeVar("T")


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again after a pause when no connection could be made (never after a
    request went out: a check model may have answered it)."""
    for attempt in range(CONNECT_RETRIES):
        try:
            return await call()
        except UpstreamConnectFailed:
            await asyncio.sleep(RETRY_PAUSE * 2**attempt)
    return await call()


class ModelCaller:
    """One request's access to models; records every call for `log.llm_calls`.

    Identical calls within the check cache's lifetime are answered from it.
    """

    def __init__(
        self,
        pool: UpstreamPool,
        router: Router,
        targets: Mapping[str, ModelTarget],
        request_model: str,
        client_headers: Mapping[str, str] | None,
        cache: CheckCache | None = None,
    ) -> None:
        self._pool = pool
        self._router = router
        self._targets = targets
        self._request_model = request_model
        self._client_headers = client_headers
        self._home: str | None = None  # base_url of the server the request's model is on
        self._cache = cache if cache is not None and cache.size > 0 else None
        self.calls: list[dict[str, Any]] = []

    def _headers_for(self, upstream: Upstream) -> Mapping[str, str] | None:
        """The client's headers when `upstream` is the server that serves the request's
        `model` (routed as the main call is), else none."""
        if not self._client_headers:
            return None
        if self._home is None:
            main = self._targets.get("main")
            try:
                home = self._router.resolve(self._request_model, main.upstream if main else None)
            except NoUpstreamError:
                return None
            self._home = home.base_url
        return self._client_headers if upstream.base_url == self._home else None

    def resolve(self, model_type: str) -> tuple[Upstream, str]:
        target = self._targets.get(model_type) or self._targets.get("main")
        model = (target.model if target else None) or self._request_model
        upstream = target.upstream if target and target.upstream else None
        return upstream or self._router.resolve(model), model

    async def complete(
        self,
        task: str,
        messages: list[dict[str, Any]],
        *,
        model_type: str = "main",
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> LLMReply:
        upstream, model = self.resolve(model_type)
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        key = [upstream.base_url, model, messages, temperature, max_tokens]
        cached = self._cached(key)
        if isinstance(cached, LLMReply):
            self._record(task, model, prompt, cached.text, time.time(), 0.0, cached.usage, True)
            return cached
        started = time.time()
        reply = await _retrying(
            lambda: chat_text(
                self._pool,
                upstream,
                model,
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                client_headers=self._headers_for(upstream),
            )
        )
        self._store(key, reply)
        self._record(task, model, prompt, reply.text, started, reply.duration, reply.usage, False)
        return reply

    async def post_json(
        self, task: str, upstream: Upstream, path: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """POST to a fixed JSON API (a classifier) and record the call like a model's.

        The client's headers are not sent: the service is not the client's upstream, and
        its credentials, if any, are its own (`upstream.api_key_env`, `upstream.headers`).
        """
        prompt = orjson.dumps(payload).decode()
        key = [upstream.base_url, path, payload]
        cached = self._cached(key)
        if isinstance(cached, dict):
            completion = orjson.dumps(cached).decode()
            self._record(task, None, prompt, completion, time.time(), 0.0, None, True)
            return cached
        started = time.time()
        answer, duration = await _retrying(lambda: self._pool.post_json(upstream, path, payload))
        self._store(key, answer)
        self._record(task, None, prompt, orjson.dumps(answer).decode(), started, duration)
        return answer

    def _cached(self, key: list[Any]) -> Any:
        return self._cache.get(orjson.dumps(key)) if self._cache is not None else None

    def _store(self, key: list[Any], value: Any) -> None:
        if self._cache is not None:
            self._cache.put(orjson.dumps(key), value)

    def _record(
        self,
        task: str,
        model: str | None,
        prompt: str,
        completion: str,
        started: float,
        duration: float,
        usage: Mapping[str, Any] | None = None,
        from_cache: bool = False,
    ) -> None:
        usage = usage or {}
        record: dict[str, Any] = {
            "task": task,
            "llm_model_name": model,
            "prompt": prompt,
            "completion": completion,
            "started_at": started,
            "finished_at": started + duration,
            "duration": duration,
            "prompt_tokens": None if from_cache else usage.get("prompt_tokens"),
            "completion_tokens": None if from_cache else usage.get("completion_tokens"),
            "total_tokens": None if from_cache else usage.get("total_tokens"),
            "from_cache": from_cache,
        }
        self.calls.append(record)
        action = _ACTION_CALLS.get()
        if action is not None:
            action.append(record)
