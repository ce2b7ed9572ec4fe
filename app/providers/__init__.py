"""Wire adapters for the provider APIs: OpenAI, OpenAI-compatible servers and Anthropic.

Make one with :func:`make_adapter` (one per configured provider, kept for the
process's life: it holds the pooled connections), call ``chat`` or
``stream``, and ``aclose`` it at shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.providers.anthropic import AnthropicAdapter, AnthropicStreamParser
from app.providers.base import (
    ChatRequest,
    ChatResult,
    ChatStream,
    FinishReason,
    ProviderAdapter,
    StreamDone,
    StreamEvent,
    StreamParser,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
)
from app.providers.errors import ProviderError, classify_error
from app.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter, OpenAIStreamParser
from app.providers.ratelimits import RateLimitInfo, RateWindow, parse_rate_limits
from app.providers.sse import SSEError, SSEMessage, SSEParser

ADAPTERS: Mapping[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai_compatible": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
}


def make_adapter(
    kind: str, name: str, base_url: str, api_key: str | None = None, **options: Any
) -> ProviderAdapter:
    """The adapter for a provider of ``kind`` (config.md: openai | anthropic | openai_compatible).

    ``options`` are the adapter's keyword arguments: ``connect_timeout``,
    ``read_timeout``, ``pool_timeout``, ``max_connections``, ``extra_headers``,
    ``transport``, ``trust_env``.
    """
    try:
        cls = ADAPTERS[kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {kind!r}; use one of {', '.join(ADAPTERS)}") from None
    return cls(name, base_url, api_key, **options)


__all__ = [
    "ADAPTERS",
    "AnthropicAdapter",
    "AnthropicStreamParser",
    "ChatRequest",
    "ChatResult",
    "ChatStream",
    "FinishReason",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "OpenAIStreamParser",
    "ProviderAdapter",
    "ProviderError",
    "RateLimitInfo",
    "RateWindow",
    "SSEError",
    "SSEMessage",
    "SSEParser",
    "StreamDone",
    "StreamEvent",
    "StreamParser",
    "TextDelta",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageUpdate",
    "classify_error",
    "make_adapter",
    "parse_rate_limits",
]
