"""The quarantine: records a source could not read, kept aside with their reason.

Nothing bad is dropped silently (product.md, "Bad input and faults"): every
rejected record is a row here, with its source, where in the source it was,
why, a bounded excerpt, and when.  The pipeline writes them in the same
transaction as the batch they came with.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.engine import transaction
from storage.models import QUARANTINE


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    id: int
    source: str
    position: str
    reason: str
    excerpt: str
    ts: float


def _clean(text: str) -> str:
    # PostgreSQL text holds no NUL; a lone surrogate cannot be encoded as UTF-8.
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text


def insert_quarantined(
    bind: Engine | Connection,
    records: Iterable[
        tuple[str, str, str, str, float | None] | tuple[str, str, str, str, float | None, str | None]
    ],
) -> int:
    """Store ``(source, position, reason, excerpt, ts[, record_key])`` tuples; ``ts=None`` means now.

    A record whose ``(source, record_key)`` is already quarantined is skipped
    (re-reading a file quarantines each bad line once); a ``None`` key is
    always stored.  Text is made storable on every backend (NUL and lone
    surrogates escaped).  Returns how many rows were written.
    """
    now = time.time()
    rows = [
        {
            "source": _clean(rec[0]),
            "position": _clean(rec[1]),
            "reason": _clean(rec[2]),
            "excerpt": _clean(rec[3]),
            "ts": now if rec[4] is None else rec[4],
            "record_key": _clean(rec[5]) if len(rec) > 5 and rec[5] is not None else None,
        }
        for rec in records
    ]
    if not rows:
        return 0
    with transaction(bind, write=True) as conn:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(QUARANTINE).on_conflict_do_nothing(index_elements=["source", "record_key"])
        result = conn.execute(stmt, rows)
    return int(result.rowcount) if result.rowcount is not None and result.rowcount >= 0 else len(rows)


def count_quarantined(bind: Engine | Connection, source: str | None = None) -> int:
    stmt = select(func.count()).select_from(QUARANTINE)
    if source is not None:
        stmt = stmt.where(QUARANTINE.c.source == source)
    with transaction(bind) as conn:
        return int(conn.execute(stmt).scalar_one())


def count_quarantined_by_source(bind: Engine | Connection) -> dict[str, int]:
    """Rows per source (the sources page's "quarantined" column); sources with none are absent."""
    c = QUARANTINE.c
    stmt = select(c.source, func.count()).group_by(c.source)
    with transaction(bind) as conn:
        return {str(source): int(n) for source, n in conn.execute(stmt)}


def quarantine_reasons(bind: Engine | Connection, source: str | None = None) -> dict[str, int]:
    """Rows per reason category (the reason's text before its first colon)."""
    stmt = select(QUARANTINE.c.reason)
    if source is not None:
        stmt = stmt.where(QUARANTINE.c.source == source)
    out: dict[str, int] = {}
    with transaction(bind) as conn:
        for (reason,) in conn.execute(stmt):
            category = reason.split(":", 1)[0].strip()
            out[category] = out.get(category, 0) + 1
    return out


def fetch_quarantined(
    bind: Engine | Connection,
    *,
    source: str | None = None,
    sources: Sequence[str] | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[QuarantinedRecord]:
    """Newest first; page with ``before_id`` = the last record's id.

    ``source`` keeps one source's records, ``sources`` those of any of several
    (a source config may write under more than one name); both ``None``: all.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    c = QUARANTINE.c
    stmt = select(c.id, c.source, c.position, c.reason, c.excerpt, c.ts)
    if source is not None:
        stmt = stmt.where(c.source == source)
    if sources is not None:
        stmt = stmt.where(c.source.in_(list(sources)))
    if before_id is not None:
        stmt = stmt.where(c.id < before_id)
    stmt = stmt.order_by(c.id.desc()).limit(limit)
    with transaction(bind) as conn:
        return [QuarantinedRecord(*row) for row in conn.execute(stmt)]


def delete_quarantined_before(bind: Engine | Connection, ts: float) -> int:
    """Retention: drop records quarantined before ``ts``."""
    with transaction(bind, write=True) as conn:
        return int(conn.execute(QUARANTINE.delete().where(QUARANTINE.c.ts < ts)).rowcount)


__all__ = [
    "QuarantinedRecord",
    "count_quarantined",
    "count_quarantined_by_source",
    "delete_quarantined_before",
    "fetch_quarantined",
    "insert_quarantined",
    "quarantine_reasons",
]
