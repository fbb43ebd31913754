"""Why an upstream call failed, already shaped as the OpenAI error railguard answers with.

The proxy turns any `UpstreamError` into a response from its `status`, `message`, `type`,
`code`, `param` and `headers` without knowing what went wrong. Messages never carry
credentials: they name the upstream, not its URL or headers, and text echoed from an
upstream has the request's credential values and anything shaped like a token removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from upstream import wire
from upstream.secrets import redact

_MAX_TEXT = 500
_MAX_FIELD = 200  # type, code and param are identifiers, not prose
# What a client needs to back off and retry as the upstream asked (the OpenAI SDKs read
# these); every other header of an upstream's error stays behind.
_RETRY_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-should-retry"})
_RETRY_PREFIX = "x-ratelimit-"
_MAX_HEADERS = 32
PASSED_STATUSES = frozenset({503})  # 5xx statuses a client can act on (retry after a pause)


def retry_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The upstream's Retry-After, retry-after-ms, x-should-retry and x-ratelimit-* headers."""
    kept = [
        (name, value)
        for name, value in headers.items()
        if name.lower() in _RETRY_HEADERS or name.lower().startswith(_RETRY_PREFIX)
    ]
    return tuple(kept[:_MAX_HEADERS])


class UpstreamError(Exception):
    """An upstream call failed; carries the HTTP status and OpenAI error type/code to send back."""

    status: int = 502
    code: str | int | None = "upstream_error"
    type: str = "upstream_error"
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # the upstream's retry headers, passed on

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnreachable(UpstreamError):
    """No response: the connection was refused, reset or lost."""

    code = "upstream_unreachable"


class UpstreamConnectFailed(UpstreamUnreachable):
    """No connection could be made: the request was never sent, so it is safe to retry."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect, or went silent, for longer than its timeout."""

    status = 504
    code = "upstream_timeout"


class UpstreamBadResponse(UpstreamError):
    """The upstream answered 2xx with something that is not the expected JSON or stream."""

    code = "upstream_bad_response"


class UpstreamEventTooLarge(UpstreamBadResponse):
    """A streamed event grew past the size limit without ending: stop reading it."""

    code = "stream_event_too_large"

    def __init__(self, upstream: str, limit: int) -> None:
        super().__init__(
            f"Upstream {upstream} sent a stream event larger than the limit of {limit} bytes "
            "(--stream-max-event-bytes); the stream was stopped."
        )


class UpstreamAnswerTooLarge(UpstreamBadResponse):
    """An upstream answer grew past the size limit: railguard keeps an answer whole in
    memory (a non-streamed body; a parsed stream's text, for the log and the thread), so
    it stops reading it there."""

    code = "answer_too_large"

    def __init__(self, limit: int, upstream: str | None = None) -> None:
        sender = f"Upstream {upstream}" if upstream else "The upstream"
        super().__init__(
            f"{sender} sent an answer larger than the limit of {limit} bytes "
            "(--max-answer-bytes); it was not read further."
        )


class UpstreamHTTPError(UpstreamError):
    """The upstream answered non-2xx.

    A 4xx is the client's to act on, and so is a 503 (retry later): its status, the
    upstream's own message, `type`, `code` and `param`, and its retry headers go back as
    sent. Anything else is railguard's problem to report, as a 502.
    """

    def __init__(
        self,
        upstream: str,
        upstream_status: int,
        detail: str,
        *,
        type_: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.upstream_status = upstream_status
        self.headers = headers
        if 400 <= upstream_status < 500 or upstream_status in PASSED_STATUSES:
            self.status = upstream_status
            self.type = type_ or _default_type(upstream_status)
            self.code = code
            self.param = param
            super().__init__(detail)
        else:
            super().__init__(f"Upstream {upstream} failed with HTTP {upstream_status}: {detail}")

    @classmethod
    def from_body(
        cls,
        upstream: str,
        upstream_status: int,
        body: bytes,
        secrets: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamHTTPError:
        """Read the upstream's error fields from its JSON, else its message from its text."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        secrets = tuple(secrets)
        detail = wire.upstream_error_message(payload)
        if detail is None:
            text = redact(body.decode("utf-8", "replace").strip(), secrets)
            detail = text[:_MAX_TEXT] or f"HTTP {upstream_status} with an empty body"
        type_, code, param = _clean_fields(payload, secrets)
        return cls(
            upstream,
            upstream_status,
            redact(detail, secrets),
            type_=type_,
            code=code,
            param=param,
            headers=retry_headers(headers or {}),
        )


class UpstreamStreamError(UpstreamError):
    """The upstream's stream carried an error event instead of a chunk: generation failed
    after the 200. Its fields are relayed as sent, like an HTTP error's."""

    def __init__(self, upstream: str, payload: dict[str, Any], secrets: Iterable[str] = ()) -> None:
        secrets = tuple(secrets)
        message = wire.upstream_error_message(payload)
        super().__init__(
            redact(message, secrets) if message else f"Upstream {upstream} sent an error event"
        )
        type_, self.code, self.param = _clean_fields(payload, secrets)
        self.type = type_ or self.type


def _default_type(status: int) -> str:
    """The OpenAI type for an error whose upstream said none."""
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _clean_fields(
    payload: Any, secrets: tuple[str, ...]
) -> tuple[str | None, str | int | None, str | None]:
    """The upstream's type, code and param, redacted and bounded like its message."""
    type_, code, param = wire.upstream_error_fields(payload)

    def clean(value: str | None) -> str | None:
        return None if value is None else redact(value, secrets)[:_MAX_FIELD]

    return clean(type_), clean(code) if isinstance(code, str) else code, clean(param)


class NoUpstreamError(Exception):
    """No upstream serves the requested model; the proxy answers 422."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"No upstream serves the model '{model}' and no default upstream is configured."
        )
        self.model = model


class UpstreamConfigError(Exception):
    """The upstreams file is invalid; the message names the file and the offending key."""
