"""NeMo Guardrails config folders: the one place that knows their format.

A config is read, merged and validated here, at start-up, so every later stage can
trust its shape. Errors name the file and the dotted key, because the person reading
them is editing YAML. What railguard does not run is collected in `ignored` so the
caller can log it once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from rails.colang import has_flows, parse_bot_messages

DEFAULT_REFUSAL = "I'm sorry, I can't respond to that."

_CONFIG_FILES = ("config.yml", "config.yaml")
_RUN_KEYS = frozenset(
    {"models", "rails", "prompts", "lowest_temperature", "passthrough", "railguard"}
)
_SILENT_KEYS = frozenset({"streaming"})  # NeMo's on/off switch; clients choose streaming here
_RUN_RAILS = frozenset({"input", "output", "tool_input", "tool_output", "config"})
_BASE_URL_KEYS = ("base_url", "openai_api_base", "api_base")
_CONTENT = "<yaml_content>"  # where errors say a config built from text came from
_FOLDER_EXTRAS = (
    ("kb", "kb/ folder"),
    ("actions.py", "actions.py"),
    ("actions", "actions/"),
    ("config.py", "config.py"),
)


class ConfigError(Exception):
    """A config folder or combination is invalid.

    str() reads like 'examples/configs/x/config.yml: rails.input.flows[1]: <problem>'.
    """

    def __init__(
        self, message: str, *, file: str | Path | None = None, key: str | None = None
    ) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.reason = message
        super().__init__(": ".join(part for part in (self.file, key, message) if part))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    type: str
    engine: str | None
    model: str | None
    base_url: str | None
    api_key_env_var: str | None
    parameters: Mapping[str, Any]  # `parameters` without the base URL


@dataclass(frozen=True, slots=True)
class TaskPrompt:
    task: str
    content: str | None
    messages: tuple[Mapping[str, str], ...]
    models: tuple[str, ...]
    output_parser: str | None
    max_tokens: int | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class StreamingSettings:
    enabled: bool = False
    chunk_size: int = 200
    context_size: int = 50
    stream_first: bool = True


@dataclass(frozen=True, slots=True)
class RailsConfig:
    """One guardrails configuration, parsed from NeMo's format. Immutable after construction.

    Build it with `from_path`, `from_content` or `parse_object`; `+` combines configs.
    """

    raw: Mapping[str, Any]  # the merged YAML it was built from
    source: Path | None
    id: str | None
    models: tuple[ModelSpec, ...]
    input_flows: tuple[str, ...]
    output_flows: tuple[str, ...]
    tool_input_flows: tuple[str, ...]  # `rails.tool_input.flows`: on the request's tool results
    tool_output_flows: tuple[str, ...]  # `rails.tool_output.flows`: on the answer's tool calls
    input_parallel: bool
    output_parallel: bool
    output_reasoning: bool  # `rails.output.apply_to_reasoning_traces`: check reasoning too
    speculative_generation: bool  # start the main call while input rails run
    streaming: StreamingSettings
    rail_settings: Mapping[str, Any]  # `rails.config`
    prompts: tuple[TaskPrompt, ...]
    lowest_temperature: float
    passthrough: bool | None
    bot_messages: Mapping[str, tuple[str, ...]]
    railguard: Mapping[str, Any]  # our own extension section, read by the rails that use it
    ignored: tuple[str, ...]
    origins: Mapping[str, str]  # top-level key -> file it came from

    @property
    def refusal_message(self) -> str:
        messages = self.bot_messages.get("refuse to respond")
        return messages[0] if messages else DEFAULT_REFUSAL

    def model_of_type(self, type_: str) -> ModelSpec | None:
        return next((m for m in self.models if m.type == type_), None)

    def prompt_for(self, task: str, model: str | None = None) -> TaskPrompt | None:
        """The prompt for `task`: one listing `model` if any, else one listing no models
        (with no `model` given, else any prompt for the task).

        `model` is a model name or "engine/model"; the last matching definition wins,
        so prompts of later combined configs override earlier ones.
        """
        candidates = [p for p in self.prompts if p.task == task]
        if model is not None:
            listing = [p for p in candidates if any(_same_model(m, model) for m in p.models)]
            if listing:
                return listing[-1]
        generic = [p for p in candidates if not p.models]
        if generic:
            return generic[-1]
        # With no model to match (it is chosen per request), any prompt for the task will do.
        return candidates[-1] if model is None and candidates else None

    def file_for(self, key: str) -> str | None:
        """The file that defined the top-level part of a dotted key, for error messages."""
        return self.origins.get(_top_key(key))

    def __add__(self, other: RailsConfig) -> RailsConfig:
        return combine([self, other])

    @classmethod
    def from_path(cls, path: str | Path, config_id: str | None = None) -> RailsConfig:
        """A config folder, or a single .yml/.yaml file; the id defaults to the folder's name.

        A folder needs config.yml or config.yaml; all its top-level YAML files are merged
        in name order, and `define bot` messages are read from every .co file below it.
        """
        path = Path(path)
        if path.is_file():
            if path.suffix not in (".yml", ".yaml"):
                raise ConfigError("expected a config folder or a .yml/.yaml file", file=path)
            raw = _read_yaml(path)
            config_id = config_id or path.resolve().parent.name
            origins = dict.fromkeys(map(str, raw), str(path))
            return cls._build(raw, source=path, config_id=config_id, origins=origins)
        if not path.is_dir():
            raise ConfigError("no such file or folder", file=path)
        if not _has_config_file(path):
            raise ConfigError("the folder has no config.yml or config.yaml", file=path)
        return _load_folder(path, config_id or path.resolve().name)

    @classmethod
    def from_content(
        cls, yaml_content: str | None = None, colang_content: str | None = None
    ) -> RailsConfig:
        """A config from the text of a config.yml and of a .co file (its `define bot`
        messages); errors name `<yaml_content>` where a folder's would name the file."""
        raw = _parse_yaml(yaml_content or "", _CONTENT)
        colang = colang_content or ""
        return cls._build(
            raw,
            origins=dict.fromkeys(map(str, raw), _CONTENT),
            bot_messages=parse_bot_messages(colang),
            ignored=["colang flows"] if has_flows(colang) else [],
        )

    @classmethod
    def parse_object(cls, obj: Mapping[str, Any]) -> RailsConfig:
        """A config from the mapping a config.yml would hold; errors name the key."""
        return cls._build(obj)

    @classmethod
    def _build(
        cls,
        raw: Mapping[str, Any],
        *,
        source: Path | None = None,
        config_id: str | None = None,
        origins: Mapping[str, str] | None = None,
        bot_messages: Mapping[str, Sequence[str]] | None = None,
        ignored: Iterable[str] = (),
    ) -> RailsConfig:
        """Validate and parse a (merged) raw mapping; errors get the file from `origins`."""
        origins = MappingProxyType(dict(origins or {}))
        raw = _readonly(raw)
        try:
            rails = _mapping(raw.get("rails"), "rails")
            inputs = _mapping(rails.get("input"), "rails.input")
            outputs = _mapping(rails.get("output"), "rails.output")
            tool_inputs = _mapping(rails.get("tool_input"), "rails.tool_input")
            tool_outputs = _mapping(rails.get("tool_output"), "rails.tool_output")
            return cls(
                raw=raw,
                source=source,
                id=config_id,
                models=_parse_models(raw.get("models")),
                input_flows=_strings(inputs.get("flows"), "rails.input.flows"),
                output_flows=_strings(outputs.get("flows"), "rails.output.flows"),
                tool_input_flows=_strings(tool_inputs.get("flows"), "rails.tool_input.flows"),
                tool_output_flows=_strings(tool_outputs.get("flows"), "rails.tool_output.flows"),
                input_parallel=_bool(inputs.get("parallel"), "rails.input.parallel", False),
                output_parallel=_bool(outputs.get("parallel"), "rails.output.parallel", False),
                output_reasoning=_bool(
                    outputs.get("apply_to_reasoning_traces"),
                    "rails.output.apply_to_reasoning_traces",
                    True,
                ),
                speculative_generation=_bool(
                    inputs.get("speculative_generation"),
                    "rails.input.speculative_generation",
                    False,
                ),
                streaming=_parse_streaming(outputs.get("streaming"), "rails.output.streaming"),
                rail_settings=_mapping(rails.get("config"), "rails.config"),
                prompts=_parse_prompts(raw.get("prompts")),
                lowest_temperature=_temperature(raw.get("lowest_temperature")),
                passthrough=_optional_bool(raw.get("passthrough"), "passthrough"),
                bot_messages=MappingProxyType(
                    {name: tuple(texts) for name, texts in (bot_messages or {}).items()}
                ),
                railguard=_mapping(raw.get("railguard"), "railguard"),
                ignored=tuple(dict.fromkeys([*_ignored_keys(raw, rails), *ignored])),
                origins=origins,
            )
        except ConfigError as exc:
            raise _in_file(exc, origins.get(_top_key(exc.key or ""))) from None


