"""The OpenAI chat-completions wire format: the one place that knows its shapes.

Everything that builds or reads OpenAI JSON and server-sent events goes through here,
so a change in the format is a change in one file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

DONE_EVENT = b"data: [DONE]\n\n"
SSE_CONTENT_TYPE = "text/event-stream"


def new_completion_id() -> str:
    return f"chatcmpl-rg-{uuid.uuid4().hex}"


def sse_event(obj: Any) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The payload of an SSE event's `data:` lines, or None when it has none (comments, pings)."""
    parts = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.splitlines()
    ]
    data = [p for p in parts if p is not None]
    if not data:
        return None
    return b"\n".join(data)


def is_done(event: bytes) -> bool:
    return event.startswith((b"data: [DONE]", b"data:[DONE]"))


def event_json(event: bytes) -> Any:
    """The JSON an SSE event carries; None for comments, pings and [DONE].

    Raises ValueError (orjson's JSONDecodeError) when the data is not JSON.
    """
    if event.startswith(b"data: ") and event.find(b"\n") == len(event) - 2:
        payload: bytes | None = event[6:-2]  # the usual one-line event
    else:
        payload = event_data(event)
    if payload is None or payload == b"[DONE]":
        return None
    return orjson.loads(payload)


def delta_contents(data: Any) -> list[tuple[int, str]]:
    """(choice index, text) for each choice of a chunk whose delta carries content."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return []
    contents = []
    for position, choice in enumerate(choices):
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        text = content_text(delta.get("content"))
        if text:
            index = choice.get("index")
            contents.append((index if isinstance(index, int) else position, text))
    return contents


REASONING_FIELDS = ("reasoning_content", "reasoning")  # vLLM and DeepSeek; vLLM, Ollama


def reasoning_text(fields: dict[str, Any]) -> str:
    """The reasoning a message or delta carries: `reasoning_content` and/or `reasoning`
    (a server sending both with the same text counts it once)."""
    first = fields.get("reasoning_content")
    second = fields.get("reasoning")
    first = first if isinstance(first, str) else ""
    second = second if isinstance(second, str) else ""
    return first if second == first or not second else first + second


def logprobs_text(logprobs: Any) -> str:
    """The text a choice's `logprobs` tokens spell (its `content` and `refusal` lists)."""
    if not isinstance(logprobs, dict):
        return ""
    tokens: list[str] = []
    for key in ("content", "refusal"):
        entries = logprobs.get(key)
        if isinstance(entries, list):
            tokens.extend(
                e["token"]
                for e in entries
                if isinstance(e, dict) and isinstance(e.get("token"), str)
            )
    return "".join(tokens)


def arguments_text(call: Any) -> str:
    """A tool call's (or the deprecated `function_call`'s) `function.arguments` text."""
    if not isinstance(call, dict):
        return ""
    function = call.get("function", call)  # a function_call is its own function
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if isinstance(arguments, str) else ""


def delta_texts(data: Any, reasoning: bool = True) -> list[tuple[int, str, str]]:
    """(choice index, text, content) for each choice of a chunk that carries text: the
    text output rails check is everything the model wrote into the delta, in reading
    order (reasoning when `reasoning`, content, refusal, tool-call argument fragments);
    `content` is the part of it that is the answer's content. A chunk's `logprobs`
    tokens that spell something else are text of their own, under the pseudo choice
    `logprobs_choice(index)`, so they are checked as one text too."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return []
    texts = []
    for position, choice in enumerate(choices):
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        index = choice.get("index")
        index = index if isinstance(index, int) else position
        content = content_text(delta.get("content"))
        if len(delta) == 1 and "content" in delta and choice.get("logprobs") is None:
            if content:  # the usual chunk: nothing but content
                texts.append((index, content, content))
            continue
        thought = reasoning_text(delta)
        refusal = delta.get("refusal")
        refusal = refusal if isinstance(refusal, str) else ""
        calls = delta.get("tool_calls")
        arguments = "".join(
            arguments_text(c) for c in (calls if isinstance(calls, list) else [calls]) if c
        )
        arguments += arguments_text(delta.get("function_call"))
        text = (thought if reasoning else "") + content + refusal + arguments
        if text:
            texts.append((index, text, content))
        tokens = logprobs_text(choice.get("logprobs"))
        if tokens and tokens != thought + content + refusal and (reasoning or not thought):
            texts.append((logprobs_choice(index), tokens, ""))
    return texts


def logprobs_choice(index: int) -> int:
    """The pseudo choice (< 0) under which choice `index`'s odd logprobs are checked."""
    return -1 - index


