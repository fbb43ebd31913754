"""What `--workers 2` buys on this machine, and what metrics and the access log cost.

    .venv/bin/python bench/workers.py            # about 2 minutes
    .venv/bin/python bench/workers.py --quick    # about 50 s

What it starts (stopped on exit, Ctrl-C or error), with bench/run.py's helpers:
* ``bench/fake_llm.py``, the fixed-answer upstream;
* railguards on one config without rails (``none``), one at a time, as the row says.

What it measures, throughput at concurrency 32 with ``wrk`` (or the Python generator),
small chat bodies, rounds of each pair alternating, the median round reported:

1. ``--workers 1`` against ``--workers 2``. Nothing is pinned here (two workers need both
   CPUs), so railguard shares the machine's two CPUs with the upstream and ``wrk``: the
   ratio is what a second worker adds on this 2-core box, not what it adds on a machine
   with spare cores.
2. metrics on against ``--no-metrics`` (which makes every metric a no-op), one worker
   pinned to the first CPU, the upstream and ``wrk`` on the second, as in bench/run.py.
   Target: metrics cost at most 5 % of throughput, judged on railguard's CPU time per
   request in the same rounds (from ``/proc/PID/stat``): on a saturated core that is what
   bounds throughput, and unlike requests per second it doesn't move when other work on
   this shared VM takes the CPU for a while (rounds' throughput varies by more than 5 %).
3. the same with two workers (unpinned), where values go through prometheus-client's
   multiprocess files.
4. the access log (``--log-level INFO``: one JSON line per request, to a file) against
   none (``--log-level WARNING``), one worker pinned.

Also the added latency at concurrency 1 (p50), metrics on and off, one worker pinned,
sequential requests on one keep-alive connection, alternating in blocks.

The exit status is 0 whatever the figures (this reports, it is not a test); 2 means the
setup failed; 130 means interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import loadgen
import orjson
from fake_llm import ANSWER
from httpclient import BenchError, RawClient, build_request, summary
from run import (
    BENCH,
    CHAT_PATH,
    HOST,
    SMALL_BODY,
    Processes,
    alternate,
    free_port,
    ms,
    run_phases,
    run_session,
    signed,
    wait_ready,
    warm,
    write_configs,
)
from sysload import CpuWatch

TARGET_METRICS_COST = 0.05


class Bench:
    def __init__(self, workdir: Path, procs: Processes, duration: float, rounds: int) -> None:
        self.workdir = workdir
        self.procs = procs
        self.duration = duration
        self.rounds = rounds
        self.configs = workdir / "configs"
        write_configs(self.configs)
        cpus = sorted(os.sched_getaffinity(0))
        self.all_cpus = cpus
        self.pinned = len(cpus) >= 2
        self.proxy_cpu = cpus[0] if self.pinned else None
        self.load_cpu = cpus[1] if self.pinned else None
        self.upstream_port = free_port()
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.figures: dict[str, dict[str, list[float]]] = {}
        self.pids: dict[int, int] = {}  # railguard's port -> its process
        self.cpu_per_request: dict[str, float] = {}  # the last compare()'s, per target
        self.wrk = loadgen.ensure_wrk()
        self.generator = "wrk (1 thread)" if self.wrk else "Python (4 processes)"
        self.watch = CpuWatch(lambda: [proc.pid for _, proc in procs.started])

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def start_upstream(self, cpu: int | None) -> None:
        command = [sys.executable, str(BENCH / "fake_llm.py"), "--port", str(self.upstream_port)]
        proc = self.procs.start("upstream", command, cpu)
        probe = build_request(HOST, self.upstream_port, CHAT_PATH, SMALL_BODY)
        wait_ready(self.procs, "upstream", proc, self.upstream_port, probe)

    def start_railguard(self, name: str, cpu: int | None, *flags: str) -> int:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--config",
            str(self.configs),
            "--upstream",
            f"http://{HOST}:{self.upstream_port}/v1",
            "--port",
            str(port),
            "--default-config-id",
            "none",
            *flags,
        ]
        if "--log-level" not in flags:
            command += ["--log-level", "WARNING"]
        proc = self.procs.start(name, command, cpu)
        self.pids[port] = proc.pid
        health = f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        wait_ready(self.procs, name, proc, port, health)
        with RawClient(HOST, port) as client:
            got = client.send(build_request(HOST, port, CHAT_PATH, SMALL_BODY))
            if got.status != 200 or ANSWER.encode() not in got.body:
                raise BenchError(f"{name} answered {got.status}: {got.body[:300]!r}")
        return port

    def stop_railguards(self) -> None:
        """Stop every railguard started so far, keep the upstream."""
        keep = []
        for name, proc in self.procs.started:
            if name == "upstream":
                keep.append((name, proc))
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
                proc.wait(5)
        self.procs.started[:] = keep

    def load(self, port: int, duration: float, cpus: Sequence[int] | None) -> loadgen.LoadResult:
        if self.wrk:
            url = f"http://{HOST}:{port}{CHAT_PATH}"
            return loadgen.run_wrk(self.wrk, url, SMALL_BODY, 32, duration, cpus)
        request = build_request(HOST, port, CHAT_PATH, SMALL_BODY)
        return loadgen.run_python(HOST, port, request, 32, duration, cpus)

    def compare(
        self, label: str, ports: dict[str, int], cpus: Sequence[int] | None
    ) -> dict[str, loadgen.LoadResult]:
        """Alternating rounds per target; the median round of each. Also the railguard
        process's CPU time per request in each round (`self.cpu_per_request[key]`, the median),
        which a CPU taken away by other work does not change as it changes throughput."""
        for port in ports.values():
            self.load(port, 1.0, cpus)
        rounds: dict[str, list[loadgen.LoadResult]] = {key: [] for key in ports}
        cpu: dict[str, list[float]] = {key: [] for key in ports}
        for index in range(self.rounds):
            keys = list(ports) if index % 2 == 0 else list(reversed(ports))
            for key in keys:
                pid = self.pids[ports[key]]
                before = cpu_seconds(pid)
                result = self.load(ports[key], self.duration, cpus)
                rounds[key].append(result)
                if result.requests:
                    cpu[key].append((cpu_seconds(pid) - before) / result.requests)
        self.cpu_per_request = {
            key: sorted(values)[len(values) // 2] for key, values in cpu.items() if values
        }
        for key, results in rounds.items():
            errors = sum(r.errors for r in results)
            if errors:
                self.log(f"warning: {errors} errors or non-2xx answers ({key})")
        self.figures[label] = {key: [r.rps for r in results] for key, results in rounds.items()}
        return {
            key: sorted(results, key=lambda r: r.rps)[len(results) // 2]
            for key, results in rounds.items()
        }

    def add(self, metric: str, a: str, b: str, ratio: str, verdict: str = "") -> None:
        self.rows.append((metric, a, b, ratio, verdict))

    # 1. workers

    def workers(self) -> None:
        self.log("1. --workers 1 against --workers 2 (unpinned)")
        one = self.start_railguard("workers-1", None)
        two = self.start_railguard("workers-2", None, "--workers", "2")
        got = self.compare("workers", {"1 worker": one, "2 workers": two}, None)
        a, b = got["1 worker"], got["2 workers"]
        self.add(
            "throughput c=32, --workers 1 → 2 (unpinned)",
            f"{a.rps:,.0f} req/s",
            f"{b.rps:,.0f} req/s",
            f"x{b.rps / a.rps:.2f}",
        )
        self.stop_railguards()

    # 2. and 3. metrics on and off

    def metrics(self) -> None:
        self.log("2. metrics on against --no-metrics, one worker pinned")
        on = self.start_railguard("metrics-on", self.proxy_cpu)
        off = self.start_railguard("metrics-off", self.proxy_cpu, "--no-metrics")
        load = [self.load_cpu] if self.load_cpu is not None else None
        got = self.compare("metrics, 1 worker", {"metrics off": off, "metrics on": on}, load)
        self.cost_row("metrics on vs off, 1 worker (pinned)", got["metrics off"], got["metrics on"])
        self.cpu_row("1 worker")
        # Throughput on this shared 2-core VM moves by more than 5 % between rounds, so the
        # cost is also computed from the time recording takes, timed in-process.
        per_request = recording_cost(self.configs)
        rps = got["metrics off"].rps
        self.add(
            "metrics recording per request (in-process) / request time at that rate",
            "",
            f"{per_request * 1e6:.1f} µs",
            f"{per_request * rps:.1%} of {1e6 / rps:.0f} µs" if rps else "-",
            "PASS" if per_request * rps <= TARGET_METRICS_COST else "FAIL",
        )
        self.latency_c1(off, on)
        self.stop_railguards()
        self.log("3. metrics on against --no-metrics, two workers (multiprocess mode)")
        on = self.start_railguard("metrics-on-2", None, "--workers", "2")
        off = self.start_railguard("metrics-off-2", None, "--workers", "2", "--no-metrics")
        got = self.compare("metrics, 2 workers", {"metrics off": off, "metrics on": on}, None)
        self.cost_row("metrics on vs off, 2 workers", got["metrics off"], got["metrics on"])
        self.cpu_row("2 workers (multiprocess files)")
        self.stop_railguards()

    def cpu_row(self, workers: str) -> None:
        """The target: railguard's CPU time per request, which is what bounds its throughput
        on saturated cores, and which other work on the VM does not move as it moves rps."""
        cpu_off, cpu_on = self.cpu_per_request["metrics off"], self.cpu_per_request["metrics on"]
        cost = cpu_on / cpu_off - 1 if cpu_off else 0.0
        self.add(
            f"railguard CPU time per request at c=32, metrics off → on, {workers}",
            f"{cpu_off * 1e6:.1f} µs",
            f"{cpu_on * 1e6:.1f} µs",
            f"{cost:+.1%} (≤ 5 % cost)",
            "PASS" if cost <= TARGET_METRICS_COST else "FAIL",
        )

    def cost_row(self, metric: str, off: loadgen.LoadResult, on: loadgen.LoadResult) -> None:
        """Throughput with and without: context, since rounds on this VM vary by more than
        the 5 % measured (the target row is the CPU time per request)."""
        cost = 1 - on.rps / off.rps if off.rps else 0.0
        self.add(
            f"throughput c=32, {metric}",
            f"{off.rps:,.0f} req/s",
            f"{on.rps:,.0f} req/s",
            f"{-cost:+.1%}",
        )

    def latency_c1(self, off_port: int, on_port: int) -> None:
        samples, block = (4000, 250) if self.rounds > 1 else (1500, 250)
        check = ANSWER.encode()
        with RawClient(HOST, off_port) as off, RawClient(HOST, on_port) as on:
            targets = [
                (off, build_request(HOST, off_port, CHAT_PATH, SMALL_BODY), check),
                (on, build_request(HOST, on_port, CHAT_PATH, SMALL_BODY), check),
            ]
            warm(targets, 300)
            plain, measured = alternate(targets, samples, block)
        a, b = summary(plain), summary(measured)
        self.add(
            "latency c=1, p50, metrics off → on",
            ms(a["p50"]),
            ms(b["p50"]),
            signed(b["p50"] - a["p50"]),
        )

    # 4. access log

    def access_log(self) -> None:
        self.log("4. access log (INFO, to a file) against none (WARNING), one worker pinned")
        on = self.start_railguard("log-on", self.proxy_cpu, "--log-level", "INFO")
        off = self.start_railguard("log-off", self.proxy_cpu)
        load = [self.load_cpu] if self.load_cpu is not None else None
        got = self.compare("access log", {"no log": off, "access log": on}, load)
        off_r, on_r = got["no log"], got["access log"]
        cost = 1 - on_r.rps / off_r.rps if off_r.rps else 0.0
        self.add(
            "throughput c=32, access log on vs off, 1 worker (pinned)",
            f"{off_r.rps:,.0f} req/s",
            f"{on_r.rps:,.0f} req/s",
            f"{-cost:+.1%}",
        )
        self.stop_railguards()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and its children (`--workers` forks
    them), from `/proc/PID/stat` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(child)) for child in children)


def recording_cost(configs: Path, iterations: int = 20000) -> float:
    """Seconds one plain chat request spends recording metrics, in this process: what the
    handler does for them (in-flight, the request's counters and histograms, the upstream
    duration), with the handler's own code, against nothing."""
    sys.path.insert(0, str(BENCH.parent))
    from metrics import IN_FLIGHT, UPSTREAM_DURATION, Children, ModelLabels
    from proxy.access import Trace
    from proxy.chat import ChatCompletions
    from proxy.configs import ConfigStore
    from proxy.streaming import StreamLimits
    from rails.config import load_config_root
    from upstream import Router, UpstreamPool

    chat = ChatCompletions(
        ConfigStore(load_config_root(configs), "none"),
        Router(),
        UpstreamPool(),
        ModelLabels(),
        StreamLimits(),
    )
    upstream = Children(UPSTREAM_DURATION)
    labels = {"config_id": "none", "model": "bench-model", "stream": "false", "outcome": "passed"}
    trace = Trace("0" * 32, time.perf_counter())
    trace.tokens = (12, 40)
    started = time.perf_counter()
    for _ in range(iterations):
        IN_FLIGHT.inc()
        upstream("default", "bench-model", "false").observe(0.0002)
        IN_FLIGHT.dec()
        chat._record(trace, labels, 200, time.perf_counter())
    return (time.perf_counter() - started) / iterations


