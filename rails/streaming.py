"""Output rails over a streamed answer, in overlapping windows of tokens.

A token is the text one upstream delta carries for a choice (`delta_texts`: its content,
and the reasoning, refusal and tool-call arguments a model writes too), as NeMo counts
content deltas; a choice's logprobs that spell something else are a pseudo choice
(`logprobs_choice`) with windows of their own. A window
holds `chunk_size` of them and overlaps the previous window by `context_size`, so a phrase
split across a window boundary is still seen whole. Each window is checked once by each
output rail; at the end only tokens no window has covered yet are checked.

`StreamGuard` is generic over what is streamed (the upstream's SSE event bytes in the
proxy, text chunks in the Python API) so both run the same engine. The caller pushes
each item with the content it carries and sends what comes back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from metrics import STREAM_HOLDBACK
from rails.base import Stage
from rails.config import StreamingSettings
from rails.turn import Turn
from upstream.client import MAX_ANSWER_BYTES
from upstream.errors import UpstreamAnswerTooLarge
from upstream.wire import (
    MessageAssembler,
    ToolCallAssembler,
    content_text,
    delta_texts,
    delta_tool_calls,
    error_object,
    rewrite_message,
)

T = TypeVar("T")


def blocked_error(rail: str) -> dict[str, Any]:
    """The error that ends a stream an output rail blocked, as NeMo words it."""
    return error_object(
        f"Blocked by {rail} rails.", "guardrails_violation", "content_blocked", rail
    )


@dataclass(frozen=True, slots=True)
class Window:
    """Tokens [start, end) of one choice's answer; once it passes, all before `end` is checked."""

    choice: int
    text: str
    start: int
    end: int


class WindowCutter:
    """Cuts one choice's tokens into overlapping windows. Sans-I/O.

    It keeps only the tokens the next window needs (the last window's context and what
    came after it), so a long answer costs one window of memory, not the whole answer.
    """

    __slots__ = ("checked", "choice", "chunk_size", "context_size", "count", "passed", "tokens")

    def __init__(self, choice: int, chunk_size: int, context_size: int) -> None:
        self.choice = choice
        self.chunk_size = chunk_size
        self.context_size = context_size
        self.tokens: list[str] = []  # tokens [max(0, checked - context_size), count)
        self.count = 0  # tokens taken
        self.checked = 0  # tokens covered by windows handed out so far
        self.passed = 0  # tokens covered by windows that passed their check

    def add(self, token: str) -> Window | None:
        """Take one token; return the window it completes, if any."""
        self.tokens.append(token)
        self.count += 1
        if len(self.tokens) >= self.chunk_size:
            return self._cut()
        return None

    def tail(self) -> Window | None:
        """At the end: the tokens no window covered yet, with their context; None if none."""
        if self.count <= self.checked:
            return None
        return self._cut()

    def _cut(self) -> Window:
        tokens = self.tokens
        end = self.count
        window = Window(self.choice, "".join(tokens), end - len(tokens), end)
        self.checked = end
        if len(tokens) > self.context_size:
            del tokens[: len(tokens) - self.context_size]
        return window

    @property
    def text(self) -> str:
        """The tokens it keeps: the whole answer when no window was cut (`whole` mode)."""
        return "".join(self.tokens)


class AnswerText:
    """The first choice's whole text as the upstream sent it, for the log and the thread.

    Tokens are joined in batches as they come, so a long answer of tiny tokens costs about
    its size, not a Python string object per token.
    """

    __slots__ = ("length", "parts", "recent")
    BATCH = 256

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.recent: list[str] = []
        self.length = 0  # characters

    def add(self, token: str) -> None:
        recent = self.recent
        recent.append(token)
        self.length += len(token)
        if len(recent) >= self.BATCH:
            self.parts.append("".join(recent))
            recent.clear()

    def text(self, length: int | None = None) -> str:
        """The whole text, or its first `length` characters."""
        whole = "".join(self.parts) + "".join(self.recent)
        return whole if length is None else whole[:length]


@dataclass(frozen=True, slots=True)
class Rewritten:
    """Stands in for the held content of choice `choice`: its whole answer, rewritten;
    `fields` are its other delta fields (reasoning, refusal, tool calls), rewritten too."""

    choice: int
    text: str
    fields: dict[str, Any] | None = None