@dataclass(frozen=True, slots=True)
class ConfigRoot:
    configs: Mapping[str, RailsConfig]  # id -> config, sorted by id
    challenges: tuple[Any, ...]  # the root's challenges.json, for the server's /v1/challenges
    single: bool  # the root itself is one config, named after the folder


def load_config_root(path: str | Path) -> ConfigRoot:
    """Load and validate every config under a root folder, or raise: never a partial root.

    The root is one config when it has config.yml/config.yaml; otherwise each sub-folder
    with one is a config named after it (names starting with "." or "_" are skipped).
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError("the config path is not a folder", file=root)
    single = _has_config_file(root)
    if single:
        name = root.resolve().name
        configs = {name: RailsConfig.from_path(root, name)}
    else:
        configs = {
            sub.name: RailsConfig.from_path(sub, sub.name)
            for sub in sorted(root.iterdir())
            if sub.is_dir() and not sub.name.startswith((".", "_")) and _has_config_file(sub)
        }
    if not configs:
        raise ConfigError(
            f"no guardrails configurations found in {root} (expected config.yml in it "
            "or in its sub-folders)"
        )
    return ConfigRoot(
        configs=MappingProxyType(dict(sorted(configs.items()))),
        challenges=_load_challenges(root / "challenges.json"),
        single=single,
    )


def combine(configs: Sequence[RailsConfig]) -> RailsConfig:
    """Several configs as one, by NeMo's rules.

    Models of one type must agree on engine and model; prompts are concatenated (so
    later ones win in `prompt_for`); later bot messages win per name; everything else
    merges as in `merge_mappings`.
    """
    if not configs:
        raise ValueError("combine() needs at least one config")
    if len(configs) == 1:
        return configs[0]
    raw: Mapping[str, Any] = {}
    origins: dict[str, str] = {}
    bot_messages: dict[str, Sequence[str]] = {}
    for config in configs:
        raw = _merge_raw(raw, config.raw)
        origins.update(config.origins)
        bot_messages.update(config.bot_messages)
    ids = [config.id for config in configs if config.id]
    return RailsConfig._build(
        raw,
        config_id="+".join(ids) or None,
        origins=origins,
        bot_messages=bot_messages,
        ignored=[item for config in configs for item in config.ignored],
    )


def merge_mappings(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """NeMo's merge: mappings merge recursively, lists union in order, else `extra` wins."""
    merged = dict(base)
    for key, value in extra.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_mappings(old, value)
        elif isinstance(old, list | tuple) and isinstance(value, list | tuple):
            union = list(old)
            union.extend(item for item in value if item not in old)
            merged[key] = union
        else:
            merged[key] = value
    return merged


