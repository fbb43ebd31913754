"""railguard benchmark: railguard against a direct call to the same upstream, in one run.

Run it from the repository root (``make bench`` does the full run):

    .venv/bin/python bench/run.py            # full run, about 2 minutes
    .venv/bin/python bench/run.py --quick    # smaller samples, under 40 s
    .venv/bin/python bench/run.py --json out.json --generator python

What it starts (every process is stopped on exit, Ctrl-C or error):

* ``bench/fake_llm.py``, a raw-asyncio fake OpenAI upstream, pinned to the second CPU;
* railguard (``python -m proxy.cli serve``) pinned to the first CPU, on a temporary config
  root with four configs: ``none`` (no rails, the default), ``regex`` (``regex check
  input`` and ``regex check output``, five or six realistic patterns each), and two with
  the output rail alone checked over streams (``rails.output.streaming.enabled``):
  ``stream_first`` (windows of 200 tokens overlapping by 50; events go out at once and are
  checked behind) and ``hold`` (windows of 32 overlapping by 8, ``stream_first: false``;
  events are held until their window passed, several windows per 200-chunk stream);
* the load generators (this process, and ``wrk`` or the Python fallback) on the second CPU.

On a machine with fewer than two CPUs nothing is pinned and the table says so.

What it measures, always as railguard against the direct call made in the same run:

a. added latency at concurrency 1 (config ``none``): sequential requests on one keep-alive
   raw socket, direct and proxied requests alternating in blocks; p50, p99 and mean;
b. throughput at concurrency 32 (config ``none``) with ``wrk`` (or the Python fallback),
   direct and proxied rounds alternating; the median round is reported;
c. the cost of the regex rails on a ~4 KB user message: ``regex`` against ``none``, both
   selected with ``guardrails.config_id`` so only the rails differ; plus the rails engine
   alone, in this process (``Guardrails.run_stage`` input on the message, output on the
   answer) next to the bare ``re`` searches it wraps;
d. streaming: time from request to ``[DONE]`` for 200-chunk streams; (proxy - direct) /
   chunks is the per-chunk overhead. A 20-chunk stream gives the marginal (slope) cost too.
e. streaming output rails:
   - time to first token (request sent to the first event with non-empty content), direct
     against ``none`` and ``stream_first``: on 20-chunk streams read back to back (the
     target rows), and on 10-chunk streams paced at 1 ms per token (context). Not on long
     unpaced streams: the upstream then keeps the client's CPU busy and the client often
     reads railguard's first event late (those figures are in the JSON); and paced
     streams leave the CPUs idle between tokens, after which this VM runs code cold;
   - per-chunk overhead as in d (200 chunks) for ``stream_first`` (target) and ``hold``
     (a 200-chunk stream carries 199 tokens: ``stream_first``'s 200-token windows check it
     once, at the end, behind the events; ``hold`` checks 8 windows);
   - hold-back per window: 200-chunk streams at 1 ms per token through ``hold``; the mean of
     railguard's ``railguard_stream_holdback_seconds`` (``/metrics`` read before and after)
     against the time the same windows take to fill on the same stream read directly
     (a window's first new token to its last token, or to ``[DONE]`` for the last
     window, checked when the stream ends); the difference is railguard's own cost;
   - ``stream_first`` leak bound: 200-chunk unpaced streams through ``slow_check`` (the
     ``self check output`` rail, windows as ``stream_first``'s, its check model answering
     after 20 ms and blocking the window that holds token 100); the tokens a client got
     before the block event, against the direct stream's (all of them), and how far past
     the last window that passed they reached (railguard's bound: ``chunk_size``);
   - memory: railguard's RSS (``VmRSS``) before and after 1,000 sequential ``hold``
     streams (after a warm-up batch), and after each round of 200 concurrent ``hold``
     streams (growth from the second round to the last).
   Every stream must end with ``[DONE]``, with no error event and, through railguard,
   with its ``guardrails`` chunk (an output rail that blocked would cut it short); else
   the run stops with status 2.

Reading the table: "direct" is the upstream called without railguard, "railguard" the
same call through it, "added" the difference (or ratio for throughput). PASS/FAIL compares
against the project's targets; rows without a target are context. The direct throughput
shares its CPU with the load generator, so it is a floor, not the upstream's ceiling.
Below the table, "other processes' CPU" says how busy the rest of the machine was in each
phase (from /proc); above 10 % of a CPU the phase is flagged, as its p99 and throughput
are then mostly someone else's.

``wrk`` is used when installed; when missing and running as root, one quiet
``apt-get install -y wrk`` is tried, else the Python generator (``--generator python``)
is used. The exit status is 0 whatever the figures (this reports, it is not a test);
2 means the setup failed; 130 means interrupted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import loadgen
import orjson
import yaml
from fake_llm import ANSWER, stream_text, stream_tokens
from httpclient import (
    BenchError,
    Check,
    RawClient,
    StreamTiming,
    build_request,
    count_contents,
    summary,
    timed,
)
from streamrails import (
    DONE_TAIL,
    check_stream,
    completed,
    concurrent_streams,
    holdback_metric,
    mean_fill,
    passed_before,
    rss_bytes,
    window_spans,
)
from sysload import CpuWatch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"

TARGET_ADDED_P50 = 1e-3
TARGET_ADDED_P99 = 3e-3
TARGET_RPS = 2000.0
TARGET_REGEX = 0.1e-3
TARGET_CHUNK = 50e-6
TARGET_TTFT = 1e-3
TARGET_HOLDBACK = 1e-3  # railguard's own hold-back per window, beyond the window's fill time
TARGET_RSS_GROWTH = 5 * 1024 * 1024
HOLD_CHUNK, HOLD_CONTEXT = 32, 8  # the `hold` config's windows: several per 200-chunk stream
FIRST_CHUNK, FIRST_CONTEXT = 48, 12  # `stream_first`: windows checked behind the stream
TOKEN_MS = 1.0  # pacing of the hold-back streams
JUDGE, JUDGE_MS, JUDGE_WORD = "judge-20", 20.0, "forbidden"  # the slow check model
LEAK_TRIGGER = 100  # the token (0-based) the slow check model blocks
BUSY_FOREIGN = 0.10  # other processes using more than this share of a CPU
BUSY_STEAL = 0.05

INPUT_PATTERNS = [
    r"\bignore\s+(?:all\s+)?(?:previous|prior|above)\s+instructions\b",
    r"\b(?:reveal|print|show)\s+(?:me\s+)?(?:your|the)\s+system\s+prompt\b",
    r"\b(?:jailbreak|DAN\s+mode|developer\s+mode)\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"\b(?:\d[ -]?){13,16}\b",
    r"\bpassword\s*[:=]",
]
OUTPUT_PATTERNS = [
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\bsk-[A-Za-z0-9]{20,}\b",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----",
]


def output_streaming(chunk_size: int, context_size: int, stream_first: bool) -> dict[str, Any]:
    """The regex output rail alone, checked over a stream in windows."""
    return {
        "models": [],
        "rails": {
            "output": {
                "flows": ["regex check output"],
                "streaming": {
                    "enabled": True,
                    "chunk_size": chunk_size,
                    "context_size": context_size,
                    "stream_first": stream_first,
                },
            },
            "config": {"regex_detection": {"output": {"patterns": OUTPUT_PATTERNS}}},
        },
    }


CONFIGS: dict[str, dict[str, Any]] = {
    "none": {"models": [], "rails": {}},
    "regex": {
        "models": [],
        "rails": {
            "input": {"flows": ["regex check input"]},
            "output": {"flows": ["regex check output"]},
            "config": {
                "regex_detection": {
                    "input": {"patterns": INPUT_PATTERNS, "case_insensitive": True},
                    "output": {"patterns": OUTPUT_PATTERNS},
                }
            },
        },
    },
    # windows small enough that a 200-chunk stream runs several checks behind it
    "stream_first": output_streaming(FIRST_CHUNK, FIRST_CONTEXT, stream_first=True),
    "hold": output_streaming(HOLD_CHUNK, HOLD_CONTEXT, stream_first=False),
    # a slow model-backed output rail, checked behind the stream
    "slow_check": {
        "models": [{"type": "self_check_output", "engine": "openai", "model": JUDGE}],
        "rails": {
            "output": {
                "flows": ["self check output"],
                "streaming": {
                    "enabled": True,
                    "chunk_size": FIRST_CHUNK,
                    "context_size": FIRST_CONTEXT,
                    "stream_first": True,
                },
            }
        },
    },
}

_SENTENCES = (
    "We are planning a week-long trip to the Portuguese coast in early autumn.",
    "The group has four adults and two children aged 7 and 10, and one of us is vegetarian.",
    "We would like a mix of quiet beach days, short hikes and a couple of museum visits.",
    "Please suggest an itinerary that avoids long drives and leaves time for lazy lunches.",
    "We have heard the cliffs near the southern towns are beautiful at sunset.",
    "Budget is moderate, so guesthouses or small family hotels are perfect for us.",
    "It would help to know which markets are worth visiting for fresh fruit and bread.",
    "Also tell us whether trains or buses are easier with luggage between the towns.",
)


def harmless_message(size: int = 4096) -> str:
    """About `size` bytes of ordinary travel-planning prose (matches no pattern)."""
    words: list[str] = []
    length = 0
    index = 0
    while length < size:
        for word in _SENTENCES[index % len(_SENTENCES)].split():
            if length + len(word) + 1 > size:
                return " ".join(words)
            words.append(word)
            length += len(word) + 1
        index += 1
    return " ".join(words)


def chat_body(content: str, **extra: Any) -> bytes:
    return orjson.dumps(
        {
            "model": "bench-model",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": content},
            ],
            "max_tokens": 64,
            "temperature": 0.2,
            **extra,
        }
    )


SMALL_MESSAGE = "Hello! Can you tell me a fun fact about octopuses?"
SMALL_BODY = chat_body(SMALL_MESSAGE)


def stream_body(
    chunks: int, config_id: str | None = None, token_ms: float = 0.0, trigger: int = 0
) -> bytes:
    """A streaming request; the fake upstream reads `x_bench_chunks`, `x_bench_token_ms`
    and `x_bench_trigger_at` (railguard passes them on); `config_id` selects a railguard
    config."""
    extra: dict[str, Any] = {"x_bench_chunks": chunks}
    if token_ms:
        extra["x_bench_token_ms"] = token_ms
    if trigger:
        extra["x_bench_trigger_at"] = trigger
    if config_id is not None:
        extra["guardrails"] = {"config_id": config_id}
    return chat_body(SMALL_MESSAGE, stream=True, **extra)


@dataclass(frozen=True, slots=True)
class Plan:
    """Sample sizes for one mode."""

    latency_samples: int
    block: int
    warmup: int
    load_duration: float
    load_rounds: int
    load_warmup: float
    regex_samples: int
    engine_iterations: int
    stream_samples: int
    first_token_samples: int
    paced_first_samples: int
    paced_streams: int  # per target, for the hold-back per window
    leak_streams: int  # per target, for the stream_first leak bound
    memory_warmup: int
    memory_streams: int
    concurrent_rounds: int
    stream_chunks: int = 200
    short_chunks: int = 20
    first_token_chunks: int = 10
    concurrent_streams: int = 200


FULL = Plan(
    latency_samples=8000,
    block=250,
    warmup=1000,
    load_duration=8.0,
    load_rounds=3,
    load_warmup=2.0,
    regex_samples=6000,
    engine_iterations=6000,
    stream_samples=400,
    first_token_samples=1000,
    paced_first_samples=150,
    paced_streams=12,
    leak_streams=20,
    memory_warmup=300,
    memory_streams=1000,
    concurrent_rounds=5,
)
QUICK = Plan(
    latency_samples=2000,
    block=250,
    warmup=300,
    load_duration=3.0,
    load_rounds=1,
    load_warmup=1.0,
    regex_samples=1500,
    engine_iterations=1500,
    stream_samples=80,
    first_token_samples=300,
    paced_first_samples=50,
    paced_streams=4,
    leak_streams=5,
    memory_warmup=200,
    memory_streams=1000,
    concurrent_rounds=3,
)


# --- processes -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the benchmark itself dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Processes:
    """The servers this benchmark started; `stop` ends exactly those, by pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        self.started.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.started):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.started.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    procs: Processes,
    name: str,
    proc: subprocess.Popen[bytes],
    port: int,
    request: bytes,
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}:\n{procs.log_tail(name)}")
        try:
            with RawClient(HOST, port, timeout=2.0) as client:
                if client.send(request).status == 200:
                    return
        except (OSError, BenchError):
            time.sleep(0.05)
    raise BenchError(f"{name} did not answer on port {port}:\n{procs.log_tail(name)}")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_session(name: str, prefix: str, body: Callable[[Processes, Path], int]) -> int:
    """Run `body(procs, workdir)` in a scratch directory and return its exit status; the
    benchmarks that start servers all run through here so that no ending (error, Ctrl-C,
    SIGTERM) leaves one running. A `BenchError` gives 2, an interrupt 130, each with a line
    on stderr starting with `name`."""
    signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C, so that `finally` runs
    signal.signal(signal.SIGINT, _interrupted)  # also when started with SIGINT ignored (`cmd &`)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            return body(procs, workdir)
        except BenchError as exc:
            print(f"{name}: setup failed: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return 130
        finally:
            procs.stop()


def run_phases(watch: CpuWatch, phases: Sequence[tuple[str, Callable[[], None]]]) -> None:
    """Run each measurement as a named phase of `watch`, so the report can flag the phases
    that other processes disturbed."""
    for name, measure in phases:
        with watch.phase(name):
            measure()


def write_configs(root: Path) -> None:
    for config_id, content in CONFIGS.items():
        folder = root / config_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yml").write_text(yaml.safe_dump(content, sort_keys=False))


# --- measurement helpers -----------------------------------------------------------------


@contextmanager
def no_gc() -> Iterator[None]:
    """The load generator's own garbage collections are noise; the servers keep theirs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alternate(
    targets: Sequence[tuple[RawClient, bytes, Check]], total: int, block: int
) -> list[list[float]]:
    """`total` sequential samples per target, in alternating blocks so drift hits all alike."""
    samples: list[list[float]] = [[] for _ in targets]
    order = list(range(len(targets)))
    done = 0
    with no_gc():
        while done < total:
            size = min(block, total - done)
            for index in order:
                client, request, check = targets[index]
                samples[index].extend(timed(client, request, size, check))
            order.reverse()
            done += size
    return samples


def warm(targets: Sequence[tuple[RawClient, bytes, Check]], count: int) -> None:
    for client, request, check in targets:
        timed(client, request, count, check)


# --- results -----------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    metric: str
    direct: str
    railguard: str
    added: str
    target: str
    verdict: str  # PASS, FAIL or "" for context rows


@dataclass(slots=True)
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(
        self,
        metric: str,
        direct: str,
        railguard: str,
        added: str,
        target: str = "",
        passed: bool | None = None,
    ) -> None:
        verdict = "" if passed is None else ("PASS" if passed else "FAIL")
        self.rows.append(Row(metric, direct, railguard, added, target, verdict))

    def write_json(self, path: Path) -> None:
        """`--json`: the table's rows with the raw figures behind them, for later comparison."""
        path.write_bytes(
            orjson.dumps(
                {"meta": self.meta, "figures": self.figures, "rows": self.rows},
                option=orjson.OPT_INDENT_2,
            )
        )
        print(f"\nresults written to {path}")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def signed(seconds: float, unit: Callable[[float], str] = ms) -> str:
    return ("+" if seconds >= 0 else "-") + unit(abs(seconds))


def mb(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def signed_mb(size: float) -> str:
    return ("+" if size >= 0 else "-") + mb(abs(size))


def print_table(results: Results) -> None:
    header = Row("metric", "direct", "railguard", "added / ratio", "target", "result")
    rows = [header, *results.rows]
    columns = list(zip(*(asdict(r).values() for r in rows), strict=True))
    widths = [max(len(str(v)) for v in column) for column in columns]

    def line(row: Row) -> str:
        values = asdict(row).values()
        return "  ".join(str(v).ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    print(line(header))
    print(rule)
    for row in results.rows:
        print(line(row))


def print_background(watch: CpuWatch, results: Results) -> None:
    """Other processes' CPU per phase: tail figures taken on a busy machine are not ours."""
    if not watch.phases:
        return
    results.meta["background_cpu"] = [asdict(p) for p in watch.phases]
    parts = ", ".join(f"{p.phase} {p.foreign:.0%}" for p in watch.phases)
    steal = max(p.steal for p in watch.phases)
    print(f"\nother processes' CPU (share of one CPU) per phase: {parts}; max steal {steal:.0%}")
    busy = [p.phase for p in watch.phases if p.foreign > BUSY_FOREIGN or p.steal > BUSY_STEAL]
    if busy:
        print(
            f"warning: the machine was busy during {', '.join(busy)}: p99 and throughput "
            "there are likely disturbed; rerun on an idle machine"
        )


def report(
    title: str,
    results: Results,
    watch: CpuWatch,
    quick: bool,
    started: float,
    json_path: Path | None,
    notes: Sequence[str] = (),
) -> None:
    """The end of run.py and rails_perf.py: a heading, the table, the background load, and
    the `--json` file, so that both report alike."""
    results.meta["mode"] = "quick" if quick else "full"
    results.meta["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(
        f"{title} ({results.meta['mode']}, {results.meta['seconds']} s); {results.meta['pinning']}"
    )
    for note in notes:
        print(note)
    print()
    print_table(results)
    print_background(watch, results)
    if json_path is not None:
        results.write_json(json_path)


# --- the benchmark -----------------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, generator: str, procs: Processes, workdir: Path) -> None:
        self.plan = plan
        self.generator_choice = generator
        self.procs = procs
        self.workdir = workdir
        self.results = Results()
        self.watch = CpuWatch(lambda: [proc.pid for _, proc in procs.started])
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = len(cpus) >= 2
        self.proxy_cpu: int | None = cpus[0] if self.pinned else None
        self.load_cpu: int | None = cpus[1] if self.pinned else None
        self.upstream_port = 0
        self.proxy_port = 0
        self.proxy_pid = 0

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    # setup

    def start(self) -> None:
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})
        else:
            self.log("fewer than 2 CPUs: nothing is pinned; figures will be noisier")
        configs = self.workdir / "configs"
        write_configs(configs)
        self.upstream_port = free_port()
        upstream = self.procs.start(
            "upstream",
            [
                sys.executable,
                str(BENCH / "fake_llm.py"),
                "--port",
                str(self.upstream_port),
                "--judge",
                JUDGE,
                f"{JUDGE_MS:g}",
                JUDGE_WORD,
            ],
            self.load_cpu,
        )
        direct_probe = build_request(HOST, self.upstream_port, CHAT_PATH, SMALL_BODY)
        wait_ready(self.procs, "upstream", upstream, self.upstream_port, direct_probe)
        self.proxy_port = free_port()
        proxy = self.procs.start(
            "railguard",
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "serve",
                "--config",
                str(configs),
                "--upstream",
                f"http://{HOST}:{self.upstream_port}/v1",
                "--port",
                str(self.proxy_port),
                "--default-config-id",
                "none",
                "--log-level",
                "WARNING",
                # every slow_check stream must wait on its check model, not on a cached verdict
                "--check-cache-size",
                "0",
            ],
            self.proxy_cpu,
        )
        self.proxy_pid = proxy.pid  # taskset execs railguard: same process
        health = f"GET /health HTTP/1.1\r\nHost: {HOST}:{self.proxy_port}\r\n\r\n".encode()
        wait_ready(self.procs, "railguard", proxy, self.proxy_port, health)
        self.verify()
        pins = (
            f"railguard on CPU {self.proxy_cpu}; upstream and load generators on CPU "
            f"{self.load_cpu}"
            if self.pinned
            else "unpinned"
        )
        self.results.meta.update(
            {
                "pinning": pins,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "upstream": "bench/fake_llm.py (raw asyncio + uvloop)",
            }
        )

    def direct(self, body: bytes) -> bytes:
        return build_request(HOST, self.upstream_port, CHAT_PATH, body)

    def proxied(self, body: bytes) -> bytes:
        return build_request(HOST, self.proxy_port, CHAT_PATH, body)

    def verify(self) -> None:
        """The setup answers as the measurements assume, before anything is timed."""
        answer = ANSWER.encode()
        with RawClient(HOST, self.upstream_port) as up, RawClient(HOST, self.proxy_port) as rg:
            direct = up.send(self.direct(SMALL_BODY))
            if direct.status != 200 or answer not in direct.body:
                raise BenchError(f"upstream answered {direct.status}: {direct.body[:300]!r}")
            proxied = rg.send(self.proxied(SMALL_BODY))
            if proxied.status != 200 or b'"guardrails"' not in proxied.body:
                raise BenchError(f"railguard answered {proxied.status}: {proxied.body[:300]!r}")
            message = harmless_message()
            for config_id in ("none", "regex"):
                body = chat_body(message, guardrails={"config_id": config_id})
                got = rg.send(self.proxied(body))
                ok = got.status == 200 and answer in got.body
                if not ok or f'"config_id":"{config_id}"'.encode() not in got.body:
                    raise BenchError(
                        f"config {config_id!r} answered {got.status}: {got.body[:300]!r}"
                    )
            chunks = self.plan.stream_chunks
            body = stream_body(chunks)
            # railguard adds `guardrails` to the upstream's last chunk: no event of its own
            for name, client, request, want in (
                ("upstream", up, self.direct(body), chunks + 1),
                ("railguard", rg, self.proxied(body), chunks + 1),
            ):
                got = client.send(request)
                events = got.body.count(b"data: ")
                check_stream(name, got.status, got.body, railguard=client is rg)
                if events != want:
                    raise BenchError(
                        f"{name} streamed {events} events (want {want}, [DONE] included): "
                        f"{got.body[:300]!r}"
                    )
            # the output rails must never block the fake upstream's answer: a block would end
            # the streams early (every stream is checked again as it is measured)
            text = stream_text(chunks)
            for pattern in OUTPUT_PATTERNS:
                if re.search(pattern, text):
                    raise BenchError(f"the fake upstream's answer matches {pattern!r}")
            for config_id in ("stream_first", "hold"):
                got = rg.send(self.proxied(stream_body(chunks, config_id)))
                check_stream(f"config {config_id!r}", got.status, got.body, railguard=True)
                if f'"config_id":"{config_id}"'.encode() not in got.body:
                    raise BenchError(f"config {config_id!r} was not used: {got.body[-300:]!r}")

    # a. latency at concurrency 1

    def latency(self) -> None:
        plan = self.plan
        self.log(f"a. latency at concurrency 1: {plan.latency_samples} requests each")
        with RawClient(HOST, self.upstream_port) as up, RawClient(HOST, self.proxy_port) as rg:
            check = ANSWER.encode()
            targets = [(up, self.direct(SMALL_BODY), check), (rg, self.proxied(SMALL_BODY), check)]
            warm(targets, plan.warmup)
            direct, proxied = alternate(targets, plan.latency_samples, plan.block)
        d, p = summary(direct), summary(proxied)
        self.results.figures["latency_c1"] = {"direct": d, "railguard": p}
        added50, added99 = p["p50"] - d["p50"], p["p99"] - d["p99"]
        self.results.add(
            "latency c=1, no rails, p50",
            ms(d["p50"]),
            ms(p["p50"]),
            signed(added50),
            "added ≤ 1 ms",
            added50 <= TARGET_ADDED_P50,
        )
        self.results.add(
            "latency c=1, no rails, p99",
            ms(d["p99"]),
            ms(p["p99"]),
            signed(added99),
            "added ≤ 3 ms",
            added99 <= TARGET_ADDED_P99,
        )
        self.results.add(
            "latency c=1, no rails, mean",
            ms(d["mean"]),
            ms(p["mean"]),
            signed(p["mean"] - d["mean"]),
        )

    # b. throughput at concurrency 32

    def throughput(self) -> None:
        plan = self.plan
        connections = 32
        wrk = None
        if self.generator_choice in ("auto", "wrk"):
            wrk = loadgen.ensure_wrk()
            if wrk is None and self.generator_choice == "wrk":
                raise BenchError("wrk is not installed and could not be installed")
        cpus = [self.load_cpu] if self.load_cpu is not None else None
        name = "wrk (1 thread, Lua POST body)" if wrk else "Python (4 processes, uvloop)"
        self.results.meta["generator"] = name
        self.log(
            f"b. throughput at concurrency {connections} with {name}: "
            f"{plan.load_rounds} x {plan.load_duration:g} s per target"
        )

        def run(port: int, duration: float) -> loadgen.LoadResult:
            if wrk:
                url = f"http://{HOST}:{port}{CHAT_PATH}"
                return loadgen.run_wrk(wrk, url, SMALL_BODY, connections, duration, cpus)
            request = build_request(HOST, port, CHAT_PATH, SMALL_BODY)
            return loadgen.run_python(HOST, port, request, connections, duration, cpus)

        ports = {"direct": self.upstream_port, "railguard": self.proxy_port}
        for port in ports.values():
            run(port, plan.load_warmup)
        rounds: dict[str, list[loadgen.LoadResult]] = {key: [] for key in ports}
        for index in range(plan.load_rounds):
            keys = list(ports) if index % 2 == 0 else list(reversed(ports))
            for key in keys:
                rounds[key].append(run(ports[key], plan.load_duration))
        chosen = {
            key: sorted(results, key=lambda r: r.rps)[len(results) // 2]
            for key, results in rounds.items()
        }
        self.results.figures["throughput_c32"] = {
            "generator": name,
            **{key: [asdict(r) for r in results] for key, results in rounds.items()},
        }
        d, p = chosen["direct"], chosen["railguard"]
        for key, result in chosen.items():
            if result.errors:
                self.log(f"warning: {result.errors} errors or non-2xx answers ({key})")
        self.results.add(
            "throughput c=32, no rails",
            f"{d.rps:,.0f} req/s",
            f"{p.rps:,.0f} req/s",
            f"x{p.rps / d.rps:.2f}" if d.rps else "-",
            "≥ 2,000 req/s",
            p.rps >= TARGET_RPS and not p.errors,
        )
        self.results.add("latency c=32, p50", ms(d.p50), ms(p.p50), signed(p.p50 - d.p50))
        self.results.add("latency c=32, p99", ms(d.p99), ms(p.p99), signed(p.p99 - d.p99))

    # c. regex rails on a 4 KB message

    def regex(self) -> None:
        plan = self.plan
        message = harmless_message()
        self.log(f"c. regex rails, {len(message)} B message: {plan.regex_samples} requests each")
        check = ANSWER.encode()
        with RawClient(HOST, self.proxy_port) as none, RawClient(HOST, self.proxy_port) as rx:
            targets = [
                (none, self.proxied(chat_body(message, guardrails={"config_id": "none"})), check),
                (rx, self.proxied(chat_body(message, guardrails={"config_id": "regex"})), check),
            ]
            warm(targets, plan.warmup)
            plain, railed = alternate(targets, plan.regex_samples, plan.block)
        n, r = summary(plain), summary(railed)
        self.results.figures["regex_4k"] = {"none": n, "regex": r, "bytes": len(message)}
        added = r["p50"] - n["p50"]
        self.results.add(
            "regex rails, 4 KB msg, p50 (cfg none → regex)",
            ms(n["p50"]),
            ms(r["p50"]),
            signed(added),
            "added ≤ 0.1 ms",
            added <= TARGET_REGEX,
        )
        self.results.add(
            "regex rails, 4 KB msg, mean (cfg none → regex)",
            ms(n["mean"]),
            ms(r["mean"]),
            signed(r["mean"] - n["mean"]),
        )
        engine = engine_cost(message, plan.engine_iterations)
        self.results.figures["regex_engine"] = engine
        bare, rails = engine["bare_re"], engine["engine"]
        self.results.add(
            "regex rails in-process, p50 (stdlib re → railguard)",
            us(bare["p50"]),
            us(rails["p50"]),
            signed(rails["p50"], us),
            "≤ 100 µs",
            rails["p50"] <= TARGET_REGEX,
        )
        self.results.add(
            "railguard rails vs same patterns on stdlib re, p50",
            "",
            "",
            signed(rails["p50"] - bare["p50"], us),
        )

    # d. streaming

    def streaming(self) -> None:
        plan = self.plan
        long, short = plan.stream_chunks, plan.short_chunks
        self.log(f"d. streaming {long} and {short} chunks: {plan.stream_samples} streams each")
        added: dict[int, dict[str, dict[str, float]]] = {}
        for chunks, samples in ((long, plan.stream_samples), (short, plan.stream_samples)):
            body = stream_body(chunks)
            with (
                RawClient(HOST, self.upstream_port) as up,
                RawClient(HOST, self.proxy_port) as rg,
            ):
                targets = [(up, self.direct(body), completed), (rg, self.proxied(body), completed)]
                warm(targets, max(10, samples // 10))
                direct, proxied = alternate(targets, samples, max(10, samples // 8))
            added[chunks] = {"direct": summary(direct), "railguard": summary(proxied)}
        self.results.figures["streaming"] = {str(k): v for k, v in added.items()}
        d, p = added[long]["direct"], added[long]["railguard"]
        per_chunk = (p["p50"] - d["p50"]) / long
        self.results.add(
            f"stream {long} chunks to [DONE], p50",
            ms(d["p50"]),
            ms(p["p50"]),
            signed(p["p50"] - d["p50"]),
        )
        self.results.add(
            f"stream per-chunk overhead ((proxy - direct) / {long})",
            "",
            "",
            signed(per_chunk, us) + " / chunk",
            "≤ 50 µs / chunk",
            per_chunk <= TARGET_CHUNK,
        )
        ds, ps = added[short]["direct"], added[short]["railguard"]
        slope = ((p["p50"] - d["p50"]) - (ps["p50"] - ds["p50"])) / (long - short)
        self.results.add(
            f"stream marginal per-chunk ({short} vs {long} chunks)",
            "",
            "",
            signed(slope, us) + " / chunk",
        )
        self.results.figures["streaming"]["per_chunk_s"] = per_chunk
        self.results.figures["streaming"]["marginal_per_chunk_s"] = slope

    # e. streaming output rails

    def stream_rails(self) -> None:
        self.first_token()
        self.chunk_overhead()
        self.holdback()
        self.leak()
        self.memory()

    def stream_targets(
        self, names: Sequence[str], chunks: int, token_ms: float, samples: int
    ) -> dict[str, list[StreamTiming]]:
        """`samples` streams per target ("direct", or a railguard config id), alternating
        in blocks after a warm-up; each one timed to its first content and to its end."""
        ports = {"direct": self.upstream_port}
        clients = [RawClient(HOST, ports.get(name, self.proxy_port)) for name in names]
        try:
            targets = [
                (name, client, self.direct(stream_body(chunks, token_ms=token_ms)), False)
                if name == "direct"
                else (name, client, self.proxied(stream_body(chunks, name, token_ms)), True)
                for name, client in zip(names, clients, strict=True)
            ]
            with no_gc():
                alternate_streams(targets, max(10, samples // 10), samples)
                timings = alternate_streams(targets, samples, max(10, samples // 8))
        finally:
            for client in clients:
                client.close()
        return dict(zip(names, timings, strict=True))

    def first_token(self) -> None:
        """Time to the first content event: on short streams read back to back (the target
        rows), and on streams paced at TOKEN_MS per token (context).

        Short, because on a long unpaced stream the upstream keeps the CPU the client
        shares with it busy, and the client often reads railguard's first event only once
        the upstream has written its whole stream (those figures are in the JSON as
        `first_token_unpaced`). Back to back, because a paced stream leaves both CPUs idle
        between tokens, and on this VM code that ran after a few idle milliseconds runs
        with cold caches: the paced rows show that case."""
        plan = self.plan
        short, paced = plan.short_chunks, plan.first_token_chunks
        self.log(
            f"e. streaming output rails: first token, {short} chunks back to back "
            f"({plan.first_token_samples} streams per target) and {paced} chunks at "
            f"{TOKEN_MS:g} ms/token ({plan.paced_first_samples})"
        )
        names = ("direct", "none", "stream_first")
        runs = {
            "back_to_back": self.stream_targets(names, short, 0.0, plan.first_token_samples),
            "paced": self.stream_targets(names, paced, TOKEN_MS, plan.paced_first_samples),
        }
        first = {
            run: {name: summary([t.first for t in ts]) for name, ts in by_name.items()}
            for run, by_name in runs.items()
        }
        self.results.figures["stream_first_token"] = {
            "back_to_back": {"chunks": short, **first["back_to_back"]},
            "paced": {"chunks": paced, "token_ms": TOKEN_MS, **first["paced"]},
        }
        d = first["back_to_back"]["direct"]
        for name in names[1:]:
            f = first["back_to_back"][name]
            added50 = f["p50"] - d["p50"]
            label = f"first token, cfg {name}, {short} chunks"
            self.results.add(
                f"{label}, p50",
                ms(d["p50"]),
                ms(f["p50"]),
                signed(added50),
                "added ≤ 1 ms",
                added50 <= TARGET_TTFT,
            )
            self.results.add(
                f"{label}, p99", ms(d["p99"]), ms(f["p99"]), signed(f["p99"] - d["p99"])
            )
        d = first["paced"]["direct"]
        for name in names[1:]:
            f = first["paced"][name]
            self.results.add(
                f"first token, cfg {name}, {paced} chunks at {TOKEN_MS:g} ms/token, p50",
                ms(d["p50"]),
                ms(f["p50"]),
                signed(f["p50"] - d["p50"]),
            )

    def chunk_overhead(self) -> None:
        """Time to [DONE] of unpaced streams, as in phase d, through the output-rails configs."""
        plan = self.plan
        chunks, samples = plan.stream_chunks, plan.stream_samples
        self.log(f"e. streaming output rails: {chunks} chunks to [DONE], {samples} streams each")
        names = ("direct", "none", "stream_first", "hold")
        by_name = self.stream_targets(names, chunks, 0.0, samples)
        first = {name: summary([t.first for t in ts]) for name, ts in by_name.items()}
        done = {name: summary([t.done for t in ts]) for name, ts in by_name.items()}
        per_chunk = {name: (done[name]["p50"] - done["direct"]["p50"]) / chunks for name in names}
        self.results.figures["stream_rails"] = {
            "chunks": chunks,
            "done": done,
            "first_token_unpaced": first,
            "per_chunk_s": {name: per_chunk[name] for name in names[1:]},
        }
        labels = {
            "stream_first": f"cfg stream_first (regex, {FIRST_CHUNK}/{FIRST_CONTEXT})",
            "hold": f"cfg hold (regex, {HOLD_CHUNK}/{HOLD_CONTEXT}, held)",
        }
        for name, label in labels.items():
            self.results.add(
                f"stream {chunks} chunks to [DONE], {label}, p50",
                ms(done["direct"]["p50"]),
                ms(done[name]["p50"]),
                signed(done[name]["p50"] - done["direct"]["p50"]),
            )
            self.results.add(
                f"per-chunk overhead, {label}",
                "",
                "",
                signed(per_chunk[name], us) + " / chunk",
                "≤ 50 µs / chunk" if name == "stream_first" else "",
                per_chunk[name] <= TARGET_CHUNK if name == "stream_first" else None,
            )

    def holdback(self) -> None:
        """Mean hold-back per window (railguard's histogram) against the windows' fill time
        on the same paced stream read straight from the upstream."""
        plan = self.plan
        chunks, count = plan.stream_chunks, plan.paced_streams
        spans = window_spans(stream_tokens(chunks), HOLD_CHUNK, HOLD_CONTEXT)
        self.log(
            f"e. hold-back: {chunks} chunks at {TOKEN_MS:g} ms/token, {len(spans)} windows, "
            f"{count} streams per target"
        )
        direct_request = self.direct(stream_body(chunks, token_ms=TOKEN_MS))
        proxied_request = self.proxied(stream_body(chunks, "hold", TOKEN_MS))
        with (
            RawClient(HOST, self.upstream_port) as up,
            RawClient(HOST, self.proxy_port) as rg,
            RawClient(HOST, self.proxy_port) as scrape,
        ):
            check_stream("hold (warm-up)", *_sent(rg, proxied_request), railguard=True)
            before = holdback_metric(scrape)
            direct: list[StreamTiming] = []
            held: list[StreamTiming] = []
            for _ in range(count):
                direct.append(up.stream(direct_request, every=True))
                held.append(rg.stream(proxied_request))
            after = holdback_metric(scrape)
        for timing in direct:
            check_stream("direct (paced)", timing.response.status, timing.response.body, False)
        for timing in held:
            check_stream("hold (paced)", timing.response.status, timing.response.body, True)
        releases = after[1] - before[1]
        if releases != count * len(spans):
            self.log(
                f"warning: {releases} hold-back observations for {count} streams of "
                f"{len(spans)} windows each"
            )
        holdback = (after[0] - before[0]) / releases if releases else math.nan
        fill = mean_fill(direct, spans)
        nominal = statistics.fmean(
            ((last if last is not None else stream_tokens(chunks) + 1) - first) * TOKEN_MS / 1e3
            for first, last in spans
        )
        first_direct = summary([t.first for t in direct])
        first_held = summary([t.first for t in held])
        self.results.figures["stream_holdback"] = {
            "token_ms": TOKEN_MS,
            "windows_per_stream": len(spans),
            "observations": releases,
            "holdback_mean_s": holdback,
            "fill_mean_s": fill,
            "fill_nominal_s": nominal,
            "first_token": {"direct": first_direct, "hold": first_held},
        }
        added = holdback - fill
        self.results.add(
            f"hold-back per window, cfg hold, {TOKEN_MS:g} ms/token (direct: fill time)",
            f"{ms(fill)}; nominal {nominal * 1e3:g}",
            ms(holdback),
            signed(added),
            "hold-back - fill ≤ 1 ms",
            added <= TARGET_HOLDBACK,
        )
        self.results.add(
            f"first token, cfg hold, {TOKEN_MS:g} ms/token, p50 (first window fills)",
            ms(first_direct["p50"]),
            ms(first_held["p50"]),
            signed(first_held["p50"] - first_direct["p50"]),
        )

    def leak(self) -> None:
        """`stream_first` with a check model slower than the upstream: how much of the
        answer reached the client before the block, against the bound (`chunk_size`
        tokens past the last window that passed)."""
        plan = self.plan
        chunks, count = plan.stream_chunks, plan.leak_streams
        tokens = stream_tokens(chunks)
        passed = passed_before(tokens, FIRST_CHUNK, FIRST_CONTEXT, LEAK_TRIGGER)
        self.log(
            f"e. stream_first leak: {chunks} chunks unpaced, check model at {JUDGE_MS:g} ms "
            f"blocking token {LEAK_TRIGGER}, {count} streams per target"
        )
        direct_request = self.direct(stream_body(chunks, trigger=LEAK_TRIGGER))
        proxied_request = self.proxied(stream_body(chunks, "slow_check", trigger=LEAK_TRIGGER))
        direct: list[int] = []
        leaked: list[int] = []
        direct_done: list[float] = []
        block_done: list[float] = []
        with RawClient(HOST, self.upstream_port) as up, RawClient(HOST, self.proxy_port) as rg:
            for _ in range(count):
                timing = up.stream(direct_request)
                check_stream("direct (leak)", timing.response.status, timing.response.body, False)
                direct.append(count_contents(timing.response.body, 0)[0])
                direct_done.append(timing.done)
                timing = rg.stream(proxied_request)
                body = timing.response.body
                if b'"content_blocked"' not in body or not body.endswith(DONE_TAIL):
                    raise BenchError(f"slow_check was not blocked: {body[-400:]!r}")
                leaked.append(count_contents(body, 0)[0])
                block_done.append(timing.done)
        worst = max(leaked)
        past = worst - passed
        self.results.figures["stream_first_leak"] = {
            "check_ms": JUDGE_MS,
            "chunk_size": FIRST_CHUNK,
            "context_size": FIRST_CONTEXT,
            "trigger_token": LEAK_TRIGGER,
            "passed_window_end": passed,
            "direct_tokens": direct,
            "tokens_before_block": leaked,
            "direct_done": summary(direct_done),
            "block_done": summary(block_done),
        }
        self.results.add(
            f"stream_first leak: tokens out before the block, check model at {JUDGE_MS:g} ms, "
            f"{tokens} tokens, token {LEAK_TRIGGER} blocked (direct: all)",
            f"{max(direct)}",
            f"{worst} max, {statistics.fmean(leaked):.1f} mean",
            f"{past:+d} past the last passed window (token {passed}); "
            f"{worst / max(direct):.0%} of direct",
            f"≤ {FIRST_CHUNK} past it (chunk_size)",
            past <= FIRST_CHUNK,
        )
        self.results.add(
            "stream_first leak: time to [DONE] (railguard: after the block), p50",
            ms(summary(direct_done)["p50"]),
            ms(summary(block_done)["p50"]),
            signed(summary(block_done)["p50"] - summary(direct_done)["p50"]),
        )

    def memory(self) -> None:
        """railguard's resident memory over many streams with events held back."""
        plan = self.plan
        chunks = plan.stream_chunks
        request = self.proxied(stream_body(chunks, "hold"))
        self.log(
            f"e. memory: {plan.memory_warmup} + {plan.memory_streams} sequential streams, then "
            f"{plan.concurrent_rounds} x {plan.concurrent_streams} concurrent (cfg hold)"
        )
        with RawClient(HOST, self.proxy_port) as rg:
            for _ in range(plan.memory_warmup):
                check_stream("hold (memory)", *_sent(rg, request), railguard=True)
            start = rss_bytes(self.proxy_pid)
            for _ in range(plan.memory_streams):
                check_stream("hold (memory)", *_sent(rg, request), railguard=True)
            end = rss_bytes(self.proxy_pid)
        concurrent = self.proxied_close(stream_body(chunks, "hold"))
        rounds = []
        for _ in range(plan.concurrent_rounds):
            concurrent_streams(
                HOST, self.proxy_port, concurrent, plan.concurrent_streams, "hold (concurrent)"
            )
            time.sleep(0.2)  # closed connections are cleaned up
            rounds.append(rss_bytes(self.proxy_pid))
        self.results.figures["stream_memory"] = {
            "sequential": {"streams": plan.memory_streams, "rss_before": start, "rss_after": end},
            "concurrent": {"streams": plan.concurrent_streams, "rss_per_round": rounds},
        }
        growth = end - start
        self.results.add(
            f"RSS over {plan.memory_streams:,} sequential streams, cfg hold",
            "",
            f"{mb(start)} → {mb(end)}",
            signed_mb(growth),
            "growth ≤ 5 MB",
            growth <= TARGET_RSS_GROWTH,
        )
        base = rounds[1] if len(rounds) > 2 else rounds[0]
        growth = rounds[-1] - base
        self.results.add(
            f"RSS after each round of {plan.concurrent_streams} concurrent streams, cfg hold",
            "",
            " → ".join(f"{r / 2**20:.1f}" for r in rounds) + " MB",
            signed_mb(growth) + f" (round {rounds.index(base) + 1} → {len(rounds)})",
            "growth ≤ 5 MB",
            growth <= TARGET_RSS_GROWTH,
        )

    def proxied_close(self, body: bytes) -> bytes:
        return build_request(HOST, self.proxy_port, CHAT_PATH, body, close=True)


def _sent(client: RawClient, request: bytes) -> tuple[int, bytes]:
    response = client.send(request)
    return response.status, response.body


def alternate_streams(
    targets: Sequence[tuple[str, RawClient, bytes, bool]], total: int, block: int
) -> list[list[StreamTiming]]:
    """Like `alternate`, for streams: each one timed to its first content and to its end,
    and checked to have completed (railguard: the last flag)."""
    samples: list[list[StreamTiming]] = [[] for _ in targets]
    order = list(range(len(targets)))
    done = 0
    while done < total:
        size = min(block, total - done)
        for index in order:
            name, client, request, railguard = targets[index]
            for _ in range(size):
                timing = client.stream(request)
                response = timing.response
                check_stream(name, response.status, response.body, railguard)
                samples[index].append(timing)
        order.reverse()
        done += size
    return samples


def engine_cost(message: str, iterations: int) -> dict[str, dict[str, float]]:
    """The `regex` config's rails run in-process: input stage on `message`, output stage on
    the upstream's answer, per request; and, for scale, the same patterns searched one by
    one with the standard library's backtracking `re`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import uvloop

    from rails.base import CheckContext, Stage
    from rails.config import RailsConfig
    from rails.guardrails import Guardrails

    guardrails = Guardrails(RailsConfig.parse_object(CONFIGS["regex"]))
    messages: list[dict[str, Any]] = [{"role": "user", "content": message}]
    ctx = CheckContext(
        user_text=message, bot_text=ANSWER, messages=messages, context={}, model="bench-model"
    )
    inputs = [re.compile(p, re.IGNORECASE) for p in INPUT_PATTERNS]
    outputs = [re.compile(p) for p in OUTPUT_PATTERNS]

    def bare(iterations: int) -> list[float]:
        clock = time.perf_counter
        samples = [0.0] * iterations
        for index in range(iterations):
            t0 = clock()
            for pattern in inputs:
                if pattern.search(message):
                    raise BenchError(f"the benchmark message matches {pattern.pattern!r}")
            for pattern in outputs:
                if pattern.search(ANSWER):
                    raise BenchError(f"the benchmark answer matches {pattern.pattern!r}")
            samples[index] = clock() - t0
        return samples

    async def engine(iterations: int) -> list[float]:
        clock = time.perf_counter
        samples = [0.0] * iterations
        for index in range(iterations):
            t0 = clock()
            first = await guardrails.run_stage(Stage.INPUT, message, ctx)
            second = await guardrails.run_stage(Stage.OUTPUT, ANSWER, ctx)
            samples[index] = clock() - t0
            if first.blocked_by or second.blocked_by:
                raise BenchError("the regex rails blocked the benchmark message")
        return samples

    with no_gc():
        warm_up = min(500, iterations)
        bare(warm_up)
        uvloop.run(engine(warm_up))
        bare_samples = bare(iterations)
        engine_samples = uvloop.run(engine(iterations))
    return {"bare_re": summary(bare_samples), "engine": summary(engine_samples)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="railguard against a direct upstream call")
    parser.add_argument("--quick", action="store_true", help="smaller samples, under 40 s")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="throughput load generator (auto: wrk if installed or installable)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()

    def session(procs: Processes, workdir: Path) -> int:
        bench = Bench(plan, args.generator, procs, workdir)
        bench.log(f"{'quick' if args.quick else 'full'} run; starting upstream and railguard")
        bench.start()
        run_phases(
            bench.watch,
            (
                ("a. latency", bench.latency),
                ("b. throughput", bench.throughput),
                ("c. regex", bench.regex),
                ("d. streaming", bench.streaming),
                ("e. stream rails", bench.stream_rails),
            ),
        )
        report(
            "railguard benchmark",
            bench.results,
            bench.watch,
            args.quick,
            started,
            args.json,
            [f"throughput generator: {bench.results.meta.get('generator', '-')}"],
        )
        return 0

    return run_session("bench", "railguard-bench-", session)


if __name__ == "__main__":
    sys.exit(main())
