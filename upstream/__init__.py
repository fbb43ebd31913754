"""The client side: routing models to OpenAI-compatible upstreams and calling them."""

from upstream.client import ChatResult, UpstreamPool, UpstreamStream
from upstream.errors import (
    NoUpstreamError,
    UpstreamAnswerTooLarge,
    UpstreamBadResponse,
    UpstreamConfigError,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamEventTooLarge,
    UpstreamHTTPError,
    UpstreamStreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from upstream.llm import LLMReply, chat_text
from upstream.routing import Router, Upstream, load_upstreams_file, parse_upstreams

__all__ = [
    "ChatResult",
    "LLMReply",
    "NoUpstreamError",
    "Router",
    "Upstream",
    "UpstreamAnswerTooLarge",
    "UpstreamBadResponse",
    "UpstreamConfigError",
    "UpstreamConnectFailed",
    "UpstreamError",
    "UpstreamEventTooLarge",
    "UpstreamHTTPError",
    "UpstreamPool",
    "UpstreamStream",
    "UpstreamStreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "chat_text",
    "load_upstreams_file",
    "parse_upstreams",
]