def print_rows(rows: Sequence[tuple[str, str, str, str, str]]) -> None:
    header = ("metric", "without", "with", "change", "result")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]
    for index, row in enumerate((header, *rows)):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds, about 50 s")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    duration, rounds = (1.0, 2) if args.quick else (3.0, 6)
    started = time.monotonic()

    def session(procs: Processes, workdir: Path) -> int:
        bench = Bench(workdir, procs, duration, rounds)
        bench.start_upstream(None)
        run_phases(
            bench.watch,
            (
                ("1. workers", bench.workers),
                ("2-3. metrics", bench.metrics),
                ("4. access log", bench.access_log),
            ),
        )
        seconds = round(time.monotonic() - started, 1)
        print()
        print(
            f"railguard workers/metrics benchmark ({'quick' if args.quick else 'full'}, "
            f"{seconds} s); {len(bench.all_cpus)} CPUs; generator {bench.generator}; "
            f"{rounds} round(s) of {duration:g} s per target, median"
        )
        print()
        print_rows(bench.rows)
        phases_load = ", ".join(f"{p.phase} {p.foreign:.0%}" for p in bench.watch.phases)
        print(f"\nother processes' CPU (share of one CPU) per phase: {phases_load}")
        spread = {
            key: {k: f"{min(v):,.0f}-{max(v):,.0f}" for k, v in value.items()}
            for key, value in bench.figures.items()
        }
        print(f"round spread (req/s): {spread}")
        if args.json is not None:
            args.json.write_bytes(
                orjson.dumps(
                    {"rows": bench.rows, "figures": bench.figures, "seconds": seconds},
                    option=orjson.OPT_INDENT_2,
                )
            )
        return 0

    return run_session("bench", "railguard-bench-workers-", session)


if __name__ == "__main__":
    sys.exit(main())
