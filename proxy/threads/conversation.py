"""One request's conversation: the history a thread or a state puts in front of the
request's messages, and the turn recorded after the answer.

What is recorded is what the model saw and what the client was answered:
- the request's messages after the input rails (a masked message stays masked);
- the guarded answer: a blocked answer is recorded as the refusal. On a stream the text
  the client had received before the block is kept beside it (`railguard.received`) but
  is never sent to the model again, since with `stream_first` part of it may be the text
  the rail blocked;
- a stream cut by an upstream failure, a limit or the client hanging up: the text the
  client received (or, when it hung up, what was sent to it).
A turn blocked by the input rails records nothing, so a blocked message is never
replayed to the model; nor does check mode (`dialog: false`), which calls no model.

A thread request either succeeds whole (answered and recorded) or fails with a 503 that
says the store is unavailable; only a stream, whose answer is already out, ends with an
error event instead.

Each turn has an id: a hash of the config, the thread's last turn id as loaded (the
position the turn is based on) and the request's own messages. A turn sent twice from
one position (a retry, a double submit, an append sent again) has one id and is stored
once; the same text sent again after its answer is based on a later position, so it is
a new turn and is stored again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson

from metrics import THREAD_STORE_DURATION, THREAD_STORE_ERRORS
from proxy.errors import ApiError, invalid
from proxy.request import ParsedChat
from proxy.threads.state import StateCodec
from proxy.threads.store import (
    StoreUnavailable,
    ThreadBoundElsewhere,
    ThreadRecord,
    ThreadStore,
)
from rails.turn import Turn

log = logging.getLogger("railguard.threads")

T = TypeVar("T")

THREADS_DISABLED = "Conversation threads are not enabled on this server."
MARK = "railguard"  # key of a stored message's record-only details; never sent upstream
_ANSWER_FIELDS = ("role", "content", "tool_calls", "function_call", "name")


class ThreadStoreUnavailable(ApiError):
    """A 503: the thread can't be read or saved now."""


def _replayable(message: dict[str, Any]) -> dict[str, Any]:
    if MARK in message:
        return {k: v for k, v in message.items() if k != MARK}
    return message


def completion_answer(data: dict[str, Any], turn: Turn) -> dict[str, Any] | None:
    """The first choice's message as recorded: its text after the output rails."""
    choices = data.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        return None
    answer = {k: message[k] for k in _ANSWER_FIELDS if message.get(k) is not None}
    answer.setdefault("role", "assistant")
    answer.setdefault("content", "")
    if turn.blocked_by:  # output or tool-call rails: the choice was patched to the refusal
        answer[MARK] = {"blocked_by": turn.blocked_by}
    return answer


def stream_answer(
    reason: str, received: str, blocked_by: str | None, refusal: str
) -> dict[str, Any]:
    """A streamed answer as recorded, from how the stream ended and what the client got."""
    if blocked_by:
        return {
            "role": "assistant",
            "content": refusal,
            MARK: {"blocked_by": blocked_by, "received": received},
        }
    answer: dict[str, Any] = {"role": "assistant", "content": received}
    if reason != "completed":
        answer[MARK] = {"cut": reason}
    return answer


def turn_id(config_id: str, based_on: str, messages: list[dict[str, Any]]) -> str:
    """The id of a turn: what it asks (the request's own messages) and where (the last
    turn id it was based on)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(orjson.dumps([config_id, based_on]))
    digest.update(orjson.dumps(messages))
    return digest.hexdigest()


class Conversation:
    """The thread or state of one request."""

    def __init__(
        self,
        owner: Conversations,
        config_id: str,
        history: list[dict[str, Any]],
        thread_id: str | None,
        turn: str = "",
    ) -> None:
        self.owner = owner
        self.config_id = config_id
        self.history = history
        self.thread_id = thread_id
        self.turn_id = turn

    @property
    def checked(self) -> int:
        """How many leading messages railguard checked before: a thread's (stored after
        passing the rails) or a signed state's. An unsigned state is client-written, like
        `messages`, so the input rails read it again."""
        if self.thread_id is not None or self.owner.codec.secret is not None:
            return len(self.history)
        return 0

    async def record(self, turn: Turn, answer: dict[str, Any] | None) -> dict[str, Any] | None:
        """Save the turn (the model call was made); returns the envelope's `state`."""
        new = turn.messages[len(self.history) :]
        if answer is not None:
            new = [*new, answer]
        if self.thread_id is None:
            return self.owner.codec.encode(self.config_id, [*self.history, *new])
        await self.owner.append(self.thread_id, self.config_id, new, self.turn_id)
        return None

    def unchanged(self) -> dict[str, Any] | None:
        """No turn to record (an input block, check mode): a state is handed back as it was."""
        if self.thread_id is None:
            return self.owner.codec.encode(self.config_id, self.history)
        return None


