"""What one request cost and what happened to it: the latency split behind the
`x-railguard-*` headers and metrics, and the one structured JSON line per request on the
`railguard.access` logger.

A `Trace` is started when the handler starts and filled in as the request goes: the time
spent waiting for rails and for the upstream is measured around those waits, so
railguard's own time (the overhead) is what is left of the handler's time. The log line
holds no message text and no header values unless `--log-content` is set; the request id
is the client's `x-request-id` when it is short and plain, else a new one.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import orjson
from aiohttp import web

from rails.turn import Turn

ACCESS_LOG = logging.getLogger("railguard.access")

REQUEST_ID = "x-request-id"
OVERHEAD_HEADER = "x-railguard-overhead-ms"
RAILS_HEADER = "x-railguard-rails"

_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# The worst verdict of a rail over its checks (a stream checks each window).
_RANK = {"pass": 0, "modify": 1, "error": 2, "timeout": 2, "block": 3}
_VERDICTS = {"allow": "pass", "block": "block", "rewrite": "modify"}


def request_id(request: web.Request) -> str:
    """The client's `x-request-id` when it is 1-128 plain characters, else a new one."""
    given = request.headers.get(REQUEST_ID)
    if given is not None and _REQUEST_ID_OK.fullmatch(given):
        return given
    return os.urandom(16).hex()


class Trace:
    """One request's timings (time.perf_counter() instants and durations, in seconds)."""

    __slots__ = (
        "error",
        "first_chunk",
        "input_rails",
        "model",
        "output_rails",
        "request_id",
        "started",
        "stream",
        "tokens",
        "turn",
        "upstream",
        "upstream_first_chunk",
        "upstream_wait",
    )

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.input_rails = 0.0  # waiting for the input (and tool-input) rails
        self.output_rails = 0.0  # waiting for output rails (streams: only what held the stream)
        self.upstream_wait = 0.0  # waiting for the main call: its answer, or a stream's bytes
        self.first_chunk: float | None = None  # streams: first event written to the client
        self.upstream_first_chunk: float | None = None  # streams: seconds to the first bytes
        self.turn: Turn | None = None
        self.model: str | None = None
        self.stream = False
        self.upstream: str | None = None
        self.tokens: tuple[int, int] | None = None  # prompt, completion
        self.error: str | None = None  # the error code answered, if any

    def overhead(self, now: float) -> float:
        """railguard's own time so far: the handler's time minus the waits."""
        own = now - self.started - self.input_rails - self.output_rails - self.upstream_wait
        return own if own > 0.0 else 0.0

    def stamp(self, response: web.StreamResponse, now: float | None = None) -> None:
        """The request id, the overhead so far and the rails that ran so far, as headers
        (before the response is prepared)."""
        headers = response.headers
        headers[REQUEST_ID] = self.request_id
        headers[OVERHEAD_HEADER] = f"{self.overhead(now or time.perf_counter()) * 1e3:.3f}"
        headers[RAILS_HEADER] = ", ".join(rails_run(self.turn)) if self.turn else ""


TRACE = web.RequestKey("railguard_trace", Trace)


def rails_run(turn: Turn) -> list[str]:
    """Names of the rails that ran in this turn so far, in order, each once."""
    seen: dict[str, None] = {}
    for stage in (turn.input, turn.output):
        if stage is not None:
            for entry in stage.activated:
                seen.setdefault(entry["name"], None)
    return list(seen)


def rail_verdicts(turn: Turn) -> list[dict[str, Any]]:
    """Per rail: stage, worst verdict, number of checks and their time (ms)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for stage in (turn.input, turn.output):
        for entry in stage.activated if stage is not None else ():
            decision = entry["decisions"][0] if entry["decisions"] else ""
            verdict = _VERDICTS.get(decision) or decision.partition(":")[0] or "pass"
            key = (entry["type"], entry["name"])
            found = out.get(key)
            if found is None:
                out[key] = {
                    "rail": entry["name"],
                    "stage": entry["type"],
                    "verdict": verdict,
                    "checks": 1,
                    "ms": round(entry["duration"] * 1e3, 3),
                }
                continue
            found["checks"] += 1
            found["ms"] = round(found["ms"] + entry["duration"] * 1e3, 3)
            if _RANK.get(verdict, 0) > _RANK.get(found["verdict"], 0):
                found["verdict"] = verdict
    return list(out.values())


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def log_request(
    trace: Trace,
    *,
    route: str,
    config_id: str,
    outcome: str,
    status: int,
    ended: float,
    content: bool,
) -> None:
    """One JSON line: ids, outcome, rails and verdicts, durations, status. Message text only
    with `content` (`--log-content`); never headers or keys."""
    turn = trace.turn
    line: dict[str, Any] = {
        "ts": round(time.time(), 3),
        "pid": os.getpid(),  # which worker, with --workers
        "request_id": trace.request_id,
        "route": route,
        "config_id": config_id,
        "model": trace.model,
        "stream": trace.stream,
        "status": status,
        "outcome": outcome,
        "error": trace.error,
        "upstream": trace.upstream,
        "rails": rail_verdicts(turn) if turn is not None else [],
        "duration_ms": _ms(ended - trace.started),
        "overhead_ms": _ms(trace.overhead(ended)),
        "input_rails_ms": _ms(trace.input_rails),
        "output_rails_ms": _ms(trace.output_rails),
        "upstream_ms": _ms(trace.upstream_wait),
        "first_chunk_ms": _ms(
            trace.first_chunk - trace.started if trace.first_chunk is not None else None
        ),
        "upstream_first_chunk_ms": _ms(trace.upstream_first_chunk),
        "tokens": {"prompt": trace.tokens[0], "completion": trace.tokens[1]}
        if trace.tokens
        else None,
    }
    if content and turn is not None:
        line["content"] = {"user": turn.user_text, "answer": turn.bot_text}
    text = orjson.dumps(line).decode()
    handlers = ACCESS_LOG.handlers
    if len(handlers) == 1 and type(handlers[0]) is JsonLinesHandler and not ACCESS_LOG.filters:
        handlers[0].write_line(text)  # the CLI's setup: no LogRecord (~10 µs) per request
    else:
        ACCESS_LOG.info(text)


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens from an OpenAI `usage` object, if it has them."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    return (
        prompt if isinstance(prompt, int) and prompt >= 0 else 0,
        completion if isinstance(completion, int) and completion >= 0 else 0,
    )


class JsonLinesHandler(logging.StreamHandler):
    """One bare JSON line per record. When it is the access logger's only handler,
    `log_request` hands it the line directly (same output, without building a LogRecord)."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))

    def write_line(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except Exception:  # as logging does: a broken log stream never fails a request
            self.handleError(
                ACCESS_LOG.makeRecord(ACCESS_LOG.name, logging.INFO, "", 0, line, (), None)
            )


def configure_access_log(stream: Any = None) -> None:
    """The CLI's setup: bare JSON lines on stderr, not the human log format. The lines are
    at INFO: `--log-level WARNING` turns them off with the rest."""
    ACCESS_LOG.handlers[:] = [JsonLinesHandler(stream)]
    ACCESS_LOG.propagate = False
