"""Cost of a call, from genai-prices' bundled snapshot (never the network).

An unknown model gives ``cost_usd=None`` ("cost unknown"), never zero and never
an exception: the event is kept and the operator can add a price override.
Cache reads and writes are priced as such.  genai-prices' ``input_tokens`` is
the *total* input including cache reads and writes, whereas Anthropic reports
them apart: :func:`price_call` takes provider-style usage and does the sum.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """An operator's negotiated price, in USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None


@dataclass(frozen=True, slots=True)
class Price:
    cost_usd: float | None
    source: str  # "genai-prices", "override" or "unknown"
    detail: str = ""

    @property
    def known(self) -> bool:
        return self.cost_usd is not None


# Providers whose usage reports input tokens *excluding* cache reads and writes.
_INPUT_EXCLUDES_CACHE = {"anthropic"}


def price_call(
    model: str,
    *,
    provider: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    override: PriceOverride | None = None,
    input_excludes_cache: bool | None = None,
) -> Price:
    """Price one call.  ``input_tokens`` is as the provider reported it."""
    excludes = (
        (provider or "").lower() in _INPUT_EXCLUDES_CACHE
        if input_excludes_cache is None
        else input_excludes_cache
    )
    total_input = input_tokens + (cache_read_tokens + cache_write_tokens if excludes else 0)
    if override is not None:
        uncached = max(total_input - cache_read_tokens - cache_write_tokens, 0)
        read_rate = (
            override.cache_read_per_mtok
            if override.cache_read_per_mtok is not None
            else override.input_per_mtok
        )
        write_rate = (
            override.cache_write_per_mtok
            if override.cache_write_per_mtok is not None
            else override.input_per_mtok
        )
        cost = (
            uncached * override.input_per_mtok
            + cache_read_tokens * read_rate
            + cache_write_tokens * write_rate
            + output_tokens * override.output_per_mtok
        ) / 1_000_000
        return Price(cost, "override")
    from genai_prices import Usage, calc_price

    usage = Usage(
        input_tokens=total_input,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens or None,
        cache_write_tokens=cache_write_tokens or None,
    )
    provider_id = _provider_id(provider)
    try:
        with _lock:  # the snapshot is loaded lazily on first use; load it once
            result = calc_price(usage, model, provider_id=provider_id)
    except LookupError as exc:
        if provider_id is not None:
            try:
                with _lock:
                    result = calc_price(usage, model)
            except LookupError:
                return Price(None, "unknown", str(exc))
        else:
            return Price(None, "unknown", str(exc))
    except (ValueError, TypeError) as exc:
        return Price(None, "unknown", str(exc))
    total: Decimal = result.total_price
    return Price(float(total), "genai-prices")


def _provider_id(provider: str | None) -> str | None:
    """Our provider kinds to genai-prices ids; OpenAI-compatible servers have no price list."""
    if not provider:
        return None
    p = provider.lower()
    if p in {"openai", "anthropic", "google", "mistral", "groq", "deepseek", "x-ai", "cohere"}:
        return p
    return None
