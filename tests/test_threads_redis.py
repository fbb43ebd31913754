"""The Redis thread store when it matters: two railguard processes sharing one Redis,
Redis killed and restarted, Redis stalled, and a Redis password kept out of logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from proxy.threads.redis_store import thread_keys
from tests.conftest import StartRailguard, write_configs
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parent.parent
THREAD = "thread-redis-0123456789"
CONFIGS: dict[str, dict[str, Any]] = {"open": {"models": []}}


def body(content: str, thread_id: str | None = THREAD) -> dict[str, Any]:
    guardrails: dict[str, Any] = {"config_id": "open"}
    if thread_id:
        guardrails["thread_id"] = thread_id
    return {
        "model": "m1",
        "messages": [{"role": "user", "content": content}],
        "guardrails": guardrails,
    }


async def post(
    http: aiohttp.ClientSession, base: str, content: str, thread_id: str | None = THREAD
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/v1/chat/completions", json=body(content, thread_id)) as resp:
        return resp.status, await resp.json()


def seen(fake: FakeUpstream) -> list[str]:
    return [m["content"] for m in fake.main_calls[-1].body["messages"]]


async def metric(http: aiohttp.ClientSession, base: str, prefix: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    ]
    return sum(values)


# --- two processes ---------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def serve(
    processes: list[subprocess.Popen[bytes]], root: Path, log: Path, *args: str
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILGUARD_")}
    env["PYTHONPATH"] = str(REPO)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "proxy.cli", "serve"),
                *("--config", str(root), "--port", str(port), *args),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    processes.append(proc)
    return f"http://127.0.0.1:{port}", proc


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_healthy(http: aiohttp.ClientSession, base: str, proc: Any, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, read_log(log)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{base} not healthy: {read_log(log)}")


async def test_two_processes_share_one_redis(
    processes: list[subprocess.Popen[bytes]],
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    root = write_configs(tmp_path / "configs", CONFIGS)
    args = ("--upstream", fake_upstream.url, "--thread-store", redis_server.url)
    a, proc_a = serve(processes, root, tmp_path / "a.log", *args)
    b, proc_b = serve(processes, root, tmp_path / "b.log", *args)
    await wait_healthy(http, a, proc_a, tmp_path / "a.log")
    await wait_healthy(http, b, proc_b, tmp_path / "b.log")
    assert (await post(http, a, "first, on a"))[0] == 200
    assert (await post(http, b, "second, on b"))[0] == 200
    assert seen(fake_upstream) == ["first, on a", "echo: first, on a", "second, on b"]
    # both at once, one on each process: both turns land
    fake_upstream.next(delay=0.2)
    fake_upstream.next(delay=0.2)
    results = await asyncio.gather(post(http, a, "third, on a"), post(http, b, "third, on b"))
    assert [status for status, _ in results] == [200, 200]
    assert (await post(http, a, "last"))[0] == 200
    history = seen(fake_upstream)
    assert len(history) == 9
    assert {history[4], history[6]} == {"third, on a", "third, on b"}
    assert history[-1] == "last"
    log = read_log(tmp_path / "a.log")
    assert f"conversation threads in redis at redis://127.0.0.1:{redis_server.port}/0" in log


async def stored(redis_server: RedisServer, thread_id: str = THREAD) -> list[str]:
    raw = Redis.from_url(redis_server.url)
    try:
        return [
            orjson.loads(m)["content"] for m in await raw.lrange(thread_keys(thread_id)[1], 0, -1)
        ]
    finally:
        await raw.aclose()


async def test_a_turn_answered_503_is_stored_once_when_retried_elsewhere(
    processes: list[subprocess.Popen[bytes]],
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Redis stalls while the turn is saved: the client gets 503, and the append that
    waited in Redis's input does not land when Redis resumes (it was past its deadline).
    The retry, on another process, is stored once; the same text in a later turn is a
    turn of its own."""
    root = write_configs(tmp_path / "configs", CONFIGS)
    args = ("--upstream", fake_upstream.url, "--thread-store", redis_server.url)
    a, proc_a = serve(processes, root, tmp_path / "a.log", *args, "--thread-store-timeout", "0.5")
    b, proc_b = serve(processes, root, tmp_path / "b.log", *args)
    await wait_healthy(http, a, proc_a, tmp_path / "a.log")
    await wait_healthy(http, b, proc_b, tmp_path / "b.log")
    assert (await post(http, a, "one"))[0] == 200
    fake_upstream.next(delay=0.3)
    pending = asyncio.ensure_future(post(http, a, "two"))
    await asyncio.sleep(0.15)  # loaded; the model is answering
    redis_server.pause()
    try:
        status, data = await pending
    finally:
        redis_server.resume()
    assert status == 503, data
    assert data["error"]["code"] == "thread_store_unavailable"
    raw = Redis.from_url(redis_server.url)
    try:
        await raw.ping()  # Redis has read what waited in its input since it stopped
        # two loads and two appends at least: the stalled append did run, and refused
        assert (await raw.info("commandstats"))["cmdstat_evalsha"]["calls"] >= 4
    finally:
        await raw.aclose()
    await asyncio.sleep(0.1)
    assert await stored(redis_server) == ["one", "echo: one"]

    status, data = await post(http, b, "two")  # the retry
    assert status == 200 and data["choices"][0]["message"]["content"] == "echo: two"
    assert seen(fake_upstream) == ["one", "echo: one", "two"]
    assert await stored(redis_server) == ["one", "echo: one", "two", "echo: two"]
    # the same turn sent to both processes at once (a double submit): stored once
    fake_upstream.next(delay=0.2)
    fake_upstream.next(delay=0.2)
    results = await asyncio.gather(post(http, a, "three"), post(http, b, "three"))
    assert [status for status, _ in results] == [200, 200]
    assert await stored(redis_server) == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "three",
        "echo: three",
    ]
    # the same text again, after its answer: a new turn
    assert (await post(http, b, "three"))[0] == 200
    assert seen(fake_upstream)[-3:] == ["three", "echo: three", "three"]
    assert (await stored(redis_server))[-4:] == ["three", "echo: three", "three", "echo: three"]


