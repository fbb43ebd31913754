"""Slow and surplus clients: deadlines for a request's head and body, and a cap on the
connections open at once.

aiohttp waits for a request's headers as long as a client keeps trickling them, so a few
hundred connections sending a byte now and then would hold the server's sockets for
good. Each connection goes through a thin protocol in front of aiohttp's own:
- **head:** a new connection, and a kept-alive one from the first byte of its next
  request, has `header_timeout` seconds to deliver the request's whole head, or it is
  closed without an answer (as Go's ReadHeaderTimeout and nginx do). Between requests a
  kept-alive connection is idle, which aiohttp's keep-alive timeout governs.
- **body:** once the head is in, the body must arrive within `body_timeout`: past it the
  request is answered 408 and the connection closed. The deadline covers reading the
  request only: a long answer, streamed or not, is never cut by it.
- **cap:** past `max_connections` open connections (counted across `--workers`, in
  shared memory), a new connection is answered 503 right away and closed; one that
  closes makes room again.
A deadline or a cap of 0 turns it off.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.sharedctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from proxy.errors import error_response
from upstream.wire import error_body

REFUSED_LINGER = 1.0  # seconds a refused connection is read (and dropped) before closing


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1024


class Slots:
    """Open connections of this process, against the cap."""

    def __init__(self) -> None:
        self.count = 0

    def take(self, limit: int) -> bool:
        if self.count >= limit:
            return False
        self.count += 1
        return True

    def give_back(self) -> None:
        self.count -= 1


class SharedSlots(Slots):
    """Open connections of every worker: a counter in shared memory, made before the fork."""

    def __init__(self) -> None:
        super().__init__()
        self._shared: multiprocessing.sharedctypes.Synchronized[int] = multiprocessing.get_context(
            "fork"
        ).Value("i", 0)

    def take(self, limit: int) -> bool:
        with self._shared.get_lock():
            if self._shared.value >= limit:
                return False
            self._shared.value += 1
            return True

    def give_back(self) -> None:
        with self._shared.get_lock():
            self._shared.value -= 1


def _refusal(limit: int) -> bytes:
    body = orjson.dumps(
        error_body(
            f"The server has as many connections open as it takes ({limit}); retry in a moment.",
            "server_error",
            "too_many_connections",
        )
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGuard:
    """The deadlines and the cap of one process; `middleware` goes in the app, and
    `protocols` makes the listening socket's protocol factory."""

    def __init__(self, limits: ConnectionLimits, slots: Slots | None = None) -> None:
        self.limits = limits
        self.slots = slots or Slots()
        self.open: dict[RequestHandler, _Connection] = {}
        self.refused: set[asyncio.Transport] = set()
        self._refusal = _refusal(limits.max_connections)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = self.open.get(request.protocol)
        if connection is not None:
            connection.begin()
        try:
            if self.limits.body_timeout > 0 and request.body_exists:
                try:
                    async with asyncio.timeout(self.limits.body_timeout):
                        await request.read()  # kept by aiohttp for the handler's read()
                except TimeoutError:
                    return self._body_too_slow()
            return await handler(request)
        finally:
            if connection is not None:
                connection.end()

    def _body_too_slow(self) -> web.Response:
        response = error_response(
            408,
            f"The request body did not arrive within {self.limits.body_timeout:g} s of its "
            "headers.",
            "invalid_request_error",
            "request_timeout",
        )
        response.force_close()
        return response

    def protocols(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            return _Connection(self, server)

        return make

    def refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 at once; read what the client still sends for a moment, so closing
        doesn't reset the connection before it has read the answer."""
        transport.write(self._refusal)
        if transport.can_write_eof():
            transport.write_eof()
        self.refused.add(transport)
        asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    def close_refused(self) -> None:
        for transport in list(self.refused):
            transport.close()


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the head deadline around it."""

    __slots__ = ("active", "counted", "guard", "handler", "server", "timer", "transport")

    def __init__(self, guard: ConnectionGuard, server: web.Server) -> None:
        self.guard = guard
        self.server = server
        self.handler: RequestHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.active = 0  # requests in the app's handlers
        self.counted = False  # holds one of the cap's slots

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        limit = self.guard.limits.max_connections
        if limit > 0:
            if not self.guard.slots.take(limit):
                self.guard.refuse(transport)
                return
            self.counted = True
        handler = self.handler = self.server()
        self.guard.open[handler] = self
        handler.connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        timeout = self.guard.limits.header_timeout
        if timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.active or self.handler is None or self.transport is None:
            return
        if self.transport.get_write_buffer_size():  # still answering the last request
            self._arm()
            return
        self.handler.force_close()

    def begin(self) -> None:
        self.active += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def end(self) -> None:
        self.active -= 1

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is None:  # refused: dropped
            return
        if self.timer is None and not self.active:  # the head of a kept-alive's next request
            self._arm()
        handler.data_received(data)

    def eof_received(self) -> None:
        if self.handler is not None:  # aiohttp's, like a refused one, lets the transport close
            self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        handler = self.handler
        if handler is None:
            if self.transport is not None:
                self.guard.refused.discard(self.transport)
            return
        if self.counted:
            self.counted = False
            self.guard.slots.give_back()
        self.guard.open.pop(handler, None)
        handler.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()
