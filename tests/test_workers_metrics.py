"""`railguard serve --workers 2` as a real process: `/metrics` from any worker counts the
requests of both (prometheus-client's multiprocess mode, in a folder railguard makes and
removes itself), and every request is one JSON line on stderr with no secret in it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import write_configs
from tests.fake_upstream import FakeUpstream
from tests.test_observability import SECRET_AUTH, SECRET_KEY, Scrape, free_port
from tests.test_startup import REPO, TIMEOUT, cli_env, serve_cmd

CONFIGS: dict[str, dict[str, Any]] = {
    "open": {"models": []},
    "regex": {
        "rails": {
            "input": {"flows": ["regex check input"]},
            "config": {"regex_detection": {"input": {"patterns": [r"\bsecret\b"]}}},
        }
    },
}
TOKEN = "metrics-token-0123456789"


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)


async def wait_up(proc: subprocess.Popen[bytes], url: str, log: Path, **headers: str) -> None:
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, read_log(log)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url, headers=headers) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer: {read_log(log)}")


async def fresh_post(base: str, body: dict[str, Any]) -> int:
    """One request on its own connection: SO_REUSEPORT spreads connections over workers."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
        http.post(
            f"{base}/v1/chat/completions", json=body, headers={"Authorization": SECRET_AUTH}
        ) as response,
    ):
        await response.read()
        return response.status


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


def start_workers(
    root: Path, port: int, metrics_port: int, upstream: str, temp: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`railguard serve --workers 2`, /metrics on its own port with a token from the env."""
    args = ("--workers", "2", "--upstream", upstream, "--metrics-port", str(metrics_port))
    with log.open("wb") as out:
        return subprocess.Popen(
            serve_cmd(root, port, *args),
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=REPO,
            env=cli_env(TMPDIR=str(temp), RAILGUARD_METRICS_TOKEN=TOKEN),
            start_new_session=True,
        )


def access_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in read_log(log).splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_two_workers_report_every_request(
    servers: list[subprocess.Popen[bytes]], fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    root = write_configs(tmp_path / "configs", CONFIGS)
    port, metrics_port = free_port(), free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    log = tmp_path / "server.log"
    proc = start_workers(root, port, metrics_port, fake_upstream.url, temp, log)
    servers.append(proc)
    base = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    await wait_up(proc, f"{base}/health", log)
    await wait_up(proc, metrics_url, log, Authorization=f"Bearer {TOKEN}")
    folders = list(temp.glob("railguard-metrics-*"))
    assert len(folders) == 1 and list(folders[0].glob("*.db")), "multiprocess files"

    passed = blocked = 0
    while passed + blocked < 200:
        for _ in range(10):
            if (passed + blocked) % 4 == 3:
                body = {
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": f"the secret is {SECRET_KEY}"}],
                    "guardrails": {"config_id": "regex"},
                }
                blocked += 1
            else:
                body = {
                    "model": "fake-model",
                    "messages": [{"role": "user", "content": "hello"}],
                    "guardrails": {"config_id": "open"},
                }
                passed += 1
            assert await fresh_post(base, body) == 200
        await asyncio.sleep(0.1)  # the log lines are written
        if len({line["pid"] for line in access_lines(log)}) == 2 and passed + blocked >= 40:
            break
    sent = passed + blocked
    lines = access_lines(log)
    assert len(lines) == sent
    pids = {line["pid"] for line in lines}
    assert len(pids) == 2, f"one worker answered all {sent} requests"

    # Any worker's /metrics, on fresh connections, reports both workers' requests.
    for _ in range(6):
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
            http.get(metrics_url, headers={"Authorization": f"Bearer {TOKEN}"}) as response,
        ):
            assert response.status == 200
            metrics = Scrape(await response.text())
        requests = "railguard_requests_total"
        assert metrics.value(requests, route="chat") == sent
        assert metrics.value(requests, config_id="open", outcome="passed") == passed
        assert metrics.value(requests, config_id="regex", outcome="blocked_input") == blocked
        assert metrics.value("railguard_rail_checks_total", verdict="block") == blocked
        assert metrics.value("railguard_request_duration_seconds_count", route="chat") == sent
        assert metrics.value("railguard_proxy_overhead_seconds_count", route="chat") == sent
        assert metrics.value("railguard_tokens_total", type="prompt") == 7 * passed
        assert metrics.value("railguard_in_flight_requests") == 0
        assert metrics.value("railguard_config_info", config_id="open") == 1
        assert len(metrics.labels("railguard_build_info")) == 1  # merged, not one per worker
    async with aiohttp.ClientSession() as http, http.get(metrics_url) as response:
        assert response.status == 401
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 404

    text = read_log(log)
    assert SECRET_KEY not in text and SECRET_AUTH.split()[1] not in text
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT) == 0
    assert not list(temp.glob("railguard-metrics-*")), "the metrics folder is removed at exit"
