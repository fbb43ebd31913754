"""The two thread stores on their own: atomic appends, the cap, the TTL, the binding to a
config, the memory store's LRU bound; and what a stored turn looks like in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from proxy.threads import StoreUnavailable, ThreadBoundElsewhere, ThreadLimits, ThreadStore
from proxy.threads.memory_store import MemoryStore
from proxy.threads.redis_store import (
    CLOCK_REFRESH,
    RedisClock,
    RedisStore,
    redis_location,
    thread_keys,
)
from proxy.threads.store import RECENT_TURNS
from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer
from tests.stream_helpers import upstream_events

TID = "thread-store-test-0001"


def msg(text: str, role: str = "user") -> bytes:
    return orjson.dumps({"role": role, "content": text})


def texts(record: Any) -> list[str]:
    return [m["content"] for m in record.messages]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made: list[ThreadStore] = []

    def make(limits: ThreadLimits) -> ThreadStore:
        store: ThreadStore
        if request.param == "memory":
            store = MemoryStore(limits)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, limits)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def test_append_and_load(make_store: Any) -> None:
    store = make_store(ThreadLimits())
    assert await store.load(TID) is None
    await store.append(TID, "cfg", [msg("hi"), msg("echo: hi", "assistant")])
    await store.append(TID, "cfg", [msg("again")])
    record = await store.load(TID)
    assert record.config_id == "cfg"
    assert texts(record) == ["hi", "echo: hi", "again"]
    assert await store.load("another-thread-00001") is None


async def test_concurrent_appends_all_land(make_store: Any) -> None:
    store = make_store(ThreadLimits())
    await asyncio.gather(
        *(store.append(TID, "cfg", [msg(f"u{i}"), msg(f"a{i}", "assistant")]) for i in range(50))
    )
    got = texts(await store.load(TID))
    assert len(got) == 100
    # each turn's two messages stay together
    for user, answer in zip(got[::2], got[1::2], strict=True):
        assert answer == "a" + user[1:]


async def test_cap_keeps_the_newest(make_store: Any) -> None:
    store = make_store(ThreadLimits(max_messages=3))
    for i in range(5):
        await store.append(TID, "cfg", [msg(f"m{i}")])
    assert texts(await store.load(TID)) == ["m2", "m3", "m4"]
    await store.append(TID, "cfg", [msg("x"), msg("y"), msg("z"), msg("w")])
    assert texts(await store.load(TID)) == ["y", "z", "w"]


async def test_a_thread_is_bound_to_its_config(make_store: Any) -> None:
    store = make_store(ThreadLimits())
    await store.append(TID, "alpha", [msg("hi")])
    with pytest.raises(ThreadBoundElsewhere) as caught:
        await store.append(TID, "beta", [msg("sneaky")])
    assert caught.value.config_id == "alpha"
    assert texts(await store.load(TID)) == ["hi"]


async def test_ttl_expires_and_is_refreshed(make_store: Any) -> None:
    store = make_store(ThreadLimits(ttl=0.4))
    await store.append(TID, "cfg", [msg("one")])
    await asyncio.sleep(0.25)
    await store.append(TID, "cfg", [msg("two")])
    await asyncio.sleep(0.25)
    assert texts(await store.load(TID)) == ["one", "two"]
    await asyncio.sleep(0.3)
    assert await store.load(TID) is None
    await store.append(TID, "other", [msg("new")])  # an expired thread binds anew
    assert (await store.load(TID)).config_id == "other"


async def test_a_turn_id_is_stored_once(make_store: Any) -> None:
    store = make_store(ThreadLimits())
    await store.append(TID, "cfg", [msg("hi"), msg("echo: hi", "assistant")], "turn-1")
    assert (await store.load(TID)).last_turn == "turn-1"
    await store.append(TID, "cfg", [msg("hi"), msg("another answer", "assistant")], "turn-1")
    await store.append(TID, "cfg", [msg("hi"), msg("echo: hi", "assistant")], "turn-2")
    await store.append(TID, "cfg", [msg("no id")])
    await store.append(TID, "cfg", [msg("no id")])
    record = await store.load(TID)
    assert texts(record) == ["hi", "echo: hi", "hi", "echo: hi", "no id", "no id"]
    assert record.last_turn == "turn-2"
    # a thread remembers its last RECENT_TURNS ids, no more
    for i in range(RECENT_TURNS):
        await store.append(TID, "cfg", [msg(f"m{i}")], f"later-{i}")
    await store.append(TID, "cfg", [msg("turn-1 again")], "turn-1")
    await store.append(TID, "cfg", [msg("dropped")], f"later-{RECENT_TURNS - 1}")
    assert texts(await store.load(TID))[-2:] == [f"m{RECENT_TURNS - 1}", "turn-1 again"]


async def test_the_same_turn_at_once_is_stored_once(make_store: Any) -> None:
    store = make_store(ThreadLimits())
    turn = [msg("double"), msg("echo: double", "assistant")]
    await asyncio.gather(*(store.append(TID, "cfg", turn, "same") for _ in range(10)))
    assert texts(await store.load(TID)) == ["double", "echo: double"]


async def test_redis_refuses_an_append_past_its_deadline(redis_server: RedisServer) -> None:
    """What a stalled Redis does with an append whose request gave up: nothing."""
    store = RedisStore(redis_server.url, ThreadLimits(), timeout=0.4)
    try:
        assert await store.load(TID) is None  # reads Redis's clock
        assert store.clock.offset is not None
        await store.append(TID, "cfg", [msg("in time")], "t1")
        store.clock.offset -= store.timeout  # as if the append sat in Redis that long
        with pytest.raises(StoreUnavailable) as caught:
            await store.append(TID, "cfg", [msg("too late")], "t2")
        assert caught.value.reason == "timeout"
        assert "refused" in str(caught.value)
        store.clock.offset += store.timeout - store.grace / 2  # answered just in time
        await store.append(TID, "cfg", [msg("just in time")], "t3")
        record = await store.load(TID)
        assert texts(record) == ["in time", "just in time"]
        assert record.last_turn == "t3"
    finally:
        await store.close()


def test_the_clock_keeps_the_highest_bound_and_refreshes_it() -> None:
    clock = RedisClock()
    assert clock.deadline_ms(10.0) == 0  # never measured: no deadline
    clock.observe(b"1000", b"500000", 10.0)  # Redis read 1000.5 s; the answer came at 10 s
    assert clock.deadline_ms(11.0) == 1_001_500  # 1 s later, in Redis's clock
    clock.observe(b"1001", b"0", 10.6)  # a slower answer gives a lower bound: kept the first
    assert clock.deadline_ms(11.0) == 1_001_500
    clock.observe(b"1002", b"0", 11.0)  # a higher bound (a faster answer) replaces it
    assert clock.deadline_ms(11.0) == 1_002_000
    later = 11.0 + CLOCK_REFRESH + 1
    clock.observe(b"1000", b"0", later)  # Redis's clock set back: followed once stale
    assert clock.deadline_ms(later) == 1_000_000


async def test_memory_threads_store_a_double_submit_once(
    start_railguard: StartRailguard, fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    base = await start_railguard({"open": {"models": []}})

    async def post(content: str) -> int:
        body = {
            "model": "m1",
            "messages": [{"role": "user", "content": content}],
            "guardrails": {"config_id": "open", "thread_id": TID},
        }
        async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
            return resp.status

    fake_upstream.next(delay=0.1)
    fake_upstream.next(delay=0.1)
    assert await asyncio.gather(post("hi"), post("hi")) == [200, 200]
    assert await post("next") == 200
    assert [m["content"] for m in fake_upstream.main_calls[-1].body["messages"]] == [
        "hi",
        "echo: hi",
        "next",
    ]
    assert await post("next") == 200  # the same text after its answer: a turn of its own
    assert [m["content"] for m in fake_upstream.main_calls[-1].body["messages"]] == [
        "hi",
        "echo: hi",
        "next",
        "echo: next",
        "next",
    ]


async def test_memory_store_drops_least_recently_used_threads() -> None:
    one = len(msg("x" * 10))
    store = MemoryStore(ThreadLimits(), max_bytes=3 * one)
    for name in ("a", "b", "c"):
        await store.append(f"thread-{name}-000000000000", "cfg", [msg("x" * 10)])
    await store.load("thread-a-000000000000")  # a is used again: b is now the oldest
    await store.append("thread-d-000000000000", "cfg", [msg("x" * 10)])
    assert await store.load("thread-b-000000000000") is None
    for name in ("a", "c", "d"):
        assert await store.load(f"thread-{name}-000000000000") is not None
    assert store.size == 3 * one and len(store) == 3


async def test_memory_store_ttl_with_a_clock() -> None:
    now = [100.0]
    store = MemoryStore(ThreadLimits(ttl=10), clock=lambda: now[0])
    await store.append(TID, "cfg", [msg("hi")])
    now[0] = 109.9
    assert await store.load(TID) is not None
    now[0] = 110.0
    assert await store.load(TID) is None
    assert store.size == 0


async def test_redis_keys_share_a_hash_tag_and_expire(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, ThreadLimits(ttl=60, max_messages=10))
    await store.append(TID, "cfg", [msg("hi")])
    config_key, messages_key, _ = thread_keys(TID)
    assert config_key == f"railguard:thread:{{{TID}}}:config"
    assert messages_key == f"railguard:thread:{{{TID}}}:messages"
    raw = Redis.from_url(redis_server.url)
    try:
        for key in (config_key, messages_key):
            assert 59_000 < await raw.pttl(key) <= 60_000
        assert await raw.lrange(messages_key, 0, -1) == [msg("hi")]
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_down_is_store_unavailable(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, ThreadLimits(), timeout=0.3)
    await store.check()
    redis_server.kill()
    with pytest.raises(StoreUnavailable) as caught:
        await store.load(TID)
    assert caught.value.reason == "unavailable"
    redis_server.restart()
    await store.append(TID, "cfg", [msg("back")])  # reconnects by itself
    assert texts(await store.load(TID)) == ["back"]
    await store.close()


def test_redis_location_never_shows_a_password() -> None:
    assert redis_location("redis://user:pw@h:6380/2?x=1") == "redis://h:6380/2"
    assert redis_location("rediss://:pw@cache.example/0") == "rediss://cache.example/0"
    assert redis_location("unix:///run/redis.sock") == "unix:///run/redis.sock"


async def test_a_blocked_stream_keeps_what_the_client_received(
    start_railguard: StartRailguard,
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    """The stored record of a blocked stream: the refusal is what the model will see again,
    what the client had received is kept beside it."""
    config = {
        "rails": {
            "output": {
                "flows": ["regex check output"],
                "streaming": {"enabled": True, "chunk_size": 2, "context_size": 0},
            },
            "config": {"regex_detection": {"output": {"patterns": [r"\bbad\b"]}}},
        }
    }
    base = await start_railguard({"windowed": config}, thread_store=redis_server.url)
    fake_upstream.next(chunks=upstream_events(["a ", "b ", "c ", "bad ", "e "]), chunk_delay=0.05)
    body = {
        "model": "m1",
        "stream": True,
        "messages": [{"role": "user", "content": "go"}],
        "guardrails": {"thread_id": TID},
    }
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        await resp.read()
    raw = Redis.from_url(redis_server.url)
    try:
        stored = [orjson.loads(m) for m in await raw.lrange(thread_keys(TID)[1], 0, -1)]
    finally:
        await raw.aclose()
    assert stored[0] == {"role": "user", "content": "go"}
    assert stored[1]["content"] == "I'm sorry, I can't respond to that."
    assert stored[1]["railguard"]["blocked_by"] == "regex check output"
    received = stored[1]["railguard"]["received"]
    assert received.startswith("a b ") and "a b c bad e ".startswith(received)
