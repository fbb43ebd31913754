"""One guarded exchange: input rails, the caller's main call, output rails, and the
`guardrails` envelope describing what happened.

The caller (the HTTP proxy, or the Python API) owns the main call so it can stream it;
everything about rails lives here, so both use the same engine.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rails.base import CheckContext, Stage
from rails.guardrails import Guardrails, StageResult
from rails.input_scope import current_user_turn, joined, pieces, scoped_indexes, write_back
from rails.model_caller import ModelCaller
from rails.options import GenerationOptions
from upstream.wire import (
    answer_text,
    arguments_text,
    content_text,
    refuse_choice,
    rewrite_message,
)


class Turn:
    """The state of one request's rails; methods run in request order.

    Raises SelectionForbidden when `options.rails` asks to skip rails the config's policy
    keeps. `checked`: how many leading messages railguard checked before (a thread's
    history, a signed state), which the input rails don't read again."""

    def __init__(
        self,
        guardrails: Guardrails,
        messages: list[dict[str, Any]],
        *,
        model: str,
        options: GenerationOptions,
        context: Mapping[str, Any] | None = None,
        caller: ModelCaller | None = None,
        tools: Sequence[Any] | None = None,
        tool_choice: Any = None,
        raw_completions: bool = False,
        checked: int = 0,
    ) -> None:
        guardrails.refuse_narrowing(options.rails)
        self.guardrails = guardrails
        self.raw_completions = raw_completions  # the log may show text a rail blocked
        self.options = options
        self.messages = messages
        self.started = time.perf_counter()
        self._user_indexes, answer_index = current_user_turn(messages)
        self.user_text = self._current_user_text()
        in_scope = scoped_indexes(
            messages,
            guardrails.policy.input_scope,
            checked=checked,
            answer=None if options.rails.dialog else answer_index,
        )
        self._input_pieces = pieces(messages, in_scope)
        self.input_text = joined(self._input_pieces)  # what the input rails read
        self.given_answer = (
            content_text(messages[answer_index].get("content"))
            if answer_index is not None
            else None
        )
        self.ctx = CheckContext(
            user_text=self.user_text,
            bot_text=None,
            messages=messages,
            context=context or {},
            model=model,
            caller=caller,
            tools=tools if isinstance(tools, list) else (),
            tool_choice=tool_choice,
        )
        self.input: StageResult | None = None
        self.output: StageResult | None = None
        self.bot_text: str | None = None
        self._main_calls: list[dict[str, Any]] = []
        self._output_calls_from = 0  # rail calls before this index are the input stage's

    def _current_user_text(self) -> str:
        """The user's messages of this turn: the prompt rails compare an answer with."""
        return "\n".join(content_text(self.messages[i].get("content")) for i in self._user_indexes)

    @property
    def calls_model(self) -> bool:
        """False in the spec's check mode (`dialog: false`): rails only, no main call."""
        return self.options.rails.dialog

    @property
    def checks_reasoning(self) -> bool:
        """`rails.output.apply_to_reasoning_traces` (default true): output rails check the
        answer's reasoning too, and a rewrite rewrites it."""
        return self.guardrails.config.output_reasoning

    @property
    def blocked_by(self) -> str | None:
        for stage in (self.input, self.output):
            if stage is not None and stage.blocked_by:
                return stage.blocked_by
        return None

    @property
    def rail_errors(self) -> int:
        """Rail checks of this turn that errored or timed out (their on_error decided)."""
        return sum(s.errors for s in (self.input, self.output) if s is not None)

    @property
    def modified(self) -> bool:
        return any(s is not None and s.modified for s in (self.input, self.output))

    @property
    def check_status(self) -> str:
        """Check mode's verdict (`/v1/checks`, `LLMRails.check`): passed|modified|blocked."""
        if self.blocked_by:
            return "blocked"
        return "modified" if self.modified else "passed"

    def output_rails_selected(self) -> bool:
        return bool(self.guardrails.selected(Stage.OUTPUT, self.options.rails.output))

    def tool_output_rails_selected(self) -> bool:
        return bool(self.guardrails.selected(Stage.TOOL_OUTPUT, self.options.rails.tool_output))

    async def check_input(self) -> StageResult:
        """Run the tool-input rails on the request's tool results (when it has any), then
        the input rails on the messages of the config's input scope; a rewrite (masking)
        replaces what goes upstream.
        Both are the turn's input stage: a block in either means no main call."""
        tools = None
        tool_results = (
            [m for m in self.messages if m.get("role") == "tool"]
            if self.guardrails.tool_input
            else None
        )
        if tool_results:
            text = "\n".join(content_text(m.get("content")) for m in tool_results)
            tools = await self.guardrails.run_stage(
                Stage.TOOL_INPUT, text, self.ctx, self.options.rails.tool_input
            )
            if tools.blocked_by:
                self.input = tools
                return tools
        result = await self.guardrails.run_stage(
            Stage.INPUT, self.input_text, self.ctx, self.options.rails.input
        )
        self.input = _fold(tools, result)
        if result.modified and not self.input.blocked_by:
            await self._rewrite_input(result.text)
        self._output_calls_from = len(self.ctx.caller.calls) if self.ctx.caller else 0
        return self.input

    async def _rewrite_input(self, rewritten: str) -> None:
        """A single piece of text takes the stage's text; otherwise each piece (a name, a
        message's text, a text part) goes through the rewriting rails on its own, so every
        message keeps its shape (several messages, images next to text)."""
        found = self._input_pieces
        if len(found) == 1:
            write_back(self.messages, found[0], rewritten)
        else:
            selection = self.options.rails.input
            for piece in found:
                text = await self.guardrails.rewrite(Stage.INPUT, piece.text, self.ctx, selection)
                if text != piece.text:
                    write_back(self.messages, piece, text)
        self.input_text = rewritten
        self.user_text = self.ctx.user_text = self._current_user_text()

    async def check_output(self, text: str) -> StageResult:
        """Run output rails on one whole answer and make it the turn's bot message."""
        result = await self.run_output(text)
        self.bot_text = self.guardrails.refusal if result.blocked_by else result.text
        return result

    async def run_output(self, text: str) -> StageResult:
        """Run output rails on one text (an answer, or a window of a streamed one);
        `self.output` sums every run of the turn."""
        self.ctx.bot_text = text
        result = await self.guardrails.run_stage(
            Stage.OUTPUT, text, self.ctx, self.options.rails.output
        )
        self.output = _fold(self.output, result)
        return result

    async def check_tool_calls(self, calls: Sequence[Any]) -> StageResult:
        """Run the tool-output rails on one choice's tool calls (whole: assembled, on a
        stream). The rails read `ctx.tool_calls`; the text is the calls' arguments. A
        block counts as an output block, and the refusal becomes the bot message."""
        self.ctx.tool_calls = calls
        text = "\n".join(arguments_text(call) for call in calls)
        result = await self.guardrails.run_stage(
            Stage.TOOL_OUTPUT, text, self.ctx, self.options.rails.tool_output
        )
        self.output = _fold(self.output, result)
        if result.blocked_by:
            self.bot_text = self.guardrails.refusal
        return result

    async def check_completion(self, data: dict[str, Any], elapsed: float) -> None:
        """A whole chat.completion from the main call: tool-output rails on every choice's
        tool calls, output rails on everything its model wrote (`answer_text`); a block
        or rewrite patches that choice in `data`. Records the main call and the bot
        message (the first choice's content as delivered)."""
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        messages = [c.get("message") if isinstance(c, dict) else None for c in choices]
        first = messages[0] if messages and isinstance(messages[0], dict) else None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        raw = content_text(first.get("content")) if first is not None else ""
        self.record_main_call(str(data.get("model", "")), elapsed, raw, usage)
        tools = self.tool_output_rails_selected()
        output = self.output_rails_selected()
        if output or tools:
            for choice, message in zip(choices, messages, strict=True):
                if isinstance(message, dict):
                    await self._check_choice(choice, message, tools, output)
        self.bot_text = content_text(first.get("content")) if first is not None else None

    async def _check_choice(
        self, choice: dict[str, Any], message: dict[str, Any], tools: bool, output: bool
    ) -> None:
        calls = message.get("tool_calls") if tools else None
        if calls:
            result = await self.check_tool_calls(calls if isinstance(calls, list) else [calls])
            if result.blocked_by:
                refuse_choice(choice, message, self.guardrails.refusal)
                return
        text = answer_text(choice, message, self.checks_reasoning) if output else ""
        if not text:
            return
        result = await self.run_output(text)
        if result.blocked_by:
            refuse_choice(choice, message, self.guardrails.refusal)
        elif result.modified:
            content = message.get("content")
            if isinstance(content, str) and content == text:  # the one field checked
                message["content"] = result.text
            else:
                await rewrite_message(message, self.rewrite_output, self.checks_reasoning)
            if "logprobs" in choice:  # its tokens spell the text before the rewrite
                choice["logprobs"] = None

    async def rewrite_output(self, text: str) -> str:
        """One field of an answer the output rails rewrote, through the rewriting rails
        on its own (the stage's text is all fields in one)."""
        return await self.guardrails.rewrite(
            Stage.OUTPUT, text, self.ctx, self.options.rails.output
        )

    async def answer_without_model(self) -> str:
        """Check mode, after the input rails: output rails on a trailing assistant message if
        one was given, and the text to answer: that message, else the checked user text, or
        the refusal when a rail blocked."""
        calls = self.messages[-1].get("tool_calls") if self.given_answer is not None else None
        if not self.blocked_by and isinstance(calls, list) and calls:
            await self.check_tool_calls(calls)
        if not self.blocked_by and self.given_answer:
            await self.check_output(self.given_answer)
        if self.blocked_by:
            return self.guardrails.refusal
        if self.given_answer is not None:
            return self.bot_text if self.bot_text is not None else self.given_answer
        return self.user_text

    def record_main_call(
        self, model: str, duration: float, completion: str, usage: Mapping[str, Any] | None
    ) -> None:
        usage = usage or {}
        now = time.time()
        self._main_calls.append(
            {
                "task": "general",
                "llm_model_name": model,
                "prompt": self.user_text,
                "completion": completion,
                "started_at": now - duration,
                "finished_at": now,
                "duration": duration,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "total_tokens": usage.get("total_tokens"),
            }
        )

    # --- the envelope -------------------------------------------------------------

    def _llm_calls(self) -> list[dict[str, Any]]:
        """Every model call of the turn. When an output or tool-output rail blocked or
        rewrote the answer, the log must not hand the client the text it stopped: the
        main call's completion is the answer as delivered, the output side's rail calls
        lose their prompt and completion (they quote the answer), and each is marked
        `redacted`; unless the server logs raw completions (--log-raw-completions)."""
        rail_calls = self.ctx.caller.calls if self.ctx.caller else []
        main_calls = self._main_calls
        stage = self.output
        if stage is not None and (stage.blocked_by or stage.modified) and not self.raw_completions:
            cut = self._output_calls_from
            rail_calls = [
                *rail_calls[:cut],
                *(
                    {**c, "prompt": None, "completion": None, "redacted": True}
                    for c in rail_calls[cut:]
                ),
            ]
            delivered = self.bot_text or ""
            main_calls = [{**c, "completion": delivered, "redacted": True} for c in main_calls]
        return sorted([*rail_calls, *main_calls], key=lambda c: c["started_at"])

    def log(self) -> dict[str, Any] | None:
        wanted = self.options.log
        if not wanted.wanted:
            return None
        calls = self._llm_calls()
        stages = [s for s in (self.input, self.output) if s is not None]
        result: dict[str, Any] = {
            "activated_rails": [e for s in stages for e in s.activated]
            if wanted.activated_rails
            else [],
            "llm_calls": calls if wanted.llm_calls else [],
            "internal_events": [] if wanted.internal_events else None,
            "colang_history": "" if wanted.colang_history else None,
            "stats": {
                "input_rails_duration": self.input.duration if self.input else None,
                "dialog_rails_duration": None,
                "generation_rails_duration": sum(c["duration"] for c in self._main_calls) or None,
                "output_rails_duration": self.output.duration if self.output else None,
                "total_duration": time.perf_counter() - self.started,
                "llm_calls_duration": sum(c["duration"] for c in calls),
                "llm_calls_count": len(calls),
                "llm_calls_total_prompt_tokens": sum(c["prompt_tokens"] or 0 for c in calls),
                "llm_calls_total_completion_tokens": sum(
                    c["completion_tokens"] or 0 for c in calls
                ),
                "llm_calls_total_tokens": sum(c["total_tokens"] or 0 for c in calls),
            },
        }
        return result

    def llm_output(self, upstream_data: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """`options.llm_output`: the main call's answer without its choices (id, model,
        usage, ...), when one was made."""
        if not self.options.llm_output or upstream_data is None:
            return None
        return {k: v for k, v in upstream_data.items() if k not in ("choices", "guardrails")}

    def output_data(self) -> dict[str, Any] | None:
        wanted = self.options.output_vars
        if not wanted:
            return None
        variables = {
            **self.ctx.context,
            "user_message": self.user_text,
            "bot_message": self.bot_text,
            "triggered_input_rail": self.input.blocked_by if self.input else None,
            "triggered_output_rail": self.output.blocked_by if self.output else None,
        }
        if wanted is True:
            return variables
        return {name: variables.get(name) for name in wanted}


def _fold(previous: StageResult | None, result: StageResult) -> StageResult:
    """Two runs of rails as one stage result: `result`'s text, both logs and durations."""
    if previous is None:
        return result
    return StageResult(
        text=result.text,
        blocked_by=previous.blocked_by or result.blocked_by,
        modified=previous.modified or result.modified,
        activated=[*previous.activated, *result.activated],
        duration=previous.duration + result.duration,
        errors=previous.errors + result.errors,
        error_block=previous.error_block if previous.blocked_by else result.error_block,
    )
