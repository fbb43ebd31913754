"""Threads in Redis, shared by every railguard process that points at the same server.

A thread is two keys with one hash tag (so a Redis Cluster keeps them on one slot): the
config it is bound to (a string) and its messages (a list of JSON strings). An append is
one Lua script, which Redis runs atomically: check the binding, RPUSH the turn, LTRIM to
the cap, refresh both TTLs. There is no read-modify-write, so concurrent turns on one
thread, from one process or many, all land.

Every call has a deadline (`timeout`): a Redis that is down or stalled costs a thread
request that long and no more. redis-py reconnects on the next call by itself, and a
script Redis forgot on restart is loaded again by redis-py (EVALSHA, then EVAL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.threads.store import (
    StoreUnavailable,
    ThreadBoundElsewhere,
    ThreadLimits,
    ThreadRecord,
    ThreadStore,
)

T = TypeVar("T")

KEY_PREFIX = "railguard:thread:"

# KEYS: config key, messages key. ARGV: config id, ttl in ms, cap, messages...
# Returns nil when appended, or the config the thread is bound to when it is another.
_APPEND = """
local bound = redis.call('GET', KEYS[1])
if bound and bound ~= ARGV[1] then
  return bound
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 4, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ttl)
return false
"""

# KEYS: config key, messages key. Returns nil, or {config id, {messages...}}: one command
# (EVALSHA) where a MULTI pipeline takes four, which is most of a load's client-side cost.
_LOAD = """
local config = redis.call('GET', KEYS[1])
if not config then
  return false
end
return {config, redis.call('LRANGE', KEYS[2], 0, -1)}
"""


def redis_location(url: str) -> str:
    """scheme://host:port/db of a Redis URL, for logs: no user, no password, no query."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def thread_keys(thread_id: str) -> tuple[str, str]:
    base = f"{KEY_PREFIX}{{{thread_id}}}"
    return f"{base}:config", f"{base}:messages"


class RedisStore(ThreadStore):
    kind = "redis"

    def __init__(
        self,
        url: str,
        limits: ThreadLimits,
        timeout: float = 1.0,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(limits)
        self.url = url
        self.timeout = timeout
        extra: dict[str, Any] = {"password": password} if password else {}
        if ca_file:  # rediss:// with a private CA; without it, the system's CAs
            extra["ssl_ca_certs"] = ca_file
        # A password in the URL wins over the one from the environment.
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry on a fresh connection: a pooled connection that a Redis
            # restart closed fails once, then the next one works. The deadline still holds.
            retry=Retry(NoBackoff(), 1),
            **extra,
        )
        self._append = self.client.register_script(_APPEND)
        self._load = self.client.register_script(_LOAD)

    def describe(self) -> str:
        return f"redis at {redis_location(self.url)}"

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await call
        except (TimeoutError, redis_errors.TimeoutError) as exc:
            raise StoreUnavailable(
                "timeout", f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            ) from exc
        except (redis_errors.ConnectionError, OSError) as exc:
            raise StoreUnavailable("unavailable", f"{type(exc).__name__}: {exc}") from exc
        except redis_errors.RedisError as exc:
            raise StoreUnavailable("error", f"{type(exc).__name__}: {exc}") from exc

    async def load(self, thread_id: str) -> ThreadRecord | None:
        found = await self._call(self._load(keys=list(thread_keys(thread_id))))
        if found is None:
            return None
        config_id, raw = found
        return ThreadRecord(config_id.decode(), [orjson.loads(m) for m in raw])

    async def append(self, thread_id: str, config_id: str, messages: list[bytes]) -> None:
        ttl_ms = max(1, round(self.limits.ttl * 1000))
        args: list[bytes | str | int] = [config_id, ttl_ms, self.limits.max_messages, *messages]
        bound = await self._call(self._append(keys=list(thread_keys(thread_id)), args=args))
        if bound is not None:
            raise ThreadBoundElsewhere(bound.decode())

    async def check(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
