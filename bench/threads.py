"""What a conversation thread costs: a thread turn against the same conversation sent
whole, through the same railguard, for the memory store and for Redis on loopback.

    .venv/bin/python bench/threads.py            # about 1 minute
    .venv/bin/python bench/threads.py --quick    # about 20 s

What it starts (stopped on exit, Ctrl-C or error), with bench/run.py's helpers:
* ``bench/fake_llm.py`` (the fixed-answer upstream) on the second CPU;
* ``redis-server`` (Debian's package; installed with apt-get when missing and root) on the
  second CPU, on a free loopback port, no persistence;
* two railguards pinned to the first CPU, one with ``--thread-store memory`` and one with
  ``--thread-store redis://...``, both with one config without rails; one of them is
  measured at a time.

What it measures, at concurrency 1 on keep-alive raw sockets, in alternating blocks so
drift hits all alike:
* direct: the upstream sent the whole conversation (``--history`` earlier messages plus
  the new one);
* stateless: the same body through railguard, no thread;
* thread: only the new message with ``guardrails.thread_id``; the thread holds the same
  ``--history`` messages (``--thread-max-messages`` keeps it there), so the upstream gets
  the same conversation as in the stateless case. A thread turn reads the thread before
  the rails and appends the turn after the answer.
"added" is thread p50 minus stateless p50: the cost of keeping the conversation on the
server. Targets: ≤ 0.5 ms with the memory store, ≤ 1.5 ms with Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from fake_llm import ANSWER
from httpclient import BenchError, RawClient, build_request, summary
from run import (
    BENCH,
    CHAT_PATH,
    HOST,
    Processes,
    alternate,
    free_port,
    ms,
    run_session,
    signed,
    wait_ready,
    warm,
)

TARGETS = {"memory": 0.5e-3, "redis": 1.5e-3}
THREAD_ID = "bench-thread-000000000001"
StoreRow = tuple[
    str, dict[str, float], dict[str, float], dict[str, float]
]  # direct, stateless, thread
QUESTION = "And what about the second town on the list: is it worth a night, or just a day trip?"


def ensure_redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
        found = shutil.which("redis-server")
    if found is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    return found


def history(messages: int) -> list[dict[str, Any]]:
    """Earlier turns as the thread holds them: the question, the upstream's fixed answer."""
    out: list[dict[str, Any]] = []
    for turn in range(messages // 2):
        out.append({"role": "user", "content": f"Turn {turn}: {QUESTION}"})
        out.append({"role": "assistant", "content": ANSWER})
    return out


def body(messages: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"model": "bench-model", "messages": messages, "max_tokens": 64, **extra})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--history", type=int, default=20, help="messages already in the thread")
    args = parser.parse_args(argv)
    samples, block, warmup = (1500, 250, 300) if args.quick else (6000, 250, 1000)
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})

    def session(procs: Processes, workdir: Path) -> int:
        rows: list[StoreRow] = []
        redis_binary = ensure_redis_server()
        (workdir / "configs" / "none").mkdir(parents=True)
        (workdir / "configs" / "none" / "config.yml").write_text(yaml.safe_dump({"models": []}))
        up_port = free_port()
        upstream = procs.start(
            "upstream",
            [sys.executable, str(BENCH / "fake_llm.py"), "--port", str(up_port)],
            load_cpu,
        )
        probe = body([{"role": "user", "content": QUESTION}])
        wait_ready(
            procs, "upstream", upstream, up_port, build_request(HOST, up_port, CHAT_PATH, probe)
        )
        redis_port = free_port()
        redis = procs.start(
            "redis",
            [
                *(redis_binary, "--port", str(redis_port), "--bind", HOST),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            load_cpu,
        )
        stores = {"memory": "memory", "redis": f"redis://{HOST}:{redis_port}/0"}
        ports = {}
        for name, store in stores.items():
            port = ports[name] = free_port()
            proc = procs.start(
                f"railguard-{name}",
                [
                    *(sys.executable, "-m", "proxy.cli", "serve"),
                    *("--config", str(workdir / "configs"), "--port", str(port)),
                    *("--upstream", f"http://{HOST}:{up_port}/v1"),
                    *("--thread-store", store, "--thread-max-messages", str(args.history)),
                    *("--log-level", "WARNING"),
                ],
                proxy_cpu,
            )
            health = f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
            wait_ready(procs, f"railguard-{name}", proc, port, health)
        if redis.poll() is not None:
            raise BenchError(f"redis-server exited:\n{procs.log_tail('redis')}")

        new = {"role": "user", "content": f"Turn {args.history // 2}: {QUESTION}"}
        whole = body([*history(args.history), new])
        turn = body([new], guardrails={"thread_id": THREAD_ID})
        check = ANSWER.encode()
        for name, port in ports.items():
            print(f"[bench] {name}: {samples} requests each", file=sys.stderr, flush=True)
            with (
                RawClient(HOST, up_port) as up,
                RawClient(HOST, port) as rg,
                RawClient(HOST, port) as rg_thread,
            ):
                thread_request = build_request(HOST, port, CHAT_PATH, turn)
                # fill the thread to its cap, and check the upstream gets it all
                for _ in range(args.history // 2 + 1):
                    rg_thread.send(thread_request)
                targets = [
                    (up, build_request(HOST, up_port, CHAT_PATH, whole), check),
                    (rg, build_request(HOST, port, CHAT_PATH, whole), check),
                    (rg_thread, thread_request, check),
                ]
                warm(targets, warmup)
                direct, stateless, thread = alternate(targets, samples, block)
            rows.append((name, summary(direct), summary(stateless), summary(thread)))
        report(rows, args.history, samples, proxy_cpu, load_cpu)
        return 0

    return run_session("bench", "railguard-bench-threads-", session)


def report(
    rows: list[StoreRow],
    messages: int,
    samples: int,
    proxy_cpu: int | None,
    load_cpu: int | None,
) -> None:
    pins = "unpinned"
    if proxy_cpu is not None:
        pins = f"railguard on CPU {proxy_cpu}, the rest on CPU {load_cpu}"
    print(f"\nthread turns, {messages} messages of history, {samples} requests each; {pins}\n")
    header = ("store", "p", "direct", "stateless", "thread turn", "added", "target", "result")
    lines = [header]
    for name, direct, stateless, thread in rows:
        for p in ("p50", "p99"):
            added = thread[p] - stateless[p]
            target = TARGETS[name] if p == "p50" else None
            lines.append(
                (
                    name,
                    p,
                    ms(direct[p]),
                    ms(stateless[p]),
                    ms(thread[p]),
                    signed(added),
                    f"added ≤ {ms(target)}" if target else "",
                    ("PASS" if added <= target else "FAIL") if target else "",
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