# --- failures --------------------------------------------------------------------------


async def test_redis_killed_and_restarted(
    start_railguard: StartRailguard,
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=redis_server.url)
    assert (await post(http, base, "one"))[0] == 200
    assert (await post(http, base, "two"))[0] == 200
    redis_server.kill()
    errors = "railguard_thread_store_errors_total"
    before = await metric(http, base, errors)
    started = time.monotonic()
    status, data = await post(http, base, "three")
    assert time.monotonic() - started < 1.5
    assert status == 503
    assert data["error"]["code"] == "thread_store_unavailable"
    assert data["error"]["type"] == "server_error"
    assert data["error"]["message"].startswith("The conversation thread store can't be reached")
    assert "without `thread_id`" in data["error"]["message"]
    assert await metric(http, base, errors) == before + 1
    calls = len(fake_upstream.main_calls)
    assert seen(fake_upstream) == ["one", "echo: one", "two"]  # "three" never reached it
    # requests without a thread don't need Redis
    status, data = await post(http, base, "stateless", thread_id=None)
    assert status == 200 and data["choices"][0]["message"]["content"] == "echo: stateless"
    assert len(fake_upstream.main_calls) == calls + 1

    redis_server.restart()
    status, _ = await post(http, base, "three")
    assert status == 200
    assert seen(fake_upstream) == ["one", "echo: one", "two", "echo: two", "three"]


