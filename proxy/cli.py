"""`railguard serve` (the flags of `nemoguardrails server`, plus ours) and `demo-upstream`.

Nothing that defines metrics is imported before `serve` has set up the metrics
environment: prometheus-client picks its multiprocess mode (`--workers` > 1) when the
first metric is built, from `PROMETHEUS_MULTIPROC_DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from proxy.settings import (
    Settings,
    check_engine_env,
    cors_origins_from_env,
    default_upstream_from_env,
    env_flag,
)

if TYPE_CHECKING:
    from proxy.connections import Slots
    from rails.config import ConfigRoot

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("railguard")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="railguard", description="Guardrails sidecar for OpenAI-compatible LLM servers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the guardrails server")
    serve.add_argument("--config", default="config", help="config folder (default: ./config)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--default-config-id", default=None)
    serve.add_argument("--disable-chat-ui", action="store_true")
    serve.add_argument("--prefix", default="", help="serve every route under this path prefix")
    serve.add_argument(
        "--upstream", default=None, help="default upstream base URL, e.g. http://127.0.0.1:11434/v1"
    )
    serve.add_argument("--upstreams", default=None, help="YAML table of upstreams by model")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    serve.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024)
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's headers, else it is closed (0: off)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send a request's body after its headers, else 408 (0: off)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="client connections open at once, across all workers; beyond, 503 (0: no cap)",
    )
    serve.add_argument(
        "--connect-timeout", type=float, default=5.0, help="upstream connect timeout (s)"
    )
    serve.add_argument(
        "--read-timeout", type=float, default=120.0, help="upstream read timeout (s)"
    )
    serve.add_argument(
        "--stream-max-event-bytes",
        type=int,
        default=1024 * 1024,
        help="longest single upstream stream event accepted",
    )
    serve.add_argument(
        "--stream-max-holdback-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="most of one streamed answer held back for output rails",
    )
    serve.add_argument(
        "--max-answer-bytes",
        type=int,
        default=10 * 1024 * 1024,
        help="largest upstream answer read: a non-streamed body, or the text of a stream "
        "railguard parses (output rails, threads, log)",
    )
    serve.add_argument(
        "--check-cache-size",
        type=int,
        default=1024,
        help="answers of identical model checks kept (0: off)",
    )
    serve.add_argument(
        "--check-cache-ttl", type=float, default=60.0, help="seconds a cached check answer lives"
    )
    serve.add_argument(
        "--thread-store",
        default=os.environ.get("RAILGUARD_THREAD_STORE", "memory"),
        help="where conversation threads live: memory (default), none, or redis://host:6379/0",
    )
    serve.add_argument(
        "--thread-ttl",
        type=float,
        default=7 * 24 * 3600.0,
        help="seconds a thread lives after its last turn (default 7 days)",
    )
    serve.add_argument(
        "--thread-max-messages",
        type=int,
        default=1000,
        help="messages kept per thread or state; the oldest go first",
    )
    serve.add_argument(
        "--thread-store-ca-file",
        default=os.environ.get("RAILGUARD_REDIS_CA_FILE") or None,
        help="CA certificates (PEM) that sign a rediss:// Redis's certificate, when the "
        "system's don't",
    )
    serve.add_argument(
        "--thread-store-timeout",
        type=float,
        default=1.0,
        help="seconds one Redis call may take before the request answers 503",
    )
    serve.add_argument(
        "--thread-memory-max-bytes",
        type=int,
        default=256 * 1024 * 1024,
        help="memory store: message bytes kept in all; least recently used threads go first",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics on this port (same host) instead of the main one",
    )
    serve.add_argument(
        "--metrics-token",
        default=os.environ.get("RAILGUARD_METRICS_TOKEN") or None,
        help="/metrics answers only 'Authorization: Bearer TOKEN' (or RAILGUARD_METRICS_TOKEN)",
    )
    serve.add_argument(
        "--metrics-models",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated model names that are always their own metric label",
    )
    serve.add_argument(
        "--metrics-dynamic-models",
        type=int,
        default=20,
        help="other model names that become labels, first come (per worker); then 'other'",
    )
    serve.add_argument(
        "--no-metrics",
        action="store_true",
        help="record no metrics (/metrics serves nothing): to measure what they cost",
    )
    serve.add_argument(
        "--log-content",
        action="store_true",
        help="the access log also carries the user's text and the answer",
    )
    serve.add_argument(
        "--log-raw-completions",
        action="store_true",
        help="options.log.llm_calls shows the upstream's raw text even when an output rail "
        "blocked or rewrote it (debugging only: clients then see the blocked text)",
    )
    serve.add_argument(
        "--client-rail-selection",
        default=os.environ.get("RAILGUARD_CLIENT_RAIL_SELECTION", "none"),
        metavar="STAGES",
        help="stages whose rails a request may narrow or turn off with options.rails: none "
        "(default), all (NeMo's behaviour), or a comma-separated list of input, output, "
        "tool_input, tool_output; a config's railguard.client_rail_selection wins",
    )
    serve.add_argument(
        "--input-rails-scope",
        default=os.environ.get("RAILGUARD_INPUT_RAILS_SCOPE", "client_messages"),
        choices=("current_turn", "user_messages", "client_messages"),
        help="messages the input rails read: every message the client sent (default), every "
        "user message, or the current user turn; a config's railguard.input_scope wins",
    )
    serve.add_argument("--no-access-log", action="store_true", help="no JSON line per request")
    serve.add_argument("--log-level", default=os.environ.get("RAILGUARD_LOG_LEVEL", "INFO"))
    demo = commands.add_parser("demo-upstream", help="run the echoing demo upstream (not a model)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=11435)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        config_path=Path(args.config),
        host=args.host,
        port=args.port,
        default_config_id=args.default_config_id or os.environ.get("DEFAULT_CONFIG_ID") or None,
        disable_chat_ui=args.disable_chat_ui,
        prefix=args.prefix,
        upstream_url=args.upstream or default_upstream_from_env(),
        upstreams_file=Path(args.upstreams) if args.upstreams else None,
        workers=max(1, args.workers),
        cors_enabled=env_flag("NEMO_GUARDRAILS_SERVER_ENABLE_CORS"),
        cors_origins=cors_origins_from_env(),
        max_body_bytes=args.max_body_bytes,
        header_timeout=max(0.0, args.header_timeout),
        body_timeout=max(0.0, args.body_timeout),
        max_connections=max(0, args.max_connections),
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        stream_max_event_bytes=args.stream_max_event_bytes,
        stream_max_holdback_bytes=args.stream_max_holdback_bytes,
        max_answer_bytes=args.max_answer_bytes,
        check_cache_size=max(0, args.check_cache_size),
        check_cache_ttl=args.check_cache_ttl,
        thread_store=args.thread_store,
        thread_ttl=args.thread_ttl,
        thread_max_messages=args.thread_max_messages,
        thread_store_timeout=args.thread_store_timeout,
        thread_memory_max_bytes=args.thread_memory_max_bytes,
        redis_password=os.environ.get("RAILGUARD_REDIS_PASSWORD") or None,
        redis_ca_file=args.thread_store_ca_file,
        state_secret=os.environ.get("RAILGUARD_STATE_SECRET") or None,
        metrics_port=args.metrics_port,
        metrics_token=args.metrics_token or None,
        metrics_models=tuple(
            name.strip()
            for names in args.metrics_models
            for name in names.split(",")
            if name.strip()
        ),
        metrics_dynamic_models=max(0, args.metrics_dynamic_models),
        log_content=args.log_content,
        log_raw_completions=args.log_raw_completions,
        client_rail_selection=args.client_rail_selection,
        input_rails_scope=args.input_rails_scope,
    )


def redact_url(url: str) -> str:
    """A URL fit for a log line: user and password removed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(
    settings: Settings, root: ConfigRoot, reuse_port: bool, slots: Slots | None = None
) -> None:
    from proxy import server
    from proxy.app import CONNECTIONS, build_app

    app = build_app(settings, root)
    guard = app[CONNECTIONS]
    if slots is not None:  # the workers' shared count of open connections
        guard.slots = slots
    # Everything built so far lives as long as the process: keep the collector off it.
    # Full collections over it were the p99 tail under load (bench/).
    gc.collect()
    gc.freeze()
    server.run(app, guard, settings.host, settings.port, reuse_port, _new_loop())


