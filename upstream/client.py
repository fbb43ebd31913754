"""HTTP to OpenAI-compatible upstreams over pooled keep-alive connections.

This is the request hot path: everything about an upstream that does not change per
request (session, URLs, timeouts, static headers) is built once, bodies go through as
bytes, and streams are cut into SSE events with bytes operations, not per-line Python.
Every aiohttp failure leaves this module as an `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from yarl import URL

from upstream.errors import (
    UpstreamAnswerTooLarge,
    UpstreamBadResponse,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamEventTooLarge,
    UpstreamHTTPError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from upstream.routing import Upstream
from upstream.secrets import credential_values
from upstream.wire import completion_as_events, error_event

HOP_BY_HOP = frozenset(
    {
        # RFC 9110 §7.6.1: meaningful for one connection only
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        # describe the request railguard sends, so aiohttp or railguard set them
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "authorization",
        # the body is already read; forwarding this would wait for a 100 Continue
        "expect",
    }
)

# aiohttp must reap closed TLS transports itself only on Pythons without cpython#118960,
# and warns when asked to on the others.
_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13) <= sys.version_info < (3, 13, 1)
_FAILURES = (aiohttp.ClientError, TimeoutError)
_EVENT_END = b"\n\n"
MAX_EVENT_BYTES = 1024 * 1024
MAX_ANSWER_BYTES = 10 * 1024 * 1024  # one answer kept whole: a body, or a parsed stream's text


def forwardable_headers(client_headers: Mapping[str, str]) -> dict[str, str]:
    """The client's end-to-end headers: what may be passed on to an upstream."""
    return _forward(client_headers, HOP_BY_HOP)[0]


def _forward(
    client_headers: Mapping[str, str], drop: frozenset[str]
) -> tuple[dict[str, str], str | None]:
    """Client headers minus `drop` and those its Connection header names; and its Authorization."""
    kept: dict[str, str] = {}
    authorization: str | None = None
    connection = ""
    for name, value in client_headers.items():
        lower = name.lower()
        if lower not in drop:
            kept[name] = value
        elif lower == "authorization":
            authorization = value
        elif lower == "connection":
            connection = f"{connection},{value}"
    named = {token.strip().lower() for token in connection.split(",")} - HOP_BY_HOP - {""}
    if named:
        kept = {name: value for name, value in kept.items() if name.lower() not in named}
    return kept, authorization


@dataclass(slots=True)
class ChatResult:
    """A successful non-streaming completion, exactly as the upstream sent it."""

    status: int
    data: dict[str, Any]
    elapsed: float


