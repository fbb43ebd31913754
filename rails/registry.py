"""Flow names -> rails. A name a config uses that is not here is a start-up error."""

from __future__ import annotations

import re

from rails import library
from rails.base import Rail, Stage
from rails.config import ConfigError, RailsConfig

FLOWS = library.FLOWS


# One `$name=value` of a flow: the value bare, or in double or single quotes as NeMo's
# example configs write it (NeMo strips the quotes), with spaces allowed around `=`.
_PARAM = re.compile(r"""\$(\w+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'$]*))(?=\s|$)""")


def split_flow(flow: str) -> tuple[str, dict[str, str]]:
    """`content safety check input $model=x` -> ("content safety check input", {"model": "x"}).

    `$model="x"` and `$model='x'` read the same. Raises ValueError for parameters that
    are not `$name=value` (an unclosed quote, a missing `=`).
    """
    name, dollar, rest = flow.partition("$")
    rest = dollar + rest
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        if rest[position].isspace():
            position += 1
            continue
        match = _PARAM.match(rest, position)
        if match is None:
            raise ValueError(_malformed(rest[position:]))
        key, double, single, bare = match.groups()
        params[key] = next(v for v in (double, single, bare) if v is not None)
        position = match.end()
    return name.strip(), params


def _malformed(param: str) -> str:
    head = param.split(None, 1)[0] if param.split() else param
    if head.count('"') % 2 or head.count("'") % 2:
        problem = "has an unclosed quote"
    elif "=" not in head:
        problem = "has no '='"
    else:
        problem = "is not $name=value"
    return (
        f"flow parameter {param!r} {problem}: write $name=value, the value bare or in "
        """quotes ($model=shieldgemma, $model="shieldgemma")"""
    )


def build_rail(config: RailsConfig, flow: str, stage: Stage, key: str) -> Rail:
    try:
        name, params = split_flow(flow)
    except ValueError as exc:
        raise ConfigError(str(exc), file=config.file_for("rails"), key=key) from exc
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
