"""Errors as clients read them: OpenAI's error envelope, with `detail` for spec clients.

Every failure leaves through here, so no traceback or secret ever reaches a client.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from upstream import UpstreamError
from upstream.wire import error_body

log = logging.getLogger("railguard.proxy")

JSON = "application/json"


class ApiError(Exception):
    """A request railguard refuses, with the status and OpenAI error fields to answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers

    @classmethod
    def from_upstream(cls, exc: UpstreamError) -> ApiError:
        """An upstream failure as the client sees it: the status, error fields and retry
        headers it maps to."""
        headers = dict(exc.headers) if exc.headers else None
        return cls(
            exc.status, exc.message, type_=exc.type, code=exc.code, param=exc.param, headers=headers
        )

    @property
    def label(self) -> str:
        """What the access log records as the error: its code, else its type."""
        return self.type if self.code is None else str(self.code)


def invalid(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(422, message, param=param, code=code)


def error_response(
    status: int,
    message: str,
    type_: str,
    code: str | int | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(message, type_, code, param)),
        content_type=JSON,
        headers=headers,
    )


def api_error_response(exc: ApiError) -> web.Response:
    return error_response(exc.status, exc.message, exc.type, exc.code, exc.param, exc.headers)


_HTTP_CODES = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return api_error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, type_ = _HTTP_CODES.get(exc.status, ("http_error", "invalid_request_error"))
        message = {
            404: f"Not found: {request.method} {request.path}",
            405: f"Method {request.method} is not allowed on {request.path}",
            413: "Request body is larger than the server's limit.",
        }.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, type_, code, headers=headers)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, "Internal server error.", "server_error", "internal_error")
