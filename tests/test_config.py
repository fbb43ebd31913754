"""rails/config.py and rails/colang.py: NeMo config folders, validation and combination."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from rails.colang import has_flows, parse_bot_messages
from rails.config import (
    DEFAULT_REFUSAL,
    ConfigError,
    RailsConfig,
    StreamingSettings,
    combine,
    load_config_root,
    merge_mappings,
)

CONFIG_YML = """\
models:
  - type: main
    engine: openai
    model: meta/llama-3.1-8b-instruct
    parameters:
      base_url: http://vllm:8000/v1
      temperature: 0.2
    api_key_env_var: VLLM_KEY
  - type: content_safety
    engine: nim
    model: nvidia/llama-3.1-nemoguard-8b-content-safety
instructions:
  - type: general
    content: Be nice.
sample_conversation: "user: hi"
lowest_temperature: 0.1
passthrough: true
streaming: true
rails:
  input:
    parallel: true
    flows: [self check input, content safety check input $model=content_safety]
  output:
    flows: [self check output]
    streaming: {enabled: true, chunk_size: 100, context_size: 20, stream_first: false}
  config:
    regex_detection:
      input: {patterns: ["\\\\bpassword\\\\b"], case_insensitive: true}
  dialog:
    single_call: {enabled: false}
railguard:
  rail_timeout: 2.5
"""

PROMPTS_YML = """\
prompts:
  - task: self_check_input
    content: 'Should "{{ user_input }}" be blocked? Answer:'
    max_tokens: 3
  - task: content_safety_check_input $model=content_safety
    messages:
      - {type: system, content: You are a safety classifier.}
      - {type: user, content: "{{ user_input }}"}
    output_parser: nemoguard_parse_prompt_safety
    models: [openai/gpt-4o]
    mode: standard
"""

RAILS_CO = """\
define bot refuse to respond
  "Not going there."
  'Second variant'

define user express greeting
  "hello"

define flow greeting
  user express greeting
  bot express greeting
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def config_error(folder: Path, files: dict[str, str]) -> str:
    write(folder, files)
    with pytest.raises(ConfigError) as caught:
        RailsConfig.from_path(folder)
    return str(caught.value)


