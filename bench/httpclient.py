"""A minimal blocking HTTP/1.1 keep-alive client over a raw socket, for low-noise timing.

It sends prebuilt request bytes and reads one response (Content-Length or chunked), with
no header objects, no URL parsing and no event loop: the client adds as little as possible
to what is measured. `RawClient.stream` also notes when a stream's first content event
(and, if asked, every one) arrived. Also percentile helpers shared by the benchmark modules.
"""

from __future__ import annotations

import math
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class BenchError(RuntimeError):
    """The benchmark setup failed (a server did not start, or answered wrongly)."""


CONTENT = b'"content":"'  # how a content delta starts in orjson's output (no spaces)
DONE = b"data: [DONE]"


def build_request(host: str, port: int, path: str, body: bytes, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\n{connection}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(slots=True)
class Response:
    status: int
    head: bytes
    body: bytes


@dataclass(slots=True)
class StreamTiming:
    """One streamed response and when its parts arrived (seconds after the request was sent)."""

    response: Response
    first: float  # the first event carrying non-empty content; nan if none did
    done: float  # the whole response read and de-chunked (as `timed` measures)
    end: float = math.nan  # `data: [DONE]` arrived (only when every event was timed)
    marks: list[tuple[float, int]] = field(default_factory=list)  # (time, contents so far)

    def arrival(self, token: int) -> float:
        """When content event number `token` (1-based) arrived; nan if it never did."""
        for at, count in self.marks:
            if count >= token:
                return at
        return math.nan


def count_contents(buf: bytes, pos: int) -> tuple[int, int]:
    """Content events (non-empty `"content":"...`) in `buf` from `pos`, and where to resume."""
    found = 0
    size = len(CONTENT)
    while (at := buf.find(CONTENT, pos)) >= 0:
        if at + size >= len(buf):  # the first character of the text has not arrived yet
            return found, at
        if buf[at + size] != 0x22:  # not `"content":""`
            found += 1
        pos = at + size
    return found, max(pos, len(buf) - size + 1)


class RawClient:
    """One keep-alive connection; `send` returns the whole response."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise BenchError(f"{self.host}:{self.port} closed the connection")
        self.buf += data

    def send(self, request: bytes) -> Response:
        self.sock.sendall(request)
        return self._response()

    def stream(self, request: bytes, every: bool = False) -> StreamTiming:
        """Send a streaming request and read the response to its end, noting when the first
        content event arrived; with `every`, when each one did and when `[DONE]` did."""
        clock = time.perf_counter
        t0 = clock()
        self.sock.sendall(request)
        first = end = math.nan
        marks: list[tuple[float, int]] = []
        seen = pos = 0
        while True:
            before = len(self.buf)
            self._recv()
            now = clock() - t0
            found, pos = count_contents(self.buf, pos)
            if found:
                seen += found
                if first != first:  # nan: this is the first
                    first = now
                if every:
                    marks.append((now, seen))
            if not every and first == first:
                break
            if self.buf.find(DONE, max(0, before - len(DONE))) >= 0:
                end = now
                break
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end >= 0 and self.buf[9:12] != b"200":
                break  # an error answer, read below
        response = self._response()
        return StreamTiming(response, first, clock() - t0, end if every else math.nan, marks)

    def _response(self) -> Response:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = self.buf[:end]
        self.buf = self.buf[end + 4 :]
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = lower.find(b"\r\n", at + 2)
            length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            while len(self.buf) < length:
                self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
        elif b"\r\ntransfer-encoding: chunked" in lower:
            body = self._chunked()
        else:
            raise BenchError(f"response without length from {self.host}:{self.port}: {head!r}")
        if b"\r\nconnection: close" in lower:
            self.sock.close()
            self.sock = socket.create_connection((self.host, self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
        return Response(status, head, body)

    def _chunked(self) -> bytes:
        """The de-chunked body; parsing works on the buffer in place, one join at the end."""
        parts: list[bytes] = []
        pos = 0
        while True:
            while (eol := self.buf.find(b"\r\n", pos)) < 0:
                self._recv()
            size = int(self.buf[pos:eol].split(b";", 1)[0], 16)
            start = eol + 2
            if size == 0:
                while (end := self.buf.find(b"\r\n", start)) < 0:
                    self._recv()
                # no trailers expected: the empty line right after the last chunk
                self.buf = self.buf[end + 2 :]
                return b"".join(parts)
            while len(self.buf) < start + size + 2:
                self._recv()
            parts.append(self.buf[start : start + size])
            pos = start + size + 2
            if pos > 1 << 20:  # keep the buffer short on long streams
                self.buf = self.buf[pos:]
                pos = 0


Check = bytes | Callable[[bytes], bool]


def timed(client: RawClient, request: bytes, count: int, check: Check = b"") -> list[float]:
    """`count` sequential requests; each one's latency in seconds. Non-200 is an error, and
    so is a body without `check` (bytes it must contain, or a test it must pass)."""
    samples = [0.0] * count
    clock = time.perf_counter
    for index in range(count):
        t0 = clock()
        response = client.send(request)
        samples[index] = clock() - t0
        body = response.body
        if response.status != 200 or not (check(body) if callable(check) else check in body):
            raise BenchError(
                f"unexpected answer from {client.host}:{client.port}: {response.status} "
                f"{response.body[:300]!r}"
            )
    return samples


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p99 and mean of `values` (seconds in, seconds out)."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else math.nan,
        "n": float(len(values)),
    }
