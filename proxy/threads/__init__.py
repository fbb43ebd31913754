"""Conversation threads (`guardrails.thread_id`) and client-held state (`guardrails.state`).

The proxy keeps them, not the rails engine: in NeMo the server owns threads too, while
the Python API takes the whole conversation in `messages`. The stores themselves
(`store`, `memory_store`, `redis_store`) import nothing of the server, so the Python API
could reuse them if it ever offers threads; `conversation` and `state` are the proxy's
glue (request in, 422/503 out).
"""

from proxy.threads.conversation import (
    THREADS_DISABLED,
    Conversation,
    Conversations,
    ThreadStoreUnavailable,
    completion_answer,
    stream_answer,
)
from proxy.threads.factory import build_conversations, build_store
from proxy.threads.state import StateCodec
from proxy.threads.store import (
    StoreUnavailable,
    ThreadBoundElsewhere,
    ThreadLimits,
    ThreadRecord,
    ThreadStore,
)

__all__ = [
    "THREADS_DISABLED",
    "Conversation",
    "Conversations",
    "StateCodec",
    "StoreUnavailable",
    "ThreadBoundElsewhere",
    "ThreadLimits",
    "ThreadRecord",
    "ThreadStore",
    "ThreadStoreUnavailable",
    "build_conversations",
    "build_store",
    "completion_answer",
    "stream_answer",
]