def _merge_raw(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`merge_mappings`, except that models merge by type and prompts concatenate."""
    special = ("models", "prompts")
    merged = merge_mappings(
        {k: v for k, v in base.items() if k not in special},
        {k: v for k, v in extra.items() if k not in special},
    )
    if "models" in base or "models" in extra:
        merged["models"] = _merge_models(base.get("models") or [], extra.get("models") or [])
    if "prompts" in base or "prompts" in extra:
        merged["prompts"] = [*(base.get("prompts") or []), *(extra.get("prompts") or [])]
    return merged


def _merge_models(
    base: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    merged = [dict(model) for model in base]
    for model in extra:
        index = next((i for i, m in enumerate(merged) if m["type"] == model["type"]), None)
        if index is None:
            merged.append(dict(model))
            continue
        old = merged[index]
        if (old.get("engine"), old.get("model")) != (model.get("engine"), model.get("model")):
            raise ConfigError(
                f"Cannot combine configs: models of type '{model['type']}' differ "
                f"({old.get('engine')}/{old.get('model')} vs "
                f"{model.get('engine')}/{model.get('model')})."
            )
        merged[index] = merge_mappings(old, model)
    return merged


def _load_folder(folder: Path, config_id: str) -> RailsConfig:
    raw: Mapping[str, Any] = {}
    origins: dict[str, str] = {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yml", ".yaml"))
    for file in files:
        part = _read_yaml(file)
        try:
            _parse_models(part.get("models"))  # their shape must be sound before merging by type
            _parse_prompts(part.get("prompts"))
            raw = _merge_raw(raw, part)
        except ConfigError as exc:
            raise _in_file(exc, file) from None
        origins.update(dict.fromkeys(map(str, part), str(file)))
    bot_messages: dict[str, list[str]] = {}
    ignored = [label for name, label in _FOLDER_EXTRAS if (folder / name).exists()]
    for colang_file in sorted(folder.rglob("*.co")):
        text = _read_text(colang_file)
        bot_messages.update(parse_bot_messages(text))
        if has_flows(text):
            ignored.append("colang flows")
    return RailsConfig._build(
        raw,
        source=folder,
        config_id=config_id,
        origins=origins,
        bot_messages=bot_messages,
        ignored=ignored,
    )


def _has_config_file(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _CONFIG_FILES)


def _load_challenges(file: Path) -> tuple[Any, ...]:
    if not file.is_file():
        return ()
    try:
        challenges = json.loads(_read_text(file))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc}", file=file) from None
    if not isinstance(challenges, list):
        raise ConfigError("must be a JSON array of challenges", file=file)
    return tuple(challenges)


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=file) from None


def _read_yaml(file: Path) -> Mapping[str, Any]:
    return _parse_yaml(_read_text(file), file)


def _parse_yaml(text: str, file: str | Path | None) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML{where}: {exc.problem or exc.context}", file=file) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError("the top level must be a mapping of settings", file=file)
    return data


def _readonly(value: Any) -> Any:
    """A copy whose mappings are read-only; lists stay lists, as NeMo-style readers expect."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _readonly(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return [_readonly(item) for item in value]
    return value


def _in_file(exc: ConfigError, file: str | Path | None) -> ConfigError:
    return ConfigError(exc.reason, file=exc.file or file, key=exc.key)


def _top_key(key: str) -> str:
    return re.split(r"[.\[]", key, maxsplit=1)[0]


def _same_model(listed: str, model: str) -> bool:
    """Whether a prompt's `models` entry names the model, with or without its engine."""
    return listed == model or listed.endswith(f"/{model}") or model.endswith(f"/{listed}")


def _ignored_keys(raw: Mapping[str, Any], rails: Mapping[str, Any]) -> list[str]:
    top = [str(key) for key in raw if key not in _RUN_KEYS | _SILENT_KEYS]
    return top + [f"rails.{key}" for key in rails if key not in _RUN_RAILS]


def _parse_models(value: Any) -> tuple[ModelSpec, ...]:
    models: list[ModelSpec] = []
    for index, item in enumerate(_list(value, "models")):
        key = f"models[{index}]"
        model = _mapping(item, key)
        type_ = _string(model.get("type"), f"{key}.type")
        if any(m.type == type_ for m in models):
            raise ConfigError(f"a second model of type '{type_}'", key=f"{key}.type")
        parameters = _mapping(model.get("parameters"), f"{key}.parameters")
        url_key = next((k for k in _BASE_URL_KEYS if parameters.get(k) is not None), None)
        base_url = None
        if url_key is not None:
            base_url = _url(parameters[url_key], f"{key}.parameters.{url_key}")
        models.append(
            ModelSpec(
                type=type_,
                engine=_optional_string(model.get("engine"), f"{key}.engine"),
                model=_optional_string(model.get("model"), f"{key}.model")
                or _optional_string(parameters.get("model_name"), f"{key}.parameters.model_name"),
                base_url=base_url,
                api_key_env_var=_optional_string(
                    model.get("api_key_env_var"), f"{key}.api_key_env_var"
                ),
                parameters=MappingProxyType(
                    {k: v for k, v in parameters.items() if k not in _BASE_URL_KEYS}
                ),
            )
        )
    return tuple(models)


def _parse_prompts(value: Any) -> tuple[TaskPrompt, ...]:
    prompts: list[TaskPrompt] = []
    for index, item in enumerate(_list(value, "prompts")):
        key = f"prompts[{index}]"
        prompt = _mapping(item, key)
        task = _string(prompt.get("task"), f"{key}.task")
        content = _optional_string(prompt.get("content"), f"{key}.content")
        has_messages = prompt.get("messages") is not None
        if (content is None) == (not has_messages):
            raise ConfigError("needs exactly one of `content` or `messages`", key=key)
        max_tokens = prompt.get("max_tokens")
        prompts.append(
            TaskPrompt(
                task=task,
                content=content,
                messages=_parse_messages(prompt.get("messages"), f"{key}.messages"),
                models=_strings(prompt.get("models"), f"{key}.models"),
                output_parser=_optional_string(prompt.get("output_parser"), f"{key}.output_parser"),
                max_tokens=None
                if max_tokens is None
                else _int(max_tokens, f"{key}.max_tokens", minimum=1),
                mode=_optional_string(prompt.get("mode"), f"{key}.mode"),
            )
        )
    return tuple(prompts)


def _parse_messages(value: Any, key: str) -> tuple[Mapping[str, str], ...]:
    messages: list[Mapping[str, str]] = []
    for index, item in enumerate(_list(value, key)):
        message = _mapping(item, f"{key}[{index}]")
        role_key = "type" if "type" in message else "role"
        messages.append(
            MappingProxyType(
                {
                    role_key: _string(message.get(role_key), f"{key}[{index}].{role_key}"),
                    "content": _string(message.get("content"), f"{key}[{index}].content"),
                }
            )
        )
    return tuple(messages)


def _parse_streaming(value: Any, key: str) -> StreamingSettings:
    settings = _mapping(value, key)
    default = StreamingSettings()
    chunk_size = _int(settings.get("chunk_size", default.chunk_size), f"{key}.chunk_size", 1)
    context_size = _int(
        settings.get("context_size", default.context_size), f"{key}.context_size", 0
    )
    if context_size >= chunk_size:
        raise ConfigError(
            f"must be smaller than chunk_size ({chunk_size})", key=f"{key}.context_size"
        )
    return StreamingSettings(
        enabled=_bool(settings.get("enabled"), f"{key}.enabled", default.enabled),
        chunk_size=chunk_size,
        context_size=context_size,
        stream_first=_bool(
            settings.get("stream_first"), f"{key}.stream_first", default.stream_first
        ),
    )


def _temperature(value: Any) -> float:
    if value is None:
        return 0.001
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError("must be a number >= 0", key="lowest_temperature")
    return float(value)


def _url(value: Any, key: str) -> str:
    url = _string(value, key)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"must be an http(s) URL, got {url!r}", key=key)
    return url


def _kind(value: Any) -> str:
    return type(value).__name__


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a mapping, not {_kind(value)}", key=key)
    return value


def _list(value: Any, key: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(f"must be a list, not {_kind(value)}", key=key)
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string, not {_kind(value)}", key=key)
    return value


def _optional_string(value: Any, key: str) -> str | None:
    return None if value is None else _string(value, key)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    return tuple(_string(item, f"{key}[{i}]") for i, item in enumerate(_list(value, key)))


def _bool(value: Any, key: str, default: bool) -> bool:
    found = _optional_bool(value, key)
    return default if found is None else found


def _optional_bool(value: Any, key: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"must be true or false, not {_kind(value)}", key=key)
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}", key=key)
    return value
