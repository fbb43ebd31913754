"""Slow and surplus clients against `railguard serve` over real sockets: a head trickled
past --header-timeout is closed, a body past --body-timeout is a 408, connections past
--max-connections (across --workers) are answered 503, and none of it cuts a long stream
or an idle kept-alive connection."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

from tests.conftest import write_configs
from tests.fake_upstream import FakeUpstream
from tests.test_threads_redis import processes, serve, wait_healthy

__all__ = ["processes"]  # the fixture, shared with the Redis tests

CONFIGS = {"open": {"models": []}}
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: railguard\r\n"
    b"Content-Type: application/json\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
)


async def open_raw(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    return await asyncio.open_connection(parts.hostname, parts.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def get_health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET /health HTTP/1.1\r\nHost: railguard\r\n\r\n")
    status, _, _ = await read_response(reader)
    return status


async def trickle_head(base: str) -> float:
    """Send a request head a byte every 0.2 s; how long until the server closed."""
    reader, writer = await open_raw(base)
    started = time.monotonic()
    try:
        for byte in HEAD:
            writer.write(bytes([byte]))
            try:
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the whole head went through")
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def trickle_body(base: str) -> tuple[int, bytes, float]:
    reader, writer = await open_raw(base)
    started = time.monotonic()
    body = b'{"model": "m1", "messages": [{"role": "user", "content": "slow"}]}'
    writer.write(HEAD[:-2] + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
    sender = asyncio.ensure_future(_drip(writer, body[5:]))
    try:
        status, headers, answer = await read_response(reader)
        assert headers["connection"] == "close"
        return status, answer, time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()


async def _drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data:
        await asyncio.sleep(0.2)
        writer.write(bytes([byte]))


async def long_stream(http: aiohttp.ClientSession, base: str) -> tuple[bytes, float]:
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four five six seven eight"}],
        "guardrails": {"config_id": "open"},
    }
    started = time.monotonic()
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        return await resp.read(), time.monotonic() - started


async def idle_keep_alive(base: str) -> list[int]:
    """Two requests on one connection, idle longer than the head deadline in between."""
    reader, writer = await open_raw(base)
    try:
        first = await get_health(reader, writer)
        await asyncio.sleep(1.5)
        return [first, await get_health(reader, writer)]
    finally:
        writer.close()


async def test_deadlines_close_slow_clients_and_spare_long_answers(
    processes: list[subprocess.Popen[bytes]],
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    root = write_configs(tmp_path / "configs", CONFIGS)
    base, proc = serve(
        processes,
        root,
        tmp_path / "rg.log",
        *("--upstream", fake_upstream.url, "--header-timeout", "1", "--body-timeout", "1"),
    )
    await wait_healthy(http, base, proc, tmp_path / "rg.log")
    fake_upstream.next(chunk_delay=0.25)  # 12 events: about 3 s, three head deadlines
    stream = asyncio.ensure_future(long_stream(http, base))
    slow_heads = asyncio.gather(*(trickle_head(base) for _ in range(200)))
    slow_body = asyncio.ensure_future(trickle_body(base))
    kept_alive = asyncio.ensure_future(idle_keep_alive(base))
    await asyncio.sleep(0.5)
    async with http.get(f"{base}/v1/rails/configs") as resp:  # served meanwhile
        assert resp.status == 200

    closed_after = await slow_heads
    assert max(closed_after) < 2.5, max(closed_after)  # 1 s, and a loaded machine
    assert min(closed_after) >= 0.9
    status, answer, elapsed = await slow_body
    assert status == 408 and 0.9 <= elapsed < 2.5
    error = orjson.loads(answer)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert error["message"] == "The request body did not arrive within 1 s of its headers."
    assert await kept_alive == [200, 200]
    raw, took = await stream
    assert took > 2.0
    assert b'"content":"eight"' in raw and raw.endswith(b"data: [DONE]\n\n")
    assert "Traceback" not in (tmp_path / "rg.log").read_text()


async def test_connections_past_the_cap_are_answered_503_across_workers(
    processes: list[subprocess.Popen[bytes]],
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    root = write_configs(tmp_path / "configs", CONFIGS)
    base, proc = serve(
        processes,
        root,
        tmp_path / "rg.log",
        *("--upstream", fake_upstream.url, "--workers", "2", "--max-connections", "3"),
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        await wait_healthy(fresh, base, proc, tmp_path / "rg.log")
        held = [await open_raw(base) for _ in range(3)]
        for reader, writer in held:  # served: each holds a slot, whichever worker has it
            assert await get_health(reader, writer) == 200
        for _ in range(4):  # the kernel spreads these over both workers
            reader, writer = await open_raw(base)
            writer.write(b"GET /health HTTP/1.1\r\nHost: railguard\r\n\r\n")
            status, headers, answer = await read_response(reader)
            assert status == 503 and headers["retry-after"] == "1"
            assert orjson.loads(answer)["error"]["code"] == "too_many_connections"
            assert await reader.read() == b""  # and closed
            writer.close()
        held[0][1].close()
        await asyncio.sleep(0.2)
        async with fresh.get(f"{base}/health") as resp:
            assert resp.status == 200
        for reader, writer in held[1:]:  # kept alive all along
            assert await get_health(reader, writer) == 200
            writer.close()


def test_flags_and_defaults() -> None:
    from proxy.cli import _parser, settings_from_args

    settings = settings_from_args(_parser().parse_args(["serve"]))
    assert (settings.header_timeout, settings.body_timeout) == (10.0, 60.0)
    assert settings.max_connections == 1024
    flags = ["serve", "--header-timeout", "2.5", "--body-timeout", "0", "--max-connections", "9"]
    settings = settings_from_args(_parser().parse_args(flags))
    assert (settings.header_timeout, settings.body_timeout) == (2.5, 0.0)
    assert settings.max_connections == 9