class Conversations:
    """Opens the thread or state each request continues; the app holds one."""

    def __init__(self, store: ThreadStore | None, codec: StateCodec) -> None:
        self.store = store
        self.codec = codec
        kind = store.kind if store is not None else "none"
        self._durations = {op: THREAD_STORE_DURATION.labels(kind, op) for op in ("load", "append")}
        self._failing = False

    async def open(self, chat: ParsedChat, config_id: str) -> Conversation | None:
        """Put the thread's or state's history in front of the request's messages."""
        thread_id = chat.guardrails.thread_id
        state = chat.guardrails.state
        if thread_id is None and state is None:
            return None
        if thread_id is not None and state is not None:
            raise invalid(
                "Send either `thread_id` (the server keeps the conversation) or `state` "
                "(the client keeps it), not both.",
                param="state",
                code="thread_and_state",
            )
        turn = ""
        if thread_id is not None:
            record = await self._load(thread_id, config_id)
            history = record.messages if record else []
            turn = turn_id(config_id, record.last_turn if record else "", chat.messages)
        else:
            assert state is not None
            history = self.codec.decode(state, config_id)
        if history:
            messages = [*map(_replayable, history), *chat.messages]
            chat.body["messages"] = chat.messages = messages
            chat.body_changed = True
        return Conversation(self, config_id, history, thread_id, turn)

    async def _load(self, thread_id: str, config_id: str) -> ThreadRecord | None:
        if self.store is None:
            raise invalid(THREADS_DISABLED, param="thread_id", code="threads_disabled")
        record = await self._timed("load", self.store.load(thread_id))
        if record is not None and record.config_id != config_id:
            raise _bound_elsewhere(record.config_id, config_id)
        return record

    async def append(
        self, thread_id: str, config_id: str, new: list[dict[str, Any]], turn: str = ""
    ) -> None:
        assert self.store is not None
        messages = [orjson.dumps(m) for m in new]
        try:
            await self._timed("append", self.store.append(thread_id, config_id, messages, turn))
        except ThreadBoundElsewhere as exc:  # another request created it a moment ago
            raise _bound_elsewhere(exc.config_id, config_id) from None

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        assert self.store is not None
        started = time.perf_counter()
        try:
            result = await call
        except StoreUnavailable as exc:
            THREAD_STORE_ERRORS.labels(self.store.kind, operation, exc.reason).inc()
            if not self._failing:
                self._failing = True
                log.warning(
                    "thread store %s failed (%s on %s); thread requests answer 503 until it "
                    "is back",
                    self.store.describe(),
                    exc,
                    operation,
                )
            raise _unavailable(exc, self.store) from None
        self._durations[operation].observe(time.perf_counter() - started)
        if self._failing:
            self._failing = False
            log.warning("thread store %s is back", self.store.describe())
        return result

    async def start(self) -> None:
        """Say where threads live; a Redis that is down now is a warning, not a failure:
        thread requests answer 503 until it is up, and everything else works."""
        if self.store is None:
            log.info("conversation threads are off (--thread-store none)")
            return
        try:
            await self.store.check()
        except StoreUnavailable as exc:
            self._failing = True
            log.warning(
                "thread store %s is not reachable now (%s); thread requests answer 503 until it is",
                self.store.describe(),
                exc,
            )
            return
        log.info("conversation threads in %s", self.store.describe())

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def _bound_elsewhere(bound: str, config_id: str) -> ApiError:
    return invalid(
        f"This thread belongs to config '{bound}', and this request uses config "
        f"'{config_id}'. A thread keeps the config it was created with: use '{bound}', or "
        "start a new thread.",
        param="thread_id",
        code="thread_config_mismatch",
    )


def _unavailable(exc: StoreUnavailable, store: ThreadStore) -> ThreadStoreUnavailable:
    timeout = getattr(store, "timeout", None)
    what = {
        "timeout": f"did not answer within {timeout:g} s" if timeout else "did not answer in time",
        "unavailable": "can't be reached",
        "error": "failed",
    }[exc.reason]
    return ThreadStoreUnavailable(
        503,
        f"The conversation thread store {what}, so this thread can't be continued now. "
        "Retry in a moment, or send the whole conversation in `messages` without `thread_id`.",
        type_="server_error",
        code="thread_store_unavailable",
        param="thread_id",
    )
