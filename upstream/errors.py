"""Why an upstream call failed, already shaped as the OpenAI error railguard answers with.

The proxy turns any `UpstreamError` into a response from its `status`, `message`, `code`
and `type` without knowing what went wrong. Messages never carry credentials: they name
the upstream, not its URL or headers, and text echoed from an upstream has the sent
Authorization token removed.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from upstream import wire

_MAX_TEXT = 500
_MIN_SECRET = 8  # shorter "secrets" would redact ordinary words from messages


class UpstreamError(Exception):
    """An upstream call failed; carries the HTTP status and OpenAI error type/code to send back."""

    status: int = 502
    code: str = "upstream_error"
    type: str = "upstream_error"

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

    A 4xx is the client's fault, so its status and the upstream's own message go back
    to the client; anything else is railguard's problem to report, as a 502.
    """

    def __init__(
        self, upstream: str, upstream_status: int, detail: str, code: str | None = None
    ) -> None:
        self.upstream_status = upstream_status
        if 400 <= upstream_status < 500:
            self.status = upstream_status
            self.type = "rate_limit_error" if upstream_status == 429 else "invalid_request_error"
            self.code = code or "upstream_error"
            super().__init__(detail)
        else:
            super().__init__(f"Upstream {upstream} failed with HTTP {upstream_status}: {detail}")

    @classmethod
    def from_body(
        cls, upstream: str, upstream_status: int, body: bytes, secrets: Iterable[str] = ()
    ) -> UpstreamHTTPError:
        """Read the upstream's error message and code from its JSON, else from its text."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        detail = wire.upstream_error_message(payload)
        if detail is None:
            text = body.decode("utf-8", "replace").strip()
            detail = text[:_MAX_TEXT] or f"HTTP {upstream_status} with an empty body"
        for secret in secrets:
            if len(secret) >= _MIN_SECRET:
                detail = detail.replace(secret, "[redacted]")
        return cls(upstream, upstream_status, detail, wire.upstream_error_code(payload))


class NoUpstreamError(Exception):
    """No upstream serves the requested model; the proxy answers 422."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"No upstream serves the model '{model}' and no default upstream is configured."
        )
        self.model = model


class UpstreamConfigError(Exception):
    """The upstreams file is invalid; the message names the file and the offending key."""
