"""Helpers for the benchmark's streaming-output-rails phase (``run.py``, phase e).

* `check_stream` (and `completed`, its test for `httpclient.timed`): a stream ended as a
  completed one should (``[DONE]`` last, no error event, and through railguard the
  closing ``guardrails`` chunk);
* `window_spans` and `mean_fill`: which tokens each output-rails window of railguard takes
  (the same arithmetic as ``rails.streaming.WindowCutter``), and how long those windows
  took to fill on streams read straight from the upstream;
* `passed_before`: where the last window that passed ends, on a stream whose check model
  blocks the first window holding a given token (the `stream_first` leak bound's base);
* `holdback_metric`: ``railguard_stream_holdback_seconds`` sum and count from ``/metrics``;
* `rss_bytes`: a process's resident memory, from ``/proc``;
* `concurrent_streams`: many streams at once over raw asyncio sockets.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
from collections.abc import Sequence

import uvloop
from httpclient import BenchError, RawClient, StreamTiming

DONE_TAIL = b"data: [DONE]\n\n"
ERROR_EVENT = b'data: {"error"'
_METRIC = re.compile(rb"^railguard_stream_holdback_seconds_(sum|count) ([0-9.eE+-]+)$", re.M)


def check_stream(name: str, status: int, body: bytes, railguard: bool) -> None:
    """Raise BenchError unless the (de-chunked) stream completed: a block or an upstream
    error would end it early and make every figure taken on it meaningless."""
    last = body.rfind(b"data: ", 0, len(body) - len(DONE_TAIL))
    ok = status == 200 and completed(body) and (not railguard or b'"guardrails"' in body[last:])
    if not ok:
        at = body.find(ERROR_EVENT)
        shown = body[at : at + 400] if at >= 0 else body[-400:]
        raise BenchError(f"{name}: the stream did not complete (status {status}): {shown!r}")


def completed(body: bytes) -> bool:
    """A de-chunked stream ended with `[DONE]` and carried no error event."""
    return body.endswith(DONE_TAIL) and ERROR_EVENT not in body


def window_spans(tokens: int, chunk_size: int, context_size: int) -> list[tuple[int, int | None]]:
    """(first new token, last token), 1-based, of each window railguard checks on a stream
    of `tokens` tokens; the last token is None for the tail, checked when the stream ends.

    A window's events are held from its first new token's arrival to the window's check, so
    that span is the hold-back the window itself imposes."""
    spans: list[tuple[int, int | None]] = []
    checked = 0
    for count in range(1, tokens + 1):
        if count - max(0, checked - context_size) >= chunk_size:
            spans.append((checked + 1, count))
            checked = count
    if tokens > checked:
        spans.append((checked + 1, None))
    return spans


def passed_before(tokens: int, chunk_size: int, context_size: int, trigger: int) -> int:
    """Tokens covered by the windows before the first one holding token `trigger`
    (0-based): the end of the last window that passes when that one is blocked."""
    passed = 0
    for first, last in window_spans(tokens, chunk_size, context_size):
        end = tokens if last is None else last
        if max(0, first - 1 - context_size) <= trigger < end:
            return passed
        passed = end
    raise BenchError(f"no window of a {tokens}-token stream holds token {trigger}")


def mean_fill(timings: Sequence[StreamTiming], spans: Sequence[tuple[int, int | None]]) -> float:
    """Mean time the windows took to fill on streams timed event by event: from a window's
    first new token to its last (to ``[DONE]`` for the tail)."""
    fills = []
    for timing in timings:
        for first, last in spans:
            until = timing.end if last is None else timing.arrival(last)
            fills.append(until - timing.arrival(first))
    if not fills or any(math.isnan(f) for f in fills):
        raise BenchError("a paced stream lacked tokens the windows expect")
    return statistics.fmean(fills)


def holdback_metric(client: RawClient) -> tuple[float, int]:
    """(sum in seconds, count) of railguard_stream_holdback_seconds."""
    got = client.send(f"GET /metrics HTTP/1.1\r\nHost: {client.host}\r\n\r\n".encode())
    values = {name: float(value) for name, value in _METRIC.findall(got.body)}
    if got.status != 200 or set(values) != {b"sum", b"count"}:
        raise BenchError(f"/metrics has no railguard_stream_holdback_seconds: {got.body[:300]!r}")
    return values[b"sum"], int(values[b"count"])


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


async def _one_stream(host: str, port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        data = bytearray()
        while not data.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
            part = await reader.read(65536)
            if not part:
                break
            data += part
        return bytes(data)
    finally:
        writer.close()


def _dechunk(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of one raw chunked HTTP response."""
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return 0, raw
    status = int(raw[9:12])
    parts = []
    pos = head_end + 4
    while (eol := raw.find(b"\r\n", pos)) >= 0:
        size = int(raw[pos:eol].split(b";", 1)[0], 16)
        if size == 0:
            break
        parts.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
    return status, b"".join(parts)


def concurrent_streams(host: str, port: int, request: bytes, count: int, name: str) -> None:
    """`count` streams at once, one new connection each; each must complete."""

    async def run() -> list[bytes | BaseException]:
        tasks = [_one_stream(host, port, request) for _ in range(count)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    for raw in uvloop.run(run()):
        if isinstance(raw, BaseException):
            raise BenchError(f"{name}: a concurrent stream failed: {raw!r}")
        status, body = _dechunk(raw)
        check_stream(name, status, body, railguard=True)