class _Route:
    """What requests to one upstream share, built on first use."""

    __slots__ = (
        "_session",
        "_urls",
        "authorization",
        "chat_url",
        "drop",
        "max_answer_bytes",
        "models_url",
        "static",
        "upstream",
    )

    def __init__(self, upstream: Upstream, max_answer_bytes: int) -> None:
        self.upstream = upstream
        self.max_answer_bytes = max_answer_bytes
        self.chat_url = URL(f"{upstream.base_url}/chat/completions")
        self.models_url = URL(f"{upstream.base_url}/models")
        # A configured Authorization header is kept apart: an api key still overrides it.
        self.authorization: str | None = None
        static: dict[str, str] = {}
        for name, value in upstream.headers:
            if name.lower() == "authorization":
                self.authorization = value
            else:
                static[name] = value
        if all(name.lower() != "content-type" for name in static):
            static["Content-Type"] = "application/json"
        self.static = static
        # The upstream's own headers win over a client header of the same name.
        self.drop = HOP_BY_HOP | {name.lower() for name in static}
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def url(self, path: str) -> URL:
        """`base_url + path`, parsed once per path."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(f"{self.upstream.base_url}{path}")
        return url

    def headers(self, client_headers: Mapping[str, str] | None) -> dict[str, str]:
        headers, authorization = (
            _forward(client_headers, self.drop) if client_headers else ({}, None)
        )
        headers.update(self.static)
        key = self.upstream.api_key()
        if key:
            authorization = f"Bearer {key}"
        elif self.authorization is not None:
            authorization = self.authorization
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def session(self) -> aiohttp.ClientSession:
        """Created lazily because a ClientSession needs the running event loop."""
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                keepalive_timeout=30,
                enable_cleanup_closed=_CLEANUP_CLOSED,
                ttl_dns_cache=300,
            )
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.upstream.connect_timeout,
                sock_read=self.upstream.read_timeout,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def fetch(
        self, method: str, url: URL, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """Status and body of a 2xx answer; anything else raises an UpstreamError."""
        try:
            async with self.session().request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await self.read_body(resp, 200 <= status < 300)
                if not 200 <= status < 300:
                    raise _http_error(self.upstream, resp, raw, headers)
        except _FAILURES as exc:
            raise _failure(self.upstream, exc) from exc
        return status, raw

    async def read_body(self, resp: aiohttp.ClientResponse, ok: bool, first: bytes = b"") -> bytes:
        """The rest of a response's body after `first`, up to `max_answer_bytes`: past it,
        a 2xx answer raises UpstreamAnswerTooLarge and an error's body is cut there (it is
        only read for its message)."""
        limit = self.max_answer_bytes
        length = resp.content_length
        if length is not None and length <= limit:
            return first + await resp.content.read() if first else await resp.read()
        body = bytearray(first)
        while len(body) <= limit:
            part = await resp.content.readany()
            if not part:
                return bytes(body)
            body += part
        if ok:
            raise UpstreamAnswerTooLarge(limit, self.upstream.name)
        return bytes(body[:limit])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class UpstreamPool:
    """One pooled aiohttp.ClientSession per upstream, created lazily.

    Keyed by the whole (frozen) Upstream, which includes its name and base_url, so an
    upstream with other timeouts or headers never reuses stale per-upstream state.
    """

    def __init__(self, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._routes: dict[Upstream, _Route] = {}
        self.max_answer_bytes = max_answer_bytes  # a non-streamed answer's body

    def _route(self, upstream: Upstream) -> _Route:
        route = self._routes.get(upstream)
        if route is None:
            route = self._routes[upstream] = _Route(upstream, self.max_answer_bytes)
        return route

    def headers_for(
        self, upstream: Upstream, client_headers: Mapping[str, str] | None
    ) -> dict[str, str]:
        """Forwardable client headers, the upstream's own, and the Authorization to send.

        The upstream's api key wins; without one the client's Authorization goes through.
        """
        return self._route(upstream).headers(client_headers)

    async def chat(
        self, upstream: Upstream, body: bytes, client_headers: Mapping[str, str] | None = None
    ) -> ChatResult:
        """POST a non-streaming chat completion, sending `body` untouched."""
        route = self._route(upstream)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, raw = await route.fetch("POST", route.chat_url, body, route.headers(client_headers))
        return ChatResult(status, _json_object(upstream, raw), loop.time() - started)

    def stream(
        self,
        upstream: Upstream,
        body: bytes,
        client_headers: Mapping[str, str] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> UpstreamStream:
        """A streaming chat completion; use as `async with pool.stream(...) as events`.

        Asks for an uncompressed answer: events are cut and checked as they arrive, and a
        compressor upstream would hold them back.
        """
        route = self._route(upstream)
        headers = route.headers(client_headers)
        headers["Accept-Encoding"] = "identity"
        return UpstreamStream(route, body, headers, max_event_bytes)

    async def models(
        self, upstream: Upstream, client_headers: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The `data` list of the upstream's GET /models."""
        route = self._route(upstream)
        _, raw = await route.fetch("GET", route.models_url, None, route.headers(client_headers))
        data = _json_object(upstream, raw).get("data")
        if not isinstance(data, list):
            raise UpstreamBadResponse(f"Upstream {upstream.name} sent a model list without 'data'")
        return [model for model in data if isinstance(model, dict)]

    async def post_json(
        self,
        upstream: Upstream,
        path: str,
        payload: Mapping[str, Any],
        client_headers: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], float]:
        """POST `payload` to `base_url + path` of a JSON API that is not chat (a classifier);
        its JSON object answer and the seconds it took. `path` is "" or starts with "/"."""
        route = self._route(upstream)
        loop = asyncio.get_running_loop()
        started = loop.time()
        _, raw = await route.fetch(
            "POST", route.url(path), orjson.dumps(payload), route.headers(client_headers)
        )
        return _json_object(upstream, raw), loop.time() - started

    async def close(self) -> None:
        for route in self._routes.values():
            await route.close()


