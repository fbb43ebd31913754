"""`LLMRails`: NeMo's Python API over railguard's engine, with no server.

Every method runs one `Turn`, the object the server's request handling runs too: input
rails, the main call (made here, through `upstream/`), output rails on the answer or on
the stream's windows, and the log. Only the shapes going in and out are NeMo's.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, overload

import orjson

from rails.api.events import bot_utterance, events_to_messages, needs_answer
from rails.api.loops import Pools, SyncRunner, no_running_loop
from rails.api.main_model import from_client, resolve_main_model
from rails.api.response import GenerationLog, GenerationResponse, RailsResult, RailStatus
from rails.api.stream import guarded_text
from rails.check_cache import CheckCache
from rails.config import RailsConfig
from rails.guardrails import Guardrails
from rails.model_caller import ModelCaller, ModelTarget
from rails.options import DEFAULT_OPTIONS, GenerationOptions, RailsOptions
from rails.turn import Turn
from upstream import Router, Upstream, UpstreamPool
from upstream.wire import content_text, first_message

log = logging.getLogger("railguard.api")

Options = GenerationOptions | Mapping[str, Any] | None
Messages = Sequence[Mapping[str, Any]]
State = Mapping[str, Any]
_CHECK_MODEL = "railguard-check"  # the model name of a check, which calls no model
_RAIL_TYPES = ("input", "output", "tool_input", "tool_output")


@dataclass(slots=True)
class _Call:
    """One call's arguments, validated."""

    messages: list[dict[str, Any]]
    context: dict[str, Any]
    options: GenerationOptions
    prompt: bool  # answer with a string, not a message
    detailed: bool  # answer with a GenerationResponse (options or state given)
    state: Mapping[str, Any] | None
    history: int  # how many of `messages` came from the state