@dataclass(slots=True)
class _Held(Generic[T]):
    item: T
    through: dict[int, int]  # choice -> tokens up to and including this item
    size: int
    at: float
    tools: frozenset[int] = frozenset()  # choices whose tool-call deltas this item carries
    answered: int = 0  # characters of the first choice's text up to and including this item


class StreamGuard(Generic[T]):
    """One streamed answer going through a request's output rails.

    - `stream_first` (NeMo's default): items go out at once; windows are checked behind
      them, in order, and a block stops the stream at the next item (`on_block` lets the
      caller stop waiting on the upstream at once). What is out is bounded, per choice:
      at most `chunk_size` tokens past the last window that passed. An item beyond that
      waits (held, in `push`) until the checks behind have caught up.
    - otherwise items are held until every token they carry has passed a window, then
      released unchanged and in order.
    - streaming disabled in the config, or a rail that rewrites: the whole answer is held
      and checked once, since text already sent can't be taken back.
    With no output rails selected it only records the answer (for the log and threads).

    With tool-output rails selected, an item carrying a tool-call delta is held, with all
    that follows it, until its choice's calls are complete (the choice's finish, or the
    end of the stream) and have passed them, whatever the mode: text already sent is fine,
    but a tool call can't be taken back.

    Memory: each choice keeps one window of tokens; the first choice's whole text is kept
    too (the log and the thread record it). The text of all choices together may not pass
    `max_answer_bytes`: `push` raises `UpstreamAnswerTooLarge` on the item that would.
    """

    def __init__(
        self,
        turn: Turn,
        settings: StreamingSettings,
        on_block: Callable[[], None] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.turn = turn
        runners = turn.guardrails.selected(Stage.OUTPUT, turn.options.rails.output)
        self.active = bool(runners)
        self.whole = self.active and (not settings.enabled or any(r.rail.rewrites for r in runners))
        self.holds = self.whole or (self.active and not settings.stream_first)
        self._chunk_size = sys.maxsize if self.whole else settings.chunk_size
        # `whole` keeps every token: its one window, at the end, is the whole answer
        self._context_size = sys.maxsize if self.whole else settings.context_size
        # how many tokens past the last passed window may be out
        self._ahead = 0 if self.holds else self._chunk_size
        self._on_block = on_block
        self._cutters: dict[int, WindowCutter] = {}
        self._answer = AnswerText()
        self._sent = 0  # characters of the first choice's text that went out
        self.answer_bytes = 0  # UTF-8 bytes of all choices' text so far
        self.max_answer_bytes = max_answer_bytes
        self._held: deque[_Held[T]] = deque()
        self.held_bytes = 0
        self._rewrites: dict[int, str] = {}
        self._queue: deque[Window] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._progress: asyncio.Future[None] | None = None  # resolved by each check behind
        self.blocked_by: str | None = None
        self.usage: dict[str, Any] | None = None
        self.checks_tools = turn.tool_output_rails_selected()
        self._tool_calls: dict[int, ToolCallAssembler] = {}  # choice -> calls not checked yet
        self.reasoning = turn.checks_reasoning
        # A rewrite rewrites each field of the answer on its own: assemble them (whole mode).
        rewrites = self.whole and any(r.rail.rewrites for r in runners)
        self._messages: dict[int, MessageAssembler] | None = {} if rewrites else None
        self._rewritten: dict[int, dict[str, Any]] = {}

    def _cutter(self, choice: int) -> WindowCutter:
        cutter = self._cutters[choice] = WindowCutter(choice, self._chunk_size, self._context_size)
        return cutter

    async def push(
        self,
        item: T,
        contents: Sequence[tuple[int, str, str]],
        size: int = 0,
        tool_calls: Sequence[tuple[int, Any]] = (),
        finished: Sequence[int] = (),
    ) -> list[T]:
        """Take one item, the (choice, text, content) tokens it carries (`content`: the
        part of the text that is the answer's content), its (choice, tool-call delta)
        pairs and the choices it finishes; return what may go out now.

        Returns nothing once a rail blocked: check `blocked_by`.
        """
        if self.blocked_by:
            return []
        grown = self.answer_bytes
        for _, token, _ in contents:
            grown += len(token.encode())
        if grown > self.max_answer_bytes:
            raise UpstreamAnswerTooLarge(self.max_answer_bytes)
        self.answer_bytes = grown
        windows = []
        beyond = False  # a choice would have more than the bound out
        ahead = self._ahead
        for choice, token, content in contents:
            if choice == 0:
                self._answer.add(content)
            if self.active:
                cutter = self._cutters.get(choice) or self._cutter(choice)
                window = cutter.add(token)
                if window is not None:
                    windows.append(window)
                if cutter.count > cutter.passed + ahead:
                    beyond = True
        tools: frozenset[int] = frozenset()
        if tool_calls and (self.checks_tools or self._messages is not None):
            if self.checks_tools:
                for choice, delta in tool_calls:
                    self._tool_calls.setdefault(choice, ToolCallAssembler()).add(delta)
            tools = frozenset(choice for choice, _ in tool_calls)
        if not self.holds:
            for window in windows:
                self._schedule(window)
            if not beyond and not tools and not self._held:
                self._sent = self._answer.length
                return [item]
        cutters = self._cutters
        through = (
            {choice: cutters[choice].count for choice, _, _ in contents} if self.active else {}
        )
        held = _Held(item, through, size, time.perf_counter(), tools, self._answer.length)
        self._held.append(held)
        self.held_bytes += size
        if self.holds:
            for window in windows:
                if not await self._check(window):
                    return []
        elif beyond:
            await self._catch_up(through)
        for choice in finished:
            if self.blocked_by or (
                choice in self._tool_calls and not await self._check_tools(choice)
            ):
                return []
        return self._release() if not self.blocked_by else []

    async def push_chunk(self, item: T, data: Any, size: int = 0) -> list[T]:
        """`push` for an item carrying one parsed chat.completion.chunk (None for an event
        without JSON): its tokens (every text field, `delta_texts`), usage, tool-call
        deltas and finished choices."""
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        if self._messages is not None:
            self._assemble(data)
        calls, finished = (
            delta_tool_calls(data) if self.checks_tools or self._messages is not None else ([], [])
        )
        return await self.push(item, delta_texts(data, self.reasoning), size, calls, finished)

    def _assemble(self, data: Any) -> None:
        assert self._messages is not None
        choices = data.get("choices") if isinstance(data, dict) else None
        for position, choice in enumerate(choices if isinstance(choices, list) else ()):
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict):
                index = choice.get("index")
                index = index if isinstance(index, int) else position
                self._messages.setdefault(index, MessageAssembler()).add(delta)

    async def finish(self) -> list[T | Rewritten]:
        """At the end of the stream: wait for checks behind, check what no window covered,
        and release everything held. Returns nothing when a rail blocked."""
        if self._worker is not None:
            await self._worker
        for cutter in self._cutters.values():
            window = cutter.tail() if not self.blocked_by else None
            if window is not None:
                await self._check(window)
        for choice in sorted(self._tool_calls):
            if self.blocked_by or not await self._check_tools(choice):
                break
        if self.blocked_by:
            return []
        if self._rewrites:
            await self._rewrite_fields()
            return self._rewritten_release()
        return list(self._release())

    def cancel(self) -> None:
        """Stop checks still running behind the stream (the client went away)."""
        if self._worker is not None:
            self._worker.cancel()

    def text(self) -> str:
        """The first choice's whole answer as the upstream sent it."""
        return self._answer.text()

    def sent_text(self) -> str:
        """What of the first choice's answer has gone out to the client so far."""
        if 0 in self._rewrites:
            return self._rewrites[0]
        return self._answer.text(self._sent)

    def record(self, model: str, elapsed: float) -> None:
        """At the end: log the main call with the whole answer, and make what went out
        the turn's bot message."""
        self.turn.record_main_call(model, elapsed, self.text(), self.usage)
        self.turn.bot_text = self.sent_text()

    # --- checking -------------------------------------------------------------------

    def _schedule(self, window: Window) -> None:
        self._queue.append(window)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Checks behind the stream, one window after the other; each wakes `_catch_up`."""
        try:
            while self._queue and not self.blocked_by:
                passed = await self._check(self._queue.popleft())
                if not passed and self._on_block is not None:
                    self._on_block()
                self._wake()
        except BaseException as exc:
            self._wake(exc)
            raise

    def _wake(self, exc: BaseException | None = None) -> None:
        waiter, self._progress = self._progress, None
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        elif isinstance(exc, asyncio.CancelledError):
            waiter.cancel()
        else:
            waiter.set_exception(exc)

    async def _catch_up(self, through: dict[int, int]) -> None:
        """`stream_first`: wait for the checks behind until every choice of the item has
        at most `chunk_size` tokens past its last passed window. One is always under way
        then: a choice is that far ahead only once a window past `passed` was cut."""
        cutters, ahead = self._cutters, self._ahead
        while not self.blocked_by and any(
            count > cutters[choice].passed + ahead for choice, count in through.items()
        ):
            waiter = self._progress = asyncio.get_running_loop().create_future()
            await waiter

    async def _check(self, window: Window) -> bool:
        result = await self.turn.run_output(window.text)
        span = {"choice": window.choice, "start": window.start, "end": window.end}
        for entry in result.activated:
            entry["additional_info"] = {**(entry["additional_info"] or {}), "window": span}
        if result.blocked_by:
            self.blocked_by = result.blocked_by
            return False
        if result.modified:
            self._rewrites[window.choice] = result.text
        self._cutters[window.choice].passed = window.end
        return True

    async def _check_tools(self, choice: int) -> bool:
        """The tool-output rails on one choice's assembled tool calls."""
        calls = self._tool_calls.pop(choice).calls()
        result = await self.turn.check_tool_calls(calls)
        for entry in result.activated:
            entry["additional_info"] = {**(entry["additional_info"] or {}), "choice": choice}
        if result.blocked_by:
            self.blocked_by = result.blocked_by
            return False
        return True

    # --- releasing ------------------------------------------------------------------

    def _release(self) -> list[T]:
        out: list[T] = []
        held = self._held
        cutters, ahead = self._cutters, self._ahead
        now = time.perf_counter()
        first_at = held[0].at if held else now
        while held:
            front = held[0]
            if front.tools and not front.tools.isdisjoint(self._tool_calls):
                break  # tool calls still to be checked
            if any(count > cutters[c].passed + ahead for c, count in front.through.items()):
                break
            held.popleft()
            self.held_bytes -= front.size
            self._sent = front.answered
            out.append(front.item)
        if out:
            STREAM_HOLDBACK.observe(now - first_at)
        return out

    def _message(self, choice: int) -> dict[str, Any]:
        """A choice's answer as one message: assembled from its deltas (rewrite mode), or
        its content (`whole` mode keeps every token of it)."""
        assembler = self._messages.get(choice) if self._messages is not None else None
        if assembler is not None:
            return assembler.message()
        cutter = self._cutters.get(choice)
        return {"content": cutter.text if cutter else ""}

    async def _rewrite_fields(self) -> None:
        """Each rewritten choice's fields, each through the rewriting rails on its own,
        unless its content is all the rails checked (then the stage's text is it)."""
        for choice, text in self._rewrites.items():
            if choice < 0:  # a choice's logprobs: dropped with its held items
                continue
            message = self._message(choice)
            if len(message) == 1 and message["content"] == self._cutters[choice].text:
                message["content"] = text
            else:
                await rewrite_message(message, self.turn.rewrite_output, self.reasoning)
            self._rewritten[choice] = message

    def _rewritten_release(self) -> list[T | Rewritten]:
        """Held items with the rewritten answers in place of every item that carried
        their text (so no logprobs of the original text go out)."""
        out: list[T | Rewritten] = []
        emitted: set[int] = set()
        for held in self._held:
            carried = [*held.through, *(c for c in held.tools if c not in held.through)]
            if not carried:
                out.append(held.item)
                continue
            for choice in carried:
                if choice in emitted or choice < 0:
                    continue
                emitted.add(choice)
                message = self._rewritten.get(choice) or self._message(choice)
                fields = {k: v for k, v in message.items() if k != "content"}
                self._rewrites[choice] = content_text(message.get("content"))
                out.append(Rewritten(choice, self._rewrites[choice], fields or None))
        self._held.clear()
        self.held_bytes = 0
        return out