def obj_error(obj: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        RailsConfig.parse_object(obj)
    return str(caught.value)


# --- loading folders -----------------------------------------------------------------


def test_full_folder_is_parsed(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "strict",
        {"config.yml": CONFIG_YML, "prompts.yml": PROMPTS_YML, "rails/rails.co": RAILS_CO},
    )
    config = RailsConfig.from_path(folder)

    assert config.id == "strict"
    assert config.source == folder
    main = config.model_of_type("main")
    assert main is not None
    assert main.engine == "openai"
    assert main.model == "meta/llama-3.1-8b-instruct"
    assert main.base_url == "http://vllm:8000/v1"
    assert main.api_key_env_var == "VLLM_KEY"
    assert dict(main.parameters) == {"temperature": 0.2}
    safety = config.model_of_type("content_safety")
    assert safety is not None and safety.base_url is None and safety.api_key_env_var is None
    assert config.model_of_type("embeddings") is None

    assert config.input_flows == (
        "self check input",
        "content safety check input $model=content_safety",
    )
    assert config.output_flows == ("self check output",)
    assert config.input_parallel is True
    assert config.output_parallel is False
    assert config.streaming == StreamingSettings(True, 100, 20, False)
    assert config.rail_settings["regex_detection"]["input"]["patterns"] == ["\\bpassword\\b"]
    assert config.lowest_temperature == 0.1
    assert config.passthrough is True
    assert config.railguard["rail_timeout"] == 2.5
    assert config.refusal_message == "Not going there."
    assert config.bot_messages["refuse to respond"] == ("Not going there.", "Second variant")

    assert [p.task for p in config.prompts] == [
        "self_check_input",
        "content_safety_check_input $model=content_safety",
    ]
    first, second = config.prompts
    assert first.content is not None and first.max_tokens == 3 and first.messages == ()
    assert second.content is None
    assert [dict(m) for m in second.messages] == [
        {"type": "system", "content": "You are a safety classifier."},
        {"type": "user", "content": "{{ user_input }}"},
    ]
    assert second.models == ("openai/gpt-4o",)
    assert second.output_parser == "nemoguard_parse_prompt_safety"
    assert second.mode == "standard"

    assert config.file_for("rails.input.flows[0]") == str(folder / "config.yml")
    assert config.file_for("prompts") == str(folder / "prompts.yml")
    assert config.file_for("nothing") is None


def test_defaults_and_default_refusal(tmp_path: Path) -> None:
    config = RailsConfig.from_path(write(tmp_path / "bare", {"config.yaml": ""}))
    assert config.models == () and config.prompts == ()
    assert config.input_flows == () and config.output_flows == ()
    assert config.streaming == StreamingSettings()
    assert config.lowest_temperature == 0.001
    assert config.passthrough is None
    assert config.refusal_message == DEFAULT_REFUSAL
    assert config.ignored == ()


def test_ignored_parts_are_reported(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "c",
        {
            "config.yml": CONFIG_YML + "knowledge_base: {}\ncore: {}\nuser_messages: {}\n",
            "rails.co": RAILS_CO,
            "kb/doc.md": "# facts",
            "actions.py": "",
            "config.py": "",
        },
    )
    (folder / "actions").mkdir()
    ignored = RailsConfig.from_path(folder).ignored
    assert ignored == (
        "instructions",
        "sample_conversation",
        "knowledge_base",
        "core",
        "user_messages",
        "rails.dialog",
        "kb/ folder",
        "actions.py",
        "actions/",
        "config.py",
        "colang flows",
    )


def test_bot_messages_only_colang_is_not_ignored(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "c",
        {"config.yml": "", "a.co": 'define bot refuse to respond\n  "No."\n'},
    )
    config = RailsConfig.from_path(folder)
    assert config.ignored == ()
    assert config.refusal_message == "No."


def test_yaml_files_merge_in_name_order(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "c",
        {
            "config.yml": """\
                lowest_temperature: 0.5
                models: [{type: main, engine: openai, model: m, parameters: {a: 1}}]
                rails:
                  input: {flows: [one, two]}
                  config: {x: {keep: 1, over: 1}}
            """,
            "rails.yaml": """\
                lowest_temperature: 0.2
                models: [{type: main, engine: openai, model: m, parameters: {b: 2}}]
                rails:
                  input: {flows: [two, three]}
                  config: {x: {over: 2}}
            """,
            "notes.txt": "not yaml: [",
        },
    )
    config = RailsConfig.from_path(folder)
    assert config.lowest_temperature == 0.2
    assert config.input_flows == ("one", "two", "three")
    assert dict(config.rail_settings["x"]) == {"keep": 1, "over": 2}
    (main,) = config.models
    assert dict(main.parameters) == {"a": 1, "b": 2}
    assert config.file_for("lowest_temperature") == str(folder / "rails.yaml")


def test_prompts_from_several_files_are_appended(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "c",
        {
            "config.yml": "prompts: [{task: self_check_input, content: from config}]\n",
            "prompts.yml": "prompts: [{task: self_check_input, content: from prompts}]\n",
        },
    )
    config = RailsConfig.from_path(folder)
    assert [p.content for p in config.prompts] == ["from config", "from prompts"]
    prompt = config.prompt_for("self_check_input")
    assert prompt is not None and prompt.content == "from prompts"


def test_single_file(tmp_path: Path) -> None:
    file = write(tmp_path / "c", {"strict.yml": "rails: {input: {flows: [a]}}\n"}) / "strict.yml"
    config = RailsConfig.from_path(file, "mine")
    assert config.id == "mine"
    assert config.input_flows == ("a",)
    assert config.file_for("rails") == str(file)
    assert RailsConfig.from_path(file).id == "c"


def test_from_path_rejects_missing_and_non_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="no such file"):
        RailsConfig.from_path(missing)
    write(tmp_path / "empty", {"readme.md": ""})
    with pytest.raises(ConfigError, match=r"empty: the folder has no config.yml"):
        RailsConfig.from_path(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"readme.md: expected a config folder"):
        RailsConfig.from_path(tmp_path / "empty" / "readme.md")


