"""Closed-loop throughput load generators: `wrk` when installed, else a Python fallback.

Both keep `connections` keep-alive connections busy for `duration` seconds, each sending
the next POST as soon as the previous answer arrived, and report requests/s and latency.

* `wrk` (Debian package `wrk`) is driven with a Lua script that sets the POST body and
  prints a one-line JSON summary from its `done()` hook.
* The fallback runs several processes (on the CPUs it is given), each with a uvloop event
  loop driving its share of the connections over raw asyncio streams.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
from httpclient import BenchError, percentile

_WRK_MARK = "BENCH_JSON "
_WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{mark}{\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, "
    .. "\\"status_errors\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, \\"mean_us\\": %f}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass(slots=True)
class LoadResult:
    rps: float
    requests: int
    errors: int
    p50: float  # seconds
    p99: float
    mean: float


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ensure_wrk() -> str | None:
    """`wrk` if installed; else one quiet attempt with apt-get (as root), else None."""
    found = wrk_path()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return wrk_path()


def run_wrk(
    wrk: str,
    url: str,
    body: bytes,
    connections: int,
    duration: float,
    cpus: Sequence[int] | None,
    threads: int = 1,
) -> LoadResult:
    if b"]==]" in body:
        raise BenchError("request body cannot be quoted for wrk's Lua script")
    script = _WRK_LUA.replace("{mark}", _WRK_MARK).replace("{body}", body.decode())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        lua = handle.name
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        lua,
        url,
    ]
    if cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    finally:
        Path(lua).unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_WRK_MARK)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    data = orjson.loads(line[len(_WRK_MARK) :])
    requests = int(data["requests"])
    return LoadResult(
        rps=requests / (data["duration_us"] / 1e6),
        requests=requests,
        errors=int(data["errors"]) + int(data["status_errors"]),
        p50=data["p50_us"] / 1e6,
        p99=data["p99_us"] / 1e6,
        mean=data["mean_us"] / 1e6,
    )


# --- the Python fallback ---------------------------------------------------------------


async def _connection(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> int:
    """One closed-loop connection; returns its error count."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    clock = time.perf_counter
    try:
        while True:
            t0 = clock()
            if t0 >= deadline:
                return errors
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise BenchError(f"fallback load generator needs Content-Length: {head!r}")
            stop = lower.find(b"\r\n", at + 2)
            await reader.readexactly(int(lower[at + 17 : stop]))
            latencies.append(clock() - t0)
            if head[9:12] != b"200":
                errors += 1
    finally:
        writer.close()


async def _worker_main(
    host: str, port: int, request: bytes, connections: int, start: float, duration: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    await asyncio.sleep(max(0.0, start - time.time()))
    deadline = time.perf_counter() + duration
    t0 = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(connections))
    )
    return latencies, sum(errors), time.perf_counter() - t0


def _worker(
    out: Connection,
    cpus: Sequence[int] | None,
    host: str,
    port: int,
    request: bytes,
    connections: int,
    start: float,
    duration: float,
) -> None:
    import uvloop

    if cpus is not None:
        os.sched_setaffinity(0, set(cpus))
    try:
        result = uvloop.run(_worker_main(host, port, request, connections, start, duration))
        out.send(result)
    except Exception as exc:
        out.send(exc)
    finally:
        out.close()


def run_python(
    host: str,
    port: int,
    request: bytes,
    connections: int,
    duration: float,
    cpus: Sequence[int] | None,
    processes: int = 4,
) -> LoadResult:
    """Closed-loop load from `processes` processes (each a uvloop with raw streams)."""
    context = multiprocessing.get_context("spawn")
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    start = time.time() + 1.0  # spawned interpreters need a moment to start
    pipes: list[Connection] = []
    workers = []
    for share in shares:
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(
            target=_worker,
            args=(sender, cpus, host, port, request, share, start, duration),
            daemon=True,
        )
        worker.start()
        sender.close()
        pipes.append(receiver)
        workers.append(worker)
    latencies: list[float] = []
    errors = 0
    elapsed = 0.0
    try:
        for receiver in pipes:
            if not receiver.poll(duration + 30):
                raise BenchError("the Python load generator did not finish")
            result = receiver.recv()
            if isinstance(result, Exception):
                raise BenchError(f"the Python load generator failed: {result!r}")
            part, part_errors, part_elapsed = result
            latencies.extend(part)
            errors += part_errors
            elapsed = max(elapsed, part_elapsed)
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.terminate()
    return LoadResult(
        rps=len(latencies) / elapsed if elapsed else 0.0,
        requests=len(latencies),
        errors=errors,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        mean=sum(latencies) / len(latencies) if latencies else 0.0,
    )