def delta_tool_calls(data: Any) -> tuple[list[tuple[int, Any]], list[int]]:
    """(choice index, tool-call delta) for each tool-call delta of a chunk, and the indexes
    of the choices the chunk finishes (those with a `finish_reason`)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return [], []
    calls: list[tuple[int, Any]] = []
    finished: list[int] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index")
        index = index if isinstance(index, int) else position
        delta = choice.get("delta")
        deltas = delta.get("tool_calls") if isinstance(delta, dict) else None
        if isinstance(deltas, list):
            calls.extend((index, call) for call in deltas)
        elif deltas is not None:
            calls.append((index, deltas))
        if choice.get("finish_reason") is not None:
            finished.append(index)
    return calls, finished


class ToolCallAssembler:
    """One choice's streamed tool calls, assembled from their deltas as the `openai` SDK
    assembles them: by `index`, strings concatenated, `type` and `index` replaced."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, delta: Any) -> None:
        if not isinstance(delta, dict):
            self._calls[-1 - len(self._calls)] = delta  # kept as is: validation rejects it
            return
        index = delta.get("index")
        if not isinstance(index, int):
            index = len(self._calls)
        call = self._calls.get(index)
        self._calls[index] = dict(delta) if call is None else _accumulate(call, delta)

    def calls(self) -> list[Any]:
        return [self._calls[index] for index in sorted(self._calls)]


