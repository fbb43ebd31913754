"""The small endpoints: configs, challenges, models, health, readiness, checks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from metrics import REQUESTS
from proxy.access import ACCESS_LOG, Trace, log_request, request_id
from proxy.chat import outcome, start_turn
from proxy.configs import ConfigStore
from proxy.errors import JSON, ApiError, api_error_response
from proxy.request import parse_chat
from rails.check_cache import CheckCache
from upstream import Router, Upstream, UpstreamError, UpstreamPool

_OK = orjson.dumps({"status": "ok"})


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


async def health(request: web.Request) -> web.Response:
    """Liveness, and `GET /` until the chat page lands (the spec's `{"status": "ok"}`)."""
    return web.Response(body=_OK, content_type=JSON)


class Endpoints:
    """Handlers that need the loaded configs or the upstreams."""

    def __init__(
        self,
        store: ConfigStore,
        router: Router,
        pool: UpstreamPool,
        cache: CheckCache | None = None,
        log_content: bool = False,
    ) -> None:
        self.store = store
        self.log_content = log_content
        self.router = router
        self.pool = pool
        self.cache = cache
        self._configs = orjson.dumps([{"id": cid} for cid in store.ids])
        self._challenges = orjson.dumps(list(store.root.challenges))
        self._model_sources = self._model_list_sources(store, router)

    @staticmethod
    def _model_list_sources(store: ConfigStore, router: Router) -> list[Upstream]:
        """The routing table, the default, and configs' own main-model servers, once each."""
        found: dict[str, Upstream] = {u.base_url: u for u in router.upstreams}
        for guardrails in store.compiled.values():
            main = guardrails.targets.get("main")
            if main and main.upstream:
                found.setdefault(main.upstream.base_url, main.upstream)
        return list(found.values())

    async def configs(self, request: web.Request) -> web.Response:
        return web.Response(body=self._configs, content_type=JSON)

    async def challenges(self, request: web.Request) -> web.Response:
        return web.Response(body=self._challenges, content_type=JSON)

    async def ready(self, request: web.Request) -> web.Response:
        return json_response({"status": "ready", "configs": len(self.store.ids)})

    async def models(self, request: web.Request) -> web.Response:
        """Every upstream's model list, merged by id; one that fails is skipped unless all do."""
        upstreams = self._model_sources
        results = await asyncio.gather(
            *(self.pool.models(u, request.headers) for u in upstreams), return_exceptions=True
        )
        merged: dict[str, dict[str, Any]] = {}
        errors: list[UpstreamError] = []
        for result in results:
            if isinstance(result, UpstreamError):
                errors.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            for model in result:
                if isinstance(model, dict) and isinstance(model.get("id"), str):
                    merged.setdefault(model["id"], model)
        if errors and not merged:
            first = errors[0]
            raise ApiError.from_upstream(first)
        return json_response({"object": "list", "data": list(merged.values())})

    async def checks(self, request: web.Request) -> web.Response:
        """Rails only, no main call: input rails on the user turn, output rails on a
        trailing assistant message. `model` is optional here. Counted and logged like a
        chat request (route `checks`)."""
        trace = Trace(request_id(request), time.perf_counter())
        config_id, result, status = "none", "client_error", 500
        try:
            chat = parse_chat(await request.read(), model_required=False)
            guardrails = self.store.resolve(chat.guardrails.config_id, chat.guardrails.config_ids)
            config_id = guardrails.id
            turn = trace.turn = start_turn(
                request, chat, guardrails, self.pool, self.router, self.cache
            )
            started = time.perf_counter()
            await turn.check_input()
            trace.input_rails = time.perf_counter() - started
            content = await turn.answer_without_model()
            trace.output_rails = turn.output.duration if turn.output else 0.0
            result, status = outcome(turn), 200
            response = json_response(
                {"status": turn.check_status, "content": content, "rail": turn.blocked_by}
            )
        except ApiError as exc:
            status, trace.error = exc.status, exc.label
            response = api_error_response(exc)
        finally:
            REQUESTS.labels("checks", config_id, "none", "false", result).inc()
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                log_request(
                    trace,
                    route="checks",
                    config_id=config_id,
                    outcome=result,
                    status=status,
                    ended=time.perf_counter(),
                    content=self.log_content,
                )
        trace.stamp(response)
        return response