# --- config roots ----------------------------------------------------------------------


def test_root_that_is_one_config(tmp_path: Path) -> None:
    root = write(tmp_path / "solo", {"config.yml": "", "sub/config.yml": ""})
    loaded = load_config_root(root)
    assert loaded.single is True
    assert list(loaded.configs) == ["solo"]
    assert loaded.configs["solo"].id == "solo"
    assert loaded.challenges == ()


def test_root_of_configs(tmp_path: Path) -> None:
    root = write(
        tmp_path,
        {
            "zeta/config.yml": "",
            "alpha/config.yaml": "",
            ".hidden/config.yml": "",
            "_drafts/config.yml": "",
            "docs/readme.md": "",
            "challenges.json": '[{"id": "c1", "name": "jailbreak"}]',
        },
    )
    loaded = load_config_root(root)
    assert loaded.single is False
    assert list(loaded.configs) == ["alpha", "zeta"]
    assert loaded.configs["zeta"].id == "zeta"
    assert loaded.challenges == ({"id": "c1", "name": "jailbreak"},)


def test_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope: the config path is not a folder"):
        load_config_root(tmp_path / "nope")
    write(tmp_path, {"docs/readme.md": "", "_drafts/config.yml": ""})
    with pytest.raises(ConfigError, match="no guardrails configurations found in"):
        load_config_root(tmp_path)


def test_root_challenges_must_be_an_array(tmp_path: Path) -> None:
    write(tmp_path, {"a/config.yml": "", "challenges.json": '{"id": "c1"}'})
    with pytest.raises(ConfigError) as caught:
        load_config_root(tmp_path)
    assert (
        str(caught.value) == f"{tmp_path / 'challenges.json'}: must be a JSON array of challenges"
    )
    (tmp_path / "challenges.json").write_text("[1,", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"challenges.json: invalid JSON"):
        load_config_root(tmp_path)


