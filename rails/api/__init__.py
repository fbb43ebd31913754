"""The Python API: NeMo's `LLMRails` and its response shapes, on railguard's engine."""

from rails.api.llm_rails import LLMRails
from rails.api.response import (
    ActivatedRail,
    ExecutedAction,
    GenerationLog,
    GenerationResponse,
    GenerationStats,
    LLMCallInfo,
    RailsResult,
    RailStatus,
)

__all__ = [
    "ActivatedRail",
    "ExecutedAction",
    "GenerationLog",
    "GenerationResponse",
    "GenerationStats",
    "LLMCallInfo",
    "LLMRails",
    "RailStatus",
    "RailsResult",
]
