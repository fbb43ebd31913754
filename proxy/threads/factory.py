"""The thread store the settings ask for: `memory` (default), `none`, or a Redis URL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.threads.conversation import Conversations
from proxy.threads.memory_store import MemoryStore
from proxy.threads.redis_store import RedisStore
from proxy.threads.state import StateCodec
from proxy.threads.store import ThreadLimits, ThreadStore

if TYPE_CHECKING:
    from proxy.settings import Settings

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def build_store(settings: Settings) -> ThreadStore | None:
    """Raises ValueError (a start-up error) for a value that names no store."""
    spec = settings.thread_store.strip()
    limits = ThreadLimits(settings.thread_ttl, settings.thread_max_messages)
    if settings.thread_ttl <= 0 or settings.thread_max_messages < 1:
        raise ValueError("--thread-ttl must be positive and --thread-max-messages at least 1")
    if spec == "none":
        return None
    if spec == "memory":
        return MemoryStore(limits, settings.thread_memory_max_bytes)
    if settings.redis_ca_file and not spec.startswith("rediss://"):
        raise ValueError("--thread-store-ca-file is for a rediss:// (TLS) thread store")
    if spec.startswith(REDIS_SCHEMES):
        return RedisStore(
            spec,
            limits,
            settings.thread_store_timeout,
            settings.redis_password,
            settings.redis_ca_file,
        )
    shown = spec.split("://", 1)[0] + "://..." if "://" in spec else spec
    raise ValueError(
        f"--thread-store {shown!r} names no store: use memory, none, or a redis://, "
        "rediss:// or unix:// URL"
    )


def build_conversations(settings: Settings) -> Conversations:
    secret = settings.state_secret.encode() if settings.state_secret else None
    return Conversations(build_store(settings), StateCodec(secret, settings.thread_max_messages))
