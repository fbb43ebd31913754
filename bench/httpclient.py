"""A minimal blocking HTTP/1.1 keep-alive client over a raw socket, for low-noise timing.

It sends prebuilt request bytes and reads one response (Content-Length or chunked), with
no header objects, no URL parsing and no event loop: the client adds as little as possible
to what is measured. Also percentile helpers shared by the benchmark modules.
"""

from __future__ import annotations

import math
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass


class BenchError(RuntimeError):
    """The benchmark setup failed (a server did not start, or answered wrongly)."""


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(slots=True)
class Response:
    status: int
    head: bytes
    body: bytes


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


def timed(client: RawClient, request: bytes, count: int, check: bytes = b"") -> list[float]:
    """`count` sequential requests; each one's latency in seconds. Non-200 is an error."""
    samples = [0.0] * count
    clock = time.perf_counter
    for index in range(count):
        t0 = clock()
        response = client.send(request)
        samples[index] = clock() - t0
        if response.status != 200 or (check and check not in response.body):
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
