"""Flow names -> rails. A name a config uses that is not here is a start-up error."""

from __future__ import annotations

from rails import library
from rails.base import Rail, Stage
from rails.config import ConfigError, RailsConfig

FLOWS = library.FLOWS


def split_flow(flow: str) -> tuple[str, dict[str, str]]:
    """`content safety check input $model=x` -> ("content safety check input", {"model": "x"})."""
    name, *params = flow.split(" $")
    parsed = {}
    for param in params:
        key, _, value = param.partition("=")
        parsed[key.strip()] = value.strip()
    return name.strip(), parsed


def build_rail(config: RailsConfig, flow: str, stage: Stage, key: str) -> Rail:
    name, params = split_flow(flow)
    entry = FLOWS.get(name)
    if entry is None or entry[0] is not stage:
        known = ", ".join(sorted(n for n, (s, _) in FLOWS.items() if s is stage))
        raise ConfigError(
            f"unknown {stage.value} rail flow '{flow}'; railguard implements: {known}",
            file=config.file_for("rails"),
            key=key,
        )
    rail = entry[1](config, flow, stage, params)
    return rail
