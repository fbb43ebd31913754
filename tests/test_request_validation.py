"""Request validation: the roles a message may have (in the request and in a state's
history), and bodies nested too deeply to be written again; each a 422 naming the field."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.request import MAX_DEPTH, ROLES
from tests.conftest import STANDARD_CONFIGS, StartRailguard
from tests.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
THREAD = "thread-0123456789abcdef"


def nested(depth: int, leaf: Any = "x") -> Any:
    """`leaf` inside `depth` arrays."""
    for _ in range(depth):
        leaf = [leaf]
    return leaf


async def post(
    http: aiohttp.ClientSession, base: str, body: Any, path: str = CHAT
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(base + path, data=raw) as resp:
        return resp.status, orjson.loads(await resp.read())


def chat(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m1", "messages": messages, "guardrails": {"config_id": "regex"}, **extra}


def assert_422(data: dict[str, Any], param: str | None, *parts: str, code: str) -> None:
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param and error["code"] == code, error
    assert error["type"] == "invalid_request_error"
    for part in parts:
        assert part in error["message"], error["message"]


# --- roles ------------------------------------------------------------------------


async def test_every_spec_role_is_accepted(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    messages = [{"role": role, "content": f"a {role} message"} for role in ROLES]
    status, data = await post(http, base, chat([*messages, {"role": "user", "content": "hi"}]))
    assert status == 200, data
    sent = [m["role"] for m in fake_upstream.main_calls[-1].body["messages"]]
    assert sent == [*ROLES, "user"]


@pytest.mark.parametrize(
    ("message", "parts"),
    [
        ({"role": "wizard", "content": "hi"}, ["'wizard' is not a chat role", ", ".join(ROLES)]),
        ({"role": "User", "content": "hi"}, ["'User' is not a chat role"]),
        ({"role": "", "content": "hi"}, ["'' is not a chat role"]),
        ({"role": "context", "content": "hi"}, ["not a chat role", "`guardrails.context`"]),
        ({"role": 5, "content": "hi"}, ["a role is a string"]),
        ({"role": None, "content": "hi"}, ["a role is a string"]),
        ({"role": ["user"], "content": "hi"}, ["a role is a string"]),
    ],
)
async def test_an_unknown_role_is_a_422_naming_it(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    message: dict[str, Any],
    parts: list[str],
) -> None:
    base = await start_railguard()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, message]
    status, data = await post(http, base, chat(messages))
    assert status == 422
    assert_422(
        data, "messages.2.role", "Invalid field `messages.2.role`", *parts, code="invalid_request"
    )
    # the legacy shape (guardrails fields at the top level) is checked the same way
    legacy = {"model": "m1", "messages": messages, "config_id": "regex"}
    status, data = await post(http, base, legacy)
    assert status == 422
    assert_422(data, "messages.2.role", *parts, code="invalid_request")
    # and so is /v1/checks
    status, data = await post(http, base, {"messages": messages}, "/v1/checks")
    assert status == 422
    assert_422(data, "messages.2.role", *parts, code="invalid_request")
    assert fake_upstream.received == []


async def test_a_message_without_a_role_is_a_422(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard()
    status, data = await post(
        http, base, chat([{"role": "user", "content": "u"}, {"content": "x"}])
    )
    assert status == 422
    assert_422(
        data, "messages.1.role", "Missing required field `messages.1.role`.", code="invalid_request"
    )
    assert fake_upstream.received == []


def unsigned_state(messages: Any, config_id: str = "regex") -> dict[str, Any]:
    payload = orjson.dumps({"config_id": config_id, "messages": messages})
    return {"version": 1, "payload": base64.urlsafe_b64encode(payload).decode(), "signature": None}


@pytest.mark.parametrize(
    ("history", "part"),
    [
        ([{"role": "wizard", "content": "x"}], "`messages.0.role`: 'wizard' is not a chat role"),
        ([{"role": "user", "content": "x"}, {"content": "y"}], "`messages.1.role`"),
        ([{"role": 7, "content": "x"}], "a role is a string"),
        ([{"role": "user", "content": 5}], "`messages.0.content`"),
        ([1, 2], "`messages.0`"),
    ],
)
async def test_a_state_history_is_checked_like_the_request(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    history: list[Any],
    part: str,
) -> None:
    """An unsigned state's history is the client's to write: its messages go to the model
    as the request's do, so they are held to the same rules."""
    base = await start_railguard(STANDARD_CONFIGS)
    body = chat([{"role": "user", "content": "hi"}])
    body["guardrails"]["state"] = unsigned_state(history)
    status, data = await post(http, base, body)
    assert status == 422
    assert_422(data, "state", "The `state` can't be used", part, code="invalid_state")
    assert fake_upstream.received == []


