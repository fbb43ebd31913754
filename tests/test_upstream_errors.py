"""An upstream's error reaches the client as the upstream sent it: status, `type`, `code`,
`param`, message and retry headers; streamed or not; and never with a credential in it."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.stream_helpers import parsed, stream_config, upstream_events

CHAT = "/v1/chat/completions"
CLIENT_KEY = "sk-client-0123456789abcdef"
RATE_LIMIT_HEADERS = {
    "Retry-After": "3",
    "retry-after-ms": "2500",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "0",
    "x-ratelimit-reset-tokens": "2.5s",
    "x-should-retry": "true",
}
# (upstream status, its error JSON, its headers, the error object the client must see)
CASES: list[tuple[int, dict[str, Any], dict[str, str], dict[str, Any]]] = [
    (  # OpenAI's context-length error: every field set
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
        {},
        {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    ),
    (  # a code but no param
        401,
        {"error": {"message": "Invalid API key.", "type": "authentication_error", "code": "bad"}},
        {},
        {
            "message": "Invalid API key.",
            "type": "authentication_error",
            "param": None,
            "code": "bad",
        },
    ),
    (  # vLLM's shape: an odd type, its status as an int code
        404,
        {
            "object": "error",
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
        {},
        {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
    ),
    (  # no type, code or param at all: the type is filled in, the rest stays null
        422,
        {"error": {"message": "temperature must be at most 2", "param": "temperature"}},
        {},
        {
            "message": "temperature must be at most 2",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        },
    ),
    (  # OpenAI's rate limit: its type is "tokens", not rewritten to rate_limit_error
        429,
        {
            "error": {
                "message": "Rate limit reached for gpt-4o on tokens per min.",
                "type": "tokens",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        RATE_LIMIT_HEADERS,
        {
            "message": "Rate limit reached for gpt-4o on tokens per min.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        },
    ),
    (  # overloaded: passed through as 503 so the client backs off as told
        503,
        {"error": {"message": "The engine is overloaded.", "type": "server_error", "code": None}},
        {"Retry-After": "1"},
        {
            "message": "The engine is overloaded.",
            "type": "server_error",
            "param": None,
            "code": None,
        },
    ),
]


def chat_body(config_id: str = "open", **extra: Any) -> dict[str, Any]:
    return {
        "model": "m1",
        "messages": [{"role": "user", "content": "hello"}],
        "guardrails": {"config_id": config_id},
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse, bytes]:
    async with http.post(f"{base}{CHAT}", json=body, headers=headers) as resp:
        raw = await resp.read()
        data = orjson.loads(raw) if resp.content_type == "application/json" else None
        return resp.status, data, resp, raw


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("upstream_status", "sent", "headers", "seen"), CASES)
async def test_upstream_errors_reach_the_client_as_sent(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    stream: bool,
    upstream_status: int,
    sent: dict[str, Any],
    headers: dict[str, str],
    seen: dict[str, Any],
) -> None:
    base = await start_railguard()
    fake_upstream.next(
        status=upstream_status,
        body=orjson.dumps(sent),
        headers={**headers, "x-upstream-internal": "not for clients"},
    )
    status, data, resp, _ = await post(http, base, chat_body(stream=stream))
    assert status == upstream_status
    assert resp.content_type == "application/json"  # a stream that never opened: plain JSON
    assert data == {"error": seen, "detail": seen["message"]}
    for name, value in headers.items():
        assert resp.headers[name] == value
    assert "x-upstream-internal" not in resp.headers
    assert resp.headers["x-request-id"]
    assert len(fake_upstream.main_calls) == 1


async def test_other_upstream_5xx_is_502_with_its_retry_headers(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    sent = {"error": {"message": "engine crashed", "type": "server_error", "code": "boom"}}
    fake_upstream.next(status=500, body=orjson.dumps(sent), headers={"Retry-After": "2"})
    status, data, resp, _ = await post(http, base, chat_body())
    assert status == 502
    assert data["error"] == {
        "message": "Upstream default failed with HTTP 500: engine crashed",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    assert resp.headers["Retry-After"] == "2"


ERROR_EVENT = {
    "error": {
        "message": "Generation stopped: the engine ran out of memory.",
        "type": "server_error",
        "param": None,
        "code": "engine_oom",
    }
}


@pytest.mark.parametrize("config_id", ["open", "guarded"])
async def test_error_event_mid_stream_ends_the_stream_with_that_error(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
) -> None:
    """Decided: an upstream error event ends the stream; what came before it is delivered,
    then railguard's last event carries the upstream's error fields, then [DONE]."""
    base = await start_railguard(
        {"open": {"models": []}, "guarded": stream_config(chunk_size=2, context_size=1)}
    )
    events = upstream_events(["one ", "two ", "three"])
    fake_upstream.next(chunks=[*events[:3], b"data: " + orjson.dumps(ERROR_EVENT) + b"\n\n"])
    status, _, resp, raw = await post(http, base, chat_body(config_id, stream=True))
    assert status == 200 and resp.content_type == "text/event-stream"
    out = parsed(raw)
    assert out[-1] == "[DONE]"
    assert out[-2]["error"] == ERROR_EVENT["error"]
    assert "guardrails" in out[-2]
    text = "".join(
        (c.get("delta") or {}).get("content") or ""
        for event in out[:-2]
        for c in event.get("choices") or []
    )
    assert text == "one two "
    assert all("error" not in event for event in out[:-2])


async def test_error_event_before_any_chunk_is_a_plain_error_response(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(chunks=[b"data: " + orjson.dumps(ERROR_EVENT) + b"\n\n"])
    status, data, resp, _ = await post(http, base, chat_body(stream=True))
    assert status == 502
    assert resp.content_type == "application/json"
    assert data["error"] == ERROR_EVENT["error"]


# --- credentials in echoed error text -------------------------------------------------

CLIENT_CREDENTIALS = {
    "Authorization": f"Bearer {CLIENT_KEY}",
    "api-key": "azure-key-0123456789",
    "x-api-key": "anthropic-key-0123456789",
    "Cookie": "session=cookie-value-0123456789; theme=dark",
    "X-Tenant-Token": "tenant-token-0123456789",
}
CREDENTIAL_VALUES = (
    CLIENT_KEY,
    "azure-key-0123456789",
    "anthropic-key-0123456789",
    "cookie-value-0123456789",
    "tenant-token-0123456789",
)


def assert_no_credential(text: str) -> None:
    for value in CREDENTIAL_VALUES:
        assert value not in text, value


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_upstream_quoting_the_request_headers_leaks_no_credential(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = await start_railguard()
    fake_upstream.next(status=400, echo_headers=True)  # a text body, not JSON
    status, data, _, raw = await post(
        http, base, chat_body(stream=stream), **CLIENT_CREDENTIALS, **{"X-Tenant": "blue"}
    )
    assert status == 400
    message = data["error"]["message"]
    assert message.startswith("rejected request with headers {")
    assert "'X-Tenant': 'blue'" in message  # the rest of the text stays intact
    assert "'Cookie': '[redacted]'" in message
    assert_no_credential(raw.decode())
    assert_no_credential(caplog.text)
    # the client's credentials did reach its own upstream
    received = fake_upstream.main_calls[0].headers
    assert received["Authorization"] == f"Bearer {CLIENT_KEY}"
    assert received["x-api-key"] == "anthropic-key-0123456789"


async def test_key_shaped_text_is_redacted_even_when_railguard_never_sent_it(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    leaked = {
        "error": {
            "message": "Key sk-proj-abcdefghijklmnop is revoked; "
            "sent Authorization: Bearer abcdefghijklmnopqrstuvwx for org X.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    fake_upstream.next(status=401, body=orjson.dumps(leaked))
    status, data, _, _ = await post(http, base, chat_body())
    assert status == 401
    assert data["error"]["message"] == (
        "Key [redacted] is revoked; sent Authorization: Bearer [redacted] for org X."
    )
    assert data["error"]["code"] == "invalid_api_key"


async def test_a_mid_stream_error_event_is_redacted_too(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    event = {"error": {"message": f"lost auth {CLIENT_KEY} mid-way", "type": "server_error"}}
    events = upstream_events(["one"])
    fake_upstream.next(chunks=[*events[:2], b"data: " + orjson.dumps(event) + b"\n\n"])
    status, _, _, raw = await post(
        http, base, chat_body(stream=True), Authorization=f"Bearer {CLIENT_KEY}"
    )
    assert status == 200
    out = parsed(raw)
    assert out[-2]["error"]["message"] == "lost auth [redacted] mid-way"
    assert CLIENT_KEY not in raw.decode()