class UpstreamStream:
    """Async context manager: opens the streaming POST; errors before the first byte
    raise UpstreamError from __aenter__ (so the proxy can still answer with a proper status).

    Iterating yields complete SSE events as bytes, each ending with b"\\n\\n" exactly as
    the upstream sent them (\\r\\n framing normalised to \\n), so the proxy can forward them
    byte for byte. A connection that dies or times out mid-stream, an event longer than
    `max_event_bytes`, or an error event (`data: {"error": ...}`) raises UpstreamError
    from the iterator (one in the first read raises from __aenter__); EOF ends iteration,
    even without [DONE]. __aexit__ releases the response, closing the connection if the stream
    did not finish so a cancelled stream stops the upstream generating.
    """

    __slots__ = (
        "_body",
        "_buf",
        "_eof",
        "_headers",
        "_max_event",
        "_resp",
        "_route",
        "first_chunk_at",
        "started",
        "status",
        "waited",
    )

    def __init__(
        self, route: _Route, body: bytes, headers: dict[str, str], max_event_bytes: int
    ) -> None:
        self._route = route
        self._body = body
        self._headers = headers
        self._max_event = max_event_bytes
        self._resp: aiohttp.ClientResponse | None = None
        self._buf = bytearray()
        self._eof = False
        self.status = 0
        self.started = 0.0  # time.perf_counter() instants
        self.first_chunk_at: float | None = None
        self.waited = 0.0  # seconds spent waiting for the upstream's bytes after the first

    async def __aenter__(self) -> UpstreamStream:
        route = self._route
        self.started = time.perf_counter()
        try:
            resp = await route.session().post(
                route.chat_url, data=self._body, headers=self._headers, allow_redirects=False
            )
        except _FAILURES as exc:
            raise _failure(route.upstream, exc) from exc
        self.status = resp.status
        ok = 200 <= resp.status < 300
        try:
            # Waiting for the first chunk here keeps "failed before any output" an
            # error the proxy can still answer with a status code.
            first = await (resp.content.readany() if ok else route.read_body(resp, ok))
        except _FAILURES as exc:
            resp.close()
            raise _failure(route.upstream, exc) from exc
        except BaseException:
            resp.close()
            raise
        if not ok:
            resp.release()
            raise _http_error(route.upstream, resp, first, self._headers)
        if resp.content_type == "application/json":
            await self._answered_whole(resp, first)
            return self
        if first:
            self.first_chunk_at = time.perf_counter()
            self._feed(first)
            if b'"error"' in first:
                self._refuse_an_error_first(resp)
        else:
            self._eof = True
        self._resp = resp
        return self

    def _refuse_an_error_first(self, resp: aiohttp.ClientResponse) -> None:
        """An error event before any chunk: still an error the proxy can answer with a
        status, like a failed HTTP request, instead of a stream that fails at once."""
        end = self._buf.find(_EVENT_END)
        data = error_event(bytes(self._buf[: end + 2])) if end >= 0 else None
        if data is not None:
            resp.close()
            raise UpstreamStreamError(
                self._route.upstream.name, data, credential_values(self._headers)
            )

    async def _answered_whole(self, resp: aiohttp.ClientResponse, first: bytes) -> None:
        """The upstream ignored `stream: true` and sent one JSON completion: stream it."""
        try:
            raw = await self._route.read_body(resp, True, first)
        except _FAILURES as exc:
            resp.close()
            raise _failure(self._route.upstream, exc) from exc
        except UpstreamAnswerTooLarge:
            resp.close()
            raise
        resp.release()
        self._buf = bytearray(completion_as_events(_json_object(self._route.upstream, raw)))
        self._eof = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resp, self._resp = self._resp, None
        if resp is None:
            return
        if resp.content.is_eof():
            resp.release()
        else:
            resp.close()

    def abort(self) -> None:
        """Stop the upstream now (a rail blocked): close the connection, end iteration."""
        self._eof = True
        self._buf.clear()
        if self._resp is not None:
            self._resp.close()

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        event = await self._next_event()
        if b'"error"' in event:
            data = error_event(event)
            if data is not None:
                raise UpstreamStreamError(
                    self._route.upstream.name, data, credential_values(self._headers)
                )
        return event

    async def _next_event(self) -> bytes:
        while True:
            end = self._buf.find(_EVENT_END)
            if end >= 0:
                return self._take(end + 2)
            if self._eof:
                return self._take_rest()
            if len(self._buf) > self._max_event:
                raise UpstreamEventTooLarge(self._route.upstream.name, self._max_event)
            chunk = await self._read()
            if not chunk:
                self._eof = True
            elif (
                not self._buf
                and len(chunk) <= self._max_event
                and b"\r" not in chunk
                and chunk.find(_EVENT_END) == len(chunk) - 2
            ):
                return chunk  # the usual case: one whole event per read, passed on uncopied
            else:
                self._feed(chunk)

    async def _read(self) -> bytes:
        if self._resp is None:
            raise RuntimeError("iterate an UpstreamStream inside 'async with'")
        started = time.perf_counter()
        try:
            return await self._resp.content.readany()
        except _FAILURES as exc:
            raise _failure(self._route.upstream, exc) from exc
        finally:
            self.waited += time.perf_counter() - started

    def _feed(self, chunk: bytes) -> None:
        self._buf += chunk
        if b"\r" in chunk:
            # A trailing \r stays until its \n arrives with the next read.
            self._buf = self._buf.replace(b"\r\n", b"\n")

    def _take(self, size: int) -> bytes:
        if size > self._max_event:
            raise UpstreamEventTooLarge(self._route.upstream.name, self._max_event)
        event = bytes(self._buf[:size])
        del self._buf[:size]
        return event

    def _take_rest(self) -> bytes:
        """At EOF: an unterminated last event still counts; blank leftovers end the stream."""
        rest = bytes(self._buf).rstrip(b"\r\n")
        self._buf.clear()
        if not rest.strip():
            raise StopAsyncIteration
        if len(rest) > self._max_event:
            raise UpstreamEventTooLarge(self._route.upstream.name, self._max_event)
        return rest + _EVENT_END


