"""The rails railguard implements, one module per family.

Each module declares the NeMo flow names it implements in a `FLOWS` table
(flow name -> (stage, factory)); `FLOWS` here collects them all.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping

from rails.base import Rail, Stage
from rails.config import RailsConfig

Factory = Callable[[RailsConfig, str, Stage, Mapping[str, str]], Rail]


def _collect() -> dict[str, tuple[Stage, Factory]]:
    flows: dict[str, tuple[Stage, Factory]] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        table = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FLOWS", None)
        for name, entry in (table or {}).items():
            if name in flows:
                raise RuntimeError(f"rail flow {name!r} is defined twice ({module.name})")
            flows[name] = entry
    return flows


FLOWS = _collect()
