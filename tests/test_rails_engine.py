"""The rails engine without a socket: turns, verdict parsing, stage running, policies."""

from __future__ import annotations

import asyncio
import time

import pytest

from rails.base import ALLOW, Action, CheckContext, Stage, Verdict
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails, RailRunner, StageResult
from rails.library.self_check import parse_verdict
from rails.turn import current_user_turn


def ctx() -> CheckContext:
    return CheckContext(user_text="", bot_text=None, messages=[], context={}, model="m")


class FakeRail:
    """A rail with a scripted verdict and delay, counting its calls."""

    def __init__(
        self, name: str, verdict: Verdict = ALLOW, delay: float = 0.0, error: bool = False
    ) -> None:
        self.name = name
        self.stage = Stage.INPUT
        self.uses_model = True
        self.rewrites = verdict.action is Action.REWRITE
        self.action_name = "fake"
        self.action_params: dict[str, str] = {}
        self.verdict = verdict
        self.delay = delay
        self.error = error
        self.calls = 0
        self.finished = 0

    async def check(self, text: str, ctx: CheckContext) -> Verdict:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error:
            raise RuntimeError("model unavailable")
        self.finished += 1
        return self.verdict


def engine(
    rails: list[FakeRail], parallel: bool = False, timeout: float = 1.0, fail_open: bool = False
) -> Guardrails:
    guardrails = Guardrails(RailsConfig.parse_object({}))
    guardrails.input = [RailRunner(r, timeout, fail_open, "test") for r in rails]
    guardrails.parallel[Stage.INPUT] = parallel
    return guardrails


@pytest.mark.parametrize(
    ("roles", "users", "answer"),
    [
        (["user"], [0], None),
        (["system", "user", "user"], [1, 2], None),
        (["user", "assistant", "user", "user"], [2, 3], None),
        (["user", "assistant"], [0], 1),
        (["user", "assistant", "user", "tool", "user"], [2, 4], None),
        (["assistant"], [], 0),
    ],
)
def test_current_user_turn(roles: list[str], users: list[int], answer: int | None) -> None:
    assert current_user_turn([{"role": r, "content": "x"} for r in roles]) == (users, answer)


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        ("No", True),
        ("no.", True),
        (" Safe", True),
        ("Yes", False),
        ("unsafe\nS1", False),
        ("", False),
        ("maybe", False),
        ("Nope", False),
    ],
)
def test_self_check_verdicts(answer: str, allowed: bool) -> None:
    assert parse_verdict(answer) is allowed


async def test_sequential_stage_stops_at_first_block() -> None:
    first, second, third = FakeRail("a"), FakeRail("b", Verdict(Action.BLOCK)), FakeRail("c")
    result = await engine([first, second, third]).run_stage(Stage.INPUT, "text", ctx())
    assert result.blocked_by == "b"
    assert (first.calls, second.calls, third.calls) == (1, 1, 0)
    assert [e["name"] for e in result.activated] == ["a", "b"]


async def test_parallel_stage_block_cancels_slow_rails() -> None:
    slow, blocker = FakeRail("slow", delay=5), FakeRail("fast", Verdict(Action.BLOCK), delay=0.01)
    started = time.perf_counter()
    result = await engine([slow, blocker], parallel=True).run_stage(Stage.INPUT, "text", ctx())
    assert result.blocked_by == "fast"
    assert time.perf_counter() - started < 1
    assert slow.finished == 0


async def test_parallel_stage_passes_when_all_allow() -> None:
    rails = [FakeRail("a", delay=0.02), FakeRail("b", delay=0.01)]
    result = await engine(rails, parallel=True).run_stage(Stage.INPUT, "text", ctx())
    assert result.blocked_by is None and len(result.activated) == 2


async def test_rewrites_feed_the_next_rail() -> None:
    rewriter = FakeRail("mask", Verdict(Action.REWRITE, text="masked"))
    result = await engine([rewriter, FakeRail("after")]).run_stage(Stage.INPUT, "raw", ctx())
    assert result == StageResult(
        text="masked",
        blocked_by=None,
        modified=True,
        activated=result.activated,
        duration=result.duration,
    )


async def test_failing_rail_fails_closed_by_default_and_open_when_configured() -> None:
    closed = await engine([FakeRail("x", error=True)]).run_stage(Stage.INPUT, "t", ctx())
    assert closed.blocked_by == "x"
    assert closed.activated[0]["decisions"] == ["error: block"]
    opened = await engine([FakeRail("x", error=True)], fail_open=True).run_stage(
        Stage.INPUT, "t", ctx()
    )
    assert opened.blocked_by is None


async def test_rail_deadline() -> None:
    started = time.perf_counter()
    result = await engine([FakeRail("slow", delay=5)], timeout=0.05).run_stage(
        Stage.INPUT, "t", ctx()
    )
    assert result.blocked_by == "slow"
    assert result.activated[0]["decisions"] == ["timeout: block"]
    assert time.perf_counter() - started < 1


def test_unknown_flow_lists_the_ones_we_implement() -> None:
    config = RailsConfig.parse_object({"rails": {"input": {"flows": ["check jailbreak"]}}})
    with pytest.raises(ConfigError) as caught:
        Guardrails(config)
    message = str(caught.value)
    assert "rails.input.flows[0]" in message and "check jailbreak" in message
    assert "regex check input" in message and "self check input" in message


def test_bad_on_error_policy_is_a_config_error() -> None:
    config = RailsConfig.parse_object(
        {
            "rails": {
                "input": {"flows": ["regex check input"]},
                "config": {"regex_detection": {"input": {"patterns": ["x"]}}},
            },
            "railguard": {"on_error": "explode"},
        }
    )
    with pytest.raises(ConfigError, match="on_error"):
        Guardrails(config)


def regex_engine(patterns: list[str], case_insensitive: bool = False) -> Guardrails:
    return Guardrails(
        RailsConfig.parse_object(
            {
                "rails": {
                    "input": {"flows": ["regex check input"]},
                    "config": {
                        "regex_detection": {
                            "input": {"patterns": patterns, "case_insensitive": case_insensitive}
                        }
                    },
                }
            }
        )
    )


async def test_regex_rail_matches_any_pattern_and_names_it() -> None:
    guardrails = regex_engine([r"\bpassword\b", r"\d{3}-\d{2}-\d{4}"], case_insensitive=True)
    blocked = await guardrails.run_stage(Stage.INPUT, "my number is 123-45-6789", ctx())
    assert blocked.blocked_by == "regex check input"
    assert "\\d{3}" in blocked.activated[0]["additional_info"]["reason"]
    assert (await guardrails.run_stage(Stage.INPUT, "the PASSWORD", ctx())).blocked_by
    assert (await guardrails.run_stage(Stage.INPUT, "passwords are fine", ctx())).blocked_by is None


async def test_catastrophic_backtracking_pattern_runs_in_linear_time() -> None:
    guardrails = regex_engine([r"^(a+)+$", r"(x+x+)+y"])
    attack = "a" * 50_000 + "!"  # exponential for a backtracking engine
    started = time.perf_counter()
    result = await guardrails.run_stage(Stage.INPUT, attack, ctx())
    assert result.blocked_by is None
    assert (await guardrails.run_stage(Stage.INPUT, "x" * 40_000, ctx())).blocked_by is None
    assert time.perf_counter() - started < 0.5


def test_regex_that_re2_cannot_run_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError) as caught:
        regex_engine(["fine", r"(?<=secret)word"])
    assert "rails.config.regex_detection.input.patterns[1]" in str(caught.value)
    assert "look-around" in str(caught.value)
