"""A fast fake OpenAI-compatible upstream for the railguard benchmark.

A raw asyncio (uvloop) HTTP/1.1 server, so the upstream costs as little as possible and
the benchmark measures railguard, not its stand-in:

* ``POST /v1/chat/completions`` answers a small, fixed ``chat.completion`` JSON;
* with ``"stream": true`` it answers an SSE stream of ``x_bench_chunks`` chunks (default
  100; the last one carries ``finish_reason: stop`` and no content, so a stream carries
  ``x_bench_chunks - 1`` tokens), one chunked-encoding frame per event written separately
  (yielding to the loop in between, like a token generator), then ``data: [DONE]``;
  ``x_bench_token_ms`` paces the stream instead: one event every that many milliseconds,
  on a fixed schedule from the first (so timer jitter does not add up);
  ``x_bench_trigger_at`` N puts ``TRIGGER`` in place of the Nth token (0-based, N >= 1);
* ``GET /v1/models`` answers one model; anything else is a 404.

``--model NAME MS ANSWER`` (repeatable) adds a slow model, for the rails benchmark: a
non-streaming request whose ``model`` is NAME is answered after MS milliseconds, with
ANSWER as the content (a check model's ``no`` or ``safe``, or a main model's answer).
``--judge NAME MS WORD`` adds a slow self-check model: after MS milliseconds it answers
``Yes`` (block) when WORD is in the prompt's last message, else ``No``.
Other requests are answered as above, at once; without ``--model`` or ``--judge`` bodies
aren't parsed.

Keep-alive is the default, ``Connection: close`` is honoured. Run it on its own:

    python bench/fake_llm.py --port 18000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import cast

import orjson
import uvloop

ANSWER = "Hello! This is a fixed answer from the railguard benchmark upstream."
COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26},
    }
)
MODELS = orjson.dumps(
    {"object": "list", "data": [{"id": "bench-model", "object": "model", "owned_by": "bench"}]}
)
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
DEFAULT_CHUNKS = 100
MAX_CHUNKS = 100_000
MAX_TOKEN_MS = 10_000.0
_WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog.")
TRIGGER = " forbidden"


def stream_tokens(chunks: int) -> int:
    """How many content deltas (tokens) a stream of `chunks` chunks carries."""
    return max(1, chunks - 1)


def stream_text(chunks: int) -> str:
    """The answer a stream of `chunks` chunks carries (what output rails see)."""
    return "".join(_WORDS[index % len(_WORDS)] for index in range(stream_tokens(chunks)))


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _frame(event: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def _chunk_event(index: int, word: str | None = None) -> bytes:
    delta = {"content": word or _WORDS[index % len(_WORDS)]}
    if index == 0:
        delta["role"] = "assistant"
    data = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


COMPLETION_RESPONSE = _response("200 OK", COMPLETION)
MODELS_RESPONSE = _response("200 OK", MODELS)
NOT_FOUND_RESPONSE = _response("404 Not Found", NOT_FOUND)
LENGTH_REQUIRED = _response("411 Length Required", b"{}")
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
FIRST_FRAME = _frame(_chunk_event(0))
FRAMES = tuple(_frame(_chunk_event(i)) for i in range(1, len(_WORDS) + 1))
TRIGGER_FRAME = _frame(_chunk_event(1, TRIGGER))
FINAL_FRAME = _frame(
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    + b"\n\n"
)
STREAM_END = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"

# model name -> (seconds before answering, the prebuilt response), from `--model`
SLOW_MODELS: dict[str, tuple[float, bytes]] = {}
# model name -> (seconds before answering, the word it blocks), from `--judge`
JUDGES: dict[str, tuple[float, str]] = {}


def slow_completion(model: str, answer: str) -> bytes:
    """The response a slow model gives: COMPLETION with its own name and answer."""
    data = orjson.loads(COMPLETION)
    data["model"] = model
    data["choices"][0]["message"]["content"] = answer
    return _response("200 OK", orjson.dumps(data))


def slow_plan(body: bytes) -> tuple[float, bytes] | None:
    """(delay, response) when the request names a slow model, else None."""
    if not SLOW_MODELS and not JUDGES:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, str):
        return None
    if model in JUDGES:
        delay, word = JUDGES[model]
        messages = data.get("messages") or [{}]
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        blocked = isinstance(last, str) and word in last
        return delay, slow_completion(model, "Yes" if blocked else "No")
    return SLOW_MODELS.get(model)


def stream_plan(body: bytes) -> tuple[int, float, int] | None:
    """(chunks, seconds between events, the token replaced by TRIGGER or 0) when the
    request asks for a stream, else None.

    No pacing (0.0) means yielding to the loop between events, like a token generator.
    """
    if b'"stream"' not in body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("stream") is not True:
        return None
    chunks = data.get("x_bench_chunks", DEFAULT_CHUNKS)
    if not isinstance(chunks, int) or chunks < 1:
        chunks = DEFAULT_CHUNKS
    token_ms = data.get("x_bench_token_ms", 0.0)
    if isinstance(token_ms, bool) or not isinstance(token_ms, int | float) or token_ms < 0:
        token_ms = 0.0
    trigger = data.get("x_bench_trigger_at", 0)
    if isinstance(trigger, bool) or not isinstance(trigger, int) or trigger < 1:
        trigger = 0
    return min(chunks, MAX_CHUNKS), min(float(token_ms), MAX_TOKEN_MS) / 1e3, trigger


class FakeLLM(asyncio.Protocol):
    """One connection: parse requests with Content-Length bodies, answer in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming = False  # a stream (or a slow model's answer) is under way
        self.close_after = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self._process()

    def _process(self) -> None:
        buf = self.buf
        while self.transport is not None and not self.streaming:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:
                self.transport.write(LENGTH_REQUIRED)
                self.transport.close()
                return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.close_after = b"\r\nconnection: close" in head
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line = head[: head.find(b"\r\n")]
        if line.startswith(b"post /v1/chat/completions "):
            plan = stream_plan(body)
            if plan is not None:
                self.streaming = True
                asyncio.get_running_loop().create_task(self._stream(*plan))
                return
            slow = slow_plan(body)
            if slow is not None:
                self.streaming = True
                asyncio.get_running_loop().create_task(self._slow(*slow))
                return
            self.transport.write(COMPLETION_RESPONSE)
        elif line.startswith(b"get /v1/models "):
            self.transport.write(MODELS_RESPONSE)
        else:
            self.transport.write(NOT_FOUND_RESPONSE)
        if self.close_after:
            self.transport.close()

    async def _stream(self, chunks: int, pace: float, trigger: int) -> None:
        try:
            transport = self.transport
            if transport is None:
                return
            loop = asyncio.get_running_loop()
            start = loop.time()
            transport.write(STREAM_HEAD + FIRST_FRAME)
            for index in range(chunks - 2):
                await _next_token(loop, start, index + 1, pace)
                if not self.can_write.is_set():
                    await self.can_write.wait()
                if self.transport is None:
                    return
                transport.write(
                    TRIGGER_FRAME if index + 1 == trigger else FRAMES[index % len(FRAMES)]
                )
            await _next_token(loop, start, max(1, chunks - 1), pace)
            if self.transport is None:
                return
            transport.write(FINAL_FRAME + STREAM_END if chunks > 1 else STREAM_END)
            if self.close_after:
                transport.close()
        finally:
            self.streaming = False
        if self.buf:
            self._process()

    async def _slow(self, delay: float, response: bytes) -> None:
        try:
            await asyncio.sleep(delay)
            if self.transport is None:
                return
            self.transport.write(response)
            if self.close_after:
                self.transport.close()
        finally:
            self.streaming = False
        if self.buf:
            self._process()


async def _next_token(loop: asyncio.AbstractEventLoop, start: float, n: int, pace: float) -> None:
    """Wait for the `n`th event: yield once when unpaced, else until `start + n * pace`."""
    if not pace:
        await asyncio.sleep(0)  # a token generator yields between tokens
        return
    delay = start + n * pace - loop.time()
    await asyncio.sleep(delay if delay > 0 else 0)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeLLM, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--model",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "MS", "ANSWER"),
        help="answer requests for model NAME after MS milliseconds with ANSWER (repeatable)",
    )
    parser.add_argument(
        "--judge",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "MS", "WORD"),
        help="a self-check model NAME answering after MS milliseconds: Yes when WORD is in "
        "the prompt, else No (repeatable)",
    )
    args = parser.parse_args()
    for name, delay_ms, answer in args.model:
        SLOW_MODELS[name] = (float(delay_ms) / 1e3, slow_completion(name, answer))
    for name, delay_ms, word in args.judge:
        JUDGES[name] = (float(delay_ms) / 1e3, word)
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
