"""What the Python API adds: `await rails.generate_async(...)` against the same call made
directly with aiohttp, in one process, one event loop and one run.

    .venv/bin/python bench/python_api.py            # about 30 s
    .venv/bin/python bench/python_api.py --quick    # about 10 s

What it starts (stopped on exit, Ctrl-C or error), with bench/run.py's helpers:
``bench/fake_llm.py`` (the fixed-answer upstream) pinned to the second CPU. This process,
which holds both the `LLMRails` and the direct aiohttp client, is pinned to the first.

What it measures, sequentially (concurrency 1) on keep-alive connections, direct and
API calls alternating in blocks so drift hits both alike, with this process's garbage
collector off while sampling (as run.py does for its load generator):
* direct: `session.post(url, data=body)` on one `aiohttp.ClientSession`, the body read
  and parsed with orjson: what an application calling its model itself would do;
* LLMRails, no rails: `await rails.generate_async(messages=...)` with a config that has
  a main model and no rails: the API's own cost (checking the arguments, a `Turn`, the
  empty stages, the body, the answer's shape). Target: ≤ 0.3 ms added at p50;
* context rows: the same with `options` (a GenerationResponse with the log) and with
  the regex rails of bench/run.py on input and output.
Below the table, "other processes' CPU" says how busy the rest of the machine was.
The exit status is 0 whatever the figures; 2 means the setup failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from fake_llm import ANSWER
from httpclient import BenchError, build_request, summary
from run import (
    BENCH,
    CHAT_PATH,
    HOST,
    INPUT_PATTERNS,
    OUTPUT_PATTERNS,
    Processes,
    free_port,
    ms,
    no_gc,
    run_session,
    signed,
    wait_ready,
)
from sysload import CpuWatch

if str(BENCH.parent) not in sys.path:  # the repository root: `rails` when not installed
    sys.path.insert(0, str(BENCH.parent))

from rails import LLMRails, RailsConfig

TARGET_ADDED_P50 = 0.3e-3
MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Hello! Can you suggest a short walk near the coast?"}]
LOG_OPTIONS = {"log": {"activated_rails": True, "llm_calls": True}}
REGEX_RAILS = {
    "input": {"flows": ["regex check input"]},
    "output": {"flows": ["regex check output"]},
    "config": {
        "regex_detection": {
            "input": {"patterns": INPUT_PATTERNS, "case_insensitive": True},
            "output": {"patterns": OUTPUT_PATTERNS},
        }
    },
}

Call = Callable[[], Awaitable[Any]]


def config(url: str, rails: dict[str, Any] | None = None) -> RailsConfig:
    main = {"type": "main", "engine": "openai", "model": MODEL, "parameters": {"base_url": url}}
    return RailsConfig.parse_object({"models": [main], "rails": rails or {}})


async def sample(calls: list[Call], total: int, block: int) -> list[list[float]]:
    """`total` timed calls of each, in alternating blocks."""
    samples: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    clock = time.perf_counter
    done = 0
    with no_gc():
        while done < total:
            size = min(block, total - done)
            for index in order:
                call, out = calls[index], samples[index]
                for _ in range(size):
                    t0 = clock()
                    await call()
                    out.append(clock() - t0)
            order.reverse()
            done += size
    return samples


async def measure(url: str, total: int, block: int, warmup: int) -> dict[str, dict[str, float]]:
    body = orjson.dumps({"model": MODEL, "messages": MESSAGES})
    chat_url = f"{url}/chat/completions"
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        LLMRails(config(url)) as plain,
        LLMRails(config(url, REGEX_RAILS)) as regex,
    ):

        async def direct() -> None:
            async with session.post(chat_url, data=body, headers=headers) as response:
                data = orjson.loads(await response.read())
            if data["choices"][0]["message"]["content"] != ANSWER:
                raise BenchError("the direct call got another answer")

        async def api() -> None:
            answer = await plain.generate_async(messages=MESSAGES)
            if answer != {"role": "assistant", "content": ANSWER}:
                raise BenchError(f"LLMRails answered {answer!r}")

        async def api_log() -> None:
            await plain.generate_async(messages=MESSAGES, options=LOG_OPTIONS)

        async def api_regex() -> None:
            answer = await regex.generate_async(messages=MESSAGES)
            if answer != {"role": "assistant", "content": ANSWER}:
                raise BenchError(f"the regex rails answered {answer!r}")

        calls = {"direct": direct, "api": api, "api_log": api_log, "api_regex": api_regex}
        for call in calls.values():
            for _ in range(warmup):
                await call()
        results = await sample(list(calls.values()), total, block)
    return {name: summary(values) for name, values in zip(calls, results, strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    total, block, warmup = (2000, 200, 300) if args.quick else (10000, 250, 1000)
    cpus = sorted(os.sched_getaffinity(0))
    api_cpu, upstream_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if api_cpu is not None:
        os.sched_setaffinity(0, {api_cpu})

    def session(procs: Processes, workdir: Path) -> int:
        watch = CpuWatch(lambda: [proc.pid for _, proc in procs.started])
        port = free_port()
        upstream = procs.start(
            "upstream",
            [sys.executable, str(BENCH / "fake_llm.py"), "--port", str(port)],
            upstream_cpu,
        )
        probe = orjson.dumps({"model": MODEL, "messages": MESSAGES})
        request = build_request(HOST, port, CHAT_PATH, probe)
        wait_ready(procs, "upstream", upstream, port, request)
        print(f"[bench] {total} calls of each", file=sys.stderr, flush=True)
        with watch.phase("sampling"):
            figures = asyncio.run(measure(f"http://{HOST}:{port}/v1", total, block, warmup))
        report(figures, total, api_cpu, upstream_cpu, watch)
        return 0

    return run_session("bench", "railguard-bench-api-", session)


def report(
    figures: dict[str, dict[str, float]],
    total: int,
    api_cpu: int | None,
    upstream_cpu: int | None,
    watch: CpuWatch,
) -> None:
    pins = "unpinned"
    if api_cpu is not None:
        pins = f"this process (LLMRails and the direct client) on CPU {api_cpu}, "
        pins += f"the upstream on CPU {upstream_cpu}"
    print(f"\nPython API, sequential calls, {total} of each; {pins}\n")
    direct = figures["direct"]
    rows = [("metric", "direct (aiohttp)", "LLMRails", "added", "target", "result")]
    labels = {
        "api": "generate_async, no rails",
        "api_log": "  with options (log: activated_rails, llm_calls)",
        "api_regex": "  with regex rails on input and output",
    }
    for name, label in labels.items():
        for p in ("p50", "p99", "mean"):
            added = figures[name][p] - direct[p]
            target = name == "api" and p == "p50"
            rows.append(
                (
                    f"{label}, {p}",
                    ms(direct[p]),
                    ms(figures[name][p]),
                    signed(added),
                    f"≤ {ms(TARGET_ADDED_P50)}" if target else "",
                    ("PASS" if added <= TARGET_ADDED_P50 else "FAIL") if target else "",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for phase in watch.phases:
        print(
            f"\nother processes' CPU (share of one CPU) while sampling: {phase.foreign:.0%}; "
            f"steal {phase.steal:.0%}"
        )
        if phase.foreign > 0.10 or phase.steal > 0.05:
            print("warning: the machine was busy: p99 figures are likely disturbed")


if __name__ == "__main__":
    sys.exit(main())