def test_root_with_one_broken_config_fails_whole(tmp_path: Path) -> None:
    write(tmp_path, {"good/config.yml": "", "bad/config.yml": "passthrough: 3\n"})
    with pytest.raises(ConfigError) as caught:
        load_config_root(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'bad' / 'config.yml'}: passthrough: must be true or false, not int"
    )


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yml", "expected"),
    [
        ("rails: {input: {flows: [a, 3]}}", "rails.input.flows[1]: must be a string, not int"),
        ("rails: {output: {flows: a}}", "rails.output.flows: must be a list, not str"),
        ("rails: {input: {parallel: yes please}}", "rails.input.parallel: must be true or false"),
        ("rails: [a]", "rails: must be a mapping, not list"),
        ("rails: {config: 1}", "rails.config: must be a mapping, not int"),
        (
            "rails: {output: {streaming: {chunk_size: 0}}}",
            "rails.output.streaming.chunk_size: must be an integer >= 1",
        ),
        (
            "rails: {output: {streaming: {chunk_size: 10, context_size: 10}}}",
            "rails.output.streaming.context_size: must be smaller than chunk_size (10)",
        ),
        (
            "rails: {output: {streaming: {context_size: -1}}}",
            "rails.output.streaming.context_size: must be an integer >= 0",
        ),
        (
            "rails: {output: {streaming: {enabled: 1}}}",
            "rails.output.streaming.enabled: must be true or false, not int",
        ),
        ("models: {type: main}", "models: must be a list, not dict"),
        ("models: [main]", "models[0]: must be a mapping, not str"),
        ("models: [{type: main}, {engine: x}]", "models[1].type: must be a string, not NoneType"),
        ("models: [{type: main, model: 3}]", "models[0].model: must be a string, not int"),
        ("models: [{type: main, parameters: [1]}]", "models[0].parameters: must be a mapping"),
        (
            "models: [{type: main, parameters: {base_url: 'ftp://x'}}]",
            "models[0].parameters.base_url: must be an http(s) URL, got 'ftp://x'",
        ),
        (
            "models: [{type: main, parameters: {openai_api_base: 'vllm:8000'}}]",
            "models[0].parameters.openai_api_base: must be an http(s) URL",
        ),
        (
            "models: [{type: main, model: a}, {type: main, model: a}]",
            "models[1].type: a second model of type 'main'",
        ),
        ("prompts: [{content: x}]", "prompts[0].task: must be a string, not NoneType"),
        ("prompts: [{task: t}]", "prompts[0]: needs exactly one of `content` or `messages`"),
        (
            "prompts: [{task: t, content: x, messages: []}]",
            "prompts[0]: needs exactly one of `content` or `messages`",
        ),
        (
            "prompts: [{task: t, messages: [{type: user}]}]",
            "prompts[0].messages[0].content: must be a string, not NoneType",
        ),
        (
            "prompts: [{task: t, content: x, max_tokens: 0}]",
            "prompts[0].max_tokens: must be an integer >= 1",
        ),
        ("prompts: [{task: t, content: x, models: gpt}]", "prompts[0].models: must be a list"),
        ("lowest_temperature: -1", "lowest_temperature: must be a number >= 0"),
        ("lowest_temperature: warm", "lowest_temperature: must be a number >= 0"),
        ("passthrough: 1", "passthrough: must be true or false, not int"),
        ("railguard: [1]", "railguard: must be a mapping, not list"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path: Path, yml: str, expected: str) -> None:
    message = config_error(tmp_path / "c", {"config.yml": yml + "\n"})
    assert message.startswith(f"{tmp_path / 'c' / 'config.yml'}: {expected}")


def test_error_names_the_file_that_defined_the_key(tmp_path: Path) -> None:
    message = config_error(
        tmp_path / "c",
        {"config.yml": "", "prompts.yml": "prompts: [{task: t}]\n", "z.yml": "passthrough: 2\n"},
    )
    prompts_file = tmp_path / "c" / "prompts.yml"
    assert message == f"{prompts_file}: prompts[0]: needs exactly one of `content` or `messages`"
    message = config_error(tmp_path / "d", {"config.yml": "", "z.yml": "passthrough: 2\n"})
    assert message == f"{tmp_path / 'd' / 'z.yml'}: passthrough: must be true or false, not int"


def test_yaml_errors(tmp_path: Path) -> None:
    message = config_error(tmp_path / "a", {"config.yml": "rails:\n  input: [a\n"})
    assert message.startswith(f"{tmp_path / 'a' / 'config.yml'}: invalid YAML at line 3")
    message = config_error(tmp_path / "b", {"config.yml": "- a\n- b\n"})
    assert (
        message == f"{tmp_path / 'b' / 'config.yml'}: the top level must be a mapping of settings"
    )


def test_conflicting_models_across_files(tmp_path: Path) -> None:
    message = config_error(
        tmp_path / "c",
        {
            "config.yml": "models: [{type: main, engine: openai, model: a}]\n",
            "more.yml": "models: [{type: main, engine: openai, model: b}]\n",
        },
    )
    assert message == (
        f"{tmp_path / 'c' / 'more.yml'}: Cannot combine configs: models of type 'main' "
        "differ (openai/a vs openai/b)."
    )


def test_error_without_file() -> None:
    assert obj_error({"passthrough": "yes"}) == "passthrough: must be true or false, not str"
    assert str(ConfigError("broken", file="x.yml")) == "x.yml: broken"
    error = ConfigError("bad", file=Path("c/config.yml"), key="models[0]")
    assert (error.file, error.key, error.reason) == ("c/config.yml", "models[0]", "bad")


def test_base_url_alternatives_and_immutability() -> None:
    config = RailsConfig.parse_object(
        {"models": [{"type": "main", "parameters": {"api_base": "https://x/v1", "t": 1}}]}
    )
    assert config.models[0].base_url == "https://x/v1"
    assert dict(config.models[0].parameters) == {"t": 1}
    with pytest.raises(TypeError):
        config.raw["models"] = []  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.id = "other"  # type: ignore[misc]


# --- content and objects -----------------------------------------------------------------


def test_from_content() -> None:
    config = RailsConfig.from_content(
        "rails:\n  output:\n    flows: [self check output]\n", RAILS_CO
    )
    assert config.output_flows == ("self check output",)
    assert config.refusal_message == "Not going there."
    assert config.ignored == ("colang flows",)
    assert config.id is None and config.source is None
    assert RailsConfig.from_content().refusal_message == DEFAULT_REFUSAL
    with pytest.raises(ConfigError, match="invalid YAML at line 1"):
        RailsConfig.from_content("a: [")


def test_parse_object() -> None:
    config = RailsConfig.parse_object({"rails": {"input": {"flows": ["x"]}}, "extra": 1})
    assert config.input_flows == ("x",)
    assert config.ignored == ("extra",)
    assert config.origins == {}


# --- prompts ------------------------------------------------------------------------------


def test_prompt_for_prefers_prompts_listing_the_model() -> None:
    config = RailsConfig.parse_object(
        {
            "prompts": [
                {"task": "t", "content": "generic"},
                {"task": "t", "content": "gpt", "models": ["openai/gpt-4o"]},
                {"task": "t", "content": "llama", "models": ["nim/meta/llama-3.1-8b-instruct"]},
                {"task": "t", "content": "generic 2"},
                {"task": "other", "content": "x"},
            ]
        }
    )

    def content(model: str | None) -> str | None:
        prompt = config.prompt_for("t", model)
        return prompt.content if prompt else None

    assert content(None) == "generic 2"
    assert content("gpt-4o") == "gpt"
    assert content("openai/gpt-4o") == "gpt"
    assert content("meta/llama-3.1-8b-instruct") == "llama"
    assert content("azure/gpt-4o-mini") == "generic 2"
    assert config.prompt_for("missing") is None

    only_specific = RailsConfig.parse_object(
        {"prompts": [{"task": "t", "content": "gpt", "models": ["gpt-4o"]}]}
    )
    # No model to match (it is picked per request): the task's prompt is still found.
    assert only_specific.prompt_for("t") is not None
    assert only_specific.prompt_for("t", "openai/gpt-4o") is not None
    assert only_specific.prompt_for("t", "meta/llama-3.1-8b-instruct") is None


# --- combining ----------------------------------------------------------------------------


def make(obj: dict[str, Any], colang: str = "", config_id: str | None = None) -> RailsConfig:
    return replace(RailsConfig.from_content(yaml.safe_dump(obj), colang), id=config_id)


def test_combine_conflicting_models() -> None:
    a = make({"models": [{"type": "main", "engine": "openai", "model": "gpt-4o"}]})
    b = make({"models": [{"type": "main", "engine": "nim", "model": "llama"}]})
    with pytest.raises(ConfigError) as caught:
        combine([a, b])
    assert str(caught.value) == (
        "Cannot combine configs: models of type 'main' differ (openai/gpt-4o vs nim/llama)."
    )


def test_combine_merges_models_by_type() -> None:
    a = make(
        {"models": [{"type": "main", "engine": "openai", "model": "m", "parameters": {"x": 1}}]}
    )
    b = make(
        {
            "models": [
                {"type": "main", "engine": "openai", "model": "m", "parameters": {"y": 2}},
                {"type": "content_safety", "engine": "nim", "model": "guard"},
            ]
        }
    )
    combined = a + b
    assert [m.type for m in combined.models] == ["main", "content_safety"]
    assert dict(combined.models[0].parameters) == {"x": 1, "y": 2}


def test_combine_merges_settings() -> None:
    a = make(
        {
            "lowest_temperature": 0.5,
            "passthrough": False,
            "rails": {
                "input": {"flows": ["self check input", "regex check input"]},
                "config": {
                    "regex_detection": {"input": {"patterns": ["a"], "case_insensitive": True}}
                },
            },
            "prompts": [{"task": "self_check_input", "content": "first"}],
        },
        'define bot refuse to respond\n  "A says no."\ndefine bot hello\n  "hi"\n',
        "a",
    )
    b = make(
        {
            "lowest_temperature": 0.2,
            "rails": {
                "input": {"flows": ["regex check input", "content safety check input"]},
                "output": {"flows": ["self check output"]},
                "config": {"regex_detection": {"input": {"patterns": ["a", "b"]}}},
            },
            "prompts": [{"task": "self_check_input", "content": "second"}],
            "instructions": [],
        },
        'define bot refuse to respond\n  "B says no."\n',
        "b",
    )
    combined = combine([a, b])
    assert combined.id == "a+b"
    assert combined.lowest_temperature == 0.2
    assert combined.passthrough is False
    assert combined.input_flows == (
        "self check input",
        "regex check input",
        "content safety check input",
    )
    assert combined.output_flows == ("self check output",)
    regex = combined.rail_settings["regex_detection"]["input"]
    assert regex["patterns"] == ["a", "b"] and regex["case_insensitive"] is True
    assert [p.content for p in combined.prompts] == ["first", "second"]
    prompt = combined.prompt_for("self_check_input")
    assert prompt is not None and prompt.content == "second"
    assert combined.refusal_message == "B says no."
    assert combined.bot_messages["hello"] == ("hi",)
    assert combined.ignored == ("instructions",)
    assert (b + a).refusal_message == "A says no."
    assert combine([a]) is a
    with pytest.raises(ValueError):
        combine([])


def test_combine_keeps_origins_for_errors(tmp_path: Path) -> None:
    write(tmp_path, {"a/config.yml": "rails: {input: {flows: [x]}}\n", "b/config.yml": ""})
    root = load_config_root(tmp_path)
    combined = root.configs["a"] + root.configs["b"]
    assert combined.id == "a+b"
    assert combined.file_for("rails") == str(tmp_path / "a" / "config.yml")


def test_merge_mappings() -> None:
    merged = merge_mappings(
        {"a": {"x": 1, "l": [1, {"k": 1}]}, "s": 1, "keep": True},
        {"a": {"y": 2, "l": [{"k": 1}, 2]}, "s": 2},
    )
    assert merged == {"a": {"x": 1, "y": 2, "l": [1, {"k": 1}, 2]}, "s": 2, "keep": True}


# --- colang --------------------------------------------------------------------------------


def test_parse_bot_messages() -> None:
    text = textwrap.dedent(
        """\
        # greetings
        define bot express greeting
          "Hello there!"  # friendly
          'It\\'s "me"'
          "say \\"hi\\""
          $not_a_message

        define bot express greeting
          "Hi again"
        define user ask
          "what?"
        define bot inform # comment
            "tabs and spaces"
        """
    )
    assert parse_bot_messages(text) == {
        "express greeting": ["Hello there!", 'It\'s "me"', 'say "hi"', "Hi again"],
        "inform": ["tabs and spaces"],
    }
    assert has_flows(text)
    assert not has_flows('define bot x\n  "y"\n')
    assert has_flows("define flow x\n  bot y\n")
    assert has_flows("flow main\n  user said 'hi'\n")


def test_model_name_in_parameters_names_the_model() -> None:
    """NeMo's content-safety docs name the model as `parameters.model_name`."""
    config = RailsConfig.parse_object(
        {
            "models": [
                {"type": "content_safety", "engine": "nim", "parameters": {"model_name": "guard"}},
                {
                    "type": "main",
                    "engine": "openai",
                    "model": "m",
                    "parameters": {"model_name": "x"},
                },
            ]
        }
    )
    assert config.model_of_type("content_safety").model == "guard"  # type: ignore[union-attr]
    assert config.model_of_type("main").model == "m"  # type: ignore[union-attr]
