"""How `railguard serve` listens: aiohttp's app runner behind the connection guard's
protocol, on one socket (shared with SO_REUSEPORT by `--workers`), until SIGTERM/SIGINT.

aiohttp's run_app can't put a protocol in front of its own, so this is its loop, kept
small: set up, listen, wait for a stop signal, stop listening, let requests in flight
finish (up to SHUTDOWN_TIMEOUT), clean up. A second stop signal during shutdown changes
nothing (a worker gets one from the process group and one from its parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

from proxy.connections import ConnectionGuard

SHUTDOWN_TIMEOUT = 60.0  # seconds requests in flight get to finish on stop
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle kept-alive connection stays open (run_app's)
# After an early answer (a 408, a 413), what a client still sends is read and dropped for
# this long before closing, so it can read the answer.
LINGERING_TIME = 2.0


async def serve(
    app: web.Application, guard: ConnectionGuard, host: str, port: int, reuse_port: bool
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        app,
        access_log=None,
        # A client that hangs up cancels its request, and so the upstream call it waits on.
        handler_cancellation=True,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        lingering_time=LINGERING_TIME,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        assert runner.server is not None
        listening = await loop.create_server(
            guard.protocols(runner.server), host, port, reuse_port=reuse_port or None
        )
        try:
            await stop.wait()
        finally:
            listening.close()
            guard.close_refused()
    finally:
        await runner.cleanup()


def run(
    app: web.Application,
    guard: ConnectionGuard,
    host: str,
    port: int,
    reuse_port: bool,
    loop: asyncio.AbstractEventLoop,
) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(app, guard, host, port, reuse_port))
    finally:
        _cancel_remaining(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks still running after cleanup (a stream's thread save) get cancelled and awaited."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
