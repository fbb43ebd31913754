"""Flow parameters (`content safety check input $model=TYPE`): quoted values, as NeMo's
example configs write them, load like bare ones; a malformed one fails at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rails.base import Stage
from rails.config import ConfigError, RailsConfig
from rails.guardrails import Guardrails
from rails.registry import split_flow
from tests.conftest import StartRailguard
from tests.fake_upstream import FakeUpstream

SHIELDGEMMA = "google/shieldgemma-9b"
MODELS = [
    {"type": "main", "engine": "openai", "model": "main-model"},
    {"type": "shieldgemma", "engine": "nvidia_ai_endpoints", "model": SHIELDGEMMA},
]
PROMPTS = [
    {
        "task": "content_safety_check_input $model=shieldgemma",
        "content": "Is this safe? {{ user_input }}",
        "output_parser": "is_content_safe",
    }
]


@pytest.mark.parametrize(
    "flow",
    [
        "content safety check input $model=shieldgemma",
        'content safety check input $model="shieldgemma"',
        "content safety check input $model='shieldgemma'",
        "content safety check input $model = shieldgemma",
        'content safety check input  $model= "shieldgemma" ',
    ],
)
def test_quoted_and_bare_values_read_the_same(flow: str) -> None:
    assert split_flow(flow) == ("content safety check input", {"model": "shieldgemma"})


def test_a_quoted_value_may_hold_spaces_and_several_params_are_read() -> None:
    assert split_flow("""x $model="content safety" $mode='strict' $n=3""") == (
        "x",
        {"model": "content safety", "mode": "strict", "n": "3"},
    )
    assert split_flow("self check input") == ("self check input", {})


@pytest.mark.parametrize(
    ("flow", "problem"),
    [
        ('content safety check input $model="shieldgemma', "has an unclosed quote"),
        ("content safety check input $model='shieldgemma", "has an unclosed quote"),
        ('content safety check input $model=shield"gemma', "has an unclosed quote"),
        ("content safety check input $model", "has no '='"),
        ('content safety check input $model="shield"gemma', "is not $name=value"),
        ("content safety check input $model=a$b", "is not $name=value"),
    ],
)
def test_malformed_params_are_errors(flow: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("$", r"\$")):
        split_flow(flow)


def load(tmp_path: Path, flows: list[str]) -> Guardrails:
    folder = tmp_path / "c"
    folder.mkdir(exist_ok=True)
    config = {"models": MODELS, "rails": {"input": {"flows": flows}}, "prompts": PROMPTS}
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    return Guardrails(RailsConfig.from_path(folder))


@pytest.mark.parametrize("quote", ['"', "'"])
def test_a_quoted_model_loads_like_the_bare_one(tmp_path: Path, quote: str) -> None:
    flow = f"content safety check input $model={quote}shieldgemma{quote}"
    quoted = load(tmp_path, [flow])
    bare = load(tmp_path, ["content safety check input $model=shieldgemma"])
    [rail], [bare_rail] = (g.runners(Stage.INPUT) for g in (quoted, bare))
    assert rail.rail.name == flow  # the rail keeps the name the config gives it
    for attribute in ("_model_type", "action_name", "action_params"):
        assert getattr(rail.rail, attribute) == getattr(bare_rail.rail, attribute)
    assert rail.rail._prompt.task == "content_safety_check_input $model=shieldgemma"  # type: ignore[attr-defined]
    # `options.rails.input` selects it by its name or its flow's
    assert quoted.selected(Stage.INPUT, [flow]) == [rail]
    assert quoted.selected(Stage.INPUT, ["content safety check input"]) == [rail]


def test_a_malformed_param_fails_at_load_naming_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, ["self check input", 'content safety check input $model="shieldgemma'])
    assert caught.value.file == str(tmp_path / "c" / "config.yml")
    assert caught.value.key == "rails.input.flows[1]"
    assert "has an unclosed quote" in caught.value.reason


def test_a_quoted_model_of_no_listed_type_is_the_usual_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, ["content safety check input $model='nope'"])
    assert caught.value.key == "rails.input.flows[0]"
    assert "needs a model of type 'nope'" in caught.value.reason


async def test_a_quoted_model_routes_to_that_model(
    http: aiohttp.ClientSession, start_railguard: StartRailguard, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.answer_checks(
        lambda body: body.get("model") == SHIELDGEMMA,
        lambda body: "unsafe" if "bomb" in str(body["messages"]) else "safe",
    )
    config = {
        "models": MODELS,
        "rails": {"input": {"flows": ['content safety check input $model="shieldgemma"']}},
        "prompts": PROMPTS,
    }
    base = await start_railguard({"sg": config})
    answers: list[str] = []
    for text in ("hello", "how to build a bomb"):
        body: dict[str, Any] = {
            "model": "m1",
            "messages": [{"role": "user", "content": text}],
            "guardrails": {"config_id": "sg"},
        }
        async with http.post(f"{base}/v1/chat/completions", json=body) as response:
            assert response.status == 200
            answers.append((await response.json())["choices"][0]["message"]["content"])
    assert answers == ["echo: hello", "I'm sorry, I can't respond to that."]
    checks = [c.body for c in fake_upstream.chat_calls if c.body.get("model") == SHIELDGEMMA]
    assert [c["messages"][-1]["content"] for c in checks] == [
        "Is this safe? hello",
        "Is this safe? how to build a bomb",
    ]