def _json_object(upstream: Upstream, raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamBadResponse(f"Upstream {upstream.name} sent a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamBadResponse(f"Upstream {upstream.name} sent JSON that is not an object")
    return data


def _http_error(
    upstream: Upstream, resp: aiohttp.ClientResponse, raw: bytes, sent: Mapping[str, str]
) -> UpstreamHTTPError:
    """An upstream may echo the credentials it got, so those are kept out of the message."""
    return UpstreamHTTPError.from_body(
        upstream.name, resp.status, raw, credential_values(sent), resp.headers
    )


def _failure(upstream: Upstream, exc: BaseException) -> UpstreamError:
    """The UpstreamError for an aiohttp/timeout exception; never includes URLs or headers."""
    name = upstream.name
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"Upstream {name} did not accept a connection within {upstream.connect_timeout:g}s"
        )
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Upstream {name} sent nothing for {upstream.read_timeout:g}s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamUnreachable(f"Upstream {name} broke off its response")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectFailed(f"Upstream {name} is unreachable: {_reason(exc)}")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return UpstreamUnreachable(f"Upstream {name} is unreachable: {_reason(exc)}")
    return UpstreamBadResponse(f"Upstream {name} sent an invalid HTTP response")


def _reason(exc: aiohttp.ClientConnectionError) -> str:
    """Why a connection failed, without the address: asyncio's strerror carries it
    ("Connect call failed ('10.0.0.5', 8000)"), so the errno's own text is used."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"name resolution failed ({exc.strerror or 'unknown error'})"
    errno_ = exc.errno if isinstance(exc, OSError) else None
    if isinstance(errno_, int) and errno_ > 0:
        return os.strerror(errno_)
    return type(exc).__name__
