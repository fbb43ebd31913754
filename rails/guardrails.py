"""A config compiled into runnable rails, and the stage runner (the filter chain).

Compiled once per config (at start-up, or once per `config_ids` combination); a request
only walks the lists built here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metrics import RAIL_CHECKS, RAIL_DURATION, RAIL_ERRORS, batched
from rails.base import RETURNS_TEXT, Action, CheckContext, Rail, Stage, Verdict
from rails.config import ConfigError, RailsConfig
from rails.model_caller import ModelTarget, action_calls, model_targets
from rails.options import RailsOptions
from rails.policy import CLIENT_STAGES, ClientPolicy, SelectionForbidden
from rails.registry import build_rail, split_flow
from upstream.errors import (
    UpstreamBadResponse,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = logging.getLogger("railguard.rails")

DEFAULT_TIMEOUT = 10.0
Selection = bool | Sequence[str] | None


@dataclass(slots=True)
class RailRunner:
    """One rail with its deadline, failure policy and pre-bound metrics."""

    rail: Rail
    timeout: float
    fail_open: bool
    config_id: str
    _verdicts: dict[str, Any] = field(default_factory=dict)
    _duration: Any = None

    def __post_init__(self) -> None:
        labels = (self.config_id, self.rail.name, self.rail.stage.value)
        self._verdicts = {
            v: batched(RAIL_CHECKS.labels(*labels, v))
            for v in ("pass", "block", "modify", "error", "timeout", "skipped")
        }
        self._duration = batched(RAIL_DURATION.labels(*labels))

    def skipped(self) -> None:
        """Not run: an earlier rail of the stage blocked."""
        self._verdicts["skipped"].inc()

    async def run(
        self, text: str, ctx: CheckContext, deadline: float | None = None
    ) -> tuple[Verdict, dict[str, Any]]:
        """Check `text`; a model-backed rail gets its own timeout, cut to the stage's
        `deadline` (a `time.monotonic()` instant) when one is given."""
        started = time.time()
        t0 = time.perf_counter()
        outcome: str
        calls: list[dict[str, Any]] = []
        try:
            if self.rail.uses_model:
                timeout = self.timeout
                if deadline is not None:
                    timeout = max(0.0, min(timeout, deadline - time.monotonic()))
                with action_calls() as calls:
                    async with asyncio.timeout(timeout):
                        verdict = await self.rail.check(text, ctx)
            else:
                verdict = await self.rail.check(text, ctx)
            outcome = {Action.ALLOW: "pass", Action.BLOCK: "block", Action.REWRITE: "modify"}[
                verdict.action
            ]
            decision = verdict.action.value
        except Exception as exc:  # a failing rail must follow its policy, never crash the request
            outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
            action = Action.ALLOW if self.fail_open else Action.BLOCK
            verdict = Verdict(action, reason=outcome, failed=True)
            decision = f"{outcome}: {action.value}"
            RAIL_ERRORS.labels(
                self.config_id, self.rail.name, self.rail.stage.value, error_type(exc), action.value
            ).inc()
            log.warning(
                "rail %r failed (%s: %s); policy %s",
                self.rail.name,
                type(exc).__name__,
                exc,
                "fail open" if self.fail_open else "fail closed",
            )
        duration = time.perf_counter() - t0
        self._verdicts[outcome].inc()
        self._duration.observe(duration)
        finished = started + duration
        value = verdict.value
        if value is RETURNS_TEXT:
            value = text if verdict.text is None else verdict.text
        executed = {
            "action_name": self.rail.action_name,
            "action_params": dict(self.rail.action_params),
            "return_value": value,
            "llm_calls": calls,
            "started_at": started,
            "finished_at": finished,
            "duration": duration,
        }
        entry = {
            "type": self.rail.stage.value,
            "name": self.rail.name,
            "decisions": [decision],
            "executed_actions": [executed],
            "stop": verdict.action is Action.BLOCK,
            "additional_info": {"reason": verdict.reason} if verdict.reason else None,
            "started_at": started,
            "finished_at": finished,
            "duration": duration,
        }
        return verdict, entry


@dataclass(slots=True)
class StageResult:
    text: str
    blocked_by: str | None = None
    modified: bool = False
    activated: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0
    errors: int = 0  # checks that errored or timed out (their on_error policy decided)
    error_block: bool = False  # the block came from a failed rail's on_error: block


def _stage_timeout(config: RailsConfig) -> float | None:
    """`railguard.stage_timeout`: one deadline for all model-backed rails of a stage."""
    value = (config.railguard or {}).get("stage_timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(
            "must be a number of seconds > 0",
            file=config.file_for("railguard"),
            key="railguard.stage_timeout",
        )
    return float(value)


def _policy(config: RailsConfig, flow: str) -> tuple[float, bool]:
    """`railguard.rails.<flow>: {timeout, on_error: block|allow}`, our own extension."""
    section: Mapping[str, Any] = config.railguard or {}
    default_timeout = float(section.get("rail_timeout", DEFAULT_TIMEOUT))
    per_rail = (section.get("rails") or {}).get(flow) or {}
    on_error = per_rail.get("on_error", section.get("on_error", "block"))
    if on_error not in ("block", "allow"):
        raise ConfigError(
            "on_error must be 'block' or 'allow'",
            file=config.file_for("railguard"),
            key=f"railguard.rails.{flow}.on_error",
        )
    return float(per_rail.get("timeout", default_timeout)), on_error == "allow"


def error_type(exc: BaseException) -> str:
    """A bounded name for why a rail failed (a metric label)."""
    if isinstance(exc, UpstreamTimeout):
        return "upstream_timeout"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, UpstreamUnreachable):
        return "upstream_unreachable"
    if isinstance(exc, UpstreamHTTPError):
        return "upstream_status"
    if isinstance(exc, UpstreamBadResponse):
        return "upstream_bad_response"
    return "upstream_error" if isinstance(exc, UpstreamError) else "exception"


class Guardrails:
    """A config's rails, compiled. Raises ConfigError for anything it can't run.

    `policy`: what requests may change (rails/policy.py); by default the safe defaults
    with the config's own `railguard` settings over them."""

    def __init__(self, config: RailsConfig, policy: ClientPolicy | None = None) -> None:
        self.config = config
        self.policy = policy if policy is not None else ClientPolicy().for_config(config)
        self.id = config.id or "default"
        self.refusal = config.refusal_message
        self.targets: dict[str, ModelTarget] = model_targets(config)
        self.input = self._compile(Stage.INPUT, config.input_flows)
        self.output = self._compile(Stage.OUTPUT, config.output_flows)
        self.tool_input = self._compile(Stage.TOOL_INPUT, config.tool_input_flows)
        self.tool_output = self._compile(Stage.TOOL_OUTPUT, config.tool_output_flows)
        self.parallel = {
            Stage.INPUT: config.input_parallel,
            Stage.OUTPUT: config.output_parallel,
            Stage.TOOL_INPUT: False,
            Stage.TOOL_OUTPUT: False,
        }
        self.stage_timeout = _stage_timeout(config)
        self.uses_model = any(
            r.rail.uses_model
            for r in (*self.input, *self.output, *self.tool_input, *self.tool_output)
        )

    def _compile(self, stage: Stage, flows: Sequence[str]) -> list[RailRunner]:
        runners = []
        for index, flow in enumerate(flows):
            rail = build_rail(self.config, flow, stage, f"rails.{stage.value}.flows[{index}]")
            timeout, fail_open = _policy(self.config, flow)
            runners.append(RailRunner(rail, timeout, fail_open, self.id))
        return runners

    def runners(self, stage: Stage) -> list[RailRunner]:
        """All of a stage's rails, in config order."""
        if stage is Stage.INPUT:
            return self.input
        if stage is Stage.OUTPUT:
            return self.output
        return self.tool_input if stage is Stage.TOOL_INPUT else self.tool_output

    def selected(self, stage: Stage, selection: Selection) -> list[RailRunner]:
        """The rails `options.rails.<stage>` asks for: all, none, or the named ones."""
        runners = self.runners(stage)
        if selection is None or selection is True:
            return runners
        if selection is False:
            return []
        names = set(selection)
        return [r for r in runners if r.rail.name in names or split_flow(r.rail.name)[0] in names]

    def refuse_narrowing(self, rails: RailsOptions) -> None:
        """Raise SelectionForbidden when `options.rails` would skip a rail of a stage the
        policy keeps out of the client's hands. A selection that still runs every rail
        (true, or a list naming them all) is fine, whatever else it names."""
        for stage in CLIENT_STAGES:
            if stage in self.policy.selectable:
                continue
            runners = self.runners(stage)
            kept = {id(r) for r in self.selected(stage, getattr(rails, stage.value))}
            if len(kept) < len(runners):
                skipped = [r.rail.name for r in runners if id(r) not in kept]
                raise SelectionForbidden(stage, skipped)

    async def run_stage(
        self, stage: Stage, text: str, ctx: CheckContext, selection: Selection = None
    ) -> StageResult:
        """Local rails first, in config order, so a cheap block spares every model call;
        then the model-backed rails, in parallel when the config says so, all under one
        deadline: `railguard.stage_timeout`, else the longest of their own timeouts."""
        runners = self.selected(stage, selection)
        result = StageResult(text)
        if not runners:
            return result
        t0 = time.perf_counter()
        remote = [r for r in runners if r.rail.uses_model]
        for runner in runners:
            if runner.rail.uses_model:
                continue
            verdict, entry = await runner.run(result.text, ctx)
            result.activated.append(entry)
            if self._apply(verdict, runner, result):
                remote = []
                break
        if remote:
            budget = self.stage_timeout or max(r.timeout for r in remote)
            deadline = time.monotonic() + budget
            if self.parallel[stage] and len(remote) > 1:
                await self._run_parallel(remote, result, ctx, deadline)
            else:
                for runner in remote:
                    verdict, entry = await runner.run(result.text, ctx, deadline)
                    result.activated.append(entry)
                    if self._apply(verdict, runner, result):
                        break
        result.duration = time.perf_counter() - t0
        if result.blocked_by and len(result.activated) < len(runners):
            ran = {entry["name"] for entry in result.activated}
            for runner in runners:
                if runner.rail.name not in ran:
                    runner.skipped()
        return result

    async def rewrite(
        self, stage: Stage, text: str, ctx: CheckContext, selection: Selection = None
    ) -> str:
        """`text` through the stage's rewriting rails only: for applying a rewrite the
        stage decided on to each part of a multi-part turn. Not logged or counted again."""
        for runner in self.selected(stage, selection):
            if runner.rail.rewrites:
                verdict = await runner.rail.check(text, ctx)
                if verdict.action is Action.REWRITE and verdict.text is not None:
                    text = verdict.text
        return text

    async def _run_parallel(
        self, runners: list[RailRunner], result: StageResult, ctx: CheckContext, deadline: float
    ) -> None:
        """All rails on the same text at once; the first block cancels the rest."""
        tasks = {asyncio.ensure_future(r.run(result.text, ctx, deadline)): r for r in runners}
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: runners.index(tasks[t])):
                    verdict, entry = task.result()
                    result.activated.append(entry)
                    if self._apply(verdict, tasks[task], result):
                        return
        finally:
            for task in pending:
                task.cancel()

    @staticmethod
    def _apply(verdict: Verdict, runner: RailRunner, result: StageResult) -> bool:
        """Fold a verdict into the stage result; True when the stage must stop."""
        if verdict.failed:
            result.errors += 1
        if verdict.action is Action.BLOCK:
            result.blocked_by = runner.rail.name
            result.error_block = verdict.failed
            return True
        if verdict.action is Action.REWRITE and verdict.text is not None:
            result.text = verdict.text
            result.modified = True
        return False