def _serve_workers(settings: Settings, root: ConfigRoot) -> int:
    """N forked workers on one port. SIGTERM/SIGINT stop them all (exit 0); a worker that
    dies on its own stops the rest (exit 1), so a supervisor sees the failure."""
    from proxy.connections import SharedSlots

    context = multiprocessing.get_context("fork")
    slots = SharedSlots()
    workers = [
        context.Process(
            target=_run, args=(settings, root, True, slots), name=f"railguard-worker-{i}"
        )
        for i in range(settings.workers)
    ]
    for worker in workers:
        worker.start()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    multiprocessing.connection.wait([w.sentinel for w in workers])
    if not stopping:
        log.error("a worker exited unexpectedly; stopping the others")
        stop(signal.SIGTERM, None)
        for worker in workers:
            worker.join()
        return 1
    for worker in workers:
        worker.join()
    clean = all(w.exitcode in (0, -signal.SIGTERM, -signal.SIGINT) for w in workers)
    return 0 if clean else 1


def metrics_environment(workers: int, disabled: bool = False) -> str | None:
    """Set up the metrics environment, before anything defines a metric. With several
    workers, prometheus-client's multiprocess mode: a folder for the per-process files,
    `PROMETHEUS_MULTIPROC_DIR` if set (its old files removed), else a new temporary one,
    returned so the caller removes it at exit."""
    if disabled:
        os.environ["RAILGUARD_METRICS"] = "off"
    given = os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not given:
        return None
    if "metrics.registry" in sys.modules:
        raise RuntimeError("the metrics were defined before their environment was set up")
    created = None
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink()
    else:
        created = tempfile.mkdtemp(prefix="railguard-metrics-")
        os.environ[MULTIPROC_ENV] = created
    return created


def serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    created = metrics_environment(settings.workers, args.no_metrics)
    try:
        return _serve(args, settings)
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.access import configure_access_log
    from proxy.app import build_app
    from rails.config import ConfigError, load_config_root
    from upstream import UpstreamConfigError

    if not args.no_access_log:
        configure_access_log()
    try:
        check_engine_env()
        root = load_config_root(settings.config_path)
        # Compile every config and the upstreams table now: fail at start, never at request.
        build_app(settings, root)
    except (ConfigError, UpstreamConfigError, ValueError) as exc:
        print(f"railguard: cannot start: {exc}", file=sys.stderr)
        return 2
    for config_id, config in root.configs.items():
        if config.ignored:
            log.warning(
                "config %r: ignoring what railguard does not run: %s",
                config_id,
                ", ".join(config.ignored),
            )
        if config.output_flows and not config.streaming.enabled:
            log.info(
                "config %r: rails.output.streaming is not enabled, so streamed answers are "
                "held whole, checked by the output rails, then sent (safe, slow first token)",
                config_id,
            )
    upstream = (
        redact_url(settings.upstream_url)
        if settings.upstream_url
        else "none (routing table and configs only)"
    )
    log.info(
        "railguard serving on http://%s:%d%s; configs %s (default %s); upstream %s; %d worker(s)",
        settings.host,
        settings.port,
        settings.normalized_prefix,
        ", ".join(sorted(root.configs)),
        settings.default_config_id or "-",
        upstream,
        settings.workers,
    )
    if settings.workers > 1:
        if settings.thread_store.strip() == "memory":
            log.warning(
                "--thread-store memory keeps threads per worker, and a thread's requests may "
                "reach any of the %d workers: use --thread-store redis://... to share them",
                settings.workers,
            )
        return _serve_workers(settings, root)
    _run(settings, root, reuse_port=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", "INFO")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo-upstream":
        from proxy.demo_upstream import run_demo_upstream

        run_demo_upstream(args.host, args.port)
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
