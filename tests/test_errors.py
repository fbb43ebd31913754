"""Every bad input, and every upstream failure, gets the right status and an OpenAI error body."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import SELF_CHECK_PROMPTS, STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream

REFUSAL = "I'm sorry, I can't respond to that."
SECRET = "sk-test-SECRET-123456"
CHAT = "/v1/chat/completions"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def chat_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "m1",
        "messages": [user("hello")],
        "guardrails": {"config_id": "open"},
    }
    body.update(extra)
    return body


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def send(
    http: aiohttp.ClientSession,
    base: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    method: str = "POST",
    path: str = CHAT,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.request(method, f"{base}{path}", data=data, headers=send_headers) as resp:
        text = await resp.read()
        return resp.status, orjson.loads(text), resp


def assert_error(
    status: int,
    data: dict[str, Any],
    expected_status: int,
    message_part: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type_: str | None = None,
) -> None:
    assert status == expected_status, data
    assert set(data) == {"error", "detail"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert message_part in error["message"], error["message"]
    assert data["detail"] == error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    if type_ is not None:
        assert error["type"] == type_


# --- the request itself -------------------------------------------------------------


async def test_invalid_json(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data, _ = await send(http, base, raw=b'{"model": "m1", "messages": [')
    assert_error(status, data, 422, "not valid JSON", code="invalid_json")
    status, data, _ = await send(http, base, raw=b"")
    assert_error(status, data, 422, "not valid JSON", code="invalid_json")
    assert fake_upstream.received == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null"])
async def test_json_that_is_not_an_object(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, raw: bytes
) -> None:
    base = await start_railguard()
    status, data, _ = await send(http, base, raw=raw)
    assert_error(status, data, 422, "must be a JSON object", code="invalid_json")


@pytest.mark.parametrize(
    ("change", "message", "param"),
    [
        ({"model": None}, "Missing required field `model`.", "model"),
        ({"model": ""}, "`model`", "model"),
        (
            {"messages": "hello"},
            "Invalid field `messages`: Input should be a valid list",
            "messages",
        ),
        ({"messages": []}, "`messages`", "messages"),
        ({"messages": [1]}, "Invalid field `messages.0`", "messages.0"),
        (
            {"temperature": "0.5"},
            "Invalid field `temperature`: Input should be a valid number",
            "temperature",
        ),
        (
            {"max_tokens": 12.5},
            "Invalid field `max_tokens`: Input should be a valid integer",
            "max_tokens",
        ),
        ({"max_tokens": 12.0}, "Invalid field `max_tokens`", "max_tokens"),
        ({"stream": "yes"}, "Invalid field `stream`", "stream"),
        ({"stop": [1]}, "Invalid field `stop`", "stop"),
        (
            {"guardrails": {"config_id": "open", "thread_id": 1234567890123456789}},
            "Invalid field `guardrails.thread_id`: Input should be a valid string",
            "guardrails.thread_id",
        ),
        (
            {"guardrails": {"config_id": "open", "options": {"rails": {"input": 5}}}},
            "Invalid field `guardrails.options.rails.input`",
            "guardrails.options.rails.input",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "Invalid field `messages.0.content`",
            "messages.0.content",
        ),
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    message: str,
    param: str,
) -> None:
    base = await start_railguard()
    body = chat_body(**change)
    if change.get("model", "") is None:
        del body["model"]
    status, data, _ = await send(http, base, body)
    assert_error(status, data, 422, message, param=param, code="invalid_request")
    assert fake_upstream.received == []


async def test_config_id_together_with_config_ids(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    body = chat_body(guardrails={"config_id": "open", "config_ids": ["regex"]})
    status, data, _ = await send(http, base, body)
    assert_error(status, data, 422, "`config_id` and `config_ids` are mutually exclusive")


@pytest.mark.parametrize("config_id", ["nope", "../regex", "regex/../open", "/etc/passwd", ""])
async def test_unknown_config_id_is_never_a_path(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    config_id: str,
) -> None:
    base = await start_railguard()
    status, data, _ = await send(http, base, chat_body(guardrails={"config_id": config_id}))
    assert_error(
        status,
        data,
        422,
        f"Unknown guardrails configuration '{config_id}'",
        code="config_not_found",
        param="config_id",
    )
    assert "Available: input_only, open, regex, selfcheck." in data["detail"]
    # the same through config_ids, alone and combined
    for ids in ([config_id], ["open", config_id]):
        status, data, _ = await send(http, base, chat_body(guardrails={"config_ids": ids}))
        assert_error(status, data, 422, f"'{config_id}'", code="config_not_found")
    assert fake_upstream.received == []


async def test_no_config_and_no_default(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    assert len(STANDARD_CONFIGS) > 1
    base = await start_railguard(STANDARD_CONFIGS)
    body = chat_body()
    del body["guardrails"]
    status, data, _ = await send(http, base, body)
    assert_error(status, data, 422, "No guardrails configuration given", code="config_required")
    assert "--default-config-id" in data["detail"]
    assert fake_upstream.received == []


@pytest.mark.parametrize("thread_id", ["x" * 15, "x" * 256, "short"])
async def test_thread_id_length(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, thread_id: str
) -> None:
    base = await start_railguard()
    body = chat_body(guardrails={"config_id": "open", "thread_id": thread_id})
    status, data, _ = await send(http, base, body)
    assert_error(
        status,
        data,
        422,
        "The `thread_id` must be between 16 and 255 characters long.",
        param="guardrails.thread_id",
    )


@pytest.mark.parametrize("thread_id", ["x" * 16, "t" * 255])
async def test_valid_thread_id_is_refused_when_threads_are_off(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    thread_id: str,
) -> None:
    base = await start_railguard(thread_store="none")
    body = chat_body(guardrails={"config_id": "open", "thread_id": thread_id})
    status, data, _ = await send(http, base, body)
    assert_error(
        status,
        data,
        422,
        "Conversation threads are not enabled on this server.",
        code="threads_disabled",
        param="thread_id",
    )
    assert fake_upstream.received == []


async def test_unknown_path_is_404(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data, _ = await send(http, base, chat_body(), path="/v1/nothing/here")
    assert_error(status, data, 404, "Not found: POST /v1/nothing/here", code="not_found")
    status, data, _ = await send(http, base, method="GET", path="/v2/chat/completions")
    assert_error(status, data, 404, "Not found: GET /v2/chat/completions", code="not_found")


async def test_get_on_chat_completions_is_405(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data, resp = await send(http, base, method="GET")
    assert_error(
        status,
        data,
        405,
        "Method GET is not allowed on /v1/chat/completions",
        code="method_not_allowed",
    )
    assert resp.headers["Allow"] == "POST"


async def test_body_larger_than_the_limit_is_413(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(max_body_bytes=1000)
    status, data, _ = await send(http, base, chat_body(messages=[user("a" * 2000)]))
    assert_error(status, data, 413, "larger than the server's limit", code="request_too_large")
    assert fake_upstream.received == []
    # just under the limit still goes through
    status, data, _ = await send(http, base, chat_body(messages=[user("a" * 800)]))
    assert status == 200
    assert data["choices"][0]["message"]["content"] == "echo: " + "a" * 800


# --- the upstream fails ---------------------------------------------------------------


async def test_upstream_400_is_passed_back_with_its_message(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    upstream_error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    fake_upstream.next(status=400, body=orjson.dumps(upstream_error))
    status, data, _ = await send(http, base, chat_body())
    assert_error(
        status,
        data,
        400,
        "This model's maximum context length is 8192 tokens.",
        code="context_length_exceeded",
        type_="invalid_request_error",
    )
    assert data["detail"] == "This model's maximum context length is 8192 tokens."


async def test_upstream_429_is_429(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(status=429, body=b'{"error": {"message": "Rate limit reached"}}')
    status, data, _ = await send(http, base, chat_body())
    assert_error(status, data, 429, "Rate limit reached", type_="rate_limit_error")


async def test_upstream_500_is_502(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(status=500, body=b'{"error": {"message": "CUDA out of memory"}}')
    status, data, _ = await send(http, base, chat_body())
    assert_error(status, data, 502, "Upstream default failed with HTTP 500: CUDA out of memory")
    assert data["error"]["type"] == "upstream_error"


async def test_upstream_garbage_200_is_502(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(body=b"<html>gateway says hi</html>")
    status, data, _ = await send(http, base, chat_body())
    assert_error(status, data, 502, "not JSON", code="upstream_bad_response")
    fake_upstream.next(body=b"[1, 2, 3]")
    status, data, _ = await send(http, base, chat_body())
    assert_error(status, data, 502, "not an object", code="upstream_bad_response")


async def test_upstream_down_is_502(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(upstream_url=f"http://127.0.0.1:{closed_port()}/v1")
    status, data, _ = await send(http, base, chat_body())
    assert_error(
        status,
        data,
        502,
        "Upstream default is unreachable: Connection refused",
        code="upstream_unreachable",
    )
    assert "127.0.0.1" not in data["detail"]  # the upstream is named, its URL is not


async def test_upstream_too_slow_is_504_quickly(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(read_timeout=0.2)
    fake_upstream.next(delay=1)
    started = time.perf_counter()
    status, data, _ = await send(http, base, chat_body())
    elapsed = time.perf_counter() - started
    assert_error(status, data, 504, "sent nothing for 0.2s", code="upstream_timeout")
    assert elapsed < 0.9


async def test_no_upstream_for_the_model_is_422_naming_it(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(upstream_url=None)
    status, data, _ = await send(http, base, chat_body(model="llama-unrouted"))
    assert_error(status, data, 422, "'llama-unrouted'", code="model_not_routed", param="model")
    assert fake_upstream.received == []


async def test_streaming_request_with_upstream_down_is_a_json_error(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(upstream_url=f"http://127.0.0.1:{closed_port()}/v1")
    status, data, resp = await send(http, base, chat_body(stream=True))
    assert resp.content_type == "application/json"
    assert_error(status, data, 502, "is unreachable", code="upstream_unreachable")


async def test_streaming_request_with_upstream_error_status_is_a_json_error(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    fake_upstream.next(status=429, body=b'{"error": {"message": "slow down"}}')
    status, data, resp = await send(http, base, chat_body(stream=True))
    assert resp.content_type == "application/json"
    assert_error(status, data, 429, "slow down", type_="rate_limit_error")


# --- secrets never leak ---------------------------------------------------------------


async def test_secret_never_leaks_when_the_upstream_is_down(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base = await start_railguard(upstream_url=f"http://127.0.0.1:{closed_port()}/v1")
    auth = {"Authorization": f"Bearer {SECRET}"}
    for stream in (False, True):
        status, data, _ = await send(http, base, chat_body(stream=stream), headers=auth)
        assert status == 502
        assert SECRET not in orjson.dumps(data).decode()
    assert SECRET not in caplog.text
    assert all(SECRET not in str(record.args) for record in caplog.records)


async def test_secret_echoed_by_the_upstream_is_redacted(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    base = await start_railguard()
    echo = {
        "error": {
            "message": f"Incorrect API key provided: {SECRET}. Find your key elsewhere.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    auth = {"Authorization": f"Bearer {SECRET}"}
    for stream in (False, True):
        fake_upstream.next(status=401, body=orjson.dumps(echo))
        status, data, _ = await send(http, base, chat_body(stream=stream), headers=auth)
        assert_error(
            status, data, 401, "Incorrect API key provided: [redacted]", code="invalid_api_key"
        )
        assert SECRET not in orjson.dumps(data).decode()
    # the key did reach the upstream (it is the client's own), it just never comes back
    assert fake_upstream.main_calls[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text
    assert all(SECRET not in str(record.args) for record in caplog.records)


# --- rails that fail ------------------------------------------------------------------


def self_check_config(base_url: str, **railguard: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": [
            {
                "type": "self_check_input",
                "engine": "openai",
                "model": "judge-model",
                "parameters": {"base_url": base_url},
            }
        ],
        "rails": {"input": {"flows": ["self check input"]}},
        "prompts": SELF_CHECK_PROMPTS,
    }
    if railguard:
        config["railguard"] = railguard
    return config


async def test_self_check_model_down_fails_closed(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    broken = self_check_config(f"http://127.0.0.1:{closed_port()}/v1")
    base = await start_railguard({"guarded": broken})
    options = {"log": {"activated_rails": True}}
    body = chat_body(guardrails={"config_id": "guarded", "options": options})
    status, data, _ = await send(http, base, body)
    assert status == 200
    assert data["choices"][0]["message"] == {"role": "assistant", "content": REFUSAL}
    rail = data["guardrails"]["log"]["activated_rails"][0]
    assert rail["name"] == "self check input"
    assert rail["decisions"] == ["error: block"]
    assert rail["stop"] is True
    assert fake_upstream.main_calls == []
    assert fake_upstream.received == []  # the judge model lives elsewhere


async def test_self_check_model_down_with_on_error_allow_passes(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    lenient = self_check_config(
        f"http://127.0.0.1:{closed_port()}/v1",
        rails={"self check input": {"on_error": "allow"}},
    )
    strict = self_check_config(
        f"http://127.0.0.1:{closed_port()}/v1",
        on_error="allow",
        rails={"self check input": {"on_error": "block"}},  # the per-rail policy wins
    )
    base = await start_railguard({"lenient": lenient, "strict": strict})
    status, data, _ = await send(http, base, chat_body(guardrails={"config_id": "lenient"}))
    assert status == 200
    assert data["choices"][0]["message"]["content"] == "echo: hello"
    assert len(fake_upstream.main_calls) == 1
    status, data, _ = await send(http, base, chat_body(guardrails={"config_id": "strict"}))
    assert status == 200
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert len(fake_upstream.main_calls) == 1


async def test_self_check_model_too_slow_times_out_to_a_refusal(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
) -> None:
    judge = FakeUpstream()
    judge_server = await aiohttp_server(judge.app())
    # A prompt the fake does not recognise as a self check, so it follows its plan: sleep.
    config = self_check_config(str(judge_server.make_url("/v1")), rail_timeout=0.2)
    config["prompts"] = [
        {"task": "self_check_input", "content": "Block this? {{ user_input }}", "max_tokens": 3}
    ]
    judge.next(delay=1.5, content="No")
    base = await start_railguard({"slowjudge": config})
    options = {"log": {"activated_rails": True}}
    started = time.perf_counter()
    status, data, _ = await send(
        http, base, chat_body(guardrails={"config_id": "slowjudge", "options": options})
    )
    elapsed = time.perf_counter() - started
    assert status == 200
    assert data["choices"][0]["message"]["content"] == REFUSAL
    assert data["guardrails"]["log"]["activated_rails"][0]["decisions"] == ["timeout: block"]
    assert elapsed < 1.0
    assert len(judge.received) == 1  # the judge was asked, but too slow
    assert fake_upstream.main_calls == []


async def test_secret_echoed_to_a_rail_is_redacted_in_the_logs(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    judge = FakeUpstream()
    judge_server = await aiohttp_server(judge.app())
    config = self_check_config(str(judge_server.make_url("/v1")))
    config["prompts"] = [
        {"task": "self_check_input", "content": "Block this? {{ user_input }}", "max_tokens": 3}
    ]
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}"}}
    judge.next(status=401, body=orjson.dumps(echo))
    base = await start_railguard({"guarded": config})
    auth = {"Authorization": f"Bearer {SECRET}"}
    status, data, _ = await send(
        http, base, chat_body(guardrails={"config_id": "guarded"}), headers=auth
    )
    assert status == 200
    assert data["choices"][0]["message"]["content"] == REFUSAL  # fails closed
    # the judge is another server: the client's key never reached it, and the key-shaped
    # text it answers with is redacted all the same
    assert "Authorization" not in judge.received[0].headers
    assert fake_upstream.main_calls == []
    assert "Incorrect API key provided: [redacted]" in caplog.text  # the failure was logged
    assert SECRET not in caplog.text
    assert SECRET not in orjson.dumps(data).decode()
