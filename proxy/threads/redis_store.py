"""Threads in Redis, shared by every railguard process that points at the same server.

A thread is three keys with one hash tag (so a Redis Cluster keeps them on one slot): the
config it is bound to (a string), its messages (a list of JSON strings) and the ids of its
last turns (a list, newest first). An append is one Lua script, which Redis runs
atomically: check the binding, the deadline and the turn id, RPUSH the turn, LTRIM to the
cap, refresh the TTLs. There is no read-modify-write, so concurrent turns on one thread,
from one process or many, all land.

Every call has a deadline (`timeout`): a Redis that is down or stalled costs a thread
request that long and no more. redis-py reconnects on the next call by itself, and a
script Redis forgot on restart is loaded again by redis-py (EVALSHA, then EVAL).

A request that gave up on an append was answered 503, yet the script it sent may still
be waiting in a stalled Redis. So the append carries its deadline, in Redis's clock: the
script refuses to run later than `timeout - grace` after it was sent, where `grace` is
left for its answer to travel back. A retry of that turn is then stored once. The
mapping onto Redis's clock comes from the TIME every load reads (see RedisClock). The
turn id covers the rest: an append redis-py sends again on a new connection, or the same
turn sent twice at once, is stored once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.threads.store import (
    RECENT_TURNS,
    StoreUnavailable,
    ThreadBoundElsewhere,
    ThreadLimits,
    ThreadRecord,
    ThreadStore,
)

T = TypeVar("T")

KEY_PREFIX = "railguard:thread:"

# KEYS: config, messages, turns. ARGV: config id, ttl in ms, cap, turn id ("": none),
# deadline in ms of Redis's clock (0: none), recent turns kept, messages...
# Returns {"ok"}, {"duplicate"} (the turn is stored already), {"late"} (past the deadline:
# the request gave up, nothing is stored) or {"bound", config} (another config's thread).
_APPEND = """
local bound = redis.call('GET', KEYS[1])
if bound and bound ~= ARGV[1] then
  return {'bound', bound}
end
local deadline = tonumber(ARGV[5])
if deadline > 0 then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > deadline then
    return {'late'}
  end
end
local ttl = tonumber(ARGV[2])
local turn = ARGV[4]
if turn ~= '' then
  local recent = redis.call('LRANGE', KEYS[3], 0, -1)
  for i = 1, #recent do
    if recent[i] == turn then
      return {'duplicate'}
    end
  end
  redis.call('LPUSH', KEYS[3], turn)
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 7, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[2], ttl)
return {'ok'}
"""

# KEYS: config, messages, turns. Returns {seconds, microseconds} of Redis's clock, then,
# for a thread that exists, its config id, {messages...} and its last turn id: one
# command (EVALSHA) where a MULTI pipeline takes several, most of a load's client cost.
_LOAD = """
local now = redis.call('TIME')
local config = redis.call('GET', KEYS[1])
if not config then
  return {now[1], now[2]}
end
local last = redis.call('LINDEX', KEYS[3], 0) or ''
return {now[1], now[2], config, redis.call('LRANGE', KEYS[2], 0, -1), last}
"""

CLOCK_REFRESH = 5.0  # seconds an estimate of Redis's clock is kept when none is better


class RedisClock:
    """Where Redis's clock stands against this process's monotonic clock, so an append
    can carry a deadline Redis checks itself.

    Each TIME a load reads was read before its answer arrived, so `redis time - local time
    at arrival` is a lower bound of the offset: a deadline derived from it falls early,
    never late. The highest bound is kept (the least early), replaced by a fresh one
    after CLOCK_REFRESH seconds, so a Redis clock set back is followed too."""

    def __init__(self) -> None:
        self.offset: float | None = None
        self._measured = 0.0

    def observe(self, seconds: bytes | int, microseconds: bytes | int, received: float) -> None:
        estimate = int(seconds) + int(microseconds) / 1e6 - received
        if (
            self.offset is None
            or estimate > self.offset
            or received - self._measured > CLOCK_REFRESH
        ):
            self.offset, self._measured = estimate, received

    def deadline_ms(self, local: float) -> int:
        """`local` (monotonic seconds) in Redis's clock, in ms; 0 when never measured."""
        if self.offset is None:
            return 0
        return int((local + self.offset) * 1000)


def redis_location(url: str) -> str:
    """scheme://host:port/db of a Redis URL, for logs: no user, no password, no query."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def thread_keys(thread_id: str) -> tuple[str, str, str]:
    base = f"{KEY_PREFIX}{{{thread_id}}}"
    return f"{base}:config", f"{base}:messages", f"{base}:turns"


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
        # What an append leaves for its answer to come back before this process gives up.
        self.grace = timeout / 4
        self.clock = RedisClock()
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
        self.clock.observe(found[0], found[1], time.monotonic())
        if len(found) == 2:
            return None
        config_id, raw, last = found[2:]
        return ThreadRecord(config_id.decode(), [orjson.loads(m) for m in raw], last.decode())

    async def append(
        self, thread_id: str, config_id: str, messages: list[bytes], turn_id: str = ""
    ) -> None:
        ttl_ms = max(1, round(self.limits.ttl * 1000))
        deadline = self.clock.deadline_ms(time.monotonic() + self.timeout - self.grace)
        args: list[bytes | str | int] = [
            *(config_id, ttl_ms, self.limits.max_messages, turn_id, deadline, RECENT_TURNS),
            *messages,
        ]
        reply = await self._call(self._append(keys=list(thread_keys(thread_id)), args=args))
        if reply[0] == b"bound":
            raise ThreadBoundElsewhere(reply[1].decode())
        if reply[0] == b"late":
            raise StoreUnavailable(
                "timeout",
                f"Redis ran the append more than {self.timeout - self.grace:g} s after it was "
                "sent, so it refused it",
            )

    async def check(self) -> None:
        await self._call(self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