def _accumulate(into: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    for key, value in delta.items():
        old = into.get(key)
        if old is None or key in ("index", "type"):
            into[key] = value
        elif isinstance(old, str) and isinstance(value, str):
            into[key] = old + value
        elif isinstance(old, dict) and isinstance(value, dict):
            into[key] = _accumulate(dict(old), value)
        elif value is not None:
            into[key] = value
    return into


def error_object(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": code}


def error_body(
    message: str, type_: str, code: str | int | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, with the message also under `detail`.

    The spec's ErrorResponse reads `detail`; OpenAI clients read `error`.
    """
    return {"error": error_object(message, type_, code, param), "detail": message}


def upstream_error_message(payload: Any) -> str | None:
    """The human message in an upstream's error JSON (OpenAI, vLLM, TGI, Ollama shapes)."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    return None


def upstream_error_fields(payload: Any) -> tuple[str | None, str | int | None, str | None]:
    """`type`, `code` and `param` of an upstream's error JSON as sent: strings (and an int
    code, as vLLM sends its status there); other values count as absent. Read from its
    `error` object, or from the top level where older vLLM puts them."""
    if not isinstance(payload, dict):
        return None, None, None
    err = payload.get("error")
    if not isinstance(err, dict):
        err = payload if isinstance(payload.get("message"), str) else {}
    type_, code, param = err.get("type"), err.get("code"), err.get("param")
    return (
        type_ if isinstance(type_, str) and type_ else None,
        code if isinstance(code, str | int) and not isinstance(code, bool) else None,
        param if isinstance(param, str) else None,
    )


def error_event(event: bytes) -> dict[str, Any] | None:
    """The JSON of a stream event that reports an error instead of a chunk (OpenAI and
    vLLM send `data: {"error": {...}}` when generation fails mid-stream), else None.
    Cheap for ordinary events: only one holding the bytes `"error"` is parsed."""
    if b'"error"' not in event:
        return None
    try:
        data = event_json(event)
    except ValueError:
        return None
    if not isinstance(data, dict) or "choices" in data:
        return None
    return data if isinstance(data.get("error"), dict | str) else None


def content_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the text parts of a content array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return str(content)


def answer_text(choice: dict[str, Any], message: dict[str, Any], reasoning: bool = True) -> str:
    """The text output rails check for one choice of a chat.completion: everything the
    model wrote. Reasoning (when `reasoning`) and content are one text, as the model wrote
    them (a phrase split between the two is seen whole, as on a stream); the refusal, each
    tool call's arguments, and the `logprobs` tokens when they spell something else follow,
    a line each. With reasoning unchecked, the logprobs of an answer with reasoning are
    not checked either: they spell that reasoning."""
    thought = reasoning_text(message)
    content = content_text(message.get("content"))
    refusal = message.get("refusal")
    refusal = refusal if isinstance(refusal, str) else ""
    parts = [(thought if reasoning else "") + content, refusal]
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        parts.extend(arguments_text(call) for call in calls)
    parts.append(arguments_text(message.get("function_call")))
    tokens = logprobs_text(choice.get("logprobs"))
    if tokens and tokens != thought + content + refusal and (reasoning or not thought):
        parts.append(tokens)
    return "\n".join(part for part in parts if part)


async def rewrite_message(
    message: dict[str, Any], rewrite: Callable[[str], Awaitable[str]], reasoning: bool = True
) -> None:
    """Put each text field of a message (reasoning when `reasoning`, content and its text
    parts, refusal, each call's arguments) through `rewrite`, in place, each on its own."""
    for key in (*(REASONING_FIELDS if reasoning else ()), "refusal"):
        if isinstance(message.get(key), str) and message[key]:
            message[key] = await rewrite(message[key])
    content = message.get("content")
    if isinstance(content, str) and content:
        message["content"] = await rewrite(content)
    elif isinstance(content, list):
        message["content"] = [
            {**part, "text": await rewrite(part["text"])}
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else part
            for part in content
        ]
    calls = message.get("tool_calls")
    for call in [*(calls if isinstance(calls, list) else []), message.get("function_call")]:
        function = call.get("function", call) if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = await rewrite(function["arguments"])


def refuse_choice(choice: dict[str, Any], message: dict[str, Any], refusal: str) -> None:
    """Patch a blocked choice to the refusal: no reasoning, refusal, tool calls or
    logprobs left (their text is the model's, and a rail blocked it)."""
    for key in (*REASONING_FIELDS, "refusal", "tool_calls", "function_call", "audio"):
        message.pop(key, None)
    message["content"] = refusal
    choice["finish_reason"] = "stop"
    if "logprobs" in choice:
        choice["logprobs"] = None


class MessageAssembler:
    """One choice's streamed deltas assembled into the message they spell (text fields
    concatenated, tool calls as `ToolCallAssembler` builds them): what a rewrite of a
    streamed answer rewrites."""

    __slots__ = ("_calls", "_function", "_texts")

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}
        self._calls: ToolCallAssembler | None = None
        self._function: dict[str, Any] | None = None

    def add(self, delta: dict[str, Any]) -> None:
        for key in (*REASONING_FIELDS, "content", "refusal"):
            value = delta.get(key)
            if key == "content" and isinstance(value, list):
                value = content_text(value)
            if isinstance(value, str) and value:
                self._texts.setdefault(key, []).append(value)
        calls = delta.get("tool_calls")
        if calls:
            self._calls = self._calls or ToolCallAssembler()
            for call in calls if isinstance(calls, list) else [calls]:
                self._calls.add(call)
        function = delta.get("function_call")
        if isinstance(function, dict):
            self._function = _accumulate(self._function or {}, function)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {key: "".join(parts) for key, parts in self._texts.items()}
        message.setdefault("content", "")
        if self._calls is not None:
            message["tool_calls"] = self._calls.calls()
        if self._function is not None:
            message["function_call"] = self._function
        return message


def completion(
    model: str, content: str, finish_reason: str = "stop", completion_id: str | None = None
) -> dict[str, Any]:
    """A chat.completion railguard answers itself (a refusal, or a rails-only check)."""
    return {
        "id": completion_id or new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": no_usage(),
    }


def no_usage() -> dict[str, Any]:
    """The `usage` of an answer railguard gives itself: no model was called for it."""
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a stream request asks for a last chunk with `usage` (`stream_options`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage_chunk(
    model: str, completion_id: str, usage: dict[str, Any], created: int | None = None
) -> dict[str, Any]:
    """The chunk that ends a stream asked for with `include_usage`: no choices, the usage."""
    event = chunk(model, completion_id, {}, None, created)
    event["choices"] = []
    event["usage"] = usage
    return event


def chunk(
    model: str,
    completion_id: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def first_message(response: dict[str, Any]) -> dict[str, Any] | None:
    """The first choice's message of a chat.completion, when it has one."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message
    return None


def completion_as_events(data: dict[str, Any]) -> bytes:
    """A whole chat.completion re-cut as the SSE stream it would have been.

    For upstreams that ignore `stream: true` and answer with JSON: the client asked for a
    stream and gets one, with the same id, fingerprint, content, tool calls, finish reasons
    and usage.
    """
    completion_id = str(data.get("id") or new_completion_id())
    model = str(data.get("model") or "")
    created = data.get("created") if isinstance(data.get("created"), int) else int(time.time())
    fingerprint = data.get("system_fingerprint")
    shared = {"system_fingerprint": fingerprint} if isinstance(fingerprint, str) else {}
    events = []
    choices = data.get("choices")
    for position, choice in enumerate(choices if isinstance(choices, list) else []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        message = choice.get("message")
        fields: dict[str, Any] = message if isinstance(message, dict) else {}
        delta = {k: v for k, v in fields.items() if v is not None}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [
                {"index": i, **call} if isinstance(call, dict) else call
                for i, call in enumerate(delta["tool_calls"])
            ]
        for piece in (delta, {}):
            event = {**chunk(model, completion_id, piece, None, created), **shared}
            event["choices"][0]["index"] = index
            if not piece:
                event["choices"][0]["finish_reason"] = choice.get("finish_reason") or "stop"
            events.append(sse_event(event))
    if isinstance(data.get("usage"), dict):
        last = {**usage_chunk(model, completion_id, data["usage"], created), **shared}
        events.append(sse_event(last))
    return b"".join(events) + DONE_EVENT