async def test_a_stalled_redis_answers_503_within_the_timeout(
    start_railguard: StartRailguard,
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    base = await start_railguard(CONFIGS, thread_store=redis_server.url, thread_store_timeout=0.5)
    assert (await post(http, base, "one"))[0] == 200
    timeouts = 'railguard_thread_store_errors_total{operation="load",reason="timeout"'
    before = await metric(http, base, timeouts)
    redis_server.pause()
    try:
        started = time.monotonic()
        status, data = await post(http, base, "two")
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    assert status == 503, data
    assert 0.45 <= elapsed < 1.0
    assert data["error"]["message"].startswith(
        "The conversation thread store did not answer within 0.5 s"
    )
    assert await metric(http, base, timeouts) == before + 1
    assert (await post(http, base, "two"))[0] == 200
    assert seen(fake_upstream) == ["one", "echo: one", "two"]


async def test_a_turn_that_cannot_be_saved_is_a_503(
    start_railguard: StartRailguard,
    redis_server: RedisServer,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Redis goes away while the model answers: the client is told the turn was not kept,
    and nothing stored before is lost."""
    base = await start_railguard(CONFIGS, thread_store=redis_server.url)
    assert (await post(http, base, "one"))[0] == 200
    fake_upstream.next(delay=0.3)
    pending = asyncio.ensure_future(post(http, base, "two"))
    await asyncio.sleep(0.15)
    redis_server.kill()
    status, data = await pending
    assert status == 503 and data["error"]["code"] == "thread_store_unavailable"
    # a stream's answer is already out: the end of the stream says the turn wasn't kept
    stream = {**body("streamed", thread_id="other-thread-0123456"), "stream": True}
    redis_server.restart()
    fake_upstream.next(chunk_delay=0.1)
    async with http.post(f"{base}/v1/chat/completions", json=stream) as resp:
        await asyncio.sleep(0.1)
        redis_server.kill()
        raw = await resp.read()
    assert b'"code":"thread_store_unavailable"' in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    redis_server.restart()
    await post(http, base, "three")
    assert seen(fake_upstream) == ["one", "echo: one", "three"]


async def test_redis_password_from_the_url_or_the_environment(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pw-Zq81-very-secret"
    server = RedisServer(tmp_path / "redis-auth", password=password)
    server.start()
    try:
        caplog.set_level(logging.DEBUG)
        in_url = await start_railguard(CONFIGS, thread_store=server.url)
        from_env = await start_railguard(
            CONFIGS,
            thread_store=f"redis://127.0.0.1:{server.port}/0",
            redis_password=password,
        )
        wrong = await start_railguard(
            CONFIGS, thread_store=f"redis://:wrong-{password}@127.0.0.1:{server.port}/0"
        )
        assert (await post(http, in_url, "one"))[0] == 200
        assert (await post(http, from_env, "two"))[0] == 200
        assert seen(fake_upstream) == ["one", "echo: one", "two"]
        status, data = await post(http, wrong, "three")
        assert status == 503
        assert password not in str(data)
    finally:
        server.stop()
    assert "is not reachable now" in caplog.text  # the wrong password, at start-up
    assert password not in caplog.text


async def test_a_tls_redis_with_its_ca_file(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis-tls", tls=True)
    server.start()
    try:
        trusted = await start_railguard(
            CONFIGS, thread_store=server.tls_url, redis_ca_file=str(server.ca_file)
        )
        untrusted = await start_railguard(CONFIGS, thread_store=server.tls_url)
        assert (await post(http, trusted, "over tls"))[0] == 200
        assert (await post(http, trusted, "still there?"))[0] == 200
        assert seen(fake_upstream) == ["over tls", "echo: over tls", "still there?"]
        status, data = await post(http, untrusted, "no CA")  # the system's CAs don't know it
        assert status == 503, data
        assert data["error"]["code"] == "thread_store_unavailable"
    finally:
        server.stop()


def test_a_ca_file_needs_a_tls_thread_store() -> None:
    from proxy.settings import Settings
    from proxy.threads.factory import build_store

    with pytest.raises(ValueError, match="rediss://"):
        build_store(Settings(thread_store="redis://127.0.0.1:6379/0", redis_ca_file="ca.pem"))


# --- the command line ------------------------------------------------------------------


def test_thread_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.cli import _parser, settings_from_args

    monkeypatch.setenv("RAILGUARD_THREAD_STORE", "redis://cache:6379/2")
    monkeypatch.setenv("RAILGUARD_REDIS_PASSWORD", "pw-from-env")
    monkeypatch.setenv("RAILGUARD_STATE_SECRET", "s3")
    monkeypatch.setenv("RAILGUARD_REDIS_CA_FILE", "/etc/redis-ca.pem")
    settings = settings_from_args(_parser().parse_args(["serve"]))
    assert settings.redis_ca_file == "/etc/redis-ca.pem"
    assert settings.thread_store == "redis://cache:6379/2"
    assert settings.redis_password == "pw-from-env"
    assert settings.state_secret == "s3"
    assert "pw-from-env" not in repr(settings) and "s3'" not in repr(settings)
    assert (settings.thread_ttl, settings.thread_max_messages) == (7 * 24 * 3600, 1000)
    assert settings.thread_store_timeout == 1.0
    flags = ["serve", "--thread-store", "none", "--thread-ttl", "60"]
    flags += ["--thread-max-messages", "10", "--thread-store-timeout", "0.25"]
    settings = settings_from_args(_parser().parse_args(flags))
    assert settings.thread_store == "none"
    assert (settings.thread_ttl, settings.thread_max_messages) == (60, 10)
    assert settings.thread_store_timeout == 0.25


def test_a_thread_store_that_names_nothing_stops_the_server(tmp_path: Path) -> None:
    root = write_configs(tmp_path / "configs", CONFIGS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILGUARD_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--config",
            str(root),
            "--port",
            str(free_port()),
            "--thread-store",
            "postgres://admin:hunter2@db/0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "railguard: cannot start: --thread-store 'postgres://...' names no store" in (
        result.stderr
    )
    assert "hunter2" not in result.stderr
