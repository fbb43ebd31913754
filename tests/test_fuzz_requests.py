"""No client input is a server error: thousands of generated bodies (the whole request
schema, well typed and not) sent over HTTP to running railguards with rails, threads
and states, each answered 2xx or 4xx with an OpenAI error body and no ERROR log line.

Hypothesis runs in a worker thread and sends each body through the test's event loop,
where railguard, the fake upstream and one keep-alive client session live; derandomized,
so CI runs the same bodies every time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.request_strategies import chat_bodies, http_bodies, upstream_answers, weighted
from upstream.wire import DONE_EVENT, chunk, sse_event

CONFIGS: dict[str, dict[str, Any]] = {
    **STANDARD_CONFIGS,
    "masking": {
        "rails": {
            "input": {"flows": ["mask sensitive data on input"]},
            "output": {"flows": ["mask sensitive data on output"]},
            "config": {
                "sensitive_data_detection": {
                    "input": {"entities": ["PHONE_NUMBER", "EMAIL_ADDRESS"]},
                    "output": {"entities": ["EMAIL_ADDRESS"]},
                }
            },
        }
    },
    "tools": {
        "rails": {
            "tool_input": {"flows": ["tool result validation"]},
            "tool_output": {"flows": ["tool call validation"]},
            "output": {
                "flows": ["regex check output"],
                "streaming": {"enabled": True, "chunk_size": 2, "context_size": 1},
            },
            "config": {"regex_detection": {"output": {"patterns": [r"\d{3}-\d{2}-\d{4}"]}}},
        }
    },
}
IDS = sorted(CONFIGS)
SECRET = "fuzz-state-secret"
ERROR_KEYS = {"message", "type", "param", "code"}
CONTENT_TYPES = ["application/json", "application/json", "text/plain", None]
TIMEOUT = aiohttp.ClientTimeout(total=20)


def chat_case() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.tuples(st.just("/v1/chat/completions"), http_bodies(chat_bodies(IDS)))


def checks_case() -> st.SearchStrategy[tuple[str, bytes]]:
    return st.tuples(st.just("/v1/checks"), http_bodies(chat_bodies(IDS, model=False)))


cases = st.tuples(
    weighted((5, chat_case()), (1, checks_case())),
    st.integers(0, 2),  # which server
    st.sampled_from(CONTENT_TYPES),
    upstream_answers,
)


def plan_for(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fake upstream's plan for one answer (valid OpenAI JSON and SSE either way)."""
    if answer is None:
        return None  # its echo of the last user message
    if "content" in answer:
        return {"content": answer["content"]}
    message = {"role": "assistant", "content": None, "tool_calls": answer["tool_calls"]}
    events = [sse_event(chunk("m1", "c-up", {"role": "assistant", "content": ""}, None, 7))]
    for index, call in enumerate(answer["tool_calls"]):
        events.append(
            sse_event(chunk("m1", "c-up", {"tool_calls": [{**call, "index": index}]}, None, 7))
        )
    events += [sse_event(chunk("m1", "c-up", {}, "tool_calls", 7)), DONE_EVENT]
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return {"extra": {"choices": [choice]}, "chunks": events}


def check_answer(path: str, status: int, headers: Any, raw: bytes) -> str:
    """Assert the answer is a client error with an OpenAI body or a success; its kind."""
    assert status < 500, raw[:2000]
    if status >= 400:
        data = orjson.loads(raw)
        assert set(data) == {"error", "detail"}, data
        error = data["error"]
        assert set(error) == ERROR_KEYS, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        assert error["param"] is None or isinstance(error["param"], str), error
        assert error["code"] is None or isinstance(error["code"], str), error
        return f"{status} {error['code']} {error['param']}"
    assert status == 200, raw[:2000]
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        assert raw.endswith(DONE_EVENT), raw[-2000:]
        for event in raw.split(b"\n\n")[:-2]:
            data = orjson.loads(event.removeprefix(b"data: "))
            if "error" in data:  # a stream's error event: never the server's own fault
                assert data["error"]["type"] != "server_error", data
        return "stream"
    data = orjson.loads(raw)
    if path == "/v1/checks":
        assert data["status"] in ("passed", "modified", "blocked"), data
        return f"check {data['status']}"
    assert data["choices"] and "guardrails" in data, data
    return "completion"


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
async def test_no_client_input_is_a_server_error(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bases = [
        await start_railguard(CONFIGS),  # threads in memory, unsigned states
        await start_railguard(CONFIGS, state_secret=SECRET, default_config_id="regex"),
        await start_railguard(CONFIGS, thread_store="none", default_config_id="tools"),
    ]
    loop = asyncio.get_running_loop()
    kinds: Counter[str] = Counter()

    async def send(
        path: str, body: bytes, server: int, content_type: str | None, answer: Any
    ) -> tuple[int, Any, bytes]:
        fake_upstream.received.clear()
        fake_upstream.plans.clear()
        plan = plan_for(answer)
        if plan is not None:
            fake_upstream.next(**plan)
        headers = {"Content-Type": content_type} if content_type else {}
        async with http.post(
            bases[server] + path, data=body, headers=headers, timeout=TIMEOUT
        ) as resp:
            raw = await resp.read()
        await asyncio.sleep(0)  # let the handler finish its logging after the last byte
        return resp.status, resp.headers, raw

    @settings(
        max_examples=2500,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: tuple[tuple[str, bytes], int, str | None, Any]) -> None:
        (path, body), server, content_type, answer = case
        sent = asyncio.run_coroutine_threadsafe(
            send(path, body, server, content_type, answer), loop
        )
        status, headers, raw = sent.result()
        kinds[check_answer(path, status, headers, raw)] += 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        caplog.clear()
        assert not errors, [r.getMessage() for r in errors]

    with caplog.at_level(logging.WARNING):
        await asyncio.to_thread(fuzz)
    print(sorted(kinds.items()))
    # the bodies reach the rails and the model, not only the validation
    assert kinds["completion"] >= 200 and kinds["stream"] >= 40, kinds
    assert kinds["check passed"] + kinds["check blocked"] + kinds["check modified"] >= 50, kinds
