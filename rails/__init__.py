"""The guardrails engine. `from rails import LLMRails, RailsConfig` is its Python API."""

from rails.api import GenerationResponse, LLMRails, RailsResult, RailStatus
from rails.config import ConfigError, RailsConfig
from rails.options import GenerationOptions
from rails.policy import SelectionForbidden

__all__ = [
    "ConfigError",
    "GenerationOptions",
    "GenerationResponse",
    "LLMRails",
    "RailStatus",
    "RailsConfig",
    "RailsResult",
    "SelectionForbidden",
]
