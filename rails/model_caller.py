"""Calls the models a config names (self check, safety models) through `upstream/`.

A config's model of a given type either names its own `parameters.base_url` or is
routed like any request: upstreams table, then the default upstream. Its model name
defaults to the request's `model` when the config names none. Classifier APIs a rail
calls (a jailbreak detector) are fixed upstreams the rail built at load.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from rails.config import RailsConfig
from upstream import LLMReply, Router, Upstream, UpstreamPool, chat_text


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


class ModelCaller:
    """One request's access to models; records every call for `log.llm_calls`."""

    def __init__(
        self,
        pool: UpstreamPool,
        router: Router,
        targets: Mapping[str, ModelTarget],
        request_model: str,
        client_headers: Mapping[str, str] | None,
    ) -> None:
        self._pool = pool
        self._router = router
        self._targets = targets
        self._request_model = request_model
        self._client_headers = client_headers
        self.calls: list[dict[str, Any]] = []

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
        started = time.time()
        reply = await chat_text(
            self._pool,
            upstream,
            model,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            client_headers=self._client_headers,
        )
        usage = reply.usage or {}
        self.calls.append(
            {
                "task": task,
                "llm_model_name": model,
                "prompt": "\n".join(str(m.get("content", "")) for m in messages),
                "completion": reply.text,
                "started_at": started,
                "finished_at": started + reply.duration,
                "duration": reply.duration,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "total_tokens": usage.get("total_tokens"),
            }
        )
        return reply

    async def post_json(
        self, task: str, upstream: Upstream, path: str, payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """POST to a fixed JSON API (a classifier) and record the call like a model's.

        The client's headers are not sent: the service is not the client's upstream, and
        its credentials, if any, are its own (`upstream.api_key_env`, `upstream.headers`).
        """
        started = time.time()
        answer, duration = await self._pool.post_json(upstream, path, payload)
        self.calls.append(
            {
                "task": task,
                "llm_model_name": None,
                "prompt": orjson.dumps(payload).decode(),
                "completion": orjson.dumps(answer).decode(),
                "started_at": started,
                "finished_at": started + duration,
                "duration": duration,
                "prompt_tokens": None,
                "completion_tokens": None,
                "total_tokens": None,
            }
        )
        return answer
