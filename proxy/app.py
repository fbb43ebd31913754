"""The aiohttp application, composed explicitly from the loaded configs and settings."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from metrics import ModelLabels
from proxy.chat import ChatCompletions
from proxy.chat_ui import ChatPage
from proxy.configs import ConfigStore
from proxy.connections import ConnectionGuard, ConnectionLimits
from proxy.cors import cors_middleware
from proxy.endpoints import Endpoints, health
from proxy.errors import error_middleware
from proxy.runtime import (
    MetricsEndpoint,
    add_event_loop_watch,
    record_info,
    serve_metrics_port,
)
from proxy.settings import Settings
from proxy.streaming import StreamLimits
from proxy.threads import build_conversations
from rails.check_cache import CheckCache
from rails.config import ConfigRoot
from rails.policy import ClientPolicy, parse_scope, parse_selectable
from upstream import Router, Upstream, UpstreamPool, load_upstreams_file

STORE = web.AppKey("store", ConfigStore)
POOL = web.AppKey("pool", UpstreamPool)
CONNECTIONS = web.AppKey("connections", ConnectionGuard)


def build_router(settings: Settings) -> Router:
    table = load_upstreams_file(settings.upstreams_file) if settings.upstreams_file else []
    default = None
    if settings.upstream_url:
        default = Upstream(
            name="default",
            base_url=settings.upstream_url.rstrip("/"),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
        )
    return Router(table, default)


def known_models(store: ConfigStore, router: Router) -> set[str]:
    names = {m for u in router.upstreams for m in u.models if not any(c in m for c in "*?[")}
    for guardrails in store.compiled.values():
        names.update(spec.model for spec in guardrails.config.models if spec.model)
    return names


def client_policy(settings: Settings) -> ClientPolicy:
    """The server-wide defaults of the client policy; ValueError names the flag."""
    try:
        selectable = parse_selectable(settings.client_rail_selection)
    except ValueError as exc:
        raise ValueError(f"--client-rail-selection: {exc}") from None
    try:
        scope = parse_scope(settings.input_rails_scope)
    except ValueError as exc:
        raise ValueError(f"--input-rails-scope: {exc}") from None
    return ClientPolicy(selectable, scope)


def build_app(settings: Settings, config_root: ConfigRoot) -> web.Application:
    """Everything is built here, before the first request: configs compiled, routes fixed."""
    policy = client_policy(settings)
    store = ConfigStore(
        config_root, settings.default_config_id, settings.combined_config_cache, policy
    )
    router = build_router(settings)
    pool = UpstreamPool(settings.max_answer_bytes)
    guard = ConnectionGuard(
        ConnectionLimits(settings.header_timeout, settings.body_timeout, settings.max_connections)
    )
    # The guard's middleware is innermost: the error middleware turns what it raises (a
    # body over the size limit, read there first) into an error body.
    middlewares: list[Middleware] = [error_middleware, guard.middleware]
    if settings.cors_enabled:
        middlewares.insert(0, cors_middleware(settings.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[STORE] = store
    app[POOL] = pool
    app[CONNECTIONS] = guard

    limits = StreamLimits(
        settings.stream_max_event_bytes,
        settings.stream_max_holdback_bytes,
        settings.max_answer_bytes,
    )
    cache = CheckCache(settings.check_cache_size, settings.check_cache_ttl)
    models = ModelLabels(
        {*known_models(store, router), *settings.metrics_models}, settings.metrics_dynamic_models
    )
    conversations = build_conversations(settings)
    chat = ChatCompletions(
        store,
        router,
        pool,
        models,
        limits,
        cache,
        conversations,
        settings.log_content,
        settings.log_raw_completions,
    )
    record_info(config_root.configs)
    metrics = MetricsEndpoint(settings.metrics_token)
    endpoints = Endpoints(store, router, pool, cache, settings.log_content)
    p = settings.normalized_prefix
    app.router.add_post(f"{p}/v1/chat/completions", chat.handle)
    app.router.add_post(f"{p}/v1/checks", endpoints.checks)
    app.router.add_get(f"{p}/v1/rails/configs", endpoints.configs)
    app.router.add_get(f"{p}/v1/challenges", endpoints.challenges)
    app.router.add_get(f"{p}/v1/models", endpoints.models)
    app.router.add_get(f"{p}/health", health)
    app.router.add_get(f"{p}/ready", endpoints.ready)
    if settings.metrics_port is None:
        app.router.add_get(f"{p}/metrics", metrics.handle)
    else:
        serve_metrics_port(
            app, metrics, settings.host, settings.metrics_port, reuse_port=settings.workers > 1
        )
    add_event_loop_watch(app)
    if settings.disable_chat_ui:
        app.router.add_get(f"{p}/", health)
    else:
        ChatPage().add_routes(app, p)

    async def close_pool(app: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)

    async def threads_up(app: web.Application) -> None:
        await conversations.start()

    async def threads_down(app: web.Application) -> None:
        await conversations.close()

    app.on_startup.append(threads_up)
    app.on_cleanup.append(threads_down)
    return app