class LLMRails:
    """Guardrails around an OpenAI-compatible model, in-process.

    `LLMRails(config)` calls the config's `type: main` model at its `parameters.base_url`
    (else RAILGUARD_UPSTREAM_URL or MAIN_MODEL_BASE_URL; `engine: openai` alone calls
    OpenAI), with the key in the model's `api_key_env_var` or OPENAI_API_KEY. `base_url`,
    `api_key` and `model` override them; `llm` may be an `openai` client to take its URL
    and key from. A config with rails railguard can't run raises `ConfigError` here.
    """

    def __init__(
        self,
        config: RailsConfig,
        llm: Any = None,
        verbose: bool = False,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        check_cache_size: int = 1024,
        check_cache_ttl: float = 60.0,
    ) -> None:
        self.config = config
        self.guardrails = Guardrails(config)
        if llm is not None:
            client_url, client_key = from_client(llm)
            base_url, api_key = base_url or client_url, api_key or client_key
        self.main = resolve_main_model(
            config,
            base_url=base_url,
            api_key=api_key,
            model=model,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        # Rails' model calls go where the server would send them; `main` is ours.
        self._router = Router((), self.main.upstream)
        self._targets = dict(self.guardrails.targets)
        if self.main.upstream is not None:
            self._targets["main"] = ModelTarget(self.main.model, self.main.upstream)
        self._cache = CheckCache(check_cache_size, check_cache_ttl)
        self.verbose = verbose
        if verbose:
            _log_to_stderr()
        self._pools = Pools()
        self._sync = SyncRunner(self._pools)
        self._finalizer = weakref.finalize(self, self._sync.close)

    # --- generation -----------------------------------------------------------------

    @overload
    async def generate_async(
        self, prompt: str, messages: None = None, options: None = None, state: None = None
    ) -> str: ...

    @overload
    async def generate_async(
        self, prompt: None = None, *, messages: Messages, options: None = None, state: None = None
    ) -> dict[str, Any]: ...

    @overload
    async def generate_async(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        *,
        options: GenerationOptions | Mapping[str, Any],
        state: State | None = None,
    ) -> GenerationResponse: ...

    @overload
    async def generate_async(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        options: Options = None,
        *,
        state: State,
    ) -> GenerationResponse: ...

    @overload
    async def generate_async(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        options: Options = None,
        state: State | None = None,
    ) -> str | dict[str, Any] | GenerationResponse: ...

    async def generate_async(
        self,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        options: Options = None,
        state: Mapping[str, Any] | None = None,
    ) -> str | dict[str, Any] | GenerationResponse:
        """The guarded answer: to `messages` an assistant message dict, to `prompt` a
        string; a `GenerationResponse` when `options` or `state` is given.

        `state` continues a conversation: `{}` starts one, and each response's `state`
        holds it so far (the messages as the model saw them and the guarded answers).
        """
        call = self._prepare(prompt, messages, options, state)
        pool = await self._pools.current()
        turn = self._turn(call, pool)
        await turn.check_input()
        data = None
        if turn.blocked_by:
            answer = _message(self.guardrails.refusal)
        elif not turn.calls_model:
            answer = _message(await turn.answer_without_model())
        else:
            upstream, body = self._main_call(call, turn, stream=False)
            result = await pool.chat(upstream, body)
            data = result.data
            await turn.check_completion(data, result.elapsed)
            answer = _answer(data)
        self._report(turn)
        if not call.detailed:
            return answer["content"] if call.prompt else answer
        return GenerationResponse(
            response=answer["content"] if call.prompt else [answer],
            llm_output=turn.llm_output(data),
            output_data=turn.output_data(),
            log=_log(turn),
            state=None if call.state is None else self._next_state(call, turn, data, answer),
        )

    @overload
    def generate(
        self, prompt: str, messages: None = None, options: None = None, state: None = None
    ) -> str: ...

    @overload
    def generate(
        self, prompt: None = None, *, messages: Messages, options: None = None, state: None = None
    ) -> dict[str, Any]: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        *,
        options: GenerationOptions | Mapping[str, Any],
        state: State | None = None,
    ) -> GenerationResponse: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        options: Options = None,
        *,
        state: State,
    ) -> GenerationResponse: ...

    @overload
    def generate(
        self,
        prompt: str | None = None,
        messages: Messages | None = None,
        options: Options = None,
        state: State | None = None,
    ) -> str | dict[str, Any] | GenerationResponse: ...

    def generate(
        self,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        options: Options = None,
        state: Mapping[str, Any] | None = None,
    ) -> str | dict[str, Any] | GenerationResponse:
        """`generate_async` for synchronous code; raises RuntimeError inside a running loop."""
        return self._sync.run("generate", self.generate_async(prompt, messages, options, state))

    async def stream_async(
        self,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, Any]] | None = None,
        options: Options = None,
    ) -> AsyncIterator[str]:
        """The answer's text chunks as they pass the output rails, in windows as
        `rails.output.streaming` says (see rails/api/stream.py). A block ends the stream
        with the error's JSON as the last chunk; an input block yields the refusal."""
        call = self._prepare(prompt, messages, options, None)
        pool = await self._pools.current()
        turn = self._turn(call, pool)
        await turn.check_input()
        if turn.blocked_by:
            yield self.guardrails.refusal
        elif not turn.calls_model:
            yield await turn.answer_without_model()
        else:
            upstream, body = self._main_call(call, turn, stream=True)
            stream = pool.stream(upstream, body)
            async for text in guarded_text(turn, stream, self.config.streaming):
                yield text
        self._report(turn)

    # --- events -----------------------------------------------------------------------

    async def generate_events_async(
        self, events: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The new events after `events`: the bot's `StartUtteranceBotAction` when the
        last utterance is the user's (`UtteranceUserActionFinished`), else none."""
        messages = events_to_messages(events)
        if not needs_answer(messages):
            return []
        answer = await self.generate_async(messages=messages)
        assert isinstance(answer, dict)
        return [bot_utterance(answer["content"])]

    def generate_events(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self._sync.run("generate_events", self.generate_events_async(events))

    # --- checks -----------------------------------------------------------------------

    async def check_async(
        self, messages: Sequence[Mapping[str, Any]], rail_types: Sequence[str] | None = None
    ) -> RailsResult:
        """Rails only, no model call, as the server's `/v1/checks`: input rails on the
        user turn, output rails on a trailing assistant message. `rail_types` picks
        stages ("input", "output", "tool_input", "tool_output"); all by default."""
        selection = dict.fromkeys(_RAIL_TYPES, True)
        if rail_types is not None:
            chosen = {str(getattr(t, "value", t)) for t in rail_types}  # NeMo's RailType too
            unknown = sorted(chosen.difference(_RAIL_TYPES))
            if unknown:
                raise ValueError(f"unknown rail types {unknown}; known: {list(_RAIL_TYPES)}")
            selection = {kind: kind in chosen for kind in _RAIL_TYPES}
        options = GenerationOptions(rails=RailsOptions(dialog=False, **selection))
        call = self._prepare(None, messages, options, None)
        turn = self._turn(call, await self._pools.current())
        await turn.check_input()
        content = await turn.answer_without_model()
        self._report(turn)
        return RailsResult(
            status=RailStatus(turn.check_status), content=content, rail=turn.blocked_by
        )

    def check(
        self, messages: Sequence[Mapping[str, Any]], rail_types: Sequence[str] | None = None
    ) -> RailsResult:
        return self._sync.run("check", self.check_async(messages, rail_types))

    # --- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections this event loop opened."""
        await self._pools.close_current()

    def close(self) -> None:
        """Close the synchronous methods' connections and event loop. Later calls open
        new ones. Also done when the object is collected, or at exit."""
        no_running_loop("close", "aclose")
        self._sync.close()

    def __enter__(self) -> LLMRails:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LLMRails:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- internals --------------------------------------------------------------------

    def _prepare(
        self,
        prompt: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        options: Options,
        state: Mapping[str, Any] | None,
    ) -> _Call:
        if (prompt is None) == (messages is None):
            raise ValueError("Give either `prompt` or `messages`, not both or neither.")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"`prompt` must be a string, not {type(prompt).__name__}")
            given: Sequence[Mapping[str, Any]] = [{"role": "user", "content": prompt}]
        else:
            assert messages is not None
            given = messages
        history = self._state_messages(state)
        context: dict[str, Any] = {}
        chat: list[dict[str, Any]] = list(history)
        for index, message in enumerate(given):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise ValueError(f"messages[{index}] must be a dict with a string `role`")
            if message["role"] == "context":  # NeMo's way to set context variables
                if not isinstance(message.get("content"), Mapping):
                    raise ValueError(f"messages[{index}]: a context message's content is a dict")
                context.update(message["content"])
            else:
                chat.append(dict(message))
        return _Call(
            messages=chat,
            context=context,
            options=_options(options),
            prompt=prompt is not None,
            detailed=options is not None or state is not None,
            state=state,
            history=len(history),
        )

    def _state_messages(self, state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """The conversation a state carries: `{}` is a new one."""
        if not state:
            return []
        messages = state.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError(
                "`state` must be the `state` of an earlier response (or {} to start one)."
            )
        if state.get("config_id") != self.guardrails.id:
            raise ValueError(
                f"The state belongs to config '{state.get('config_id')}', and these rails "
                f"use config '{self.guardrails.id}'."
            )
        return list(messages)

    def _next_state(
        self, call: _Call, turn: Turn, data: dict[str, Any] | None, answer: dict[str, Any]
    ) -> dict[str, Any]:
        """The conversation after this call. Only a turn that reached the model is kept
        (its messages as sent, masked stays masked, and the guarded answer), so a blocked
        message is never replayed, as in the server's threads."""
        kept = [*turn.messages, answer] if data is not None else turn.messages[: call.history]
        return {"config_id": self.guardrails.id, "messages": kept}

    def _turn(self, call: _Call, pool: UpstreamPool) -> Turn:
        model = self.main.model or _CHECK_MODEL
        caller = None
        if self.guardrails.uses_model:
            caller = ModelCaller(pool, self._router, self._targets, model, None, self._cache)
        params = call.options.llm_params or {}
        return Turn(
            self.guardrails,
            call.messages,
            model=model,
            options=call.options,
            context=call.context,
            caller=caller,
            tools=params.get("tools"),
            tool_choice=params.get("tool_choice"),
        )

    def _main_call(self, call: _Call, turn: Turn, *, stream: bool) -> tuple[Upstream, bytes]:
        """The upstream and body of the main call (after the input rails: a masked
        message goes out masked). `options.llm_params` go into the body."""
        upstream, model = self.main.upstream, self.main.model
        if upstream is None:
            raise ValueError(
                "No server for the main model: give the config a `type: main` model with "
                "`parameters.base_url`, set RAILGUARD_UPSTREAM_URL, or pass base_url=..."
            )
        if model is None:
            raise ValueError(
                "No model name: give the config's `type: main` model a `model`, or pass model=..."
            )
        params = call.options.llm_params or {}
        body = {k: v for k, v in params.items() if k != "stream"}
        body.update(model=model, messages=turn.messages)
        if stream:
            body["stream"] = True
        return upstream, orjson.dumps(body)

    def _report(self, turn: Turn) -> None:
        if self.verbose:
            rails = [e["name"] for s in (turn.input, turn.output) if s for e in s.activated]
            log.info("%s: %s (rails run: %s)", self.guardrails.id, turn.check_status, rails)


def _options(options: Options) -> GenerationOptions:
    if options is None:
        return DEFAULT_OPTIONS
    if isinstance(options, GenerationOptions):
        return options
    if isinstance(options, Mapping):
        return GenerationOptions.model_validate(options)
    raise TypeError(f"`options` must be GenerationOptions or a dict, not {type(options).__name__}")


def _log(turn: Turn) -> GenerationLog | None:
    data = turn.log()
    # through JSON, as the server sends it: the log shares no object with the engine
    # (rails answer with constant verdicts whose values it holds)
    return None if data is None else GenerationLog.model_validate(orjson.loads(orjson.dumps(data)))


def _message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _answer(data: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message after the output rails, as NeMo returns it."""
    message = first_message(data) or {}
    answer = _message(content_text(message.get("content")))
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    return answer


def _log_to_stderr() -> None:
    """`verbose=True`: railguard's own log lines (rails, the API) on stderr, as NeMo's
    verbose mode shows its own."""
    logger = logging.getLogger("railguard")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
