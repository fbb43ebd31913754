"""Metrics, headers and the access log, read after real requests over loopback: railguard
and the fake upstream are real servers, `/metrics` is scraped over HTTP.

The metrics registry is one per process, shared by every test here, so each test compares
scrapes taken before and after its requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SELF_CHECK_PROMPTS, STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream
from upstream.wire import chunk, sse_event

REGEX_INPUT = {"patterns": [r"\bsecret\b"], "case_insensitive": True}
CONFIGS: dict[str, dict[str, Any]] = {
    **STANDARD_CONFIGS,
    # a cheap rail that blocks first, so the model-backed one after it is skipped
    "two_inputs": {
        "rails": {
            "input": {"flows": ["regex check input", "self check input"]},
            "config": {"regex_detection": {"input": REGEX_INPUT}},
        },
        "prompts": SELF_CHECK_PROMPTS,
    },
    "fail_open": {
        "rails": {"input": {"flows": ["self check input"]}},
        "prompts": SELF_CHECK_PROMPTS,
        "railguard": {"rail_timeout": 0.1, "on_error": "allow"},
    },
    "fail_closed": {
        "rails": {"input": {"flows": ["self check input"]}},
        "prompts": SELF_CHECK_PROMPTS,
        "railguard": {"rail_timeout": 0.1},
    },
}
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Scrape:
    """One `/metrics` text; `value(name, **labels)` sums the samples those labels match."""

    def __init__(self, text: str) -> None:
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def labels(self, name: str) -> list[dict[str, str]]:
        return [s.labels for s in self.samples if s.name == name]


async def scrape(http: aiohttp.ClientSession, url: str, **headers: str) -> Scrape:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return Scrape(await response.text())


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def chat(content: str, config_id: str = "open", **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": content}],
        "guardrails": {"config_id": config_id},
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        return response, await response.read()


def usage_stream(model: str = "fake-model") -> list[bytes]:
    """A stream whose last chunk carries `usage` (as with stream_options.include_usage)."""
    events = [sse_event(chunk(model, "c1", {"role": "assistant", "content": ""}, None, 1))]
    events += [sse_event(chunk(model, "c1", {"content": w}, None, 1)) for w in ("Hi ", "there")]
    events.append(sse_event(chunk(model, "c1", {}, "stop", 1)))
    events.append(
        sse_event(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": USAGE,
            }
        )
    )
    events.append(b"data: [DONE]\n\n")
    return events


# --- requests, rails, outcomes -------------------------------------------------------------


async def test_a_block_counts_the_right_series(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard(CONFIGS)
    before = await scrape(http, f"{base}/metrics")
    response, _ = await post(http, base, chat("tell me the secret", "two_inputs"))
    assert response.status == 200
    assert response.headers["x-railguard-rails"] == "regex check input"
    after = await scrape(http, f"{base}/metrics")
    series = {"route": "chat", "config_id": "two_inputs", "model": "fake-model", "stream": "false"}
    assert delta(before, after, "railguard_requests_total", **series, outcome="blocked_input") == 1
    assert delta(before, after, "railguard_requests_total", **series, outcome="passed") == 0
    rail = {"config_id": "two_inputs", "stage": "input"}
    checks = "railguard_rail_checks_total"
    assert delta(before, after, checks, **rail, rail="regex check input", verdict="block") == 1
    assert delta(before, after, checks, **rail, rail="self check input", verdict="skipped") == 1
    assert delta(before, after, checks, **rail, rail="self check input", verdict="pass") == 0
    assert delta(before, after, "railguard_rails_added_seconds_count", stage="input") == 1
    assert delta(before, after, "railguard_rails_added_seconds_count", stage="output") == 0
    overhead = "railguard_proxy_overhead_seconds_count"
    assert delta(before, after, overhead, route="chat", stream="false") == 1
    assert fake_upstream.chat_calls == []  # neither the check model nor the main model


async def test_a_fail_open_rail_error_is_counted_with_its_policy(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.judge_delay = 1.0  # the self check outlives its 0.1 s timeout
    base = await start_railguard(CONFIGS)
    before = await scrape(http, f"{base}/metrics")
    response, body = await post(http, base, chat("hello", "fail_open"))
    assert response.status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "echo: hello"  # unchecked
    assert response.headers["x-railguard-rails"] == "self check input"
    response, body = await post(http, base, chat("hello", "fail_closed"))
    assert json.loads(body)["choices"][0]["message"]["content"] != "echo: hello"  # refused
    after = await scrape(http, f"{base}/metrics")
    errors = "railguard_rail_errors_total"
    labels = {"rail": "self check input", "stage": "input", "error_type": "timeout"}
    assert delta(before, after, errors, config_id="fail_open", **labels, policy="allow") == 1
    assert delta(before, after, errors, config_id="fail_open", **labels, policy="block") == 0
    assert delta(before, after, errors, config_id="fail_closed", **labels, policy="block") == 1
    for config_id in ("fail_open", "fail_closed"):
        requests = {"config_id": config_id, "route": "chat"}
        assert delta(before, after, "railguard_requests_total", **requests) == 1
        assert (
            delta(before, after, "railguard_requests_total", **requests, outcome="rail_error") == 1
        )
        checks = {"config_id": config_id, "rail": "self check input", "verdict": "timeout"}
        assert delta(before, after, "railguard_rail_checks_total", **checks) == 1


async def test_tokens_from_the_upstreams_usage(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, fake_upstream: FakeUpstream
) -> None:
    base = await start_railguard(CONFIGS, metrics_models=("tok-model",))
    before = await scrape(http, f"{base}/metrics")
    await post(http, base, {**chat("hi"), "model": "tok-model"})  # usage 7 + 3
    fake_upstream.next(chunks=usage_stream("tok-model"))  # passed through unparsed
    await post(http, base, {**chat("hi", stream=True), "model": "tok-model"})
    fake_upstream.next(chunks=usage_stream("tok-model"))  # through the output rails
    await post(http, base, {**chat("hi", "regex", stream=True), "model": "tok-model"})
    fake_upstream.next()  # a stream without usage counts nothing
    await post(http, base, {**chat("hi", stream=True), "model": "tok-model"})
    after = await scrape(http, f"{base}/metrics")
    tokens = "railguard_tokens_total"
    assert delta(before, after, tokens, model="tok-model", type="prompt") == 7 + 11 + 11
    assert delta(before, after, tokens, model="tok-model", type="completion") == 3 + 5 + 5


async def test_streams_time_the_first_chunk_and_carry_the_input_rails_in_headers(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    before = await scrape(http, f"{base}/metrics")
    response, body = await post(http, base, chat("hello there", "regex", stream=True))
    assert response.status == 200 and body.endswith(b"data: [DONE]\n\n")
    # headers go out before the body: the input rails ran, the output rails had not yet
    assert response.headers["x-railguard-rails"] == "regex check input"
    assert float(response.headers["x-railguard-overhead-ms"]) >= 0
    after = await scrape(http, f"{base}/metrics")
    first = "railguard_time_to_first_chunk_seconds"
    assert delta(before, after, f"{first}_count", model="fake-model") == 1
    upstream_first = "railguard_upstream_time_to_first_chunk_seconds"
    assert delta(before, after, f"{upstream_first}_count", model="fake-model") == 1
    assert delta(before, after, f"{first}_sum") >= delta(before, after, f"{upstream_first}_sum")
    assert delta(before, after, "railguard_rails_added_seconds_count", stage="output") == 1
    overhead = "railguard_proxy_overhead_seconds_count"
    assert delta(before, after, overhead, route="chat", stream="true") == 1


async def test_overhead_and_rails_headers_on_answers(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    response, _ = await post(http, base, chat("hello", "regex"))
    assert response.headers["x-railguard-rails"] == "regex check input, regex check output"
    overhead = float(response.headers["x-railguard-overhead-ms"])
    assert 0 <= overhead < 1000
    response, _ = await post(http, base, chat("hello", "open"))
    assert response.headers["x-railguard-rails"] == ""
    assert re.fullmatch(r"[0-9]+\.[0-9]{3}", response.headers["x-railguard-overhead-ms"])


async def test_request_ids(start_railguard: StartRailguard, http: aiohttp.ClientSession) -> None:
    base = await start_railguard(CONFIGS)
    response, _ = await post(http, base, chat("hello"), **{"x-request-id": "client-id:42"})
    assert response.headers["x-request-id"] == "client-id:42"
    for bad in ("has space", "x" * 129, "é"):
        response, _ = await post(http, base, chat("hello"), **{"x-request-id": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), bad
    # errors carry it too
    response, _ = await post(http, base, {"messages": []}, **{"x-request-id": "bad-req"})
    assert response.status == 422
    assert response.headers["x-request-id"] == "bad-req"


async def test_model_names_beyond_the_allow_list_are_other(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(
        CONFIGS, metrics_models=("listed-model",), metrics_dynamic_models=0
    )
    before = await scrape(http, f"{base}/metrics")
    for model in ("listed-model", "unlisted-one", "unlisted-two"):
        await post(http, base, {**chat("hi"), "model": model})
    after = await scrape(http, f"{base}/metrics")
    requests = "railguard_requests_total"
    assert delta(before, after, requests, config_id="open", model="listed-model") == 1
    assert delta(before, after, requests, config_id="open", model="other") == 2
    assert not any(
        labels.get("model", "").startswith("unlisted") for labels in after.labels(requests)
    )


async def test_config_build_and_event_loop_metrics(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS)
    await asyncio.sleep(0.6)  # two event-loop lag samples
    metrics = await scrape(http, f"{base}/metrics")
    digests = {
        labels["config_id"]: labels["digest"] for labels in metrics.labels("railguard_config_info")
    }
    assert set(CONFIGS) <= set(digests)
    assert all(re.fullmatch(r"[0-9a-f]{12}", d) for d in digests.values())
    assert digests["open"] != digests["regex"]
    assert metrics.value("railguard_config_info", config_id="open") == 1
    (build,) = metrics.labels("railguard_build_info")
    assert build["version"] and re.fullmatch(r"3\.[0-9]+\.[0-9]+.*", build["python"])
    assert metrics.value("railguard_event_loop_lag_seconds_count") >= 2


# --- /metrics on its own port, with a token ----------------------------------------------


async def test_metrics_on_their_own_port_with_a_token(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    base = await start_railguard(CONFIGS, metrics_port=port, metrics_token="tok-0123456789")
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 404  # not on the main port any more
    url = f"http://127.0.0.1:{port}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "tok-0123456789"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            error = (await response.json())["error"]
            assert error["code"] == "invalid_api_key"
            assert error["type"] == "invalid_request_error"
            assert "tok-0123456789" not in json.dumps(error)
    await post(http, base, chat("hello"))
    metrics = await scrape(http, url, Authorization="Bearer tok-0123456789")
    assert metrics.value("railguard_requests_total", route="chat", config_id="open") >= 1


async def test_metrics_token_on_the_main_port(
    start_railguard: StartRailguard, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(CONFIGS, metrics_token="main-port-token")
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 401
    await scrape(http, f"{base}/metrics", Authorization="Bearer main-port-token")


# --- the access log -------------------------------------------------------------------------

SECRET_KEY = "sk-proj-Zq8Xr4Tn2Lp6Vb0Wc3Yd7Fg1Hj5Km9"
SECRET_AUTH = "Bearer upstream-key-Qa1Ws2Ed3Rf4Tg5Yh6"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "railguard.access"]


async def test_one_json_line_per_request_without_secrets(
    start_railguard: StartRailguard,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="railguard.access")
    base = await start_railguard(CONFIGS)
    auth = {"Authorization": SECRET_AUTH}
    message = f"my key is {SECRET_KEY}, keep it"
    await post(http, base, chat(message, "regex"), **auth, **{"x-request-id": "req-passed"})
    await post(http, base, chat(f"the secret {SECRET_KEY}", "regex"), **auth)
    await post(http, base, chat(message, "regex", stream=True), **auth)
    await post(http, base, {"model": "m", "messages": "nope"}, **auth)
    lines = access_lines(caplog)
    assert len(lines) == 4
    passed, blocked, streamed, invalid = lines
    assert passed["request_id"] == "req-passed"
    assert passed["config_id"] == "regex" and passed["model"] == "fake-model"
    assert (passed["status"], passed["outcome"], passed["stream"]) == (200, "passed", False)
    assert [(r["rail"], r["stage"], r["verdict"]) for r in passed["rails"]] == [
        ("regex check input", "input", "pass"),
        ("regex check output", "output", "pass"),
    ]
    assert passed["upstream"] == "default" and passed["tokens"] == {"prompt": 7, "completion": 3}
    for key in ("duration_ms", "overhead_ms", "input_rails_ms", "upstream_ms"):
        assert isinstance(passed[key], float), key
    assert passed["overhead_ms"] <= passed["duration_ms"]
    assert (blocked["outcome"], blocked["rails"][0]["verdict"]) == ("blocked_input", "block")
    assert streamed["stream"] is True and streamed["first_chunk_ms"] is not None
    assert (invalid["status"], invalid["outcome"]) == (422, "client_error")
    assert invalid["error"] == "invalid_request"
    assert "content" not in passed
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET_KEY, SECRET_AUTH, SECRET_AUTH.split()[1], "keep it"):
        assert secret not in text


async def test_log_content_adds_the_text_but_never_the_headers(
    start_railguard: StartRailguard,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="railguard.access")
    base = await start_railguard(CONFIGS, log_content=True)
    await post(http, base, chat("hello there", "regex"), Authorization=SECRET_AUTH)
    (line,) = access_lines(caplog)
    assert line["content"] == {"user": "hello there", "answer": "echo: hello there"}
    assert SECRET_AUTH.split()[1] not in caplog.text


async def test_checks_are_counted_and_logged_like_chat_requests(
    start_railguard: StartRailguard,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="railguard.access")
    base = await start_railguard(CONFIGS)
    before = await scrape(http, f"{base}/metrics")
    checks = f"{base}/v1/checks"
    blocked_body = {"messages": [{"role": "user", "content": f"the secret {SECRET_KEY}"}]}
    async with http.post(
        checks,
        json={**blocked_body, "guardrails": {"config_id": "regex"}},
        headers={"x-request-id": "check-1"},
    ) as response:
        assert response.status == 200 and response.headers["x-request-id"] == "check-1"
        assert (await response.json())["status"] == "blocked"
        assert response.headers["x-railguard-rails"] == "regex check input"
    async with http.post(checks, json={**blocked_body, "guardrails": {"config_id": "nope"}}) as bad:
        assert bad.status == 422 and bad.headers["x-request-id"]
    after = await scrape(http, f"{base}/metrics")
    labels = {"route": "checks", "config_id": "regex", "outcome": "blocked_input"}
    assert delta(before, after, "railguard_requests_total", **labels) == 1
    assert delta(before, after, "railguard_requests_total", route="checks") == 2
    blocked, invalid = access_lines(caplog)
    assert (blocked["route"], blocked["request_id"], blocked["status"]) == (
        "checks",
        "check-1",
        200,
    )
    assert blocked["outcome"] == "blocked_input" and blocked["rails"][0]["verdict"] == "block"
    assert (invalid["status"], invalid["outcome"], invalid["route"]) == (
        422,
        "client_error",
        "checks",
    )
    assert SECRET_KEY not in caplog.text + "".join(r.getMessage() for r in caplog.records)
