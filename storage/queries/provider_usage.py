"""The providers' own usage and cost figures (OpenAI organization usage/costs, Anthropic reports).

A usage source fetches a window of daily buckets and replaces what the store
held for that provider and window in one transaction: figures the provider
revised are updated, models it no longer reports for a day disappear, and a
failed fetch changes nothing.  Reconciliation against our own events is
:func:`storage.queries.series.reconcile`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, insert, select

from storage.engine import transaction
from storage.models import PROVIDER_USAGE


@dataclass(frozen=True, slots=True)
class UsageFigure:
    """One provider-reported bucket and model.  ``input_tokens`` includes cached and cache-write input."""

    provider: str
    bucket_start: float
    bucket_width: int  # seconds
    model: str  # "" when the provider gave no model split
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0  # 0 when the provider does not count requests (Anthropic)
    cost_usd: float | None = None


def replace_usage(
    bind: Engine | Connection,
    provider: str,
    since: float,
    until: float,
    figures: Iterable[UsageFigure],
    *,
    bucket_width: int = 86_400,
    now: float | None = None,
) -> int:
    """Replace ``provider``'s figures of ``bucket_width`` buckets starting in ``[since, until)``."""
    fetched_at = time.time() if now is None else now
    rows = []
    for f in figures:
        if f.provider != provider or f.bucket_width != bucket_width or not since <= f.bucket_start < until:
            raise ValueError(
                f"a figure for {f.provider} at {f.bucket_start} (width {f.bucket_width}) is outside the window "
                f"being replaced ({provider}, [{since}, {until}), width {bucket_width})"
            )
        rows.append(
            {
                "provider": f.provider, "bucket_start": f.bucket_start, "bucket_width": f.bucket_width,
                "model": f.model, "input_tokens": f.input_tokens, "output_tokens": f.output_tokens,
                "cached_tokens": f.cached_tokens, "cache_write_tokens": f.cache_write_tokens,
                "requests": f.requests, "cost_usd": f.cost_usd, "fetched_at": fetched_at,
            }
        )  # fmt: skip
    c = PROVIDER_USAGE.c
    with transaction(bind, write=True) as conn:
        conn.execute(
            delete(PROVIDER_USAGE).where(
                c.provider == provider,
                c.bucket_width == bucket_width,
                c.bucket_start >= since,
                c.bucket_start < until,
            )
        )
        if rows:
            conn.execute(insert(PROVIDER_USAGE), rows)
    return len(rows)


def list_usage(
    bind: Engine | Connection, provider: str, *, since: float | None = None, until: float | None = None
) -> list[UsageFigure]:
    """The stored figures of ``provider``, by bucket then model."""
    c = PROVIDER_USAGE.c
    stmt = select(
        c.provider, c.bucket_start, c.bucket_width, c.model, c.input_tokens, c.output_tokens,
        c.cached_tokens, c.cache_write_tokens, c.requests, c.cost_usd,
    ).where(c.provider == provider)  # fmt: skip
    if since is not None:
        stmt = stmt.where(c.bucket_start >= since)
    if until is not None:
        stmt = stmt.where(c.bucket_start < until)
    with transaction(bind) as conn:
        rows = conn.execute(stmt.order_by(c.bucket_start, c.model)).all()
    return [UsageFigure(**r._mapping) for r in rows]


__all__ = ["UsageFigure", "list_usage", "replace_usage"]