# --- state signatures ---------------------------------------------------------------


@pytest.mark.parametrize("signature", ["é" * 64, "签名", "\u0000" * 64, "ü"], ids=range(4))
async def test_a_non_ascii_signature_is_refused_not_a_500(
    start_railguard: StartRailguard, http: aiohttp.ClientSession, signature: str
) -> None:
    base = await start_railguard(STANDARD_CONFIGS, state_secret="a-secret")
    first = chat([{"role": "user", "content": "hi"}])
    first["guardrails"]["state"] = {}
    _, data = await post(http, base, first)
    state = {**data["guardrails"]["state"], "signature": signature}
    body = chat([{"role": "user", "content": "again"}])
    body["guardrails"]["state"] = state
    status, data = await post(http, base, body)
    assert status == 422
    assert_422(data, "state", "its signature does not match", code="invalid_state")


# --- depth -----------------------------------------------------------------------------


DEEP = "__deep__"


def with_depth(body: dict[str, Any], levels: int) -> bytes:
    """`body` with its DEEP string replaced by `levels` arrays around a string (orjson
    writes 254 levels at most, so deeper bodies are written by hand)."""
    return orjson.dumps(body).replace(
        b'"' + DEEP.encode() + b'"', b"[" * levels + b'"x"' + b"]" * levels
    )


@pytest.mark.parametrize(
    ("where", "param"),
    [("part", "messages"), ("extra", "metadata"), ("context", "guardrails")],
)
@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 254, 255, 1000, 1025])
async def test_a_body_nested_too_deeply_is_a_422(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    where: str,
    param: str,
    depth: int,
) -> None:
    """Deeper than MAX_DEPTH levels in all: refused, naming the top-level field, whether
    railguard reads that field or not (with `thread_id`, the body is written again)."""
    base = await start_railguard()
    body = chat([{"role": "user", "content": "hi"}])
    body["guardrails"]["thread_id"] = THREAD
    if where == "part":  # body > messages > message > content > part > DEEP
        body["messages"][0]["content"] = [{"type": "text", "text": "hi", "x": DEEP}]
        levels = depth - 5
    elif where == "extra":  # body > DEEP
        body["metadata"] = DEEP
        levels = depth - 1
    else:  # body > guardrails > context > DEEP
        body["guardrails"]["context"] = {"k": DEEP}
        levels = depth - 3
    status, data = await post(http, base, with_depth(body, levels))
    if depth <= MAX_DEPTH:
        assert status == 200, data
        assert len(fake_upstream.main_calls) == 1
        return
    assert status == 422
    if depth > 1024:  # past what orjson reads: the field can't be named
        assert_422(data, None, "nested too deeply:", code="too_deep")
    else:
        assert_422(
            data,
            param,
            f"nested too deeply (in `{param}`)",
            f"at most {MAX_DEPTH}",
            code="too_deep",
        )
    assert fake_upstream.received == []


async def test_a_state_payload_nested_too_deeply_is_refused(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard(STANDARD_CONFIGS)
    message = {"role": "user", "content": "x", "extra": DEEP}
    payload = with_depth({"config_id": "regex", "messages": [message]}, 300)
    body = chat([{"role": "user", "content": "hi"}])
    state = {"version": 1, "payload": base64.urlsafe_b64encode(payload).decode()}
    body["guardrails"]["state"] = state
    status, data = await post(http, base, body)
    assert status == 422
    assert_422(data, "state", "its payload is nested too deeply", code="invalid_state")
    assert fake_upstream.received == []
