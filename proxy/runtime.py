"""The process-level metrics: build and config info, event-loop lag, and `/metrics` itself
(on the main port or its own, with an optional bearer token)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from metrics import BUILD_INFO, CONFIG_INFO, EVENT_LOOP_LAG, exposition
from proxy.errors import error_response
from rails.config import RailsConfig

LAG_INTERVAL = 0.25  # seconds between two event-loop lag samples


def version() -> str:
    try:
        return metadata.version("railguard")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else str(value)


def config_digest(config: RailsConfig) -> str:
    """12 hex digits of SHA-256 over what the config was built from (its merged YAML and
    its bot messages): equal digests on two instances mean the same config."""
    content = {"raw": config.raw, "bot_messages": config.bot_messages}
    raw = orjson.dumps(content, default=_plain, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:12]


def record_info(configs: Mapping[str, RailsConfig]) -> None:
    BUILD_INFO.labels(version(), platform.python_version()).set(1)
    for config_id, config in configs.items():
        CONFIG_INFO.labels(config_id, config_digest(config)).set(1)


async def watch_event_loop(interval: float = LAG_INTERVAL) -> None:
    """Sample how late a timer fires: a loop busy elsewhere runs it late."""
    observe = EVENT_LOOP_LAG.observe
    while True:
        started = time.perf_counter()
        await asyncio.sleep(interval)
        lag = time.perf_counter() - started - interval
        observe(lag if lag > 0.0 else 0.0)


def add_event_loop_watch(app: web.Application) -> None:
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        tasks.append(asyncio.ensure_future(watch_event_loop()))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


class MetricsEndpoint:
    """`GET /metrics`; with a token, only for `Authorization: Bearer <token>`."""

    def __init__(self, token: str | None = None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    async def handle(self, request: web.Request) -> web.Response:
        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                return error_response(
                    401,
                    "The metrics endpoint needs 'Authorization: Bearer <token>' with the "
                    "server's metrics token.",
                    "invalid_request_error",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def serve_metrics_port(
    app: web.Application, endpoint: MetricsEndpoint, host: str, port: int, reuse_port: bool
) -> None:
    """Serve `/metrics` on its own port, started and stopped with `app`."""
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", endpoint.handle)
    runner = web.AppRunner(metrics_app, access_log=None)

    async def start(app: web.Application) -> None:
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()

    async def stop(app: web.Application) -> None:
        await runner.cleanup()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
