"""The upstream client against a small fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpServer

from upstream import (
    NoUpstreamError,
    Router,
    Upstream,
    UpstreamBadResponse,
    UpstreamConfigError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamPool,
    UpstreamTimeout,
    UpstreamUnreachable,
    chat_text,
    load_upstreams_file,
    parse_upstreams,
    routing,
)
from upstream.client import forwardable_headers

KEY = "sk-upstream-secret-0123456789"
CLIENT_TOKEN = "client-token-abcdefghij"

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-upstream-7",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "served-model-v2",
    "system_fingerprint": "fp_fake",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}

STREAM_EVENTS = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
    b": keep-alive\n\n",
    b'event: message\ndata: {"id":"c1","choices":[{"index":0,"delta":{"content":"lo"},'
    b'"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
    b'"total_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]

MODELS = [
    {"id": "served-model-v2", "object": "model", "owned_by": "fake"},
    {"id": "other", "object": "model", "owned_by": "fake", "max_model_len": 8192},
]


# --- the fake upstream ---------------------------------------------------------------


@dataclass
class Seen:
    headers: CIMultiDictProxy[str]
    body: bytes
    client_port: int


SEEN = web.AppKey("seen", list[Seen])
STOPPED = web.AppKey("stopped", asyncio.Event)


async def _sse(request: web.Request, writes: list[bytes], pause: float = 0.0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for data in writes:
        await resp.write(data)
        await asyncio.sleep(pause)
    return resp


def _chopped(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    assert request.transport is not None
    port = request.transport.get_extra_info("peername")[1]
    request.app[SEEN].append(Seen(request.headers, body, port))
    model = orjson.loads(body)["model"]
    if model == "ok":
        return web.json_response(COMPLETION)
    if model == "parts":
        parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
        reply = {"choices": [{"message": {"role": "assistant", "content": parts}}]}
        return web.json_response(reply)
    if model == "tool-call":
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": []}
        return web.json_response({"choices": [{"message": message}]})
    if model == "echo-auth":  # an upstream that quotes the credential it was sent
        token = request.headers["Authorization"].removeprefix("Bearer ")
        error = {"message": f"Incorrect API key provided: {token}", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)
    if model == "err-400":
        error = {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
        return web.json_response({"error": error}, status=400)
    if model == "err-429":
        return web.json_response({"error": {"message": "Slow down", "code": 429}}, status=429)
    if model == "err-404-text":
        return web.Response(status=404, text="n" * 2000)
    if model == "err-500":
        return web.json_response({"detail": "engine crashed"}, status=500)
    if model == "redirect":
        raise web.HTTPTemporaryRedirect("/elsewhere")
    if model == "garbage":
        return web.Response(body=b"<html>surprise</html>", content_type="text/html")
    if model == "json-list":
        return web.json_response([COMPLETION])
    if model == "slow":
        await asyncio.sleep(2)
        return web.json_response(COMPLETION)
    if model == "cut-body":  # promises 1000 bytes, sends 10, hangs up
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"id": "ch')
        request.transport.close()
        return resp
    return await _stream(request, model)


async def _stream(request: web.Request, model: str) -> web.StreamResponse:
    if model == "stream":
        return await _sse(request, STREAM_EVENTS)
    if model == "stream-batched":
        return await _sse(request, [b"".join(STREAM_EVENTS)])
    if model == "stream-chopped":
        return await _sse(request, _chopped(b"".join(STREAM_EVENTS), 7), pause=0.001)
    if model == "stream-crlf":
        writes = [
            b'data: {"a":1}\r',
            b"\n\r",
            b'\nevent: x\r\ndata: {"b":2}\r\n\r\n',
            b"data: [DONE]\r\n\r\n",
        ]
        return await _sse(request, writes, pause=0.01)
    if model == "stream-no-done":
        return await _sse(request, [STREAM_EVENTS[1], b'data: {"tail":true}\n'])
    if model == "stream-slow-first":
        return await _sse(request, [b""], pause=2)
    if model == "stream-stall":
        return await _sse(request, [b"".join(STREAM_EVENTS[:2]), b""], pause=1)
    if model in ("stream-die", "stream-crash"):
        resp = await _sse(request, STREAM_EVENTS[:2], pause=0.01)
        if model == "stream-crash":
            raise RuntimeError("the upstream process died")
        assert request.transport is not None
        request.transport.close()
        return resp
    if model == "stream-endless":
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            while True:
                await resp.write(STREAM_EVENTS[1])
                await asyncio.sleep(0.01)
        finally:
            request.app[STOPPED].set()
    raise web.HTTPNotFound(text=f"unknown fake model {model}")


async def _models(request: web.Request) -> web.Response:
    request.app[SEEN].append(Seen(request.headers, b"", 0))
    return web.json_response({"object": "list", "data": MODELS})


def fake_app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app[STOPPED] = asyncio.Event()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    return app


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> TestServer:
    return await aiohttp_server(fake_app())


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    await p.close()


def fake_upstream(server: TestServer, **options: Any) -> Upstream:
    # The trailing slash checks that base_url is normalised before paths are appended.
    return Upstream(name="fake", base_url=str(server.make_url("/v1/")), **options)


def seen(server: TestServer) -> list[Seen]:
    return server.app[SEEN]


def body(model: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def collect(pool: UpstreamPool, upstream: Upstream, data: bytes) -> list[bytes]:
    async with asyncio.timeout(3), pool.stream(upstream, data) as events:
        return [event async for event in events]


# --- routing ---------------------------------------------------------------------------

EXACT = Upstream("exact", "http://a:1/v1", models=("gpt-4o",))
GLOB = Upstream("glob", "http://b:1/v1", models=("gpt-4o*", "meta/*"))
CONFIG = Upstream("config", "http://c:1/v1")
DEFAULT = Upstream("default", "http://d:1/v1")


def test_router_prefers_table_then_config_then_default() -> None:
    router = Router([EXACT, GLOB], default=DEFAULT)
    assert router.resolve("gpt-4o") is EXACT
    assert router.resolve("gpt-4o", CONFIG) is EXACT
    assert router.resolve("gpt-4o-mini") is GLOB
    assert router.resolve("meta/llama-3.1-8b", CONFIG) is GLOB
    assert router.resolve("mistral", CONFIG) is CONFIG
    assert router.resolve("mistral") is DEFAULT


def test_router_without_match_or_default_raises() -> None:
    with pytest.raises(NoUpstreamError) as info:
        Router([EXACT]).resolve("mistral")
    assert info.value.model == "mistral"
    assert str(info.value) == (
        "No upstream serves the model 'mistral' and no default upstream is configured."
    )


def test_router_cache_keeps_the_order_and_the_per_call_fallback() -> None:
    router = Router([EXACT, GLOB], default=DEFAULT)
    other = Upstream("other-config", "http://e:1/v1")
    assert router.resolve("mistral", CONFIG) is CONFIG
    assert router.resolve("mistral", other) is other  # a cached miss must not pin a fallback
    assert router.resolve("mistral") is DEFAULT
    for i in range(3000):  # overflow the bounded cache
        router.resolve(f"gpt-4o-{i}")
    assert router.resolve("gpt-4o") is EXACT
    assert router.resolve("gpt-4o-0") is GLOB
    assert router.resolve("mistral", CONFIG) is CONFIG


def test_router_upstreams_are_deduplicated_by_base_url() -> None:
    twin = Upstream("twin", EXACT.base_url, models=("other",))
    assert Router([EXACT, twin, GLOB], default=DEFAULT).upstreams == [EXACT, GLOB, DEFAULT]
    assert Router([EXACT, GLOB], default=Upstream("d", GLOB.base_url)).upstreams == [EXACT, GLOB]
    assert Router().upstreams == []


def test_upstream_matching_key_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = Upstream(
        "u", "http://h:1/v1//", api_key_env="RG_TEST_KEY", headers=(("X-Api-Key", KEY),)
    )
    assert upstream.base_url == "http://h:1/v1"
    assert upstream.serves("anything")
    assert not GLOB.serves("gpt-4")
    assert not GLOB.serves("META/llama")  # model names are case-sensitive
    monkeypatch.delenv("RG_TEST_KEY", raising=False)
    assert upstream.api_key() is None
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    assert upstream.api_key() == KEY
    assert KEY not in repr(upstream)


# --- the upstreams file ----------------------------------------------------------------


def test_parse_upstreams_reads_every_field() -> None:
    example = routing.__doc__.split("::\n\n")[1].split("\n\n")[0]  # the documented file
    doc = yaml.safe_load(textwrap.dedent(example))
    (vllm,) = parse_upstreams(doc, "upstreams.yaml")
    assert vllm == Upstream(
        name="vllm",
        base_url="http://vllm:8000/v1",
        models=("meta/llama-3.1-8b-instruct", "meta/*"),
        api_key_env="VLLM_API_KEY",
        connect_timeout=5.0,
        read_timeout=120.0,
        headers=(("X-Tenant", "blue"),),
    )
    minimal = {"upstreams": [{"name": "a", "base_url": "https://a.example/v1/", "models": ["*"]}]}
    assert parse_upstreams(minimal, "f.yaml") == [
        Upstream("a", "https://a.example/v1", models=("*",))
    ]


def _doc(**changes: Any) -> dict[str, Any]:
    second = {"name": "b", "base_url": "http://b:8000/v1", "models": ["m"], **changes}
    return {"upstreams": [{"name": "a", "base_url": "http://a:8000/v1", "models": ["*"]}, second]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "upstreams.yaml: expected a mapping with an 'upstreams' list"),
        ({"upstreams": []}, "upstreams.yaml: upstreams: must be a non-empty list"),
        ({"upstream": [], "upstreams": [{}]}, "upstreams.yaml: upstream: unknown key"),
        ({"upstreams": ["http://a/v1"]}, "upstreams.yaml: upstreams[0]: must be a mapping"),
        (
            _doc(base_url="ftp://b/v1"),
            "upstreams.yaml: upstreams[1].base_url: must be an http(s) URL",
        ),
        (
            _doc(base_url="b:8000/v1"),
            "upstreams.yaml: upstreams[1].base_url: must be an http(s) URL",
        ),
        (_doc(base_url=42), "upstreams.yaml: upstreams[1].base_url: must be a non-empty string"),
        (
            _doc(base_url="http://b/v1?key=1"),
            "upstreams.yaml: upstreams[1].base_url: must not have a query or fragment",
        ),
        (
            _doc(base_url="http://me:hunter22@b/v1"),
            "upstreams.yaml: upstreams[1].base_url: must not contain credentials; "
            "use api_key_env or headers",
        ),
        (_doc(name="a"), "upstreams.yaml: upstreams[1].name: duplicate name 'a'"),
        (_doc(models=None), "upstreams.yaml: upstreams[1].models: must be a non-empty list"),
        (_doc(models=[]), "upstreams.yaml: upstreams[1].models: must be a non-empty list"),
        (
            _doc(models=["m", 7]),
            "upstreams.yaml: upstreams[1].models[1]: must be a non-empty string",
        ),
        (_doc(api_key="sk-inline"), "upstreams.yaml: upstreams[1].api_key: unknown key"),
        (_doc(read_timeout=0), "upstreams.yaml: upstreams[1].read_timeout: must be a positive"),
        (_doc(read_timeout=True), "upstreams.yaml: upstreams[1].read_timeout: must be a positive"),
        (_doc(connect_timeout="5"), "upstreams.yaml: upstreams[1].connect_timeout: must be a"),
        (_doc(headers=["X-A"]), "upstreams.yaml: upstreams[1].headers: must be a mapping"),
        (
            _doc(headers={"X-A": ["v"]}),
            "upstreams.yaml: upstreams[1].headers.X-A: must be a string",
        ),
        (
            _doc(headers={"X-A": "v\r\nX-Evil: 1"}),
            "upstreams.yaml: upstreams[1].headers.X-A: must not contain line breaks",
        ),
    ],
)
def test_parse_upstreams_errors_name_file_and_key(data: object, message: str) -> None:
    with pytest.raises(UpstreamConfigError) as info:
        parse_upstreams(data, "upstreams.yaml")
    assert str(info.value).startswith(message)
    assert "hunter22" not in str(info.value)
    assert "sk-inline" not in str(info.value)


def test_load_upstreams_file(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        "upstreams:\n  - {name: a, base_url: 'http://a/v1', models: [m], read_timeout: 9}\n"
    )
    assert load_upstreams_file(path) == [Upstream("a", "http://a/v1", ("m",), read_timeout=9.0)]

    path.write_text("upstreams: [\n")
    with pytest.raises(UpstreamConfigError, match=f"^{path}: invalid YAML"):
        load_upstreams_file(path)
    path.write_text("upstreams:\n  - {name: a, base_url: 'http://a/v1', models: [m], timeout: 9}\n")
    with pytest.raises(
        UpstreamConfigError, match=rf"^{path}: upstreams\[0\]\.timeout: unknown key"
    ):
        load_upstreams_file(str(path))
    with pytest.raises(UpstreamConfigError, match=f"^{tmp_path}/missing.yaml: cannot read"):
        load_upstreams_file(tmp_path / "missing.yaml")


# --- headers ---------------------------------------------------------------------------

CLIENT_HEADERS = {
    "Authorization": f"Bearer {CLIENT_TOKEN}",
    "Connection": "keep-alive, X-Hop-Secret",
    "X-Hop-Secret": "per-connection",
    "Keep-Alive": "timeout=5",
    "Proxy-Authorization": "Basic cHJveHk=",
    "TE": "trailers",
    "Upgrade": "h2c",
    "Transfer-Encoding": "chunked",
    "Content-Length": "99999",
    "Content-Type": "text/plain",
    "Accept-Encoding": "br",
    "Host": "railguard.local",
    "x-tenant": "red",
    "OpenAI-Organization": "org-42",
    "X-Request-Id": "req-1",
    "User-Agent": "client-agent/1.0",
}


def test_forwardable_headers_drops_hop_by_hop_and_connection_named() -> None:
    assert forwardable_headers(CLIENT_HEADERS) == {
        "x-tenant": "red",
        "OpenAI-Organization": "org-42",
        "X-Request-Id": "req-1",
        "User-Agent": "client-agent/1.0",
    }
    assert forwardable_headers({"connection": "close, x-a", "X-A": "1", "X-B": "2"}) == {"X-B": "2"}


def test_headers_for_authorization_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = UpstreamPool()
    keyed = Upstream("k", "http://k/v1", api_key_env="RG_TEST_KEY", headers=(("X-Tenant", "blue"),))
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    headers = pool.headers_for(keyed, CLIENT_HEADERS)
    assert headers == {
        "OpenAI-Organization": "org-42",
        "X-Request-Id": "req-1",
        "User-Agent": "client-agent/1.0",
        "X-Tenant": "blue",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY}",
    }
    monkeypatch.delenv("RG_TEST_KEY")
    assert pool.headers_for(keyed, CLIENT_HEADERS)["Authorization"] == f"Bearer {CLIENT_TOKEN}"
    assert "Authorization" not in pool.headers_for(keyed, None)
    fixed = Upstream("f", "http://f/v1", headers=(("authorization", "Token fixed"),))
    assert pool.headers_for(fixed, CLIENT_HEADERS)["Authorization"] == "Token fixed"


async def test_upstream_receives_the_right_headers(
    server: TestServer, pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    upstream = fake_upstream(server, api_key_env="RG_TEST_KEY", headers=(("X-Tenant", "blue"),))
    await pool.chat(upstream, body("ok"), CLIENT_HEADERS)
    monkeypatch.delenv("RG_TEST_KEY")
    await pool.chat(upstream, body("ok"), CLIENT_HEADERS)
    keyed, passed = (s.headers for s in seen(server))
    assert keyed["Authorization"] == f"Bearer {KEY}"
    assert passed["Authorization"] == f"Bearer {CLIENT_TOKEN}"
    assert keyed.getall("X-Tenant") == ["blue"]
    assert keyed["OpenAI-Organization"] == "org-42"
    assert keyed["X-Request-Id"] == "req-1"
    assert keyed["User-Agent"] == "client-agent/1.0"
    assert keyed["Content-Type"] == "application/json"
    assert keyed["Host"] == f"127.0.0.1:{server.port}"
    for name in ("X-Hop-Secret", "Keep-Alive", "Proxy-Authorization", "TE", "Upgrade"):
        assert name not in keyed
    assert "Transfer-Encoding" not in keyed
    assert int(keyed["Content-Length"]) == len(body("ok"))


# --- non-streaming chat ----------------------------------------------------------------


async def test_chat_returns_the_upstream_json_untouched_over_a_reused_connection(
    server: TestServer, pool: UpstreamPool
) -> None:
    sent = b'{"model": "ok",   "messages": [], "x_vendor": {"keep": "me"}}'
    first = await pool.chat(fake_upstream(server), sent)
    second = await pool.chat(fake_upstream(server), sent)
    assert first.status == 200
    assert first.data == COMPLETION
    assert first.elapsed > 0
    assert second.data == COMPLETION
    assert [s.body for s in seen(server)] == [sent, sent]
    assert seen(server)[0].client_port == seen(server)[1].client_port


@pytest.mark.parametrize(
    ("model", "upstream_status", "status", "type_", "code", "message"),
    [
        (
            "err-400",
            400,
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens.",
        ),
        ("err-429", 429, 429, "rate_limit_error", 429, "Slow down"),  # code as sent
        ("err-404-text", 404, 404, "invalid_request_error", None, "n" * 500),
        (
            "err-500",
            500,
            502,
            "upstream_error",
            "upstream_error",
            "Upstream fake failed with HTTP 500: engine crashed",
        ),
        (
            "redirect",
            307,
            502,
            "upstream_error",
            "upstream_error",
            "Upstream fake failed with HTTP 307: 307: Temporary Redirect",
        ),
    ],
)
async def test_chat_http_errors(
    server: TestServer,
    pool: UpstreamPool,
    model: str,
    upstream_status: int,
    status: int,
    type_: str,
    code: str | int | None,
    message: str,
) -> None:
    with pytest.raises(UpstreamHTTPError) as info:
        await pool.chat(fake_upstream(server), body(model))
    error = info.value
    assert (error.status, error.type, error.code, error.message) == (status, type_, code, message)
    assert error.upstream_status == upstream_status


async def test_error_messages_never_carry_the_credential(
    server: TestServer, pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    with pytest.raises(UpstreamHTTPError) as keyed:
        await pool.chat(fake_upstream(server, api_key_env="RG_TEST_KEY"), body("echo-auth"))
    with pytest.raises(UpstreamHTTPError) as passed:
        await pool.chat(fake_upstream(server), body("echo-auth"), CLIENT_HEADERS)
    assert keyed.value.message == "Incorrect API key provided: [redacted]"
    assert (keyed.value.status, keyed.value.code) == (401, "invalid_api_key")
    assert passed.value.message == "Incorrect API key provided: [redacted]"


@pytest.mark.parametrize("model", ["garbage", "json-list"])
async def test_chat_bad_body_is_502(server: TestServer, pool: UpstreamPool, model: str) -> None:
    with pytest.raises(UpstreamBadResponse) as info:
        await pool.chat(fake_upstream(server), body(model))
    assert (info.value.status, info.value.code) == (502, "upstream_bad_response")


async def test_chat_body_cut_off_is_unreachable(server: TestServer, pool: UpstreamPool) -> None:
    with pytest.raises(UpstreamUnreachable) as info:
        await pool.chat(fake_upstream(server), body("cut-body"))
    assert info.value.message == "Upstream fake broke off its response"


async def test_connection_refused_is_unreachable(
    pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    upstream = Upstream("gone", f"http://127.0.0.1:{closed_port()}/v1", api_key_env="RG_TEST_KEY")
    with pytest.raises(UpstreamUnreachable) as info:
        await pool.chat(upstream, body("ok"))
    assert (info.value.status, info.value.code, info.value.type) == (
        502,
        "upstream_unreachable",
        "upstream_error",
    )
    assert info.value.message.startswith("Upstream gone is unreachable: ")
    assert KEY not in info.value.message
    with pytest.raises(UpstreamUnreachable):
        async with pool.stream(upstream, body("stream")):
            pass
    with pytest.raises(UpstreamUnreachable):
        await pool.models(upstream)


async def test_slow_upstream_times_out(server: TestServer, pool: UpstreamPool) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as info:
        await pool.chat(fake_upstream(server, read_timeout=0.2), body("slow"))
    assert loop.time() - started < 1
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    assert info.value.message == "Upstream fake sent nothing for 0.2s"


# --- streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["stream", "stream-batched", "stream-chopped"])
async def test_stream_yields_events_byte_for_byte(
    server: TestServer, pool: UpstreamPool, model: str
) -> None:
    async with pool.stream(fake_upstream(server), body(model, stream=True)) as events:
        assert events.status == 200
        assert events.first_chunk_at is not None
        assert events.first_chunk_at >= events.started > 0
        received = [event async for event in events]
    assert received == STREAM_EVENTS


async def test_stream_normalises_crlf_framing(server: TestServer, pool: UpstreamPool) -> None:
    assert await collect(pool, fake_upstream(server), body("stream-crlf")) == [
        b'data: {"a":1}\n\n',
        b'event: x\ndata: {"b":2}\n\n',
        b"data: [DONE]\n\n",
    ]


async def test_stream_ends_at_eof_without_done(server: TestServer, pool: UpstreamPool) -> None:
    assert await collect(pool, fake_upstream(server), body("stream-no-done")) == [
        STREAM_EVENTS[1],
        b'data: {"tail":true}\n\n',
    ]


async def test_stream_error_status_raises_before_streaming(
    server: TestServer, pool: UpstreamPool
) -> None:
    with pytest.raises(UpstreamHTTPError) as info:
        async with pool.stream(fake_upstream(server), body("err-429", stream=True)):
            pytest.fail("the body must not run")
    assert (info.value.status, info.value.message) == (429, "Slow down")


async def test_stream_silent_before_first_byte_times_out_on_enter(
    server: TestServer, pool: UpstreamPool
) -> None:
    for model in ("slow", "stream-slow-first"):
        with pytest.raises(UpstreamTimeout):
            async with (
                asyncio.timeout(1),
                pool.stream(fake_upstream(server, read_timeout=0.2), body(model)),
            ):
                pytest.fail("the body must not run")


@pytest.mark.parametrize("model", ["stream-die", "stream-crash", "stream-stall"])
async def test_stream_dying_midway_raises_from_iteration(
    server: TestServer, pool: UpstreamPool, model: str
) -> None:
    received: list[bytes] = []
    with pytest.raises(UpstreamError) as info:
        async with (
            asyncio.timeout(2),
            pool.stream(fake_upstream(server, read_timeout=0.2), body(model)) as events,
        ):
            async for event in events:
                received.append(event)
    assert received == STREAM_EVENTS[:2]
    expected = UpstreamTimeout if model == "stream-stall" else UpstreamUnreachable
    assert type(info.value) is expected


async def test_leaving_a_stream_early_hangs_up_on_the_upstream(
    server: TestServer, pool: UpstreamPool
) -> None:
    async with pool.stream(fake_upstream(server), body("stream-endless")) as events:
        async for event in events:
            assert event == STREAM_EVENTS[1]
            break
    await asyncio.wait_for(server.app[STOPPED].wait(), 1)


async def test_finished_stream_returns_its_connection_to_the_pool(
    server: TestServer, pool: UpstreamPool
) -> None:
    await collect(pool, fake_upstream(server), body("stream"))
    await pool.chat(fake_upstream(server), body("ok"))
    assert seen(server)[0].client_port == seen(server)[1].client_port


# --- models and chat_text --------------------------------------------------------------


async def test_models_returns_the_data_list(
    server: TestServer, pool: UpstreamPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RG_TEST_KEY", KEY)
    assert await pool.models(fake_upstream(server, api_key_env="RG_TEST_KEY")) == MODELS
    assert seen(server)[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_chat_text_extracts_the_content(server: TestServer, pool: UpstreamPool) -> None:
    messages = [{"role": "user", "content": "is this safe?"}]
    reply = await chat_text(
        pool, fake_upstream(server), "ok", messages, temperature=0.0, max_tokens=5
    )
    assert reply.text == "hello there"
    assert reply.usage == COMPLETION["usage"]
    assert reply.model == "served-model-v2"
    assert reply.duration > 0
    assert orjson.loads(seen(server)[0].body) == {
        "model": "ok",
        "messages": messages,
        "temperature": 0.0,
        "max_tokens": 5,
    }
    parts = await chat_text(pool, fake_upstream(server), "parts", messages)
    assert (parts.text, parts.usage, parts.model) == ("a\nb", None, "parts")
    with pytest.raises(UpstreamBadResponse):
        await chat_text(pool, fake_upstream(server), "tool-call", messages)
