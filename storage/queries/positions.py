"""Where each file source has read up to, committed with the events read before it.

A position is written in the same transaction as its batch's events: after a
crash the store holds both or neither, so a restarted source resumes exactly
after the last committed record (no loss, no duplicates).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.engine import transaction
from storage.models import SOURCE_POSITIONS


@dataclass(frozen=True, slots=True)
class StoredPosition:
    source: str
    identity: str  # "dev:inode"
    offset: int
    fingerprint: str
    updated_at: float


def save_positions(bind: Engine | Connection, positions: Iterable[tuple[str, str, int, str]]) -> int:
    """Upsert ``(source, identity, offset, fingerprint)`` tuples; the last one per source wins."""
    latest: dict[str, dict[str, Any]] = {}
    now = time.time()
    for source, identity, offset, fingerprint in positions:
        latest[source] = {
            "source": source,
            "identity": identity,
            "offset": offset,
            "fingerprint": fingerprint,
            "updated_at": now,
        }
    if not latest:
        return 0
    with transaction(bind, write=True) as conn:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(SOURCE_POSITIONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source"],
            set_={c: stmt.excluded[c] for c in ("identity", "offset", "fingerprint", "updated_at")},
        )
        conn.execute(stmt, list(latest.values()))
    return len(latest)


def load_position(bind: Engine | Connection, source: str) -> StoredPosition | None:
    c = SOURCE_POSITIONS.c
    with transaction(bind) as conn:
        row = conn.execute(
            select(c.source, c.identity, c.offset, c.fingerprint, c.updated_at).where(c.source == source)
        ).first()
    return StoredPosition(*row) if row is not None else None


def load_positions(bind: Engine | Connection, prefix: str = "") -> dict[str, StoredPosition]:
    """Every stored position whose source key starts with ``prefix``."""
    c = SOURCE_POSITIONS.c
    stmt = select(c.source, c.identity, c.offset, c.fingerprint, c.updated_at)
    if prefix:
        stmt = stmt.where(c.source.startswith(prefix, autoescape=True))
    with transaction(bind) as conn:
        return {row[0]: StoredPosition(*row) for row in conn.execute(stmt)}


def delete_position(bind: Engine | Connection, source: str) -> bool:
    with transaction(bind, write=True) as conn:
        return bool(
            conn.execute(SOURCE_POSITIONS.delete().where(SOURCE_POSITIONS.c.source == source)).rowcount
        )


__all__ = ["StoredPosition", "delete_position", "load_position", "load_positions", "save_positions"]
