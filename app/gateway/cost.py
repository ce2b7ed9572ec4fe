"""The cost of one call, fast enough for the request path.

:func:`app.core.pricing.price_call` asks genai-prices every time (75-120 us a
call, measured); the gateway prices every request, so it learns each model's
per-token rates once from the same function and multiplies.  Rates are read at
a 10k-token unit, below every tier threshold genai-prices knows; a call with a
large input (where a model may switch tier) goes the exact way.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.pricing import PriceOverride, price_call

_UNIT = 10_000
_EXACT_ABOVE = 100_000  # input tokens past which tiered prices may apply


@dataclass(frozen=True, slots=True)
class _Rates:
    fixed: float
    input: float
    output: float
    cache_read: float
    cache_write: float


class Pricer:
    """``cost(...) -> USD or None`` (unknown model: ``None``, never a silent zero)."""

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str | None], _Rates | None] = {}

    def cost(
        self,
        model: str,
        provider_kind: str | None,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        override: PriceOverride | None = None,
    ) -> float | None:
        """Price a call whose ``input_tokens`` include cache reads and writes (the adapters' convention)."""
        if override is not None or input_tokens > _EXACT_ABOVE:
            return price_call(
                model,
                provider=provider_kind,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_write_tokens=cache_write_tokens,
                override=override,
                input_excludes_cache=False,
            ).cost_usd
        key = (model, provider_kind)
        if key in self._rates:
            rates = self._rates[key]
        else:
            rates = self._rates[key] = _learn(model, provider_kind)
        if rates is None:
            return None
        uncached = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
        return (
            rates.fixed
            + uncached * rates.input
            + output_tokens * rates.output
            + cache_read_tokens * rates.cache_read
            + cache_write_tokens * rates.cache_write
        )


def _price(model: str, kind: str | None, *, i: int = 0, o: int = 0, cr: int = 0, cw: int = 0) -> float | None:
    return price_call(
        model,
        provider=kind,
        input_tokens=i,
        output_tokens=o,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        input_excludes_cache=False,
    ).cost_usd


def _learn(model: str, kind: str | None) -> _Rates | None:
    fixed = _price(model, kind)
    if fixed is None:
        return None
    inp = _price(model, kind, i=_UNIT)
    out = _price(model, kind, o=_UNIT)
    cr = _price(model, kind, i=_UNIT, cr=_UNIT)
    cw = _price(model, kind, i=_UNIT, cw=_UNIT)
    if inp is None or out is None:
        return None
    per = 1.0 / _UNIT
    return _Rates(
        fixed,
        (inp - fixed) * per,
        (out - fixed) * per,
        ((cr if cr is not None else inp) - fixed) * per,
        ((cw if cw is not None else inp) - fixed) * per,
    )
